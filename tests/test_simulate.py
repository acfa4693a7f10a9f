"""The embedded simulated dataset (scripts.simulate.dataset) and the phase physics it is built on (scripts.core.physics)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import scipy.ndimage as ndi
import sigpy

from conftest import python_path
from scripts.core import physics
from scripts.io.fastmri_h5 import num_slices, read_fastmri, rss
from scripts.core.physics import head_mask
from scripts.simulate.dataset import SEQUENCES, simulate_dataset, simulate_subject, split_of

SMALL = dict(num_subjects=3, slices_per_subject=2, image_size=32, num_coils=2)


def sha256s(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def h5_files(root: Path) -> list[Path]:
    return sorted(root.glob("*/*.h5"))


def coil_images(kspace: np.ndarray) -> np.ndarray:
    return sigpy.ifft(kspace, axes=(-2, -1), center=True, norm="ortho")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("sim") / "data"
    summary = simulate_dataset(out, seed=1, **SMALL)
    return out, summary


@pytest.fixture(scope="module")
def clean_dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim_clean") / "data"
    simulate_dataset(out, num_subjects=2, slices_per_subject=2, image_size=32, num_coils=3, seed=2, noise=False)
    return out


# --------------------------------------------------------------------------- physics
def test_dipole_kernel_values():
    d = physics.dipole_kernel((8, 8, 8), (0, 0, 1))
    assert d[0, 0, 0] == 0.0
    assert d[0, 0, 1] == pytest.approx(1 / 3 - 1)  # k parallel to B0
    assert d[1, 0, 0] == pytest.approx(1 / 3)  # k perpendicular to B0
    d2 = physics.dipole_kernel((8, 8), (0, 0, 1))  # 2-D: invariant along B0 -> 1/3 everywhere but DC
    assert np.allclose(d2.ravel()[1:], 1 / 3)
    d2t = physics.dipole_kernel((8, 8), (1, 0, 0))
    assert d2t[1, 0] == pytest.approx(-2 / 3) and d2t[0, 1] == pytest.approx(1 / 3)
    assert physics.dipole_kernel((8, 8, 6), (0, 1, 1), rfft=True).shape == (8, 8, 4)


def test_sphere_field_matches_analytic_dipole():
    n, radius, dchi = 64, 12.0, -9.4  # a tissue sphere in air (chi relative to air)
    x, y, z = np.mgrid[:n, :n, :n] - n / 2 + 0.5
    r = np.sqrt(x * x + y * y + z * z)
    chi = (np.clip(radius - r + 0.5, 0, 1) * dchi).astype(np.float32)
    field = physics.field_from_susceptibility(chi, (0, 0, 1), pad=2)
    inside = r < radius - 3
    assert np.ptp(field[inside]) < 0.05 * abs(dchi)  # uniform inside a sphere
    c = n // 2
    for d in (18, 24):  # along B0 outside: 2/3 dchi (R/d)^3
        assert field[c, c, c + d] == pytest.approx(2 / 3 * dchi * radius**3 / (d + 0.5) ** 3, rel=0.1)
    # 2-D input works and the background offset is removed
    f2 = physics.field_from_susceptibility(np.full((16, 16), 3.0), (1, 0, 0), background=3.0)
    assert f2.shape == (16, 16) and np.allclose(f2, 0)


def test_b0_and_chemical_shift_phase():
    assert physics.b0_phase(1.0, 0.01, 3.0) == pytest.approx(2 * np.pi * 42.577478e6 * 3.0 * 1e-6 * 0.01)
    period = 1 / (3.4e-6 * physics.GAMMA_BAR_HZ_PER_T * 3.0)
    assert np.angle(np.exp(1j * physics.chemical_shift_phase(period, 3.0))) == pytest.approx(0.0, abs=1e-9)
    assert physics.chemical_shift_phase(period / 2, 3.0) == pytest.approx(-np.pi)
    assert abs(physics.fat_signal_factor(0.0, 3.0)) == pytest.approx(1.0)
    assert abs(physics.fat_signal_factor(period / 2, 3.0)) < 1.0


def test_shim_removes_second_order_polynomials_only_inside():
    rng = np.random.default_rng(0)
    shape = (12, 14, 10)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    poly = (0.3 + x - 2 * y + 0.5 * z * z - x * y).astype(np.float32)
    mask = rng.random(shape) < 0.4
    assert np.abs(physics.shim(poly, mask, order=2)).max() < 1e-5
    assert np.abs(physics.shim(poly, mask, order=1)).max() > 0.1  # quadratic terms survive a linear shim


def test_rf_phase_is_smooth_and_in_range():
    rng = np.random.default_rng(3)
    for _ in range(5):
        phi = physics.rf_phase((64, 64), rng, constant=False)
        assert np.abs(np.diff(phi, axis=0)).max() < 0.5 and np.abs(np.diff(phi, axis=1)).max() < 0.5
        assert np.ptp(phi) < 4 * (2.5 + 1.5)
    assert physics.rf_phase((4, 8, 8), rng).shape == (4, 8, 8)


def test_local_field_slab_limit():
    dchi = np.ones((2, 3))
    normal_par = np.zeros((3, 2, 3))
    normal_par[2] = 1.0
    assert np.allclose(physics.local_field(dchi, normal_par, (0, 0, 1)), 1 / 3 - 1)
    assert np.allclose(physics.local_field(dchi, np.roll(normal_par, 1, axis=0), (0, 0, 1)), 1 / 3)
    assert np.allclose(physics.local_field(dchi, np.zeros((3, 2, 3)), (0, 0, 1)), 0.0)


def test_susceptibility_and_segmentation_helpers():
    frac = {"air": np.array([1.0, 0.0]), "fat": np.array([0.0, 0.5])}
    assert np.allclose(physics.susceptibility_map(frac), [physics.CHI_PPM["air"], 0.5 * physics.CHI_PPM["fat"]])
    with pytest.raises(KeyError):
        physics.susceptibility_map({"unobtainium": np.ones(2)})
    y, x = np.mgrid[-1:1:64j, -1:1:64j]
    mag = ((x**2 + y**2) < 0.6).astype(float)
    mag[28:36, 28:36] = 0.0
    seg = physics.segment_head(mag)
    assert seg["head"][32, 32] and seg["dark"][32, 32] and not seg["tissue"][32, 32]
    assert (seg["head"] ^ seg["air"]).all()
    slab = physics.slab_from_mask(seg["head"], 6, radius=8.0)
    assert slab.shape == (13, 64, 64) and (slab[6] == seg["head"]).all()
    assert slab[0].sum() < slab[3].sum() < slab[6].sum()
    assert (physics.slab_from_mask(seg["head"], 30)[0] == 0).all()  # beyond the default radius: nothing


# --------------------------------------------------------------------------- simulator
def test_split_of_is_disjoint_contiguous_and_covers():
    for n in (1, 2, 3, 5, 10, 17):
        splits = [split_of(i, n) for i in range(n)]
        assert splits == sorted(splits, key=("train", "val", "test").index)
        if n >= 3:
            assert set(splits) == {"train", "val", "test"}
    assert [split_of(i, 10) for i in range(10)].count("train") == 6


def test_files_shapes_dtypes_and_summary(dataset):
    out, summary = dataset
    files = h5_files(out)
    assert len(files) == 3
    on_disk = json.loads((out / "dataset.json").read_text())
    assert on_disk == summary
    assert summary["provenance"].startswith("simulated from nilearn MNI152 templates")
    assert summary["seed"] == 1 and summary["total_slices"] == 6
    assert sum(s["subjects"] for s in summary["splits"].values()) == 3
    for f in files:
        with h5py.File(f, "r") as h:
            assert h["kspace"].shape == (2, 2, 32, 32) and h["kspace"].dtype == np.complex64
            assert h["image_complex"].shape == (2, 32, 32) and h["image_complex"].dtype == np.complex64
            assert h["coil_maps"].shape == (2, 2, 32, 32) and h["coil_maps"].dtype == np.complex64
            assert h["reconstruction_rss"].dtype == np.float32
            assert h.attrs["acquisition"] in {"AXT1", "AXT2", "AXFLAIR"}
            assert h.attrs["sequence"] in SEQUENCES
            params = json.loads(h.attrs["params_json"])
            assert params["coils"]["num_coils"] == 2 and len(params["slice_z_mm"]) == 2
            assert h.attrs["split"] == f.parent.name
        assert num_slices(f) == 2
    assert read_fastmri(files[0])["kspace"].shape == (2, 2, 32, 32)  # MONAI's FastMRIReader reads it


def test_rss_matches_reconstruction(dataset):
    for f in h5_files(dataset[0]):
        with h5py.File(f, "r") as h:
            assert np.allclose(rss(h["kspace"][()]), h["reconstruction_rss"][()], rtol=1e-5, atol=1e-6)


def test_noise_free_kspace_is_exactly_maps_times_image(clean_dataset):
    for f in h5_files(clean_dataset):
        with h5py.File(f, "r") as h:
            k, x, s = h["kspace"][()], h["image_complex"][()], h["coil_maps"][()]
            assert h.attrs["image_complex_is"] == "noiseless object"
        assert np.allclose(np.sum(np.abs(s) ** 2, axis=1), 1.0, atol=1e-5)
        coils = coil_images(k)
        scale = np.abs(x).max()
        assert np.abs(coils - s * x[:, None]).max() < 1e-5 * scale
        assert np.allclose(rss(k), np.abs(x), atol=1e-5 * scale)
        assert np.percentile(np.abs(x), 99) == pytest.approx(1.0, rel=0.05)  # the documented scaling


def test_noisy_kspace_within_noise_level(dataset):
    for f in h5_files(dataset[0]):
        with h5py.File(f, "r") as h:
            k, x, s = h["kspace"][()], h["image_complex"][()], h["coil_maps"][()]
            sigma = 1.0 / float(h.attrs["snr"])
        coils = coil_images(k)
        resid = coils - s * x[:, None]  # the noise component orthogonal to the coil maps
        rms = np.sqrt(np.mean(np.abs(resid) ** 2))
        assert 0.2 * sigma < rms < 1.5 * sigma
        # image_complex is the coil combination of the noisy coil images
        assert np.allclose(np.sum(np.conj(s) * coils, axis=1), x, atol=1e-4)


def test_background_phase_is_uniform(dataset):
    phases = []
    for f in h5_files(dataset[0]):
        with h5py.File(f, "r") as h:
            for z in h["image_complex"][()]:
                outside = ~ndi.binary_dilation(head_mask(np.abs(z)), iterations=2)
                phases.append(np.angle(z[outside]))
    phi = np.concatenate(phases)
    assert phi.size > 500
    assert np.abs(np.mean(np.exp(1j * phi))) < 4 / np.sqrt(phi.size) + 0.02  # no preferred phase
    hist, _ = np.histogram(phi, bins=8, range=(-np.pi, np.pi))
    assert hist.min() > 0.6 * phi.size / 8


def test_splits_disjoint_by_subject(dataset):
    out, summary = dataset
    seen = {}
    for f in h5_files(out):
        with h5py.File(f, "r") as h:
            pid = h.attrs["patient_id"]
        assert pid not in seen, f"{f} and {seen.get(pid)} share a subject"
        seen[pid] = f
    names = [set(p.name for p in (out / s).glob("*.h5")) for s in ("train", "val", "test")]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert [len(n) for n in names] == [summary["splits"][s]["subjects"] for s in ("train", "val", "test")]


def test_same_seed_same_bytes_and_resume(dataset, tmp_path):
    out, _ = dataset
    again = tmp_path / "again"
    simulate_dataset(again, seed=1, **SMALL)
    assert sha256s(again) == sha256s(out)
    # resumable: delete one file, rerun, every byte comes back
    victim = h5_files(again)[1]
    victim.unlink()
    summary = simulate_dataset(again, seed=1, **SMALL)
    assert victim.exists() and sha256s(again) == sha256s(out)
    assert summary["total_slices"] == 6
    # a file made with other parameters is not silently kept
    with pytest.raises(FileExistsError):
        simulate_dataset(again, seed=1, **{**SMALL, "num_coils": 3})
    # worker processes write the same bytes (and resume the same way)
    workers = tmp_path / "workers"
    simulate_dataset(workers, seed=1, num_workers=2, **SMALL)
    assert sha256s(workers) == sha256s(out)


def test_different_seed_differs():
    a = simulate_subject(1, 0, 1, 32, 2)
    b = simulate_subject(2, 0, 1, 32, 2)
    c = simulate_subject(1, 1, 1, 32, 2)
    assert not np.array_equal(a["kspace"], b["kspace"])
    assert not np.array_equal(a["kspace"], c["kspace"])
    assert np.array_equal(a["kspace"], simulate_subject(1, 0, 1, 32, 2)["kspace"])


def test_subject_content_is_a_head():
    sim = simulate_subject(0, 3, 3, 64, 4, sequences=["T1_SPGR"])
    assert sim["subject"]["sequence"] == "T1_SPGR"
    for z, field in zip(sim["object"], sim["field_ppm"]):
        mag = np.abs(z)
        m = head_mask(mag)
        assert 0.15 < m.mean() < 0.85  # a head inside the field of view, not touching its border
        assert not m[0].any() and not m[-1].any() and not m[:, 0].any() and not m[:, -1].any()
        inner = ndi.binary_erosion(m, iterations=6)
        assert np.all(np.isfinite(field)) and np.percentile(np.abs(field[inner]), 90) < 2.0  # ppm, shimmed brain
    with pytest.raises(ValueError):
        simulate_subject(0, 0, 1, 32, 2, sequences=["T9"])


def test_bundle_config_runs(tmp_path, repo_root):
    out = tmp_path / "cli"
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "simulate",
        "--config_file", "configs/simulate.json",
        "--output_dir", str(out),
        "--num_subjects", "2", "--slices_per_subject", "1", "--image_size", "32", "--num_coils", "2",
    ]  # fmt: skip
    if not (repo_root / "configs" / "metadata.json").exists():
        cmd += ["--meta_file", str(repo_root / "metadata.json")]
    env = {**os.environ, "PYTHONPATH": python_path()}
    proc = subprocess.run(cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "dataset.json").read_text())
    assert summary["num_subjects"] == 2 and summary["image_size"] == 32 and summary["num_coils"] == 2
    assert len(h5_files(out)) == 2
