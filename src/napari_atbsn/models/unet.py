"""The UNet shared by the AT-BSN teacher and student C (method.md §1.3).

Laine et al.'s topology: an intro conv, ``depth`` conv+pool encoder levels,
one bottom conv, then ``depth`` decoder levels of two convs each whose skips
are the pooled encoder outputs and, at the top, the input image itself.
With ``blind=True`` every conv and pool is shifted (receptive field: rows
``<= i``); with ``blind=False`` it is a plain UNet.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import UNetArch
from .blocks import ConvBlock, pool, upsample


class EncBlock(nn.Module):
    """One conv, then (optionally) a 2x2 pool."""

    def __init__(self, cin: int, cout: int, *, blind: bool, pooled: bool) -> None:
        super().__init__()
        self.blind = blind
        self.pooled = pooled
        self.conv1 = ConvBlock(cin, cout, blind=blind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        return pool(x, blind=self.blind) if self.pooled else x


class DecBlock(nn.Module):
    """Concatenate the skip, then two convs."""

    def __init__(self, cin: int, cmid: int, cout: int, *, blind: bool, act_out: bool = True) -> None:
        super().__init__()
        self.conv1 = ConvBlock(cin, cmid, blind=blind)
        self.conv2 = ConvBlock(cmid, cout, blind=blind, act=act_out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(torch.cat([x, skip], dim=1)))


class UNet(nn.Module):
    """Shifted (``blind=True``) or plain UNet; input sides must be multiples of 2**depth.

    Parameters
    ----------
    arch : UNetArch
        Encoder width, decoder width and number of pooling levels.
    in_channels : int
        Image channels C.
    out_channels : int or None
        Output channels of the last decoder conv; ``None`` keeps ``arch.dec_width``
        (the teacher's feature map). Student C sets C here.
    blind : bool
        Shifted convolutions and pools (half-plane receptive field).
    act_out : bool
        LeakyReLU after the last conv (the teacher's features have it).
    """

    def __init__(self, arch: UNetArch, in_channels: int, *, out_channels: int | None = None,
                 blind: bool, act_out: bool = True) -> None:
        super().__init__()
        w, d, depth = arch.width, arch.dec_width, arch.depth
        self.depth = depth
        self.intro = ConvBlock(in_channels, w, blind=blind)
        for i in range(1, depth + 1):
            self.add_module(f"enc{i}", EncBlock(w, w, blind=blind, pooled=True))
        self.add_module(f"enc{depth + 1}", EncBlock(w, w, blind=blind, pooled=False))
        ch = w
        for i in range(depth, 0, -1):
            skip = in_channels if i == 1 else w
            cout = out_channels if (i == 1 and out_channels is not None) else d
            self.add_module(f"dec{i}", DecBlock(ch + skip, d, cout, blind=blind,
                                                act_out=act_out or i != 1))
            ch = d
        self.out_channels = out_channels if out_channels is not None else d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [x]
        h = self.intro(x)
        for i in range(1, self.depth + 1):
            h = getattr(self, f"enc{i}")(h)
            if i < self.depth:
                skips.append(h)
        h = getattr(self, f"enc{self.depth + 1}")(h)
        for i in range(self.depth, 0, -1):
            h = getattr(self, f"dec{i}")(upsample(h), skips[i - 1])
        return h
