"""Non-blind student UNets for multi-teacher distillation (method.md §1.8).

Presets, parameter counts for C = 3:

* ``A`` (128,385): two pooling levels, one conv each, no bias, replicate padding;
* ``B`` (856,656): the same topology with 3 convs down, 4 up, a 48-96-96-48 bottleneck;
* ``C`` (1,003,011): the teacher's UNet without shifts, rotations or head, so it
  can start from the teacher's weights (:meth:`Student.init_from_teacher`);
* ``tiny``: a depth-2 plain UNet for tests.

One deliberate difference from the official code: the output layer is linear.
The official students pass their output through a LeakyReLU, harmless in its
0..255 range but a handicap for our zero-centred ``zscore`` inputs; the
activation has no parameters, so weights stay interchangeable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..config import ATBSN_PRESETS, STUDENT_MULTIPLE, STUDENT_PRESETS, UNetArch, check_context
from ..errors import ConfigError
from .blocks import (
    ConvBlock,
    complete_input,
    context_dropout_of,
    float32_output,
    init_weights,
    pad_to_multiple,
    pool,
    upsample,
)
from .unet import UNet

# Conv widths of the small students, per stage (the last dec1 width is C).
_SMALL: dict[str, dict[str, tuple[int, ...]]] = {
    "A": dict(enc1=(48,), enc2=(48,), enc3=(48,), dec2=(96,), dec1=()),
    "B": dict(enc1=(48, 48, 48), enc2=(48, 48, 48), enc3=(96, 96, 48), dec2=(96, 96, 96, 96), dec1=(96, 96, 96)),
}
_TINY = UNetArch(width=8, dec_width=16, depth=2)


def _stack(cin: int, widths: Sequence[int], *, last_act: bool = True) -> tuple[nn.Sequential, int]:
    layers = []
    for i, cout in enumerate(widths):
        act = last_act or i < len(widths) - 1
        layers.append(ConvBlock(cin, cout, blind=False, bias=False, padding_mode="replicate", act=act))
        cin = cout
    return nn.Sequential(*layers), cin


class SmallUNet(nn.Module):
    """Students A and B: two pooling levels with 'smart' padding of the upsampled maps."""

    def __init__(self, widths: dict[str, tuple[int, ...]], in_channels: int, out_channels: int | None = None) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.enc1, c1 = _stack(in_channels, widths["enc1"])
        self.enc2, c2 = _stack(c1, widths["enc2"])
        self.enc3, c3 = _stack(c2, widths["enc3"])
        self.dec2, c4 = _stack(c3 + c1, widths["dec2"])
        self.dec1, _ = _stack(c4 + in_channels, (*widths["dec1"], out_channels), last_act=False)

    @staticmethod
    def _up_to(x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        x = upsample(x)
        dh, dw = ref.shape[-2] - x.shape[-2], ref.shape[-1] - x.shape[-1]
        return nn.functional.pad(x, (0, dw, 0, dh))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = pool(self.enc1(x), blind=False)
        x2 = pool(self.enc2(x1), blind=False)
        h = self.enc3(x2)
        h = self.dec2(torch.cat([self._up_to(h, x1), x1], dim=1))
        return self.dec1(torch.cat([self._up_to(h, x), x], dim=1))


class Student(nn.Module):
    """A plain (non-blind) UNet that learns from the AT-BSN teachers.

    Parameters
    ----------
    preset : {"A", "B", "C", "tiny"}
        Architecture (see the module docstring).
    in_channels : int
        Image channels C; the output has C channels too.
    context : int
        Neighbouring planes on each side in the input (the teacher's): the input has C * (2 * context + 1)
        channels, the centre plane's first; the output is the centre plane's C.
    context_dropout : float, optional
        Share of the distillation samples whose neighbours were zeros (the teacher's; see
        :class:`~napari_atbsn.models.ATBSN`): above 0 the student also takes the plane alone, (B, C, Y, X).

    Any Y x X works: the input is reflect-padded at the bottom and right to the
    network's multiple and the output cropped back.
    """

    def __init__(self, preset: str = "C", in_channels: int = 3, blend: Sequence[float] | None = None, *,
                 context: int = 0, context_dropout: float | None = None) -> None:
        super().__init__()
        if preset not in STUDENT_PRESETS:
            raise ConfigError(f"Unknown student preset {preset!r}; choose one of {', '.join(STUDENT_PRESETS)}.")
        if in_channels < 1:
            raise ConfigError(f"in_channels={in_channels} must be at least 1.")
        self.preset = preset
        self.in_channels = in_channels
        self.context = check_context(context)
        self.context_dropout = context_dropout_of(self.context, context_dropout)
        self.input_channels = in_channels * (2 * self.context + 1)
        self.multiple = STUDENT_MULTIPLE[preset]
        if preset in _SMALL:
            self.net: nn.Module = SmallUNet(_SMALL[preset], self.input_channels, in_channels)
            last = self.net.dec1[-1].conv
        else:
            arch = ATBSN_PRESETS["paper"] if preset == "C" else _TINY
            self.unet = UNet(arch, self.input_channels, out_channels=in_channels, blind=False, act_out=False)
            last = self.unet.dec1.conv2.conv
        init_weights(self, last=last)
        float32_output(last)
        # The never-worse blend with the input, x + α·(net(x) − x) per channel (the teacher's calibrated weight;
        # None: the paper's student). Part of the forward, so exported graphs carry it; not a weight: it lives in
        # config.json's arch, and folders written before it load unchanged.
        if blend is not None and len(blend) != in_channels:
            raise ConfigError(f"blend has {len(blend)} weight(s) for {in_channels} channel(s); give one per channel.")
        if blend is not None and not all(0.0 <= float(a) <= 1.0 for a in blend):
            raise ConfigError(f"blend={list(blend)} must be weights from 0 to 1.")
        self.blend_weights = None if blend is None else tuple(float(a) for a in blend)
        weights = torch.tensor(self.blend_weights or (1.0,) * in_channels, dtype=torch.float32)
        self.register_buffer("blend", weights.reshape(1, -1, 1, 1), persistent=False)

    @property
    def single_plane(self) -> bool:
        """Whether the student denoises a plane without its neighbours (see :attr:`ATBSN.single_plane`)."""
        return not self.context or self.context_dropout > 0

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """The network's own output, before the blend with the input (what distillation trains)."""
        x = complete_input(x, self.in_channels, self.input_channels, self.single_plane)
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, self.multiple, mode="reflect")
        body = self.net if self.preset in _SMALL else self.unet
        return body(x)[..., :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.raw(x)
        if self.blend_weights is None:
            return out
        x = x[:, :self.in_channels]  # the centre plane (the only one with context)
        return x + self.blend.to(out.dtype) * (out - x)

    def init_from_teacher(self, teacher: nn.Module) -> int:
        """Copy the teacher's UNet weights except the top decoder level (student C).

        The shift and rotations of the teacher act on feature maps, not on
        weights, so its shifted 3x3 kernels are valid plain kernels. Returns
        the number of tensors copied.

        With context the first convolution takes the neighbouring planes too: the teacher's kernels fill the
        centre plane's inputs and the neighbours' start at zero, so the student starts as the teacher's UNet on
        the centre plane and learns what the neighbours add.
        """
        if self.preset != "C":
            raise ConfigError(f"only student C shares the teacher's UNet; student {self.preset} cannot be "
                              f"initialised from it (set init_from_teacher=False).")
        src = {k: v for k, v in teacher.state_dict().items()
               if k.startswith("unet.") and not k.startswith("unet.dec1.")}
        own = self.state_dict()
        if self.context:
            for key in [k for k in src if k.startswith("unet.intro.") and k.endswith("weight")]:
                w = torch.zeros_like(own[key]) if key in own else None
                if w is not None and w.shape[0] == src[key].shape[0] and w.shape[2:] == src[key].shape[2:]:
                    w[:, :src[key].shape[1]] = src[key]
                    src[key] = w
        bad = [k for k, v in src.items() if k not in own or own[k].shape != v.shape]
        if bad:
            raise ConfigError(f"the teacher's UNet does not match student C ({bad[0]} differs); student C needs a "
                              f"'paper' teacher with the same channel count.")
        own.update(src)
        self.load_state_dict(own)
        return len(src)
