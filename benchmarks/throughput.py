"""Teacher vs student inference throughput on the same image, side by side.

Runs each network through the same windowed path users get
(``Denoiser.denoise``: windows of the training patch with a quarter halo) on
one image and reports megapixels per second, plus the convolution MACs of one
window (counted with forward hooks), whose teacher/student ratio the paper
gives as 6.8 for AT-BSN vs student C at 512x512 RGB.

    python benchmarks/throughput.py --size 512 --channels 3 --window 128
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from torch import nn

from napari_atbsn.inference.denoiser import Denoiser
from napari_atbsn.modelio import arch_dict
from napari_atbsn.models import ATBSN, Student


def conv_macs(net: nn.Module, x: torch.Tensor, **kw) -> int:
    total = 0

    def hook(m: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        net(x, **kw)
    for h in handles:
        h.remove()
    return total


def denoiser(net: nn.Module, channels: int, window: int) -> Denoiser:
    cfg = {"kind": "atbsn" if isinstance(net, ATBSN) else "student", "arch": arch_dict(net), "patch": window,
           "k_b": 3, "normalization": {"mode": "zscore", "offset": [0.0] * channels, "scale": [1.0] * channels}}
    return Denoiser(net, cfg, device="cpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    c = args.channels
    image = np.random.default_rng(0).normal(size=(args.size, args.size, c)).astype(np.float32)
    axes = "YXC" if c > 1 else "YX"
    if c == 1:
        image = image[..., 0]
    nets = [("AT-BSN paper (k_b=3)", ATBSN(c, "paper")), ("AT-BSN small (k_b=3)", ATBSN(c, "small")),
            ("student C", Student("C", c)), ("student B", Student("B", c)), ("student A", Student("A", c))]
    print(f"image {args.size}x{args.size}x{c}, windows {args.window} px (halo {args.window // 4}); "
          f"{platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print(f"| network | params | conv GMACs per 512² x {c} image | MPix/s | seconds | speed vs paper teacher |")
    print("|---|---|---|---|---|---|")
    base = None
    for name, net in nets:
        d = denoiser(net.eval(), c, args.window)
        kw = {"k": 3} if isinstance(net, ATBSN) else {}
        macs512 = conv_macs(net, torch.zeros(1, c, 512, 512), **kw) / 1e9
        d.denoise(image[:args.window, :args.window], axes)  # warm-up
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            d.denoise(image, axes)
        secs = (time.perf_counter() - t0) / args.repeats
        mpix = args.size**2 / secs / 1e6
        base = base or mpix
        n_params = sum(p.numel() for p in net.parameters())
        print(f"| {name} | {n_params / 1e6:.3f} M | {macs512:.2f} | {mpix:.4f} | {secs:.2f} | {mpix / base:.1f}x |")


if __name__ == "__main__":
    main()
