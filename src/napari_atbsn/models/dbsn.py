"""D-BSN: the dilated blind-spot network with learned noise models (Wu et al., ECCV 2020; method.md §5).

For noise that is close to pixel-independent (possibly signal-dependent)
the blind spot can be a single pixel, and the pixel's own observation is
brought back afterwards by Bayes' rule: the network predicts the clean value
``mu`` from the neighbours together with its uncertainty ``var_mu``, a small
noise network predicts the noise variance ``var_n``, and the posterior mean
of the clean value given ``mu`` and the noisy pixel ``y`` is the output
(:func:`bayes_fusion`).

Why the centre stays blind: each branch starts with a ``k x k`` convolution
whose centre tap is zeroed, leaving offsets ``o`` with ``0 < |o|_inf <=
(k-1)/2``; every later spatial convolution is dilated by ``d = (k+1)/2``, so
its offsets are multiples of ``d > |o|`` and can never cancel ``o``. Zero
padding carries no pixel's value. 1x1 convolutions and ReLUs are pointwise.

Variances are per channel, ``(B, C, Y, X)``, or full channel covariances,
``(B, C, C, Y, X)`` (the multivariate model for colour/multichannel noise
correlated across channels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DBSN_PRESETS, NOISE_MODELS
from ..errors import ConfigError
from .blocks import float32_output

# Stability guard of the reference training: a batch whose Mahalanobis term
# exceeds this is dropped (the loss would only push the variances around).
BLOWUP = 1e8


class CentreMaskedConv2d(nn.Conv2d):
    """A ``k x k`` convolution whose centre tap is always zero (the 'Mask' type, no rescaling)."""

    def __init__(self, cin: int, cout: int, k: int) -> None:
        if k % 2 == 0 or k < 3:
            raise ConfigError(f"the blind-spot convolution needs an odd size >= 3, got {k}.")
        super().__init__(cin, cout, k, padding=k // 2)
        mask = torch.ones(1, 1, k, k)
        mask[..., k // 2, k // 2] = 0
        self.register_buffer("mask", mask, persistent=False)
        with torch.no_grad():
            self.weight.mul_(mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Masking in forward (not only at init) keeps the centre blind whatever the optimiser does.
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


def _conv(cin: int, cout: int, k: int = 1, d: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=d * (k // 2), dilation=d)


class InceptionBlock(nn.Module):
    """Three parallel paths (5x5 and 3x3 convs dilated by ``d``, and 1x1), fused with a residual."""

    def __init__(self, ch: int, d: int) -> None:
        super().__init__()
        self.path5 = nn.Sequential(_conv(ch, ch), nn.ReLU(), _conv(ch, ch, 5, d), nn.ReLU())
        self.path3 = nn.Sequential(_conv(ch, ch), nn.ReLU(), _conv(ch, ch, 3, d), nn.ReLU())
        self.path1 = nn.Sequential(_conv(ch, ch), nn.ReLU())
        self.fuse = _conv(3 * ch, ch)
        self.tail = nn.Sequential(_conv(ch, ch), nn.ReLU(), _conv(ch, ch), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.path5(x), self.path3(x), self.path1(x)], dim=1)
        return self.tail(F.relu(self.fuse(h)) + x)


class Branch(nn.Module):
    """Centre-masked ``k x k`` conv, two 1x1s, ``blocks`` inception blocks dilated by (k+1)/2, a 1x1."""

    def __init__(self, ch: int, k: int, blocks: int) -> None:
        super().__init__()
        d = (k + 1) // 2
        self.blind = CentreMaskedConv2d(ch, ch, k)
        self.pre = nn.Sequential(nn.ReLU(), _conv(ch, ch), nn.ReLU(), _conv(ch, ch), nn.ReLU())
        self.blocks = nn.Sequential(*[InceptionBlock(ch, d) for _ in range(blocks)])
        self.out = _conv(ch, ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(self.pre(self.blind(x))))


class SigmaNet(nn.Module):
    """A stack of 1x1 convolutions with ReLUs between them (pointwise, so it keeps blindness)."""

    def __init__(self, cin: int, width: int, cout: int, layers: int) -> None:
        super().__init__()
        widths = [cin] + [width] * (layers - 1) + [cout]
        mods: list[nn.Module] = []
        for i in range(layers):
            mods.append(_conv(widths[i], widths[i + 1]))
            if i < layers - 1:
                mods.append(nn.ReLU())
        self.net = nn.Sequential(*mods)

    @property
    def last(self) -> nn.Conv2d:
        return self.net[-1]  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _n_factor(c: int, full: bool) -> int:
    return c * (c + 1) // 2 if full else c


def _to_covariance(v: torch.Tensor, c: int) -> torch.Tensor:
    """(B, C(C+1)/2, Y, X) lower-triangular factor entries -> L L^T as (B, C, C, Y, X)."""
    b, _, h, w = v.shape
    rows, cols = torch.tril_indices(c, c, device=v.device)
    lower = v.new_zeros(b, c, c, h, w)
    lower[:, rows, cols] = v
    return torch.einsum("bikyx,bjkyx->bijyx", lower, lower)


class DBSN(nn.Module):
    """D-BSN with its uncertainty head (Sigma_mu) and noise estimator (CNN_est, Sigma_n).

    ``forward(y)`` returns ``(mu, var_mu, var_n)``: the blind-spot estimate and
    the two variance maps (shapes in the module docstring). Combine them with
    :func:`bayes_fusion`.
    """

    def __init__(self, in_channels: int = 1, preset: str = "paper", *, noise_model: str = "poisson-gaussian") -> None:
        super().__init__()
        if preset not in DBSN_PRESETS:
            raise ConfigError(f"unknown D-BSN preset {preset!r}; choose one of {', '.join(DBSN_PRESETS)}.")
        if noise_model not in NOISE_MODELS:
            raise ConfigError(f"noise_model={noise_model!r}; choose one of {', '.join(NOISE_MODELS)}.")
        if in_channels < 1:
            raise ConfigError(f"in_channels={in_channels} must be at least 1.")
        self.preset, self.arch, self.in_channels, self.noise_model = preset, DBSN_PRESETS[preset], in_channels, \
            noise_model
        ch, c = self.arch.width, in_channels
        self.full = noise_model == "multivariate-gaussian" and c > 1
        self.head = nn.Sequential(_conv(c, ch), nn.ReLU())
        self.branch1 = Branch(ch, 3, self.arch.blocks)
        self.branch2 = Branch(ch, 5, self.arch.blocks)
        self.fusion = _conv(2 * ch, ch)
        self.tail = nn.Sequential(nn.ReLU(), _conv(ch, ch), nn.ReLU(), _conv(ch, ch), nn.ReLU(), _conv(ch, c))
        m = self.arch.sigma_width
        self.sigma_mu = SigmaNet(ch, m, _n_factor(c, self.full), 3)
        self.sigma_n = SigmaNet(c, m, _n_factor(c, self.full), 5)
        float32_output(self.tail[-1])  # mu, the image estimate, is not rounded to bf16 under autocast
        with torch.no_grad():
            # Kaiming-normal weights, zero biases (the reference's init). PyTorch's default (uniform, a third of
            # the variance) fades the signal through the dilated blocks: on FMD, 110 steps of mu reached 26.3 dB
            # from it against 41.4 dB from this (noisy input 35.6; docs/benchmarks.md, D-BSN).
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    nn.init.zeros_(m.bias)
            self.branch1.blind.weight.mul_(self.branch1.blind.mask)
            self.branch2.blind.weight.mul_(self.branch2.blind.mask)
            # CNN_est starts at a small constant noise level (std ~0.018 in 0..1 units)
            self.sigma_n.last.weight.zero_()
            self.sigma_n.last.bias.zero_()

    # -- the three outputs ---------------------------------------------------------
    def features(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, mid): the blind-spot estimate and the fused feature the uncertainty head reads."""
        if y.ndim != 4 or y.shape[1] != self.in_channels:
            raise ConfigError(f"expected input of shape (B, {self.in_channels}, Y, X), got {tuple(y.shape)}.")
        h = self.head(y)
        mid = self.fusion(torch.cat([self.branch1(h), self.branch2(h)], dim=1))
        return self.tail(mid), mid

    def var_mu(self, mid: torch.Tensor) -> torch.Tensor:
        """Uncertainty of mu: squared outputs, or L L^T for the multivariate model."""
        with torch.autocast(mid.device.type, enabled=False):  # variances and their logs need float32
            v = self.sigma_mu(mid.float())
            return _to_covariance(v, self.in_channels) if self.full else v.square()

    def var_n(self, x: torch.Tensor) -> torch.Tensor:
        """Noise variance from ``x``: mu for Poisson-Gaussian (per pixel), the noisy image for Gaussian (averaged
        over the image), the clean image when synthesising noise for distillation."""
        with torch.autocast(x.device.type, enabled=False):
            out = self.sigma_n(x.float()) + 3e-4
            positive = F.softplus(out - 4.0) + 1e-3  # standard deviations (the factor's diagonal) stay positive
            if self.full:
                rows, cols = torch.tril_indices(self.in_channels, self.in_channels, device=out.device)
                std = torch.where((rows == cols).view(1, -1, 1, 1), positive, out)
            else:
                std = positive
            if self.noise_model != "poisson-gaussian":
                std = std.mean(dim=(2, 3), keepdim=True).expand_as(std)
            return _to_covariance(std, self.in_channels) if self.full else std.square()

    def noise_input(self, y: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        return mu if self.noise_model == "poisson-gaussian" else y

    def forward(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, mid = self.features(y)
        return mu, self.var_mu(mid), self.var_n(self.noise_input(y, mu.detach()))


# -- fusion and losses --------------------------------------------------------------
def _pixels_last(cov: torch.Tensor) -> torch.Tensor:
    return cov.permute(0, 3, 4, 1, 2)  # (B, Y, X, C, C)


def _vec(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).unsqueeze(-1)  # (B, Y, X, C, 1)


def spd_inverse(m: torch.Tensor) -> torch.Tensor:
    """Inverse of small symmetric positive-definite matrices (..., C, C) by Gauss-Jordan elimination, unrolled
    over C with elementwise operations only: what exported graphs (ONNX has no matrix inverse) compute in
    place of ``torch.linalg.inv``. The pivots of an SPD matrix are positive, so no pivoting is needed."""
    c = m.shape[-1]
    a = [[m[..., i, j] for j in range(c)] for i in range(c)]
    inv = [[torch.ones_like(a[0][0]) if i == j else torch.zeros_like(a[0][0]) for j in range(c)] for i in range(c)]
    for k in range(c):
        piv = a[k][k]
        a[k] = [v / piv for v in a[k]]
        inv[k] = [v / piv for v in inv[k]]
        for i in range(c):
            if i != k:
                f = a[i][k]
                a[i] = [v - f * w for v, w in zip(a[i], a[k], strict=True)]
                inv[i] = [v - f * w for v, w in zip(inv[i], inv[k], strict=True)]
    return torch.stack([torch.stack(row, dim=-1) for row in inv], dim=-2)


def bayes_fusion(y: torch.Tensor, mu: torch.Tensor, var_mu: torch.Tensor, var_n: torch.Tensor,
                 gamma: float = 1.0, *, exportable: bool = False) -> torch.Tensor:
    """Posterior mean of the clean image given the prior N(mu, var_mu) and the observation y ~ N(x, gamma var_n).

    Per channel: ``(var_mu * y + gamma var_n * mu) / (var_mu + gamma var_n)``; with covariances
    ``(S_mu^-1 + (gamma S_n)^-1)^-1 (S_mu^-1 mu + (gamma S_n)^-1 y)``. Where the blind-spot estimate is
    uncertain the noisy pixel gets more weight. ``gamma`` in [0.9, 1] (the reference test scripts) trusts
    the blind-spot estimate slightly more; 1 is the exact posterior. ``exportable`` computes the
    cross-channel case with :func:`spd_inverse` instead of LAPACK, for TorchScript/ONNX exports.
    """
    if not 0 < gamma <= 2:
        raise ConfigError(f"gamma={gamma} must be in (0, 2]; 1 is the exact posterior, 0.9-1 typical.")
    with torch.autocast(y.device.type, enabled=False):  # solves and divisions in the variances' precision
        dtype = var_mu.dtype
        return _fusion(y.to(dtype), mu.to(dtype), var_mu, var_n.to(dtype), gamma, exportable)


def _fusion(y: torch.Tensor, mu: torch.Tensor, var_mu: torch.Tensor, var_n: torch.Tensor,
            gamma: float, exportable: bool = False) -> torch.Tensor:
    if var_mu.ndim == 4:
        return (var_mu * y + gamma * var_n * mu) / (var_mu + gamma * var_n)
    c = y.shape[1]
    eye = torch.eye(c, device=y.device, dtype=var_mu.dtype) * 1e-6
    inv = spd_inverse if exportable else torch.linalg.inv
    p_mu = inv(_pixels_last(var_mu) + eye)
    p_n = inv(gamma * _pixels_last(var_n) + eye)
    rhs = p_mu @ _vec(mu) + p_n @ _vec(y)
    x = inv(p_mu + p_n) @ rhs if exportable else torch.linalg.solve(p_mu + p_n, rhs)
    return x.squeeze(-1).permute(0, 3, 1, 2)


def constrained_nll(y: torch.Tensor, mu: torch.Tensor, var_mu: torch.Tensor,
                    var_n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The D-BSN objective per pixel: ``r^T S_y^-1 r + log|S_n| + tr(S_n^-1 S_mu)``, r = y - mu, S_y = S_mu + S_n.

    ``log|S_n| + tr(S_n^-1 S_mu)`` upper-bounds ``log|S_y|``, so the model prefers explaining variance as
    noise rather than as its own uncertainty. Returns (mean loss, max Mahalanobis term) for the guard.
    """
    r = y.float() - mu.float()
    if var_mu.ndim == 4:
        var_n = var_n.clamp_min(1e-12)
        maha = r.square() / (var_mu + var_n)
        loss = maha + torch.log(var_n) + var_mu / var_n
        return loss.sum(dim=1).mean(), maha.max()
    c = y.shape[1]
    eye = torch.eye(c, device=y.device, dtype=var_mu.dtype) * 1e-6
    s_mu, s_n = _pixels_last(var_mu), _pixels_last(var_n) + eye
    rv = _vec(r)
    maha = (rv.transpose(-1, -2) @ torch.linalg.solve(s_mu + s_n, rv)).squeeze(-1).squeeze(-1)
    trace = torch.linalg.solve(s_n, s_mu).diagonal(dim1=-2, dim2=-1).sum(-1)
    loss = maha + torch.logdet(s_n) + trace
    return loss.mean(), maha.max()


def marginal_nll(y: torch.Tensor, mu: torch.Tensor, var_mu: torch.Tensor,
                 var_n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain negative log-likelihood of y ~ N(mu, var_mu + var_n) per pixel and channel (the reference's
    "MAPLoss", its final fine-tuning objective): ``r²/(σ_μ² + σ_n²) + log(σ_μ² + σ_n²)``. With σ_n² given, its
    minimiser is σ_μ² = E r² − σ_n², mu's own squared error, which is what the fusion needs (the constrained
    likelihood's is about half of it). Per-channel variances only. Returns (mean loss, max Mahalanobis term)."""
    r = y.float() - mu.float()
    var_y = (var_mu + var_n).clamp_min(1e-12)
    maha = r.square() / var_y
    return (maha + torch.log(var_y)).sum(dim=1).mean(), maha.max()


def dbsn_parameters(model: DBSN) -> dict[str, list[nn.Parameter]]:
    """Parameter groups of the three training phases' networks."""
    sigma = list(model.sigma_mu.parameters()) + list(model.sigma_n.parameters())
    ids = {id(p) for p in sigma}
    return {"mu": [p for p in model.parameters() if id(p) not in ids], "sigma": sigma}
