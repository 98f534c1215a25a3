"""AT-BSN: the asymmetric, tunable blind-spot network (Chen et al., CVPR 2024).

The pipeline of method.md §1.1, written for any H x W:

1. rotate the input by 0, 90 (clockwise), 180 and 270 degrees;
2. run the shared shifted UNet on each rotation (its receptive field is the
   upward half-plane of the rotated frame, centre row included);
3. shift each feature map down by ``s = (k + 1) // 2`` rows *in its rotated
   frame*, so the four half-planes now stop ``s`` pixels short of the pixel;
4. rotate back, concatenate along channels (order 0, 90, 180, 270);
5. fuse with three 1x1 convolutions (nin_A, nin_B, nin_C).

The union of the four shifted half-planes excludes exactly the centred
``k x k`` square (plus a few position-dependent pixels beside its corners for
k >= 5, method.md §1.4). Steps 1-2 do not depend on k, which is what makes k
a free knob: :meth:`ATBSN.teachers` computes them once for many k.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ATBSN_PRESETS, UNetArch, check_context, check_k
from ..errors import BlindSpotError, ConfigError
from .blocks import (
    LEAK,
    complete_input,
    context_dropout_of,
    float32_output,
    init_weights,
    pad_to_multiple,
    shift_rows,
)
from .unet import UNet

#: torch.rot90 ``k`` for the official order rot0, rot90 (clockwise), rot180, rot270.
ROTATIONS: tuple[int, ...] = (0, -1, 2, 1)


def resolve_arch(preset: str, width: int | None, dec_width: int | None, depth: int | None) -> UNetArch:
    """Preset widths, with explicit overrides."""
    if preset not in ATBSN_PRESETS:
        raise ConfigError(f"Unknown preset {preset!r}; choose one of {', '.join(ATBSN_PRESETS)}.")
    base = ATBSN_PRESETS[preset]
    return UNetArch(width=width or base.width, dec_width=dec_width or base.dec_width, depth=depth or base.depth)


class ATBSN(nn.Module):
    """Shifted-convolution blind-spot UNet with a tunable blind-spot size.

    Parameters
    ----------
    in_channels : int
        Image channels C (3 for sRGB, 1 for a single microscopy channel).
    preset : {"paper", "small", "tiny"}
        Size preset; ``paper`` is the published network (1,268,547 parameters
        for C = 3).
    width, dec_width, depth : int, optional
        Override the preset's encoder width, decoder width or pooling depth.

    context : int
        Neighbouring planes on each side taken as context (0: a 2-D model).
    context_dropout : float, optional
        Share of the training samples whose neighbours were zeros (default
        :data:`~napari_atbsn.config.CONTEXT_DROPOUT`; 0: a folder trained before context dropout). Above 0 the
        network also denoises a plane alone (its 2-D mode: :attr:`single_plane`).

    Call ``model(x, k=3)`` with ``x`` of shape (B, C * (2 * context + 1), Y, X), any Y and X; a stack-context model
    with :attr:`single_plane` also takes (B, C, Y, X), the plane alone.
    """

    def __init__(self, in_channels: int = 3, preset: str = "paper", *, width: int | None = None,
                 dec_width: int | None = None, depth: int | None = None, context: int = 0,
                 context_dropout: float | None = None) -> None:
        super().__init__()
        if in_channels < 1:
            raise ConfigError(f"in_channels={in_channels} must be at least 1.")
        self.arch = resolve_arch(preset, width, dec_width, depth)
        self.preset = preset
        self.in_channels = in_channels
        self.context = check_context(context)
        self.context_dropout = context_dropout_of(self.context, context_dropout)
        #: channels of the network's input: the centre plane's, then its neighbours'
        self.input_channels = in_channels * (2 * self.context + 1)
        d = self.arch.dec_width
        self.unet = UNet(self.arch, in_channels, blind=True)
        # the branches fused by the head: four shifted rotations, and the neighbours' plain features
        fused = 4 * d + (d if self.context else 0)
        if self.context:
            self.context_unet = UNet(self.arch, self.input_channels - in_channels, blind=False)
        self.nin_A = nn.Conv2d(fused, fused, 1)
        self.nin_B = nn.Conv2d(fused, d, 1)
        self.nin_C = nn.Conv2d(d, in_channels, 1)
        init_weights(self, last=self.nin_C)
        float32_output(self.nin_C)

    @property
    def single_plane(self) -> bool:
        """Whether the network denoises a plane without its neighbours (a 2-D network; a stack-context one trained
        with context dropout, given zeros for them)."""
        return not self.context or self.context_dropout > 0

    def complete(self, x: torch.Tensor) -> torch.Tensor:
        """The network's full input: ``x``, or a plane alone followed by zeros for its neighbours (2-D mode)."""
        return complete_input(x, self.in_channels, self.input_channels, self.single_plane)

    # -- the k-independent part --------------------------------------------
    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """UNet features of the four rotations, each in its rotated frame.

        Rotations of equal shape are batched together (all four when Y == X).
        Each rotated image is zero-padded at its bottom and right to a
        multiple of ``2**depth``: rows below a pixel never enter its
        (upward) receptive field, and zeros carry no pixel's own noise, so
        the padding cannot leak a value around the blind spot.
        """
        x = self.complete(x)
        m = self.arch.multiple
        x = x[:, :self.in_channels]  # the centre plane: the only one behind the blind spot
        rotated = [torch.rot90(x, r, dims=(2, 3)) for r in ROTATIONS]
        out: list[torch.Tensor | None] = [None] * 4
        groups: dict[tuple[int, int], list[int]] = {}
        for i, t in enumerate(rotated):
            groups.setdefault(tuple(t.shape[-2:]), []).append(i)
        for (h, w), idx in groups.items():
            batch = torch.cat([rotated[i] for i in idx], dim=0)
            batch = F.pad(batch, (0, (-w) % m, 0, (-h) % m))
            feats = self.unet(batch)[..., :h, :w]
            # slices of the batch size rather than chunk()/split(), whose chunk count would pin a dynamic batch
            # axis to the example's size when the graph is exported (ONNX)
            b = x.shape[0]
            for n, j in enumerate(idx):
                out[j] = feats[n * b:(n + 1) * b]
        return out  # type: ignore[return-value]

    def context_features(self, x: torch.Tensor) -> torch.Tensor | None:
        """The neighbouring planes' plain UNet features (B, dec_width, Y, X), None for a 2-D model. The centre
        plane's channels are cut off first: this branch sees no pixel of the plane being denoised."""
        if not self.context:
            return None
        x = self.complete(x)
        h, w = x.shape[-2:]
        m = self.arch.multiple
        # reflect-padding is safe here (unlike in the blind branch): these pixels carry none of the centre's noise
        return self.context_unet(pad_to_multiple(x[:, self.in_channels:], m, mode="reflect"))[..., :h, :w]

    # -- the k-dependent part ------------------------------------------------
    def head(self, feats: Sequence[torch.Tensor], k: int, context: torch.Tensor | None = None) -> torch.Tensor:
        """Shift (in the rotated frame), un-rotate, concatenate (with the context features) and fuse."""
        k = check_k(k)
        s = (k + 1) // 2
        side = min(feats[0].shape[-2:])
        if s >= side:
            raise BlindSpotError(f"k={k} needs a shift of {s} pixels, but the input is only {side} pixels "
                                 f"across; use k <= {2 * side - 3} or a larger image.")
        parts = [torch.rot90(shift_rows(f, s), -r, dims=(2, 3)) for f, r in zip(feats, ROTATIONS, strict=True)]
        if context is not None:
            parts.append(context)
        h = torch.cat(parts, dim=1)
        h = F.leaky_relu(self.nin_A(h), LEAK)
        h = F.leaky_relu(self.nin_B(h), LEAK)
        return self.nin_C(h)

    def forward(self, x: torch.Tensor, k: int = 3) -> torch.Tensor:
        """Denoise ``x`` (B, C, Y, X) with a ``k x k`` blind spot (k = 0: none)."""
        check_k(k)
        x = self.complete(x)
        return self.head(self.features(x), k, self.context_features(x))

    def teachers(self, x: torch.Tensor, ks: Sequence[int]) -> torch.Tensor:
        """Outputs for every k in ``ks`` from ONE pass of the UNet.

        Returns a tensor of shape (len(ks), B, C, Y, X), equal to stacking
        ``self(x, k)`` for each k (method.md §1.8).
        """
        ks = [check_k(k) for k in ks]
        if not ks:
            raise BlindSpotError("ks is empty; give at least one blind-spot size, e.g. [0, 1, 3, 5, 7, 9, 11].")
        x = self.complete(x)
        feats, ctx = self.features(x), self.context_features(x)
        return torch.stack([self.head(feats, k, ctx) for k in ks], dim=0)
