"""Never worse than the input: k_b chosen from the data, the risk-optimal blend with the noisy image, and the
estimated gain that every such output reports (the estimators are in :mod:`napari_atbsn.risk`).

A teacher asked for ``k_b="auto"`` is first *calibrated* on a sample of the data (evenly spaced planes,
centre crops): the noise's correlation and level are measured, every blind spot wide enough to cover the
correlation is run (one backbone pass for all), and the one whose blend has the lowest estimated risk is
kept with its weight α per channel. The calibration is deterministic, so the in-memory, lazy and chunked
paths (and a resumed job) compute the same output; it is part of a written job's identity.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from ..analysis import NoiseAnalysis, analyze_noise
from ..axes import context_note, context_unused
from ..block_blend import BLOCK, block_alpha
from ..config import BLIND_ESTIMATE, DEFAULT_KS, OutputKey
from ..errors import ImageError
from ..events import drain
from ..plane_noise import estimate_noise_levels, pooled_level, residual_floor
from ..risk import (
    BLEND_SAFETY,
    LENGTH_THRESHOLD,
    PROBE_SCALE,
    estimate_noise_level,
    estimated_gain_db,
    leak,
    noise_probe,
    noise_variance_map,
    reusing_variance_maps,
    risk,
    valid_blind_spots,
)
from ..sampling import plane_source
from .per_unit import block_models_of, per_image, plain_weights, planes_differ, sample_flat, sample_weights
from .runtime import iter_array

if TYPE_CHECKING:
    from ..risk import Noise, NoiseLevel
    from .denoiser import Denoiser

#: A D-BSN's fusion gives way to the blend of mu only when that is estimated better by this much: on heavy noise
#: both estimates carry the same bias of σ̂² (a few dB, docs/never-worse-research.md), so closer calls are noise.
FUSION_MARGIN_DB = 1.0
#: How much better a blind spot narrower than the noise correlation must be estimated than the best covering one.
NARROWER_MARGIN_DB = 0.5
SAMPLE_PLANES = 8    # planes of a stack the calibration looks at (evenly spaced)
SAMPLE_SIDE = 512    # the centre crop of each (the noise analysis' own maximum)


@dataclass(frozen=True)
class Calibration:
    """What a model's default output is for one image or volume, and its estimated quality.

    ``k_b`` is what the network computes: a teacher's blind spot; a D-BSN's None (its fusion) or
    BLIND_ESTIMATE (mu, to blend); a student's None. ``alpha[c]`` is the weight of that output in channel c's
    blend (1 − α)·y + α·f (1: no blend); ``gain_db`` the default output's estimated PSNR gain over the input
    (negative: worse, which a blend only reaches when its estimate is off; None: not measurable);
    ``raw_gain_db`` that of the unblended output.
    """

    k_b: OutputKey
    alpha: tuple[float, ...]
    gain_db: float | None
    raw_gain_db: float | None
    noise_level: dict[str, Any]
    valid_ks: tuple[int, ...]  # the blind spots whose risk could be estimated (and so ranked)
    reliable: bool  # False: the noise correlation outruns the estimate's reach, so it may flatter the output
    sample: str     # which data the estimate comes from
    candidates: tuple[tuple[Any, float], ...] = ()  # each output's estimated gain, unblended (teacher: per k_b;
    #                                                 D-BSN: None, the fusion, and "mu"; student: None)
    model_kind: str = "atbsn"
    #: the noise's measured 2-D autocorrelation (None: uncorrelated or unmeasured), kept so that later estimates
    #: on the same data (the distillation report) need not analyse the noise again
    correlation: np.ndarray | None = field(default=None, compare=False, repr=False)
    #: separate images (S) of the sample, each calibrated on its own: (S index, its α per channel, its estimated
    #: gain). Images outside the sample take the smallest α of these per channel (the input's side).
    images: tuple[tuple[int, tuple[float, ...], float | None], ...] = ()
    #: the noise model each block's σ̂² comes from (block_blend): (S index, model) per separate image of the
    #: sample, or (None, model) for all planes; empty: one weight per channel (``alpha_for``), no blocks
    block_models: tuple[tuple[int | None, NoiseLevel], ...] = field(default=(), compare=False, repr=False)
    #: c / σ̂² per channel, the share of its pixel's noise the output keeps (0 for a covering blind spot)
    leak_ratio: tuple[float, ...] = ()
    #: what ``images`` index: "S", separate images; "plane", the planes of a stack whose noise differs
    #: (per_unit.planes_differ), by their number in the stack
    unit: str = "S"

    def model_for(self, image: int | None) -> NoiseLevel | None:
        """The noise model of one separate image's blocks (None: no blocks). An image outside the sample takes the
        quietest sampled model: a lower σ̂² weighs the input more, the safe side."""
        if not self.block_models:
            return None
        own = dict(self.block_models)
        if image in own:
            return own[image]
        if None in own:
            return own[None]
        return min(own.values(), key=lambda lv: float(np.mean([np.mean(v) for v in lv.variances])))

    def alpha_for(self, image: int | None) -> tuple[float, ...]:
        """The blend weights of one separate image (its index along S; None: no S axis)."""
        if not self.images:
            return self.alpha
        own = {s: a for s, a, _ in self.images}
        if image is not None and image in own:
            return own[image]
        return tuple(float(min(col)) for col in zip(*own.values(), strict=True))

    @property
    def worst_image(self) -> tuple[int, float] | None:
        """(S index, estimated gain) of the sample's worst separate image; None without separate images."""
        scored = [(s, g) for s, _, g in self.images if g is not None]
        return min(scored, key=lambda t: t[1]) if scored else None

    def gain_of(self, k: Any) -> float | None:
        """The estimated gain of blind spot ``k`` alone (None: k is too small to rank, or was not run)."""
        return dict(self.candidates).get(k)

    @property
    def method(self) -> str:
        """What the output is: ``k_b=K, blend=global alpha=...``, a D-BSN's fusion or mu blend, a student's."""
        alphas = "/".join(f"{a:.2f}" for a in self.alpha)
        if self.gain_db is None and not any(self.alpha):
            return "the input unchanged"
        each = f", per {'image' if self.unit == 'S' else 'plane'}" if self.images else ""
        weights = f"alpha{each.removeprefix(',')}" if self.images else f"global alpha={alphas}"
        if self.block_models:
            weights = f"alpha per {BLOCK}-px block{each}"
            each = f"{each}, alpha per {BLOCK}-px block"
        if self.model_kind == "student":
            return f"student{each}"
        if self.k_b is None:
            return f"D-BSN Bayes fusion{each}"
        if self.k_b == BLIND_ESTIMATE:
            return f"D-BSN blind-spot estimate mu, blend={weights} (the fusion was estimated worse)"
        return f"k_b={self.k_b}, blend={weights}"

    def to_record(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(v, 3)

        blend = f"per {BLOCK}-px block" if self.block_models else f"per {self.unit}" if self.images else "global"
        return {"k_b": self.k_b, "output": self.method, "blend": blend,
                "leak_ratio": [round(c, 6) for c in self.leak_ratio],
                "alpha": [round(a, 6) for a in self.alpha],
                "estimated_gain_db": r(self.gain_db), "estimated_gain_db_unblended": r(self.raw_gain_db),
                "noise_level": self.noise_level, "valid_k_b": list(self.valid_ks), "reliable": self.reliable,
                "sample": self.sample, "estimated_gain_db_by_k_b": {str(k): r(g) for k, g in self.candidates},
                "images": [{self.unit: s, "alpha": [round(a, 6) for a in al], "estimated_gain_db": r(g)}
                           for s, al, g in self.images]}

    def line(self) -> str:
        """``estimated gain: +X.XX dB over the input (k_b=K, blend=...)``, what the CLI prints."""
        if self.gain_db is None:
            why = self.sample.removeprefix("no estimate: ")
            if self.model_kind == "atbsn":
                return (f"estimated gain: unknown ({why}) - the output may be worse than the input, so the default is "
                        f"the input unchanged; use --k-b {self.k_b} for the model's plain output")
            return f"estimated gain: unknown ({why}) - the output ({self.method}) may be worse than the input"
        text = f"estimated gain: {self.gain_db:+.2f} dB over the input ({self.method})"
        if self.worst_image is not None:
            s, g = self.worst_image
            text += f"; worst image: {g:+.2f} dB (S={s})" if self.unit == "S" else \
                f"; worst plane: {g:+.2f} dB (plane {s})"
        if not self.reliable:
            text += "; unreliable: the noise correlation reaches further than the estimate covers"
        return text

    @property
    def worse(self) -> bool:
        """Whether the output, or one separate image of it, is estimated worse than the input."""
        worst = self.worst_image
        return (self.gain_db is not None and self.gain_db < 0) or (worst is not None and worst[1] < 0)

    def apply(self, raw: np.ndarray, out: np.ndarray, flat: np.ndarray | None = None, image: int | None = None, *,
              at: tuple[int, int] = (0, 0), size: tuple[int, int] | None = None) -> np.ndarray:
        """The blend of ``out`` (C, h, w), the k_b output, with ``raw`` (C, h, w), the input, in data units.
        ``flat`` (C, h, w): pixels that carry no noise (filters.flat_pixels: a blank plane, a padded canvas's fill,
        a saturated plateau), returned as they are: a network fills them with content it invents. ``image``: the
        plane's index along S, whose own weights apply (:meth:`alpha_for`). With block weights (block_blend),
        ``at`` is out's offset from the output region's corner and ``size`` the region's (height, width): out
        covers whole blocks."""
        alpha = self.alpha_for(image)
        model = self.model_for(image)
        if model is not None and any(alpha):  # an image estimated worse than its input keeps the input
            a = block_alpha(out, raw, model, np.asarray(self.leak_ratio), np.asarray(alpha), flat, at, size)
            res = np.where(a == 1.0, out, raw + a * (out - raw)).astype(np.float32, copy=False)
        elif all(a == 1.0 for a in alpha):  # nothing to blend (a D-BSN's fusion): the output bit for bit
            res = out.astype(np.float32, copy=False)
        else:
            a = np.asarray(alpha, dtype=np.float32).reshape(-1, 1, 1)
            res = (raw + a * (out - raw)).astype(np.float32, copy=False)
        if flat is not None and flat.any():
            res = np.where(flat, raw, res).astype(np.float32, copy=False)
        return res


def sample_planes(data: Any, axes: str, context: int = 0, *, single_plane: bool = False) -> tuple[np.ndarray, str]:
    """Up to :data:`SAMPLE_PLANES` evenly spaced planes, centre-cropped to :data:`SAMPLE_SIDE`, as (P, C, h, w)
    float32, and a description of the sample. With ``context`` each plane's channels are followed by its
    context planes' (P, C * (2 * context + 1), h, w), what a stack-context network reads; where the data cannot
    give them (axes.context_unused) and the model is ``single_plane``, the planes alone (its 2-D mode), which the
    description says."""
    source = plane_source(data, axes)
    unused = context_unused(source.axes, source.data.shape, context) if single_plane else None
    context = 0 if unused else context
    h, w = min(source.height, SAMPLE_SIDE), min(source.width, SAMPLE_SIDE)
    y0, x0 = (source.height - h) // 2, (source.width - w) // 2
    idx = sampled_plane_numbers(source.n_planes)
    planes = np.stack([source.read_unit(int(i), y0, x0, h, w, context) for i in idx])
    whole = len(idx) == source.n_planes and (h, w) == (source.height, source.width)
    sample = "the whole image" if whole else f"{len(idx)} plane(s), centre {h}x{w}"
    return planes, sample if unused is None else f"{sample}; {context_note(unused)}"


def sampled_plane_numbers(n_planes: int) -> np.ndarray:
    """The planes :func:`sample_planes` takes: up to :data:`SAMPLE_PLANES`, evenly spaced."""
    return np.unique(np.linspace(0, n_planes - 1, min(SAMPLE_PLANES, n_planes)).round().astype(int))


def sample_groups(data: Any, axes: str) -> np.ndarray | None:
    """For each plane :func:`sample_planes` takes, its index along S (separate images, each with its own noise
    level: plane_noise.PlaneNoise); None without an S axis."""
    source = plane_source(data, axes)
    return source.separate_images(sampled_plane_numbers(source.n_planes))


def candidate_ks(model: Denoiser, window: int) -> list[int]:
    """The blind spots ``auto`` may choose from: the multi-teacher set and the model's own, as far as the window
    leaves pixels around them."""
    return sorted(k for k in {*DEFAULT_KS, model.k_b} if (k + 1) // 2 < window)


def calibrate(model: Denoiser, data: Any, axes: str, *, window: int | None = None,
              batch_size: int = 4) -> Calibration:
    """The default output of ``model`` for ``data`` (an array or LazyImage with ``axes``), decided on a sample
    of it, with its estimated gain: a teacher's k_b and blend, a D-BSN's guarded fusion, a student's image.

    Where the noise cannot be measured (planes under 64x64, a constant or saturated image, NaN pixels) the
    result is :func:`unmeasured`: the model's plain output, its gain unknown, and the reason."""
    planes, sample = sample_planes(data, axes, model.context, single_plane=model.single_plane)
    # a stack-context sample carries each plane's neighbours after its own channels: the noise, the risk and the
    # blend are the plane's own; the neighbours only go to the network (their noise is independent of it)
    own, context = planes[:, :model.in_channels], planes[:, model.in_channels:]
    try:
        groups, unit = sample_groups(data, axes), "S"
        if groups is None and len(own) > 1:  # planes of a stack: one by one where their noise differs
            groups, unit = sampled_plane_numbers(plane_source(data, axes).n_planes), "plane"
        level, corr = measure_noise(data, axes, own, groups)
        if unit == "plane" and not planes_differ(level, own.astype(np.float64)):
            level, groups = pooled_level(level), None
    except ImageError as e:
        return unmeasured(model, str(e))
    with reusing_variance_maps():
        if model.kind == "atbsn":
            cal = calibrate_teacher(model, own, level, corr, sample, window=window or model.patch,
                                    batch_size=batch_size, context=context, groups=groups)
        else:
            cal = calibrate_seeing(model, own, level, corr, sample, batch_size=batch_size, context=context,
                                   groups=groups)
    return replace(cal, unit=unit)


def run_sample(model: Denoiser, y: np.ndarray, context: np.ndarray | None, keys: list[Any], batch_size: int,
               ) -> list[np.ndarray]:
    """The outputs ``keys`` of ``model`` for the calibration's sample planes ``y`` (P, C, h, w), with their
    context planes (P, C * 2n, h, w) beside them for a stack-context model (none: its 2-D mode); float64."""
    x = y.astype(np.float32)
    if context is not None and context.shape[1]:
        x = np.concatenate([x, context.astype(np.float32, copy=False)], axis=1)
    outs = drain(iter_array(model, x, "SCYX", ks=keys, batch_size=batch_size, dtype="float32",
                            assembled=x.shape[1] != model.in_channels))
    return [o.astype(np.float64) for o in outs]


def measure_noise(data: Any, axes: str, planes: np.ndarray, groups: np.ndarray | None = None,
                  ) -> tuple[Noise, np.ndarray | None]:
    """The noise of ``data``: its level (variance against signal, per channel), measured on ``planes`` (the
    calibration's sample, :func:`sample_planes`), and its 2-D correlation (None: uncorrelated). With ``groups``
    (:func:`sample_groups`), the planes of each separate image get their own level. Raises ImageError where
    it cannot be measured (planes under 64x64, a blank, constant or saturated image, NaN pixels)."""
    noise = analyze_noise(data, axes, level=False)  # the level is measured on the calibration's own sample
    corr, differences = noise_correlation_of(noise)
    whiten = None if corr is None else noise.channel_autocorrelation_2d
    y = planes.astype(np.float64)
    if groups is None:
        return estimate_noise_level(y, corr, differences=differences, whiten=whiten), corr
    return estimate_noise_levels(y, groups, corr, differences=differences, whiten=whiten), corr


def noise_correlation(data: Any, axes: str) -> tuple[np.ndarray | None, bool]:
    """The noise's measured 2-D autocorrelation (None: uncorrelated, as risk.correlation_length decides), and
    whether it came from differences of planes of one scene."""
    return noise_correlation_of(analyze_noise(data, axes, level=False))


def noise_correlation_of(noise: NoiseAnalysis) -> tuple[np.ndarray | None, bool]:
    """:func:`noise_correlation` of an analysis already made."""
    corr = noise.autocorrelation_2d if noise.neighbour >= LENGTH_THRESHOLD else None
    return corr, noise.method == "plane differences"


def unmeasured(model: Denoiser, reason: str) -> Calibration:
    """No estimate. A teacher's default is then the input's safe side, the input itself (α = 0; ``--k-b K`` gives
    its plain output); a student's or D-BSN's is its own output (it has no other to ask for), and the line says
    that it may be worse than the input (:meth:`Calibration.line`)."""
    key = model.k_b if model.kind == "atbsn" else None
    alpha = 0.0 if model.kind == "atbsn" else 1.0
    return Calibration(key, (alpha,) * model.in_channels, None, None, {}, (), False,
                       f"no estimate: {reason.rstrip('.')}", model_kind=model.kind)


def calibrate_teacher(model: Denoiser, planes: np.ndarray, level: Noise, correlation: np.ndarray | None,
                      sample: str, *, window: int, batch_size: int = 4, context: np.ndarray | None = None,
                      groups: np.ndarray | None = None) -> Calibration:
    """Choose k_b and the blend with the input by the lowest estimated risk.

    A blind spot that covers the noise correlation keeps none of its pixel's noise (Noise2Self). A narrower
    one (k_b 0 on pixel-independent noise, 1-3 on correlated noise) keeps some, which a probe of the noise's
    covariance measures (SURE, one more pass for all of them): those are ranked too when the measured
    correlation has decayed inside its window, else (long-range correlation, where the probe would miss part
    of the leak and flatter them) only the covering ones are."""
    ks = candidate_ks(model, window)
    valid = valid_blind_spots(ks, level.correlation_length)
    reliable = bool(valid)
    covering = valid or [max(ks)]  # none covers the correlation: the widest, and the estimate flatters it
    narrower = [k for k in ks if k not in covering] if correlation is None or correlation_fits(correlation) else []
    keys = sorted({*covering, *narrower})
    y = planes.astype(np.float64)

    def run(x: np.ndarray, which: list[int]) -> dict[int, np.ndarray]:
        return dict(zip(which, run_sample(model, x, context, list(which), batch_size), strict=True))

    outputs = run(y, keys)
    if reliable:  # the best output that keeps none of its pixel's noise says how strong that noise is
        best = min(valid, key=lambda kk: float(np.mean((outputs[kk] - y) ** 2)))
        level = residual_floor(level, outputs[best], y, groups,
                               wide=outputs[max(valid)] if max(valid) != best else None)
    leaks: dict[int, Any] = {k: 0.0 for k in covering}
    if narrower:
        probe = noise_probe(outputs[max(keys)], y, level, correlation)
        probed = run(y + PROBE_SCALE * probe, narrower)
        leaks |= {k: leak(outputs[k], probed[k], probe) for k in narrower}
    alphas = {k: channel_alpha(outputs[k], y, level, leaks[k]) for k in keys}
    flat = sample_flat(y)
    weights = {k: sample_weights(outputs[k], y, level, leaks[k], alphas[k], flat) for k in keys}
    blended = {k: estimated_gain_db(outputs[k], y, level, weights[k].alpha, weights[k].leak) for k in keys}
    # separate images: each k_b is ranked by the gain of its blends image by image, the default's own
    by_image = {k: per_image(outputs[k], y, level, weights[k], groups) for k in keys}
    blended = {k: blended[k] if by_image[k][1] is None else by_image[k][1] for k in keys}
    # an output that sees some of its pixel's noise is estimated through the probe as well as σ̂², so it must win
    # by a margin: on W2S a 3 % lower σ̂² ranked k_b 0 0.4 dB above the blind k_b 1, which was 0.3 dB better
    k = max(keys, key=lambda kk: blended[kk] - (NARROWER_MARGIN_DB if kk in narrower else 0.0))
    gains = tuple((kk, estimated_gain_db(outputs[kk], y, level, 1.0, leaks[kk])) for kk in keys)
    return Calibration(k, tuple(float(a) for a in alphas[k]), blended[k], dict(gains)[k], level.to_dict(),
                       tuple(keys), reliable, sample, gains, correlation=correlation, images=by_image[k][0],
                       block_models=block_models_of(level, groups), leak_ratio=weights[k].ratio)


def calibrate_seeing(model: Denoiser, planes: np.ndarray, level: Noise, correlation: np.ndarray | None,
                     sample: str, *, batch_size: int = 4, context: np.ndarray | None = None,
                     groups: np.ndarray | None = None) -> Calibration:
    """Outputs that see the pixel they denoise (a student; a D-BSN's fusion, which weighs the pixel in): their
    risk is E(f − y)² − σ² + 2·E[f_i n_i], the last term measured by a probe of the noise's covariance
    (:func:`napari_atbsn.risk.leak`, SURE), so the same estimate answers for every method.

    A D-BSN's default is its fusion unless the blend of its one-pixel blind-spot estimate mu with the input is
    estimated clearly better (by :data:`FUSION_MARGIN_DB`: a collapsed or over-confident noise model) or the
    fusion is estimated worse than the input and the blend is not.
    The estimate is reliable when the noise correlation fits the window it was measured in."""
    keys: list[Any] = [None, BLIND_ESTIMATE] if model.kind == "dbsn" else [None]
    y = planes.astype(np.float64)

    def run(x: np.ndarray) -> list[np.ndarray]:
        return run_sample(model, x, context, keys, batch_size)

    outs = run(y)
    probe = noise_probe(outs[0], y, level, correlation)
    probed = run(y + PROBE_SCALE * probe)
    leaks = [leak(f, fp, probe) for f, fp in zip(outs, probed, strict=True)]
    reliable = correlation is None or correlation_fits(correlation)
    ones = tuple(1.0 for _ in range(y.shape[1]))
    flat = sample_flat(y)
    models = block_models_of(level, groups)
    gain = estimated_gain_db(outs[0], y, level, 1.0, leaks[0])
    own = plain_weights(outs[0], y, level, leaks[0], flat)
    kept = estimated_gain_db(outs[0], y, level, own.alpha, own.leak)  # flat pixels come back as they are
    candidates: tuple[tuple[Any, float], ...] = ((None, gain),)
    if model.kind == "dbsn":
        candidates += ((BLIND_ESTIMATE, estimated_gain_db(outs[1], y, level, 1.0, leaks[1])),)
        alpha = channel_alpha(outs[1], y, level, leaks[1])
        full = np.broadcast_to(alpha.reshape(1, -1, 1, 1), y.shape)
        mu = sample_weights(outs[1], y, level, leaks[1], alpha, flat)
        blend_gain = estimated_gain_db(outs[1], y, level, mu.alpha, mu.leak)
        # a fusion worse than the input gives way to the blend whenever that is better: at worst α = 0, the input
        if blend_gain > max(kept + FUSION_MARGIN_DB, 0.0) or (kept < 0 and blend_gain > kept) or \
                fusion_loses_at_the_upper_noise(outs, y, level, leaks, full):
            images, g = per_image(outs[1], y, level, mu, groups)
            return Calibration(BLIND_ESTIMATE, tuple(float(a) for a in alpha), blend_gain if g is None else g, gain,
                               level.to_dict(), (1,), reliable, sample, candidates, model_kind=model.kind,
                               correlation=correlation, images=images, block_models=models, leak_ratio=mu.ratio)
    images, g = per_image(outs[0], y, level, own, groups)
    return Calibration(None, ones, kept if g is None else g, gain, level.to_dict(), (), reliable, sample, candidates,
                       model_kind=model.kind, correlation=correlation, images=images, leak_ratio=own.ratio)


def fusion_loses_at_the_upper_noise(outs: list[np.ndarray], y: np.ndarray, level: Noise, leaks: list[Any],
                                    full: np.ndarray) -> bool:
    """Whether the blend of mu beats the fusion when the noise is as strong as mu's Noise2Self residual says.

    The fusion keeps part of its pixel's noise and mu's blend (almost) none, so their ranking hangs on σ²: a σ̂²
    that reads low (9 % on W2S's heavy noise) under-charges the fusion and ranked it +1.8 dB above mu where it was
    5.1 dB below. mu is blind, so E(mu − y)² = E(mu − x)² + σ² bounds σ² from above, tightly where the noise is
    heavy; the fusion is kept only if it also wins at that bound (the leak, a covariance-scaled probe, scales
    with it)."""
    resid = float(np.mean((outs[1] - y) ** 2))
    scale = resid / max(float(np.mean(noise_variance_map(outs[1], y, level))), 1e-12)
    if scale <= 1.0:
        return False
    upper = level.scaled(scale)
    return risk(outs[1], y, upper, full, scale * leaks[1]) < risk(outs[0], y, upper, 1.0, scale * leaks[0])


def correlation_fits(correlation: np.ndarray) -> bool:
    """Whether the measured 2-D noise autocorrelation has decayed inside its window (its border below
    :data:`~napari_atbsn.risk.LENGTH_THRESHOLD`): the probe then has the noise's whole covariance."""
    c = np.abs(np.asarray(correlation, dtype=np.float64))
    border = np.concatenate([c[0], c[-1], c[:, 0], c[:, -1]])
    return bool(border.max() < LENGTH_THRESHOLD)


def channel_alpha(f: np.ndarray, y: np.ndarray, level: Noise, leak: np.ndarray | float = 0.0) -> np.ndarray:
    """One weight per channel for all planes: (σ̂² − c) / E (f − y)² pooled over the sample (c the noise f keeps
    of its pixel, 0 for a blind spot), clipped to [0, 1] (the global weight of
    :func:`napari_atbsn.risk.blend_weights`, with its safety factor)."""
    return alpha_of_means(noise_variance_map(f, y, level).mean(axis=(0, 2, 3)), ((f - y) ** 2).mean(axis=(0, 2, 3)),
                          np.ravel(np.broadcast_to(leak, (1, f.shape[1], 1, 1))))


def alpha_of_means(var: np.ndarray, d2: np.ndarray, leak: np.ndarray) -> np.ndarray:
    """The blend weight per channel from per-channel means of σ̂², (f − y)² and the leak c:
    (BLEND_SAFETY·σ̂² − c) / E (f − y)², clipped to [0, 1]."""
    return np.clip((BLEND_SAFETY * var - leak) / np.maximum(d2, 1e-12), 0.0, 1.0)


__all__ = ["Calibration", "calibrate", "calibrate_seeing", "calibrate_teacher", "candidate_ks", "channel_alpha",
           "correlation_fits", "measure_noise", "noise_correlation", "sample_planes", "unmeasured"]
