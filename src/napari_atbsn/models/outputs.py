"""One forward per model kind: the outputs that inference (:class:`~napari_atbsn.inference.denoiser.Denoiser`)
and the exported graphs (:mod:`napari_atbsn.exports.graph`) both compute from a network.

The outputs are named by keys (:data:`~napari_atbsn.config.OutputKey`): an AT-BSN teacher's are blind-spot
sizes k_b (None: the model's own), computed from one UNet pass with one head per k; a D-BSN's are None (the
Bayes-fused image), :data:`~napari_atbsn.config.NOISE_MAP` (the noise standard deviation) and
:data:`~napari_atbsn.config.BLIND_ESTIMATE` (the one-pixel blind-spot estimate mu before fusion); a student
has one output, the denoised image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..config import BLIND_ESTIMATE, NOISE_MAP, OutputKey, check_k
from .dbsn import bayes_fusion


def network_outputs(network: nn.Module, kind: str, x: torch.Tensor, keys: Sequence[OutputKey], *,
                    k_b: int | None = None, gamma: float = 1.0, exportable: bool = False) -> torch.Tensor:
    """Normalised (N, C, h, w) input -> (K, N, C, h, w): one output per key in ``keys`` (a student: K = 1).

    ``kind`` is the model folder's (``atbsn``, ``dbsn`` or ``student``); ``k_b`` the teacher's blind spot for
    the key None; ``gamma`` the D-BSN's weight of the noise term in the Bayes fusion; ``exportable`` fuses
    cross-channel D-BSN estimates with elementwise operations only, as TorchScript and ONNX graphs need.
    A teacher goes through ``network.teachers`` (what ``torch.compile`` compiles for it).
    """
    if kind == "atbsn":
        return network.teachers(x, [k_b if k is None else check_k(k, name="k_b") for k in keys])
    if kind == "dbsn":
        return dbsn_outputs(network, x, keys, gamma=gamma, exportable=exportable)
    return network(x)[None]


def dbsn_outputs(network: nn.Module, x: torch.Tensor, keys: Sequence[OutputKey], *, gamma: float = 1.0,
                 exportable: bool = False) -> torch.Tensor:
    """D-BSN: None -> the Bayes-fused image; NOISE_MAP -> the noise standard deviation (normalised units);
    BLIND_ESTIMATE -> mu, the one-pixel blind-spot estimate before fusion. Stacked, in the order of ``keys``."""
    mu, var_mu, var_n = network(x)
    outs = []
    for k in keys:
        if k == BLIND_ESTIMATE:
            outs.append(mu)
        elif k == NOISE_MAP:
            outs.append(noise_std(var_n))
        else:
            outs.append(bayes_fusion(x, mu, var_mu, var_n, gamma, exportable=exportable))
    return torch.stack(outs)


def noise_std(var_n: torch.Tensor) -> torch.Tensor:
    """A D-BSN's noise standard deviation per pixel and channel, (N, C, h, w), from its noise variances
    (N, C, h, w) or covariances (N, C, C, h, w): the diagonal's square root."""
    var = var_n if var_n.ndim == 4 else var_n.diagonal(dim1=1, dim2=2).permute(0, 3, 1, 2)
    return var.clamp_min(0).sqrt()


__all__ = ["dbsn_outputs", "network_outputs", "noise_std"]
