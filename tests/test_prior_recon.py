"""Prior-regularised reconstruction (scripts/recon/posterior.py), the two-sample test and the prior study report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from test_prior import SIZE, make_dataset, phantom

from scripts.coils.simulation import birdcage
from scripts.core.fft import fft2c


def tiny_net():
    from monai.networks.nets import DiffusionModelUNet

    torch.manual_seed(0)
    return DiffusionModelUNet(spatial_dims=2, in_channels=2, out_channels=2, channels=(8, 16),
                              attention_levels=(False, False), num_res_blocks=1, num_head_channels=8,
                              norm_num_groups=8).eval()


def problem(noise: float = 0.0, n_images: int = 2, pattern: str = "equispaced1d", scale: float = 300.0):
    """Images in scanner-like units, true birdcage maps, k-space, a mask and the noise that was added."""
    from scripts.core.masks import pattern_mask

    rng = np.random.default_rng(0)
    z = np.stack([phantom(rng) for _ in range(n_images)]) * np.float32(scale)
    maps = birdcage(4, (SIZE, SIZE), radius=1.5)[None].repeat(n_images, 0)
    noise_k = noise * scale * (rng.standard_normal((n_images, 4, SIZE, SIZE)) + 1j * rng.standard_normal((n_images, 4, SIZE, SIZE))) / np.sqrt(2)
    k = (fft2c(maps * z[:, None]) + noise_k).astype(np.complex64)
    mask = pattern_mask(pattern, (SIZE, SIZE), 4.0, 8, seed=0)
    return z, maps.astype(np.complex64), k * mask, mask, noise_k * mask


def residual(x, maps, mask, y):
    from scripts.core.sense import SenseOp

    op = SenseOp(torch.from_numpy(maps), torch.from_numpy(mask)[None])
    return (op.forward(torch.as_tensor(x)) - torch.from_numpy(y)).flatten(1).norm(dim=1).numpy()


# ---------------------------------------------------------------------------------------------
def test_masks_follow_the_published_patterns():
    from scripts.core.masks import default_calib_lines, pattern_mask

    assert default_calib_lines(256) == 30 and default_calib_lines(64) == 8 and default_calib_lines(32) == 4
    eq = pattern_mask("equispaced1d", (64, 64), 5.0)
    assert (eq == eq[:1]).all()  # whole columns (phase encoding along the last axis)
    assert eq[0, 28:36].all() and 4.5 < eq.size / eq.sum() < 5.5
    po = pattern_mask("poisson", (64, 64), 8.0)
    assert po[28:36, 28:36].all() and 7.0 < po.size / po.sum() < 9.0
    np.testing.assert_array_equal(po, pattern_mask("poisson", (64, 64), 8.0))  # seeded
    with pytest.raises(ValueError):
        pattern_mask("radial", (64, 64))


def test_scale_estimate_is_close_to_the_true_percentile():
    from scripts.core.sense import SenseOp, estimate_scale

    z, maps, y, mask, _ = problem(noise=0.01)
    s = estimate_scale(torch.from_numpy(y), SenseOp(torch.from_numpy(maps), torch.from_numpy(mask)[None]))
    true = np.percentile(np.abs(z), 99.5, axis=(1, 2))
    np.testing.assert_allclose(s.numpy(), true, rtol=0.25)


@pytest.mark.parametrize("noise", [0.0, 0.02])
def test_reconstruction_enforces_data_consistency(noise):
    """Even with an untrained prior, a strong final DC solve makes the sampled k-space of the output
    match the measurement: to 1 % noiseless, to the noise level with noise."""
    from scripts.recon.prior import build_scheduler
    from scripts.recon.posterior import PriorPosteriorSampler

    z, maps, y, mask, n = problem(noise=noise)
    smp = PriorPosteriorSampler(tiny_net(), build_scheduler("ddim", image_size=SIZE), num_steps=3, dc_weight=1.0,
                                final_dc_weight=1e4, final_cg_iters=60)
    x = smp(y, mask, maps)["image"].numpy()
    assert x.shape == z.shape and np.iscomplexobj(x) and np.all(np.isfinite(x))
    res, norm_y = residual(x, maps, mask, y), np.linalg.norm(y.reshape(len(y), -1), axis=1)
    if noise == 0:
        assert np.all(res / norm_y < 0.01), res / norm_y
    else:
        noise_level = np.linalg.norm(n.reshape(len(n), -1), axis=1)
        assert np.all(res <= 1.05 * noise_level), (res, noise_level)


def test_averaging_posterior_samples_reduces_their_spread():
    """``num_samples`` averages posterior samples: two seeds then disagree less, and the result is still
    reproducible for a seed."""
    from scripts.recon.prior import build_scheduler
    from scripts.recon.posterior import PriorPosteriorSampler

    _, maps, y, mask, _ = problem(noise=0.02, n_images=1)
    net, sched = tiny_net(), build_scheduler("ddim", image_size=SIZE)

    def recon(n: int, seed: int) -> np.ndarray:
        smp = PriorPosteriorSampler(net, sched, num_steps=3, dc_weight=1.0, num_samples=n, seed=seed)
        return smp(y, mask, maps)["image"].numpy()

    spread_1 = np.linalg.norm(recon(1, 0) - recon(1, 1))
    spread_4 = np.linalg.norm(recon(4, 0) - recon(4, 1))
    assert spread_4 < 0.75 * spread_1, (spread_4, spread_1)
    np.testing.assert_array_equal(recon(4, 0), recon(4, 0))
    with pytest.raises(ValueError, match="num_samples"):
        PriorPosteriorSampler(net, sched, num_samples=0)


class OracleEps(torch.nn.Module):
    """A 'perfect' prior: the epsilon (or RFlow velocity) that points exactly at a known image."""

    def __init__(self, x0: torch.Tensor, scheduler, rflow: bool) -> None:
        super().__init__()
        self.x0, self.scheduler, self.rflow = x0, scheduler, rflow
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, timesteps):
        if self.rflow:
            a = (1 - timesteps.float() / 1000)[:, None, None, None]
            return self.x0 - (x - a * self.x0) / (1 - a).clamp_min(1e-6)
        a = self.scheduler.alphas_cumprod[timesteps.long()][:, None, None, None]
        return (x - a.sqrt() * self.x0) / (1 - a).sqrt()


@pytest.mark.parametrize("sampler", ["ddim", "rflow"])
def test_oracle_prior_recovers_the_image(sampler):
    """The sampling/DC arithmetic is right: with an oracle denoiser the posterior sampler returns the
    true image (up to the scale estimate, which the oracle is told) far better than zero-filling."""
    from scripts.core.complex import complex_to_channels
    from scripts.recon.prior import build_scheduler
    from scripts.core.metrics import slice_metrics
    from scripts.core.sense import SenseOp, estimate_scale, zero_filled
    from scripts.recon.posterior import PriorPosteriorSampler

    z, maps, y, mask, _ = problem(noise=0.0, pattern="poisson")
    op = SenseOp(torch.from_numpy(maps), torch.from_numpy(mask)[None])
    s = estimate_scale(torch.from_numpy(y), op)
    sched = build_scheduler(sampler, image_size=SIZE, clip=None)
    net = OracleEps(complex_to_channels(torch.from_numpy(z) / s[:, None, None], dim=1), sched, sampler == "rflow")
    zf = zero_filled(torch.from_numpy(y), op).numpy()
    for start in (1.0, 0.5):  # from pure noise, and warm-started from the CG-SENSE image
        x = PriorPosteriorSampler(net, sched, num_steps=5, dc_weight=1.0, clip=None,
                                  start_fraction=start)(y, mask, maps)["image"].numpy()
        for r, zz, f in zip(x, z, zf):
            assert slice_metrics(zz, r)["psnr"] > 45
            assert slice_metrics(zz, f)["psnr"] < 35


def test_l1_wavelet_and_lambda_tuning_run():
    from scripts.core.metrics import slice_metrics
    from scripts.recon.cases import make_case
    from scripts.recon.l1 import l1_wavelet_recon, tune_l1_lambda

    _, maps, y, mask, _ = problem(noise=0.01, n_images=1)
    z, _, _, _, _ = problem(noise=0.01, n_images=1)
    full = fft2c(maps[0] * z[0][None])
    case = make_case(full, mask, 8)
    assert case.maps.shape == (4, SIZE, SIZE)
    tuned = tune_l1_lambda([case], [1e-3, 1e-2], max_iter=20)
    assert tuned["lambda"] in (1e-3, 1e-2) and len(tuned["scores"]) == 2 and all(np.isfinite(tuned["scores"]))
    x = l1_wavelet_recon(case.kspace / case.scale, mask, case.maps, tuned["lambda"], max_iter=20) * case.scale
    assert x.shape == (SIZE, SIZE) and slice_metrics(case.reference, x)["psnr"] > 15


def write_fake_prior(folder: Path, prior_data: str = "augmented") -> Path:
    from scripts.recon.prior import write_prior_card

    net = tiny_net()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), folder / "model.pt")
    write_prior_card(folder, {"prior_data": prior_data, "image_size": SIZE, "scheduler_type": "ddpm", "clip": 2.0,
                              "num_train_timesteps": 1000,
                              "network": {"spatial_dims": 2, "in_channels": 2, "out_channels": 2, "channels": [8, 16],
                                          "attention_levels": [False, False], "num_res_blocks": 1,
                                          "num_head_channels": 8, "norm_num_groups": 8}})
    return folder / "model.pt"


def test_reconstruct_entry_point_writes_outputs(tmp_path):
    from scripts.configs import ROOT, run_bundle

    data = make_dataset(tmp_path / "data", splits=(("test", 1),), slices=2, noise=0.01)
    prior = write_fake_prior(tmp_path / "prior")
    out = tmp_path / "out"
    run_bundle("configs/reconstruct.json", run_id="reconstruct", cwd=ROOT, kspace=str(data / "test" / "vol0.h5"), prior=str(prior),
               mask="poisson", acceleration=4.0, calib_lines=8, num_steps=2, output_dir=str(out), l1_lambda=0.01,
               l1_max_iter=10)
    metrics = json.loads((out / "vol0_poisson_metrics.json").read_text())
    assert set(metrics["mean"]) == {"prior", "zero_filled", "l1_wavelet"}
    assert 3.0 < metrics["acceleration"] < 5.0 and metrics["calib_lines"] == 8
    assert (out / "vol0_poisson.h5").is_file() and (out / "vol0_poisson_slice001.png").is_file()
    import h5py

    with h5py.File(out / "vol0_poisson.h5") as f:
        assert f["reconstruction"].shape == (2, SIZE, SIZE) and f["reconstruction"].dtype == np.complex64


def test_measured_fastmri_file_keeps_its_own_mask(tmp_path):
    """Prospectively undersampled fastMRI-style input (stored 1-D mask, 2x readout oversampling, larger than
    the prior): the stored mask is used (cropped with the k-space), and the output is the prior's size."""
    import h5py

    from scripts.core.masks import pattern_mask
    from scripts.recon.cases import read_kspace
    from scripts.recon.posterior import reconstruct_file

    rng = np.random.default_rng(1)
    h, w = 4 * SIZE, 2 * SIZE  # readout 2x oversampled, then twice the prior's resolution
    z = np.zeros((h, w), np.complex64)
    z[h // 4 : 3 * h // 4] = phantom(rng, w)  # the object fills the central half of the readout FOV
    maps = birdcage(4, (h, w), radius=1.5)
    cols = pattern_mask("equispaced1d", (w, w), 4.0, 16, seed=0)[0]
    k = (fft2c(maps * z[None]) * cols).astype(np.complex64)
    path = tmp_path / "measured.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("kspace", data=k[None])
        f.create_dataset("mask", data=cols.astype(bool))
    kc, info = read_kspace(path, SIZE, remove_oversampling=True)
    assert kc.shape == (1, 4, SIZE, SIZE) and info["original_size"] == [h, w] and info["mask"].shape == (SIZE, SIZE)
    np.testing.assert_array_equal(info["mask"][0], cols[SIZE // 2 : SIZE // 2 + SIZE])
    unsampled = info["mask"][0] == 0
    assert np.abs(kc[..., unsampled]).max() < 1e-4 * np.abs(kc).max()  # the readout crop keeps the zeros
    out = reconstruct_file(str(path), str(write_fake_prior(tmp_path / "prior")), str(tmp_path / "out"), num_steps=2,
                           num_samples=1, remove_oversampling=True)
    assert out["mask"] == "measured" and "mean" not in out
    with h5py.File(tmp_path / "out" / "measured_measured.h5") as f:
        assert f["reconstruction"].shape == (1, SIZE, SIZE)
        np.testing.assert_array_equal(f["mask"][()], info["mask"])
    with h5py.File(path, "a") as f:
        del f["mask"]
        f["mask"] = cols[:-1]
    with pytest.raises(ValueError, match="does not fit"):
        read_kspace(path, SIZE)
    with h5py.File(path, "a") as f:  # a 2-D mask varies along the readout: dropping oversampling is not exact
        del f["mask"]
        f["mask"] = pattern_mask("poisson", (h, w), 4.0, 16, seed=0).astype(bool)
    with pytest.raises(ValueError, match="not constant along the readout"):
        read_kspace(path, SIZE, remove_oversampling=True)


def test_real_slices_are_resampled_to_the_prior_size(real_dir):
    from scripts.core.masks import pattern_mask
    from scripts.recon.cases import make_case, read_kspace

    k, info = read_kspace(real_dir / "brain_4coil" / "4h_GE.mat", 64)
    assert k.shape == (1, 4, 64, 64) and info["original_size"] == [256, 256]
    case = make_case(k[0], pattern_mask("equispaced1d", (64, 64)), 8)
    assert np.abs(case.reference).max() > 0 and np.isfinite(case.maps).all()


def test_two_sample_auroc_separates_and_is_seeded():
    from scripts.phase.two_sample import classifier_two_sample_test

    rng = np.random.default_rng(0)
    real = [phantom(rng) for _ in range(16)]
    magnitude_only = [np.abs(phantom(rng)).astype(np.complex64) for _ in range(16)]
    a = classifier_two_sample_test(real, magnitude_only, seed=1, epochs=3)
    assert a["auroc"] > 0.9 and a["n_real"] == 16
    assert classifier_two_sample_test(real, magnitude_only, seed=1, epochs=3) == a


def test_prior_study_report_at_tiny_scale(tmp_path):
    """The whole study (phase model, synthesis, three priors, realism, recon, report) on tiny data."""
    from scripts.studies.prior_study import PriorStudy

    splits = (("train", 2), ("val", 1), ("test", 1))
    paired = make_dataset(tmp_path / "paired", splits=splits, noise=0.01, seed=3)
    archive = make_dataset(tmp_path / "archive", splits=splits, noise=0.01, seed=4)
    held_out = make_dataset(tmp_path / "held_out", splits=(("test", 3),), noise=0.01, seed=5)  # replaces archive/test
    study = PriorStudy(output_dir=str(tmp_path / "report"), work_dir=str(tmp_path / "work"), image_size=SIZE,
                       paired_dir=str(paired), archive_dir=str(archive), test_dir=str(held_out), calib_lines=8,
                       phase_iterations=1,
                       phase_sampling_steps=2, augment_samples=1, prior_iterations=1, batch_size=4,
                       unet={"unet_channels": [8, 16], "unet_attention_levels": [False, False], "unet_num_head_channels": 8},
                       recon={"num_steps": 2}, dc_weight_grid=[1.0], l1_lambda_grid=[1e-3, 1e-2], l1_max_iter=5,
                       max_val_slices=2, max_test_slices=3, realism_samples=4, realism_steps=2, two_sample_epochs=1,
                       real_dir=None, n_boot=50,
                       patterns={"equispaced1d": {"acceleration": 4.0}, "poisson": {"acceleration": 4.0}})
    result = study.run()
    out = tmp_path / "report"
    for name in ("report.md", "summary.csv", "per_slice.csv", "realism.csv", "comparisons.csv", "lambda.json",
                 "provenance.json", "prior_samples.png"):
        assert (out / name).is_file(), name
    assert list(out.glob("recon_poisson_*.png")) and list(out.glob("recon_equispaced1d_*.png"))
    methods = {r["method"] for r in result["summary"]}
    assert methods == {"zero_filled", "l1_wavelet", "prior_complex", "prior_augmented", "prior_magnitude"}
    assert all(r["psnr_ci_low"] <= r["psnr_slice_mean"] <= r["psnr_ci_high"] for r in result["summary"])
    assert {(r["slices"], r["volumes"]) for r in result["summary"]} == {(3, 3)}  # one slice from each held-out file
    assert json.loads((out / "provenance.json").read_text())["data"]["test"]["source"] == "given folder (user data)"
    assert {r["n_reference"] for r in result["realism"] if "held-out test set" in r["compared_with"]} == {6}
    lam = json.loads((out / "lambda.json").read_text())
    assert lam["poisson"]["lambda"] in (1e-3, 1e-2) and lam["poisson"]["dc_weight"]["augmented"]["dc_weight"] == 1.0
    text = (out / "report.md").read_text()
    assert "PSNR" in text and "lambda" in text and "given folder" in text and "published ordering" in text
    assert "Smoke run" in text
    assert {(c["a"], c["b"]) for c in result["comparisons"]} >= {("prior_augmented", "l1_wavelet")}
    assert {r["generator"] for r in result["realism"]} == {"prior_complex", "prior_augmented", "prior_magnitude",
                                                           "phase_model_augmented_data"}


def test_real_test_set_leaves_phantoms_out(tmp_path):
    """Files named as phantoms (``*Ph*``) are not brains: neither study may test on them."""
    import scipy.io

    from scripts.studies.prior_study import PriorStudy

    rng = np.random.default_rng(0)
    folder = tmp_path / "brain_4coil"
    folder.mkdir()
    for name in ("4h_GE", "4h_Ph"):
        coil_images = birdcage(4, (SIZE, SIZE), radius=1.5).transpose(1, 2, 0) * phantom(rng)[..., None]
        scipy.io.savemat(folder / f"{name}.mat", {"DATA": coil_images.astype(np.complex128)})
    study = PriorStudy(output_dir=str(tmp_path / "out"), work_dir=str(tmp_path / "work"), image_size=SIZE,
                       real_dir=str(tmp_path), real_glob="brain_4coil/*.mat")
    cases = study._real_cases(np.ones((SIZE, SIZE), np.float32), 8)
    assert [c.volume for c in cases] == ["4h_GE"]


def test_published_ordering_is_judged_on_paired_differences(tmp_path):
    """``compare`` bootstraps per-slice differences over SUBJECTS: a consistent 1 dB lead is a win, noise is
    'no clear difference', and many slices of too few subjects give no verdict at all."""
    from scripts.core.metrics import MIN_VERDICT_VOLUMES
    from scripts.studies.prior_study import PriorStudy

    rng = np.random.default_rng(0)
    rows = []
    for v in range(6):
        subject = 3 * rng.standard_normal()  # subjects and slices differ a lot; the paired differences do not
        for j in range(4):
            base = 20 + subject + rng.standard_normal()
            for method, psnr in (("prior_augmented", base + 1.0 + 0.1 * rng.standard_normal()), ("l1_wavelet", base),
                                 ("prior_magnitude", base + rng.standard_normal()), ("prior_complex", base + 2.0)):
                rows.append({"test_set": "simulated", "pattern": "poisson", "volume": f"v{v}", "slice": j,
                             "method": method, "psnr": psnr})
    study = PriorStudy(output_dir=str(tmp_path), work_dir=str(tmp_path), n_boot=500)
    verdicts = {(c["a"], c["b"]): c for c in study.compare(rows)}
    win = verdicts[("prior_augmented", "l1_wavelet")]
    assert win["verdict"] == "prior_augmented > l1_wavelet" and abs(win["difference"] - 1.0) < 0.1
    assert win["subjects_a_ahead"] == 6
    assert verdicts[("prior_augmented", "prior_complex")]["verdict"] == "prior_augmented < prior_complex"
    assert verdicts[("l1_wavelet", "prior_magnitude")]["verdict"] == "no clear difference"
    assert all(c["n_slices"] == 24 and c["n_subjects"] == 6 for c in verdicts.values())
    few = [r for r in rows if r["volume"] in ("v0", "v1")]  # 8 slices, but 2 subjects
    assert MIN_VERDICT_VOLUMES > 2
    assert all(c["verdict"] == "too few subjects to judge (n=2)" for c in study.compare(few))
    summary = study.summarize([{**r, "acceleration": 8.0, "ssim": 0.5, "nmse": 0.1} for r in rows])
    assert {(r["slices"], r["volumes"]) for r in summary} == {(24, 6)}
