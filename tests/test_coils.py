"""Coil simulation: FFT conventions, the forward model's maths, noise statistics, map sources, the ESPIRiT bank."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import sigpy
import sigpy.mri
import torch
from monai.data.fft_utils import ifftn_centered

from scripts.coils import simulation as coils
from scripts.core.fft import fft2c, from_real_imag_last, ifft2c, to_real_imag_last
from scripts.coils.simulation import (
    BirdcageMaps,
    DrawCoilMapsd,
    EspiritMapBank,
    SimulateCoilsd,
    birdcage,
    build_espirit_bank,
    compress_maps,
    espirit_maps,
    load_bank,
    normalize_maps,
    resample_maps,
    simulate_coils,
)
from scripts.io.fastmri_h5 import write_fastmri

RNG = np.random.default_rng(0)


def crandn(*shape) -> np.ndarray:
    return (RNG.standard_normal(shape) + 1j * RNG.standard_normal(shape)).astype(np.complex64)


def rss(x: np.ndarray, axis: int = -3) -> np.ndarray:
    return np.sqrt(np.sum(np.abs(x) ** 2, axis=axis))


@pytest.mark.parametrize("shape", [(3, 32, 32), (2, 30, 34), (2, 31, 32), (1, 6, 10)])
def test_fft2c_is_sigpys_centred_orthonormal_fft(shape):
    x = crandn(*shape)
    np.testing.assert_allclose(fft2c(x), sigpy.fft(x, axes=(-2, -1), center=True, norm="ortho"), atol=2e-5)
    np.testing.assert_allclose(ifft2c(x), sigpy.ifft(x, axes=(-2, -1), center=True, norm="ortho"), atol=2e-5)
    assert fft2c(x).dtype == np.complex64 and isinstance(fft2c(torch.from_numpy(x)), torch.Tensor)


def test_real_imag_last_layout_matches_monai():
    k = crandn(4, 16, 16)
    t = to_real_imag_last(k)
    assert t.shape == (4, 16, 16, 2) and t.dtype == torch.float32
    np.testing.assert_array_equal(from_real_imag_last(t).numpy(), k)
    # MONAI's centred inverse FFT on the real/imag-last layout gives our coil images
    images = torch.view_as_complex(ifftn_centered(t, spatial_dims=2, is_complex=True).contiguous())
    np.testing.assert_allclose(images.numpy(), ifft2c(k), atol=2e-5)


def test_birdcage_matches_sigpy_and_is_normalised():
    np.testing.assert_allclose(birdcage(8, (32, 32), 1.5), sigpy.mri.birdcage_maps((8, 32, 32), r=1.5), atol=1e-5)
    maps = birdcage(6, (24, 40), 1.3, rotation=0.7, offset=(0.1, -0.05))
    np.testing.assert_allclose(rss(maps), 1.0, atol=1e-5)
    a, _ = BirdcageMaps().draw(np.random.default_rng(1), 4, (32, 32))
    b, _ = BirdcageMaps().draw(np.random.default_rng(2), 4, (32, 32))
    assert a.shape == (4, 32, 32) and not np.allclose(a, b)


def test_adjoint_recovers_the_image_with_normalised_maps():
    image = crandn(3, 32, 32)
    maps, _ = BirdcageMaps().draw(np.random.default_rng(0), 8, (32, 32), count=3)  # (S, C, H, W)
    k = simulate_coils(image, maps)
    assert k.shape == (3, 8, 32, 32) and k.dtype == np.complex64
    y = ifft2c(k)
    np.testing.assert_allclose(np.sum(maps.conj() * y, axis=1), image, atol=1e-4)  # sum_c conj(S_c) y_c = x
    np.testing.assert_allclose(rss(y), np.abs(image), atol=1e-4)                    # RSS = |x|
    shared = simulate_coils(image[0], maps[0])                                          # (H, W) with (C, H, W)
    np.testing.assert_allclose(shared, k[0], atol=1e-5)


def test_noise_has_the_requested_coil_covariance():
    c, n = 4, 64
    a = crandn(c, c)
    cov = (a @ a.conj().T / c + 0.5 * np.eye(c)).astype(np.complex128)  # correlated, Hermitian PD
    gen = torch.Generator().manual_seed(0)
    k = simulate_coils(np.zeros((8, n, n), np.complex64), normalize_maps(crandn(c, n, n)), noise_cov=cov, generator=gen)
    samples = np.moveaxis(k, 1, 0).reshape(c, -1)  # (coils, 32768 samples)
    emp = samples @ samples.conj().T / samples.shape[1]
    assert np.abs(emp - cov).max() < 0.03 * np.abs(cov).max()
    pseudo = samples @ samples.T / samples.shape[1]  # circular noise: E[n n^T] = 0
    assert np.abs(pseudo).max() < 0.03 * np.abs(cov).max()
    # scalar std: independent coils of variance std^2; white over k-space
    k = simulate_coils(np.zeros((8, n, n), np.complex64), normalize_maps(crandn(c, n, n)), noise_std=0.3,
                       generator=torch.Generator().manual_seed(1))
    emp = np.cov(np.moveaxis(k, 1, 0).reshape(c, -1), bias=True)
    np.testing.assert_allclose(emp, 0.09 * np.eye(c), atol=0.004)
    assert abs(np.mean(np.abs(k[..., :8, :8]) ** 2) - np.mean(np.abs(k[..., 28:36, 28:36]) ** 2)) < 0.01


def test_semidefinite_covariance_and_bad_covariances():
    v = np.array([[1.0], [1.0j]])
    factor = coils.noise_factor(2, noise_cov=v @ v.conj().T)  # rank 1: no Cholesky, eigen square root
    np.testing.assert_allclose((factor @ factor.conj().T).numpy(), v @ v.conj().T, atol=1e-6)
    with pytest.raises(ValueError, match="Hermitian"):
        coils.noise_factor(2, noise_cov=[[1, 1], [0, 1]])
    with pytest.raises(ValueError, match="semi-definite"):
        coils.noise_factor(2, noise_cov=[[1, 0], [0, -1]])
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        coils.noise_factor(3, noise_cov=np.eye(2))


def test_dictionary_transforms_compose_and_reproduce():
    from monai.transforms import Compose

    image = (crandn(2, 32, 32) * 1000).astype(np.complex64)  # scanner units: noise follows the image scale
    pipeline = Compose([DrawCoilMapsd("image", source=BirdcageMaps(), num_coils=4),
                        SimulateCoilsd("image", noise_std=0.05, real_imag_last=True)])
    pipeline.set_random_state(3)
    out = pipeline({"image": image})
    assert out["maps"].shape == (2, 4, 32, 32) and len(out["maps_spec"]) == 2
    assert out["kspace"].shape == (2, 4, 32, 32, 2) and out["kspace"].dtype == torch.float32
    pipeline.set_random_state(3)
    again = pipeline({"image": image})
    torch.testing.assert_close(out["kspace"], again["kspace"])
    # relative noise: residual after the noise-free model has std 0.05 * p99.5(|x|) per coil
    clean = simulate_coils(image, out["maps"])
    residual = from_real_imag_last(out["kspace"]).numpy() - clean
    ref = np.percentile(np.abs(image), 99.5)
    assert abs(np.std(residual) / (0.05 * ref) - 1) < 0.05


def test_resample_is_smooth_and_normalised():
    coarse = birdcage(8, (32, 32), 1.6, rotation=0.3)
    fine = resample_maps(coarse, (48, 64))
    assert fine.shape == (8, 48, 64)
    np.testing.assert_allclose(rss(fine), 1.0, atol=1e-5)
    direct = birdcage(8, (48, 64), 1.6, rotation=0.3)
    assert np.linalg.norm(fine - direct) / np.linalg.norm(direct) < 0.03


def test_coil_compression_keeps_the_dominant_subspace():
    maps = birdcage(8, (32, 32), 1.5)
    small = compress_maps(maps, 4)
    assert small.shape == (4, 32, 32)
    np.testing.assert_allclose(rss(small), 1.0, atol=1e-5)
    with pytest.raises(ValueError):
        compress_maps(maps, 9)


def _espirit_residual(kspace: np.ndarray, maps: np.ndarray) -> float:
    """Relative part of the coil images (inside the object) that the maps do not explain: ||y - S S^H y|| / ||y||."""
    images = ifft2c(kspace)
    residual = images - maps * np.sum(maps.conj() * images, axis=0)
    inside = rss(images, 0) > 0.1 * rss(images, 0).max()
    return float(np.linalg.norm(residual[:, inside]) / np.linalg.norm(images[:, inside]))


def test_espirit_maps_explain_real_4coil_data(real_dir):
    data = scipy.io.loadmat(real_dir / "brain_4coil" / "4h_GE.mat")["DATA"]  # (256, 256, 4) coil images
    kspace = fft2c(np.moveaxis(data, -1, 0).astype(np.complex64))
    maps = espirit_maps(kspace, size=64)
    assert maps.shape == (4, 64, 64) and maps.dtype == np.complex64
    np.testing.assert_allclose(rss(maps), 1.0, atol=1e-4)  # normalised everywhere (extended outside the head)
    low = coils._crop_center(kspace, (64, 64))  # the same low-resolution data
    assert _espirit_residual(low, maps) < 0.05


def _reference_file(path, num_coils, size=32, slices=2, rotation=0.0):
    phantom = sigpy.shepp_logan((size, size)).astype(np.complex64)
    maps = birdcage(num_coils, (size, size), 1.4, rotation=rotation)
    kspace = np.stack([fft2c(maps * phantom * (1 + 0.1 * s)) for s in range(slices)])
    write_fastmri(path, kspace)
    return maps


def test_espirit_bank_is_cached_hashed_and_drawn(tmp_path, monkeypatch):
    ref = tmp_path / "ref"
    true8 = _reference_file(ref / "a.h5", 8)
    _reference_file(ref / "b.h5", 4, rotation=1.0)
    bank = tmp_path / "bank.npz"
    kw = dict(size=32, slices_per_file=1, calib_width=16, kernel_width=5, max_iter=20)
    build_espirit_bank(ref, bank, **kw)
    maps, entries, meta = load_bank(bank)
    assert sorted(maps) == [4, 8] and maps[8].shape == (1, 8, 32, 32) and len(entries[4]) == 1
    assert "a.h5" not in "".join(entries[4] + entries[8])  # entries are anonymous ids
    # ESPIRiT recovers the simulated maps up to one phase per pixel: |S^H S_true| ~ 1 inside the phantom
    inside = np.abs(sigpy.shepp_logan((32, 32))) > 0.1
    overlap = np.abs(np.sum(maps[8][0].conj() * true8, axis=0))
    assert np.median(overlap[inside]) > 0.98

    calls = []
    monkeypatch.setattr(coils, "espirit_maps", lambda *a, **k: calls.append(1) or espirit_maps(*a, **k))
    build_espirit_bank(ref, bank, **kw)
    assert not calls, "an up-to-date bank must be reused, not rebuilt"
    _reference_file(ref / "b.h5", 4, rotation=2.0)  # new reference content -> stale bank -> rebuilt
    build_espirit_bank(ref, bank, **kw)
    assert calls and load_bank(bank)[2]["hash"] != meta["hash"]
    assert not list(tmp_path.glob(".bank.npz.*")), "no temporary file left behind"

    rng = np.random.default_rng(0)
    match = EspiritMapBank(bank, coil_mismatch="match")
    drawn, specs = match.draw(rng, 4, (40, 40), count=6)
    assert drawn.shape == (6, 4, 40, 40) and {s["bank_coils"] for s in specs} == {4}
    np.testing.assert_allclose(rss(drawn, 1), 1.0, atol=1e-4)
    compress = EspiritMapBank(bank, coil_mismatch="compress")
    _, specs = compress.draw(rng, 4, (40, 40), count=32)
    assert {s["bank_coils"] for s in specs} == {4, 8}
    with pytest.raises(ValueError, match=r"\[4, 8\] coils; 16 requested"):
        compress.draw(rng, 16, (40, 40))
    with pytest.raises(ValueError, match="exactly"):
        match.draw(rng, 6, (40, 40))
    with pytest.raises(FileNotFoundError):
        EspiritMapBank(tmp_path / "missing.npz").build()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (CI has none); the CPU path is pinned elsewhere")
def test_simulate_coils_on_cuda_gives_the_cpu_numbers():
    rng = np.random.default_rng(0)
    image = (rng.standard_normal((2, 32, 32)) + 1j * rng.standard_normal((2, 32, 32))).astype(np.complex64)
    maps = coils.birdcage(4, (32, 32))
    cpu = coils.simulate_coils(torch.from_numpy(image), maps, noise_std=0.1, generator=torch.Generator().manual_seed(3))
    gpu = coils.simulate_coils(torch.from_numpy(image).cuda(), maps, noise_std=0.1, generator=torch.Generator().manual_seed(3))
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-5, atol=1e-5)
