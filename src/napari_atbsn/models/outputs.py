"""One forward per model kind: the outputs that inference (:class:`~napari_atbsn.inference.denoiser.Denoiser`)
and the exported graphs (:mod:`napari_atbsn.exports.graph`) both compute from a network.

The outputs are named by keys (:data:`~napari_atbsn.config.OutputKey`): an AT-BSN teacher's are blind-spot
sizes k_b (None: the model's own); a D-BSN's are None (the Bayes-fused image),
:data:`~napari_atbsn.config.NOISE_MAP` (the noise standard deviation) and
:data:`~napari_atbsn.config.BLIND_ESTIMATE` (the one-pixel blind-spot estimate mu before fusion); a student
has one output, the denoised image.

Two entry points, one per use: :func:`network_outputs` computes several outputs from one backbone pass (a
teacher's ``teachers``, which is also what ``torch.compile`` compiles for it), stacked; :func:`network_output`
computes one output through the networks' plain forward, the graph that TorchScript and ONNX exports record
(stacking a single output there would add operations that change the ONNX runtime's fused kernels, and with
them the last bits of the result).
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
    """
    if kind == "atbsn":
        return network.teachers(x, [k_b if k is None else check_k(k, name="k_b") for k in keys])
    if kind == "dbsn":
        mu, var_mu, var_n = network(x)
        return torch.stack([dbsn_output(x, mu, var_mu, var_n, k, gamma=gamma, exportable=exportable)
                            for k in keys])
    return network(x)[None]


def network_output(network: nn.Module, kind: str, x: torch.Tensor, key: OutputKey = None, *,
                   k_b: int | None = None, gamma: float = 1.0, exportable: bool = False) -> torch.Tensor:
    """Normalised (N, C, h, w) input -> the one output ``key`` (N, C, h, w), through the network's plain
    forward; the arguments are :func:`network_outputs`'s."""
    if kind == "atbsn":
        return network(x, k_b if key is None else check_k(key, name="k_b"))
    if kind == "dbsn":
        mu, var_mu, var_n = network(x)
        return dbsn_output(x, mu, var_mu, var_n, key, gamma=gamma, exportable=exportable)
    return network(x)


def dbsn_output(x: torch.Tensor, mu: torch.Tensor, var_mu: torch.Tensor, var_n: torch.Tensor, key: OutputKey, *,
                gamma: float = 1.0, exportable: bool = False) -> torch.Tensor:
    """A D-BSN's output ``key`` from its network's ``(mu, var_mu, var_n)`` on ``x``: BLIND_ESTIMATE -> mu;
    NOISE_MAP -> the noise standard deviation (normalised units); anything else (None) -> the Bayes-fused
    image."""
    if key == BLIND_ESTIMATE:
        return mu
    if key == NOISE_MAP:
        return noise_std(var_n)
    return bayes_fusion(x, mu, var_mu, var_n, gamma, exportable=exportable)


def noise_std(var_n: torch.Tensor) -> torch.Tensor:
    """A D-BSN's noise standard deviation per pixel and channel, (N, C, h, w), from its noise variances
    (N, C, h, w) or covariances (N, C, C, h, w): the diagonal's square root."""
    var = var_n if var_n.ndim == 4 else var_n.diagonal(dim1=1, dim2=2).permute(0, 3, 1, 2)
    return var.clamp_min(0).sqrt()


__all__ = ["dbsn_output", "network_output", "network_outputs", "noise_std"]
