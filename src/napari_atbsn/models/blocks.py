"""Building blocks of the blind-spot and plain UNets (method.md §1.2).

Axis convention everywhere: tensors are (B, C, Y, X). "Shifted" blocks give
an output row ``i`` a receptive field of input rows ``<= i`` only (an upward
half-plane); the AT-BSN model rotates the image four times to cover all
directions and then shifts features to open the blind spot.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import CONTEXT_DROPOUT
from ..errors import ConfigError

LEAK = 0.1  # LeakyReLU slope used throughout the paper's networks.


class ConvBlock(nn.Module):
    """3x3 convolution + LeakyReLU(0.1).

    ``blind=True`` makes it the paper's shifted convolution: two zero rows are
    padded above and none below, so output row ``i`` sees input rows
    ``i-2 .. i``. Otherwise a plain 'same' convolution with ``padding_mode``.
    The wrapped convolution is the attribute ``conv`` so state-dict keys
    follow the official layout (``unet.enc1.conv1.conv.weight``, §1.9).
    """

    def __init__(self, cin: int, cout: int, *, blind: bool, bias: bool = True,
                 padding_mode: str = "zeros", act: bool = True) -> None:
        super().__init__()
        self.blind = blind
        self.act = act
        pad = 0 if blind else 1
        self.conv = nn.Conv2d(cin, cout, 3, padding=pad, bias=bias, padding_mode=padding_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.blind:
            x = F.pad(x, (1, 1, 2, 0))  # (left, right, top, bottom): causal in rows
        x = self.conv(x)
        return F.leaky_relu(x, LEAK) if self.act else x


def shift_rows(x: torch.Tensor, s: int) -> torch.Tensor:
    """Shift a (B, C, Y, X) map down by ``s`` rows, filling zeros at the top."""
    if s == 0:
        return x
    if s >= x.shape[-2]:
        return torch.zeros_like(x)
    return F.pad(x, (0, 0, s, 0))[..., :-s, :]


def pool(x: torch.Tensor, *, blind: bool) -> torch.Tensor:
    """2x2 max-pool; the blind version shifts down one row first (Laine's trick)
    so that after nearest upsampling row ``i`` still depends on rows ``<= i``."""
    if blind:
        x = shift_rows(x, 1)
    return F.max_pool2d(x, 2)


def upsample(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour x2 upsampling (no weights)."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def init_weights(module: nn.Module, last: nn.Conv2d | None = None) -> None:
    """He init with slope 0.1 for every conv, bias 0; ``last`` gets a linear gain."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, a=LEAK)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    if last is not None:
        nn.init.kaiming_normal_(last.weight, nonlinearity="linear")


class OutputConv(nn.Conv2d):
    """A network's last convolution, computed in float32 even under mixed precision.

    Under bf16 autocast the output image would otherwise be rounded to 8 bits of mantissa (a step of
    0.06 at a normalised value of 10: visible banding in bright, smooth regions of 16-bit data). Only
    the input is rounded; the image itself is a float32 sum. The state-dict names are nn.Conv2d's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_autocast_enabled(x.device.type):  # the plain path (and the one exports trace)
            return super().forward(x)
        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float())


def float32_output(conv: nn.Conv2d) -> nn.Conv2d:
    """Make ``conv`` (a model's last layer) an :class:`OutputConv`, in place."""
    if type(conv) is not nn.Conv2d:
        raise TypeError(f"expected a plain nn.Conv2d, got {type(conv).__name__}")
    conv.__class__ = OutputConv
    return conv


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "constant") -> torch.Tensor:
    """Pad the bottom and right of (B, C, Y, X) up to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    if mode == "reflect" and (ph >= h or pw >= w):
        mode = "replicate"  # reflect needs the pad to be smaller than the side
    return F.pad(x, (0, pw, 0, ph), mode=mode)


def context_dropout_of(context: int, dropout: float | None) -> float:
    """A stack-context network's context dropout: ``dropout``, or :data:`~napari_atbsn.config.CONTEXT_DROPOUT` when
    None (what training uses); 0 for a 2-D network."""
    if not context:
        return 0.0
    p = CONTEXT_DROPOUT if dropout is None else float(dropout)
    if not 0.0 <= p < 1.0:
        raise ConfigError(f"context_dropout={dropout!r} must be a share from 0 to below 1, e.g. {CONTEXT_DROPOUT}.")
    return p


def complete_input(x: torch.Tensor, in_channels: int, input_channels: int, single_plane: bool) -> torch.Tensor:
    """A network's (B, ``input_channels``, Y, X) input: ``x`` itself, or for a stack-context network given the plane's
    ``in_channels`` alone (its 2-D mode), the plane followed by zeros for its neighbours, as context dropout trained
    it (zeros are the data's typical level after normalisation, and hold none of the plane's noise)."""
    if x.ndim == 4 and x.shape[1] == input_channels:
        return x
    if x.ndim == 4 and x.shape[1] == in_channels and single_plane:
        return torch.cat([x, x.new_zeros(x.shape[0], input_channels - in_channels, *x.shape[2:])], dim=1)
    if x.ndim == 4 and x.shape[1] == in_channels:
        raise ConfigError(f"the network takes {input_channels // in_channels - 1} neighbouring plane(s) beside the "
                          f"plane and was trained without context dropout, so it cannot denoise a plane alone; give "
                          f"(B, {input_channels}, Y, X), or train it again.")
    alone = f" or (B, {in_channels}, Y, X) for a plane alone" if single_plane and in_channels != input_channels else ""
    raise ConfigError(f"expected input of shape (B, {input_channels}, Y, X){alone}, got {tuple(x.shape)}.")
