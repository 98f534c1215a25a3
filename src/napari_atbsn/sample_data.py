"""A generated microscopy-like sample with spatially correlated noise, offline.

The clean volume holds nuclei-like blobs and thin filaments that change
smoothly along Z. The noisy stack is what a camera would give: Poisson shot
noise plus Gaussian read noise, spatially correlated by a small blur of the
noise field (like demosaicing or detector cross-talk), on a camera offset,
stored as uint16. Neighbouring noise values correlate at about 0.67 (like the
PolyU camera noise), the regime where pixel-wise blind spots (Noise2Void) learn
the identity.
"""

from __future__ import annotations

from typing import Any

import numpy as np

OFFSET = 100.0  # camera baseline, in counts


def _blur(a: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Separable 'same' filtering of the last two axes with zero padding."""
    r = len(kernel) // 2
    pad = [(0, 0)] * (a.ndim - 2)
    p = np.pad(a, [*pad, (r, r), (0, 0)])
    a = sum(kernel[i] * p[..., i:i + a.shape[-2], :] for i in range(len(kernel)))
    p = np.pad(a, [*pad, (0, 0), (r, r)])
    return sum(kernel[i] * p[..., :, i:i + a.shape[-1]] for i in range(len(kernel)))


def make_clean(planes: int = 8, size: int = 256, seed: int = 0, brightness: float = 0.2) -> np.ndarray:
    """Clean (Z, Y, X) float32 volume in photons.

    ``brightness`` scales the photon counts: at the default 0.2 the background
    is 2 photons and objects reach about 40, a low-light acquisition whose
    noisy PSNR is about 24 dB.
    """
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(np.arange(planes), np.arange(size), np.arange(size), indexing="ij")
    vol = np.full((planes, size, size), 10.0)
    for _ in range(int(size * size / 900)):  # nuclei: anisotropic Gaussian blobs with texture
        cz, cy, cx = rng.uniform(-2, planes + 1), rng.uniform(0, size), rng.uniform(0, size)
        ry, rx, rz = rng.uniform(5, 14), rng.uniform(5, 14), rng.uniform(2, 5)
        amp = rng.uniform(40, 160)
        d = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 + ((z - cz) / rz) ** 2
        vol += amp * np.exp(-0.5 * d**2)  # flat-topped profile: sharp-ish edges
    for _ in range(max(2, size // 40)):  # filaments: smooth random walks, 1-2 px wide
        py, px = rng.uniform(0, size, 2)
        ang = rng.uniform(0, 2 * np.pi)
        amp, zc = rng.uniform(30, 90), rng.uniform(0, planes)
        for _step in range(size * 2):
            ang += rng.normal(0, 0.08)
            py, px = py + np.sin(ang), px + np.cos(ang)
            iy, ix = int(py) % size, int(px) % size
            vol[:, iy, ix] += amp * np.exp(-0.5 * ((np.arange(planes) - zc) / 3.0) ** 2)
    vol = _blur(vol, np.array([0.25, 0.5, 0.25]))  # optical blur
    return (brightness * vol).astype(np.float32)


def add_correlated_noise(clean: np.ndarray, *, read_noise: float = 2.0, correlation_sigma: float = 0.8,
                         seed: int = 1) -> np.ndarray:
    """Poisson-Gaussian noise, blurred to be spatially correlated, on an offset; returns uint16."""
    rng = np.random.default_rng(seed)
    shot = rng.poisson(np.clip(clean, 0, None)).astype(np.float64) - clean
    noise = shot + rng.normal(0, read_noise, clean.shape)
    r = max(1, int(3 * correlation_sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / correlation_sigma) ** 2)
    k /= np.sqrt((k**2).sum())  # keep the noise variance while correlating it
    noise = _blur(noise, k)
    noisy = clean + OFFSET + noise
    return np.clip(np.rint(noisy), 0, 65535).astype(np.uint16)


def add_poisson_gaussian_noise(clean: np.ndarray, *, read_noise: float = 2.0, seed: int = 1) -> np.ndarray:
    """Pixel-independent Poisson-Gaussian noise (variance = signal + read_noise**2), float32, no offset.

    The regime of confocal/widefield microscopy where D-BSN's one-pixel blind
    spot and noise model apply (method.md §5).
    """
    rng = np.random.default_rng(seed)
    shot = rng.poisson(np.clip(clean, 0, None)).astype(np.float64)
    return (shot + rng.normal(0, read_noise, clean.shape)).astype(np.float32)


def make_sample(planes: int = 8, size: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(noisy uint16 (Z, Y, X), clean float32 (Z, Y, X))``, clean on the same offset as noisy."""
    clean = make_clean(planes, size, seed)
    noisy = add_correlated_noise(clean, seed=seed + 1)
    return noisy, clean + np.float32(OFFSET)


def neighbour_correlation(noise: np.ndarray) -> float:
    """Correlation of horizontally adjacent values of a noise field."""
    a, b = noise[..., :, :-1].ravel(), noise[..., :, 1:].ravel()
    return float(np.corrcoef(a, b)[0, 1])


def napari_sample() -> list[tuple[Any, dict[str, Any], str]]:
    """npe2 sample-data contribution: the noisy stack and its clean reference as layers."""
    noisy, clean = make_sample()
    return [(clean, {"name": "atbsn_sample_clean", "colormap": "gray", "visible": False}, "image"),
            (noisy, {"name": "atbsn_sample_noisy", "colormap": "gray"}, "image")]
