"""D-BSN: blindness, Bayes fusion, noise-level estimation, training phases, unpaired distillation, analysis."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from napari_atbsn.config import NOISE_MAP, DBSNConfig, UnpairedConfig
from napari_atbsn.errors import ATBSNError, BlindSpotError, ConfigError, ModelFolderError
from napari_atbsn.inference.denoiser import load_model
from napari_atbsn.metrics import psnr
from napari_atbsn.modelio import read_config
from napari_atbsn.models import DBSN, bayes_fusion
from napari_atbsn.models.dbsn import constrained_nll
from napari_atbsn.sample_data import add_poisson_gaussian_noise
from napari_atbsn.training import distill_dbsn, iter_train_dbsn, train_dbsn

READ_NOISE = 2.0


def _smooth_photons(seed: int, planes: int) -> np.ndarray:
    """Smooth random fields of 5..100 photons: content a small network learns quickly, so the test is about
    the noise model rather than about how sharp the blind-spot estimate is."""
    from napari_atbsn.analysis import _gaussian_blur

    field = _gaussian_blur(np.random.default_rng(seed).normal(size=(planes, 128, 128)), 6.0)
    return (5 + 95 * (field - field.min()) / (field.max() - field.min())).astype(np.float32)


@pytest.fixture(scope="module")
def pg_data() -> dict[str, np.ndarray]:
    """Pixel-independent Poisson-Gaussian noise of known parameters, and clean images of other, similar fields."""
    clean = _smooth_photons(0, 8)
    return {"clean": clean, "noisy": add_poisson_gaussian_noise(clean, read_noise=READ_NOISE, seed=3),
            "other_clean": _smooth_photons(1, 8)}


@pytest.fixture(scope="module")
def dbsn_model(tmp_path_factory: pytest.TempPathFactory, pg_data) -> Path:
    out = tmp_path_factory.mktemp("dbsn") / "model"
    train_dbsn(pg_data["noisy"], "ZYX", DBSNConfig(preset="tiny", iters=600, patch=32, batch=8, lr=2e-3,
                                                   phases=(0.4, 0.3, 0.3), device="cpu"), out)
    return out


@pytest.mark.parametrize("noise_model", ["gaussian", "poisson-gaussian", "multivariate-gaussian"])
def test_the_centre_pixel_is_blind_and_its_neighbours_are_not(noise_model: str) -> None:
    torch.manual_seed(0)
    net = DBSN(2, "tiny", noise_model=noise_model)
    with torch.no_grad():  # the mask must hold whatever the weights become
        net.branch1.blind.weight.normal_(0, 0.5)
        net.branch2.blind.weight.normal_(0, 0.5)
    x = torch.randn(1, 2, 41, 41, requires_grad=True)
    mu, var_mu, _ = net(x)
    (g,) = torch.autograd.grad(mu[0, :, 20, 20].sum() + var_mu[0, ..., 20, 20].sum(), x)
    assert torch.all(g[0, :, 20, 20] == 0)
    for dy, dx in ((0, 1), (1, 0), (1, 1), (-1, 0), (0, -2), (2, 2)):
        assert g[0, :, 20 + dy, 20 + dx].abs().sum() > 0, (dy, dx)


def test_paper_backbone_has_the_reference_parameter_count() -> None:
    from napari_atbsn.models.dbsn import dbsn_parameters

    assert sum(p.numel() for p in dbsn_parameters(DBSN(1, "paper"))["mu"]) == 6_612_289


def test_fusion_equals_the_closed_form() -> None:
    g = torch.Generator().manual_seed(0)
    y, mu = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    vm, vn = torch.rand(2, 3, 4, 5, generator=g) + 0.1, torch.rand(2, 3, 4, 5, generator=g) + 0.1
    for gamma in (1.0, 0.9):
        expected = (vm * y + gamma * vn * mu) / (vm + gamma * vn)
        torch.testing.assert_close(bayes_fusion(y, mu, vm, vn, gamma), expected)
    assert torch.allclose(bayes_fusion(y, mu, vm * 0 + 1e-9, vn), mu, atol=1e-6)  # certain prior: mu
    assert torch.allclose(bayes_fusion(y, mu, vm, vn * 0 + 1e-9), y, atol=1e-6)  # noiseless pixel: y


def test_matrix_fusion_equals_the_posterior_mean() -> None:
    rng = np.random.default_rng(1)
    b, c, h, w = 1, 3, 2, 2
    y, mu = rng.normal(size=(b, c, h, w)), rng.normal(size=(b, c, h, w))
    a1, a2 = rng.normal(size=(b, c, c, h, w)), rng.normal(size=(b, c, c, h, w))
    sm = np.einsum("bikyx,bjkyx->bijyx", a1, a1) + 0.5 * np.eye(c)[None, :, :, None, None]
    sn = np.einsum("bikyx,bjkyx->bijyx", a2, a2) + 0.5 * np.eye(c)[None, :, :, None, None]
    out = bayes_fusion(*(torch.tensor(v, dtype=torch.float64) for v in (y, mu, sm, sn)), gamma=0.9).numpy()
    for i in range(h):
        for j in range(w):
            pm, pn = np.linalg.inv(sm[0, :, :, i, j]), np.linalg.inv(0.9 * sn[0, :, :, i, j])
            x = np.linalg.solve(pm + pn, pm @ mu[0, :, i, j] + pn @ y[0, :, i, j])
            np.testing.assert_allclose(out[0, :, i, j], x, rtol=1e-5)
    with pytest.raises(ConfigError, match="gamma"):
        bayes_fusion(torch.tensor(y), torch.tensor(mu), torch.tensor(sm), torch.tensor(sn), gamma=0)


def test_constrained_likelihood_matches_its_formula() -> None:
    y, mu = torch.tensor([[[[1.0]]]]), torch.tensor([[[[0.5]]]])
    vm, vn = torch.tensor([[[[0.2]]]]), torch.tensor([[[[0.3]]]])
    loss, maha = constrained_nll(y, mu, vm, vn)
    expected = 0.25 / 0.5 + np.log(0.3) + 0.2 / 0.3
    assert float(loss) == pytest.approx(expected, rel=1e-5) and float(maha) == pytest.approx(0.5)


def test_estimated_noise_level_is_within_10_percent_of_the_truth(dbsn_model: Path) -> None:
    """The noise map of held-out images against the known std, sqrt(photons + read_noise**2), per pixel."""
    from napari_atbsn.events import drain
    from napari_atbsn.inference.inmemory import iter_denoise_outputs

    model = load_model(dbsn_model)
    clean = _smooth_photons(7, 2)
    noisy = add_poisson_gaussian_noise(clean, read_noise=READ_NOISE, seed=8)
    _, noise = drain(iter_denoise_outputs(model, noisy, "ZYX", ks=[None, NOISE_MAP], batch_size=8, dtype="float32"))
    truth = np.sqrt(clean + READ_NOISE**2)
    ratio = noise / truth
    assert abs(float(np.median(ratio)) - 1) <= 0.10
    assert abs(float(np.mean(noise**2) / np.mean(truth**2)) - 1) <= 0.10
    # it follows the signal: brighter pixels get a larger estimate (Poisson), by roughly the right amount
    bright, dim = clean > 60, clean < 30
    assert np.median(noise[bright]) / np.median(noise[dim]) > 1.2


def test_dbsn_denoises_pixel_independent_noise(dbsn_model: Path, pg_data) -> None:
    model = load_model(dbsn_model)
    cfg = read_config(dbsn_model)
    assert cfg["kind"] == "dbsn" and cfg["method"] == "dbsn" and cfg["arch"]["noise_model"] == "poisson-gaussian"
    noisy, clean = pg_data["noisy"][:2], pg_data["clean"][:2]
    out = model.denoise(noisy, "ZYX")
    rng = float(clean.max() - clean.min())
    assert psnr(out, clean, data_range=rng) > psnr(noisy, clean, data_range=rng) + 3
    assert model.name == "dbsn"
    with pytest.raises(BlindSpotError, match="k_b"):
        model.denoise(noisy, "ZYX", k_b=3)


def test_dbsn_default_is_held_to_the_same_risk_estimate(dbsn_model: Path, pg_data) -> None:
    """The default output of a D-BSN is its Bayes fusion or, where that is estimated better, the blend of its
    μ with the input; either way with an estimated gain close to the true one (SURE: the fusion sees its pixel)."""
    from napari_atbsn.comparison import versions_for
    from napari_atbsn.events import drain
    from napari_atbsn.inference.inmemory import iter_denoise_outputs
    from napari_atbsn.inference.output_kinds import resolve_ks

    model = load_model(dbsn_model)
    noisy, clean = pg_data["noisy"][:2], pg_data["clean"][:2]
    outs = drain(iter_denoise_outputs(model, noisy, "ZYX", ks=resolve_ks(model, None), batch_size=8,
                                      dtype="float32"))
    cal = outs.calibration
    assert cal is not None and cal.k_b in (None, "mu") and cal.reliable
    assert cal.line().startswith("estimated gain: +") and "D-BSN" in cal.line()
    fused, mu = drain(iter_denoise_outputs(model, noisy, "ZYX", ks=[None, "mu"], batch_size=8))
    rng = float(clean.max() - clean.min())

    def gain(img: np.ndarray) -> float:
        return psnr(img, clean, data_range=rng) - psnr(noisy, clean, data_range=rng)

    from napari_atbsn.block_blend import block_alpha

    y = noisy.astype(np.float32)
    blended = np.stack([y[p] + block_alpha(mu[p][None], y[p][None], cal.model_for(None), np.asarray(cal.leak_ratio),
                                           np.asarray(cal.alpha))[0] * (mu[p] - y[p]) for p in range(len(y))])
    # the fusion is its own output; mu is blended with the input per 128-px block (block_blend)
    np.testing.assert_allclose(outs[0], fused if cal.k_b is None else blended, rtol=0, atol=1e-3)
    assert gain(outs[0]) >= gain(fused) - 0.3  # the choice is never a loss against the fusion
    # heavy noise (+15 dB): σ̂² reads a few % low and the estimate is pessimistic (the safe side) by a few dB
    assert 0 < cal.gain_db <= gain(outs[0]) + 1.0, (cal.gain_db, gain(outs[0]))
    (version,) = versions_for(model, data=noisy, axes="ZYX")
    assert version.label.startswith("dbsn (est. +")


def test_phases_stop_and_resume_like_an_uninterrupted_run(tmp_path: Path, pg_data) -> None:
    data = pg_data["noisy"][:2]
    # monitor=False: the quality estimates cost 15 s a run here; they touch no random state (tested below)
    cfg = DBSNConfig(preset="tiny", iters=10, patch=32, batch=2, device="cpu", phases=(0.4, 0.3, 0.3),
                     checkpoint_every=0, monitor=False)
    full = train_dbsn(data, "ZYX", cfg, tmp_path / "full")
    assert full.steps == 10 and [len(full.losses)] == [10]
    calls = {"n": 0}

    def stop_in_sigma() -> bool:
        calls["n"] += 1  # polled after every step but a phase's last: mu steps 1-3, then sigma step 1
        return calls["n"] == 4

    gen = iter_train_dbsn(data, "ZYX", cfg, tmp_path / "split", should_stop=stop_in_sigma)
    stages = []
    try:
        while True:
            ev = next(gen)
            stages.append(getattr(ev, "stage", None))
    except StopIteration as e:
        first = e.value
    assert first.stopped and stages[0] == "dbsn-mu" and "dbsn-sigma" in stages
    assert read_config(tmp_path / "split" / "checkpoint")["phase"] == "sigma"
    resumed = train_dbsn(data, "ZYX", cfg, tmp_path / "split", resume=True)
    assert resumed.steps == 10 and not resumed.stopped
    a, b = full.model.network.state_dict(), resumed.model.network.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_a_run_estimates_its_quality_in_every_phase_without_changing_what_it_learns(tmp_path: Path, pg_data) -> None:
    import dataclasses

    from napari_atbsn.events import QualityEvent, drain

    data = pg_data["noisy"][:2]
    cfg = DBSNConfig(preset="tiny", iters=12, patch=32, batch=2, device="cpu", phases=(0.5, 0.25, 0.25),
                     checkpoint_every=0)
    events: list = []
    on = drain(iter_train_dbsn(data, "ZYX", cfg), events.append)
    off = train_dbsn(data, "ZYX", dataclasses.replace(cfg, monitor=False))
    q = [e for e in events if isinstance(e, QualityEvent)]
    # half-way through each phase and at its end (mu 6 steps, sigma 3, joint 3)
    assert [(e.stage, e.step) for e in q] == [("dbsn-mu", 3), ("dbsn-mu", 6), ("dbsn-sigma", 8), ("dbsn-sigma", 9),
                                              ("dbsn-joint", 11), ("dbsn-joint", 12)]
    assert all(set(e.estimates) == ({"mu"} if e.stage == "dbsn-mu" else {"mu", "fused"}) for e in q)
    # mu is frozen while the variance heads train: its estimate does not move in the sigma phase (but for the
    # probe, whose scale is read off the fusion)
    mus = [e.estimates["mu"] for e in q[1:4]]
    assert max(mus) - min(mus) < 0.01, mus
    assert q[-1].line.startswith("estimated gain over the input at step 12: mu ")
    quality = on.model.config["quality"]
    assert quality["line"].startswith("estimated gain: ") and "default" in quality and "quality" not in off.model.config
    # estimating touches no random state: the monitored run learns exactly what the unmonitored one does
    a, b = on.model.network.state_dict(), off.model.network.state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_a_broken_run_says_it_failed_and_denoise_falls_back_to_the_safest_output(tmp_path: Path, pg_data,
                                                                                  capsys) -> None:
    """A learning rate 100x too high: mu ends far worse than the input and the run reports FAILED with a cause and
    a fix (in config.json, on the CLI, in 'atbsn info'); the default output is about the input, not mu."""
    from napari_atbsn.cli import main
    from napari_atbsn.events import drain
    from napari_atbsn.inference.inmemory import iter_denoise_outputs

    np.save(tmp_path / "noisy.npy", pg_data["noisy"])
    code = main(["train", str(tmp_path / "noisy.npy"), "--axes", "ZYX", "--method", "dbsn", "--preset", "tiny",
                 "--iters", "60", "--patch", "32", "--batch", "8", "--lr", "0.2", "--device", "cpu",
                 "--output", str(tmp_path / "broken")])
    assert code == 0
    err = capsys.readouterr().err
    assert "dbsn-joint: estimated gain over the input at step 60: mu -" in err
    assert "WARNING: D-BSN training FAILED" in err and "did not learn" in err, err[-2000:]
    quality = read_config(tmp_path / "broken")["quality"]
    assert quality["failed"] and "--lr" in quality["advice"] and "--iters" in quality["advice"]
    assert main(["info", str(tmp_path / "broken")]) == 0
    assert "warning        D-BSN training FAILED" in capsys.readouterr().out
    model = load_model(tmp_path / "broken")
    noisy, clean = pg_data["noisy"][:2], pg_data["clean"][:2]
    rng = float(clean.max() - clean.min())
    (mu,) = drain(iter_denoise_outputs(model, noisy, "ZYX", ks=["mu"], batch_size=8, dtype="float32"))
    default = model.denoise(noisy, "ZYX")
    base = psnr(noisy, clean, data_range=rng)
    assert psnr(mu, clean, data_range=rng) < base - 3  # the network really broke
    assert abs(psnr(default, clean, data_range=rng) - base) < 0.5  # the default is about the input


def test_a_blowing_up_likelihood_is_guarded() -> None:
    from napari_atbsn.training.dbsn import LossGuard

    guard = LossGuard(steps=10)
    assert guard.check(torch.tensor(1.0), torch.tensor(5.0))
    assert not guard.check(torch.tensor(1.0), torch.tensor(1e9))
    assert not guard.check(torch.tensor(float("nan")), torch.tensor(1.0))
    with pytest.raises(ATBSNError, match="blew up"):
        for _ in range(10):
            guard.check(torch.tensor(1.0), torch.tensor(float("inf")))


def test_unpaired_distillation_beats_the_dbsn_teacher(tmp_path: Path, dbsn_model: Path, pg_data) -> None:
    res = distill_dbsn(pg_data["noisy"], dbsn_model, "ZYX", clean=pg_data["other_clean"], clean_axes="ZYX",
                       config=UnpairedConfig(student="tiny", iters=1000, batch=8, lr=2e-3, device="cpu"),
                       out_dir=tmp_path / "student")
    cfg = read_config(tmp_path / "student")
    assert cfg["method"] == "dbsn-unpaired" and cfg["unpaired"]["clean"] and cfg["unpaired"]["real_per_batch"] == 1
    clean = _smooth_photons(5, 2)  # held out
    noisy = add_poisson_gaussian_noise(clean, read_noise=READ_NOISE, seed=6)
    rng = float(clean.max() - clean.min())
    teacher = psnr(load_model(dbsn_model).denoise(noisy, "ZYX"), clean, data_range=rng)
    student = psnr(res.model.denoise(noisy, "ZYX"), clean, data_range=rng)
    assert student > teacher, (student, teacher)


def test_unpaired_distillation_refuses_an_atbsn_teacher(tmp_path: Path, tiny_teacher: Path, pg_data) -> None:
    with pytest.raises(ModelFolderError, match="not a D-BSN"):
        distill_dbsn(pg_data["noisy"], tiny_teacher, "ZYX", out_dir=tmp_path / "s")


def test_bad_dbsn_settings() -> None:
    for kwargs, word in (({"noise_model": "speckle"}, "noise_model"), ({"phases": (0.5, 0.5, 0.0)}, "joint"),
                         ({"gamma": 3.0}, "gamma"), ({"preset": "huge"}, "preset")):
        with pytest.raises(ConfigError, match=word):
            DBSNConfig(**kwargs).resolved()


def test_cli_dbsn_train_distill_denoise_with_noise_map_and_analyze(tmp_path: Path, pg_data, capsys) -> None:
    import tifffile

    from napari_atbsn.cli import main
    from napari_atbsn.io.readers import open_image

    noisy, clean = tmp_path / "noisy.tif", tmp_path / "clean.tif"
    tifffile.imwrite(noisy, pg_data["noisy"][:3], metadata={"axes": "ZYX"})
    tifffile.imwrite(clean, pg_data["other_clean"][:3], metadata={"axes": "ZYX"})

    def run(*args) -> tuple[int, str]:
        code = main([str(a) for a in args])
        cap = capsys.readouterr()
        return code, cap.out + cap.err

    assert main(["analyze", str(noisy)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "recommended: dbsn"  # the line scripts read
    code, out = run("train", noisy, "-o", tmp_path / "d", "--method", "dbsn", "--preset", "tiny", "--iters", "6",
                    "--patch", "32", "--batch", "2", "--device", "cpu", "--noise-model", "gaussian")
    assert code == 0, out
    assert "dbsn-mu" in out and "dbsn-joint" in out
    code, out = run("info", tmp_path / "d")
    assert "D-BSN" in out and "gaussian" in out
    code, out = run("distill", noisy, "--teacher", tmp_path / "d", "-o", tmp_path / "s", "--clean", clean,
                    "--student", "tiny", "--iters", "3", "--batch", "4", "--device", "cpu")
    assert code == 0, out
    assert "unpaired distillation (with clean images)" in run("info", tmp_path / "s")[1]
    code, out = run("denoise", noisy, "-m", tmp_path / "d", "-o", tmp_path / "o.ome.zarr", "--save-noise-map",
                    "--dtype", "input")
    assert code == 0, out
    den, noise = open_image(tmp_path / "o.ome.zarr"), open_image(tmp_path / "o_noise.ome.zarr")
    assert den.shape == noise.shape == (3, 128, 128) and noise.dtype == np.float32
    assert float(np.asarray(noise.data).min()) > 0
    for args, word in (
        (["train", noisy, "-o", tmp_path / "x", "--method", "dbsn", "--k-a", "9"], "--k-a apply to --method atbsn"),
        (["train", noisy, "-o", tmp_path / "x", "--noise-model", "gaussian"], "apply to --method dbsn"),
        (["denoise", noisy, "-m", tmp_path / "s", "-o", tmp_path / "x.tif", "--save-noise-map"], "noise estimator"),
        (["denoise", noisy, "-m", tmp_path / "d", "-o", tmp_path / "x.tif", "--k-b", "3"], "one pixel"),
        (["distill", noisy, "--teacher", tmp_path / "d", "-o", tmp_path / "x", "--ks", "0,1"], "--ks"),
    ):
        code, out = run(*args)
        assert code == 2 and word in out, (args, out)


def test_separate_images_are_charged_their_own_noise_level(tmp_path: Path, pg_data) -> None:
    """Separate images (S) with different gains: sigma_n, a function of the signal alone, cannot tell them
    apart, so the likelihood that trains sigma_mu charges each patch its own image's measured noise; charged the
    pooled level, sigma_mu absorbed the noise it misses on the images it under-reads (W2S: fusion 5 dB below mu)."""
    from napari_atbsn.models.dbsn import marginal_nll
    from napari_atbsn.normalization import Normalization
    from napari_atbsn.sampling import PlaneSource, sample_batch
    from napari_atbsn.training.dbsn import LossGuard, noise_supervision, phase_loss, with_images

    clean = pg_data["clean"][:4]
    noisy = clean + (pg_data["noisy"][:4] - clean) * np.array([1, 1, 3, 3], np.float32)[:, None, None]
    cfg = DBSNConfig(preset="tiny", iters=6, patch=32, batch=8, device="cpu", monitor=False).resolved()
    norm = Normalization("zscore", (50.0,), (30.0,))
    torch.manual_seed(0)
    model = DBSN(1, "tiny")
    src = PlaneSource(noisy, "SYX")
    sup = noise_supervision(cfg, src, norm, model)
    assert sup.images is not None and sup.measured is not None
    assert noise_supervision(cfg, PlaneSource(noisy, "ZYX"), norm, model).images is None  # one image: pooled
    f = sup.images.factor(norm.apply(torch.full((4, 1, 2, 2), 50.0)), torch.tensor([0, 1, 2, 3]))
    ratio = float(f[2:].mean() / f[:2].mean())
    assert 7.0 < ratio < 11.0, ratio  # 9x the variance
    assert float(f[:2].mean()) < 0.5 < 1.5 < float(f[2:].mean())  # the pooled level sits between them

    batch = with_images(norm.apply(sample_batch(src, 0, seed=cfg.seed, batch=8, patch=32)), src, 0, cfg)
    x = torch.from_numpy(batch)
    images = x[:, -1, 0, 0].long()
    assert set(images.tolist()) <= {0, 1, 2, 3} and len(set(images.tolist())) > 1
    with torch.no_grad():
        own = phase_loss(model, "joint", LossGuard(6), sup.measured, sup.grid, sup.images)(x)
        pooled = phase_loss(model, "joint", LossGuard(6), sup.measured, sup.grid)(x[:, :-1])
        y = x[:, :-1]
        mu, mid = model.features(y)
        var_mu, var_n = model.var_mu(mid), model.var_n(model.noise_input(y, mu))
        expected = (marginal_nll(y, mu, var_mu, var_n * sup.images.factor(mu, images))[0]
                    - marginal_nll(y, mu, var_mu, var_n)[0])
    torch.testing.assert_close(own - pooled, expected, rtol=1e-4, atol=1e-5)

    res = train_dbsn(noisy, "SYX", dataclasses_replace(cfg, monitor=True), tmp_path / "m")  # the loop carries it
    assert res.steps == 6 and np.isfinite(res.losses).all()
    assert read_config(tmp_path / "m")["quality"]["default"]["noise_level"]["per_plane"]


def dataclasses_replace(cfg: DBSNConfig, **kw) -> DBSNConfig:
    import dataclasses

    return dataclasses.replace(cfg, **kw)


@pytest.mark.parametrize("fit", ["measured", "likelihood"])
def test_the_joint_phase_trains_the_backbone_on_the_data_term_alone(fit: str) -> None:
    """Sigma_mu reads the backbone's features detached: the backbone's gradient in the joint phase is exactly the
    gradient with Sigma_mu held constant, while Sigma_mu's head still learns (on PolyU the variance head's pull
    on the shared features cost mu 9 dB)."""
    from napari_atbsn.models.dbsn import marginal_nll
    from napari_atbsn.training.dbsn import LossGuard, phase_loss

    torch.manual_seed(0)
    model = DBSN(3, "tiny")
    x = torch.rand(2, 3, 32, 32)
    measured = (lambda s: torch.full_like(s, 1e-3)) if fit == "measured" else None
    phase_loss(model, "joint", LossGuard(10), measured)(x).backward()
    backbone = [p for n, p in model.named_parameters() if not n.startswith(("sigma_mu", "sigma_n"))]
    got = [p.grad.clone() for p in backbone]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.sigma_mu.parameters())
    model.zero_grad()
    mu, mid = model.features(x)
    var_mu = model.var_mu(mid).detach()  # Sigma_mu a constant: only the data term reaches the backbone
    var_n = model.var_n(model.noise_input(x, mu.detach()))
    if fit == "measured":
        loss = marginal_nll(x, mu, var_mu, var_n.detach())[0]
    else:
        loss = constrained_nll(x, mu, var_mu, var_n)[0]
    loss.backward()
    for g, p in zip(got, backbone, strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-8)
