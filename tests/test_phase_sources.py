"""Every phase source behind one interface: shape, range, dtype, seeding, spectra, physics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from scripts.core import physics
from scripts.core.complex import wrap_phase
from scripts.phase.sources import PHASE_SOURCES, PhaseSource, get_phase_source

N = 32
PI32 = np.float32(np.pi)  # the interval (-pi, pi] in float32
PROCEDURAL = ["zero", "uniform", "gaussian", "smooth", "sinusoidal", "physics"]
RANDOM = ["uniform", "gaussian", "smooth", "sinusoidal", "physics"]


def _head(n: int = N, sinus: bool = True) -> np.ndarray:
    """An elliptical head with smooth texture and (optionally) a dark air pocket (a sinus)."""
    y, x = np.mgrid[:n, :n] / (n - 1) * 2 - 1
    mag = ((y / 0.8) ** 2 + (x / 0.65) ** 2 < 1) * (0.7 + 0.3 * np.cos(3 * x) * np.cos(2 * y))
    if sinus:
        mag[((y + 0.4) / 0.15) ** 2 + (x / 0.18) ** 2 < 1] = 0.0
    return (mag * 1000.0).astype(np.float32)  # scanner units: sources must not assume a scale


@pytest.fixture(scope="module")
def magnitude() -> np.ndarray:
    return np.stack([_head()] * 3)


def _low_frequency_fraction(phase: np.ndarray, radius: float) -> float:
    """Share of the power of exp(i phi) within ``radius`` cycles/FOV of k-space centre."""
    power = np.abs(np.fft.fftshift(np.fft.fft2(np.exp(1j * phase)))) ** 2
    h, w = phase.shape
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - h // 2, xx - w // 2)
    return float(power[r <= radius].sum() / power.sum())


def _gradient_magnitude(phase: np.ndarray) -> np.ndarray:
    z = np.exp(1j * phase)
    g = np.zeros(phase.shape)
    g[:-1] += np.angle(z[1:] * np.conj(z[:-1])) ** 2
    g[:, :-1] += np.angle(z[:, 1:] * np.conj(z[:, :-1])) ** 2
    return np.sqrt(g)


def test_registry_lists_every_source():
    assert set(PROCEDURAL + ["ground_truth", "diffusion", "gan"]) <= set(PHASE_SOURCES)
    with pytest.raises(ValueError, match="known"):
        get_phase_source("no_such_source")


@pytest.mark.parametrize("name", PROCEDURAL)
def test_shape_range_dtype_and_seeding(name, magnitude):
    source = get_phase_source(name)
    assert isinstance(source, PhaseSource)
    a = source(magnitude, seed=0)
    assert a.shape == magnitude.shape and a.dtype == np.float32
    assert np.all(np.isfinite(a)) and a.min() > -PI32 and a.max() <= PI32
    np.testing.assert_array_equal(a, source(magnitude, seed=0))
    if name in RANDOM:
        assert not np.allclose(a, source(magnitude, seed=1))
        assert not np.allclose(a[0], a[1]), "slices of a stack must get independent draws"


def test_ground_truth_is_the_reference_phase(magnitude):
    ref = magnitude * np.exp(1j * np.linspace(-4, 4, N))[None, None]
    phase = get_phase_source("ground_truth")(magnitude, 0, ref)
    np.testing.assert_allclose(np.exp(1j * phase), np.exp(1j * np.angle(ref)), atol=1e-5)
    with pytest.raises(ValueError):
        get_phase_source("ground_truth")(magnitude, 0)


def test_wrap_phase_interval():
    w = wrap_phase(np.array([-np.pi, np.pi, 3 * np.pi, -7.0, 0.0, -np.pi + 1e-9, np.pi - 1e-9]), np.float32)
    assert w.dtype == np.float32 and w.min() > -PI32 and w.max() <= PI32
    np.testing.assert_array_equal(w[[0, 1, 2, 5, 6]], PI32)


@pytest.mark.parametrize("name", ["smooth", "sinusoidal"])
def test_spectrum_is_low_frequency(name):
    """>90% of the power of exp(i phi) lies within 6 cycles/FOV (11% of k-space at 32x32).

    For ``sinusoidal`` the magnitude is constant here, so the carrier (the sinusoids plus the
    0.05 rad noise) is what is measured; the magnitude modulation is checked separately.
    """
    phase = get_phase_source(name)(np.ones((8, N, N), np.float32), seed=3)
    fractions = [_low_frequency_fraction(p, 6) for p in phase]
    assert min(fractions) > 0.9, fractions
    white = get_phase_source("uniform")(np.ones((1, N, N)), seed=3)[0]
    assert _low_frequency_fraction(white, 6) < 0.2


def test_sinusoidal_is_the_carrier_times_the_normalised_magnitude():
    source = get_phase_source("sinusoidal", noise_std=0.0)
    head = _head()
    carrier = source(np.ones((1, N, N)), seed=5)[0]  # m_norm = 1: the bare carrier
    modulated = source(head[None], seed=5)[0]
    m = np.clip(head / np.percentile(head, 99.5), 0, 1)
    np.testing.assert_allclose(np.exp(1j * modulated), np.exp(1j * carrier * m), atol=1e-5)
    assert np.all(modulated[head == 0] == 0), "no signal, no sinusoidal phase"


def test_smooth_span_matches_documented_range():
    phase = get_phase_source("smooth", field_std=(0.0, 0.0))(np.ones((4, 64, 64)), seed=0)
    for p in phase:  # unwrap the smooth polynomial along both axes; span <= 8 rad
        u = np.unwrap(np.unwrap(p, axis=0), axis=1)
        assert 0.5 < np.ptp(u) < 8.5


def test_physics_reuses_scripts_physics(monkeypatch):
    calls = []
    original = physics.field_from_susceptibility

    def spy(*args, **kwargs):
        calls.append(args[0].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(physics, "field_from_susceptibility", spy)
    get_phase_source("physics")(_head()[None], seed=0)
    assert calls and len(calls[0]) == 3, "the dipole field must come from scripts.core.physics, on a 3-D head"


def test_physics_phase_varies_most_at_air_tissue_boundaries():
    """Mean |wrapped phase gradient| within 3 px of a tissue/air boundary vs > 6 px inside.

    B0 part alone at a short echo (no wraps, no RF phase), and the full default source;
    64x64 so that the head has an interior.
    """
    head = _head(64)
    tissue = physics.segment_head(head)["tissue"]
    depth = ndi.distance_transform_edt(tissue)
    near, far = tissue & (depth <= 3), tissue & (depth > 6)
    assert near.sum() > 50 and far.sum() > 50
    b0_only = get_phase_source("physics", rf=False, te_ms=(3.0, 3.0))(np.stack([head] * 6), seed=0)
    for p in b0_only:
        g = _gradient_magnitude(p)
        assert g[near].mean() > 2 * g[far].mean()
    full = get_phase_source("physics")(np.stack([head] * 6), seed=1)
    g = np.mean([_gradient_magnitude(p) for p in full], axis=0)
    assert g[near].mean() > 1.5 * g[far].mean()


# ------------------------------------------------------------------ learned sources
def _check_learned(source, magnitude, random: bool = True):
    a = source(magnitude, seed=0)
    assert a.shape == magnitude.shape and a.dtype == np.float32
    assert np.all(np.isfinite(a)) and a.min() > -PI32 and a.max() <= PI32
    np.testing.assert_array_equal(a, source(magnitude, seed=0))
    if random:
        assert not np.allclose(a, source(magnitude, seed=1))


def test_gan_source_from_checkpoint(tmp_path, magnitude):
    from scripts.phase.gan import Pix2PixGenerator, pix2pix_depth

    net = Pix2PixGenerator(depth=pix2pix_depth(N), ngf=8)
    torch.save(net.state_dict(), tmp_path / "generator.pt")
    torch.save({"generator": net.state_dict(), "trainer": {"iteration": 3}}, tmp_path / "checkpoint.pt")
    source = get_phase_source("gan", checkpoint=str(tmp_path / "generator.pt"), batch_size=2, device="cpu")
    _check_learned(source, magnitude)
    # under bf16 autocast (CUDA's default; CPU autocast here) only the network is bf16: the angle is float32
    mixed = get_phase_source("gan", checkpoint=str(tmp_path / "generator.pt"), batch_size=2, device="cpu", amp=True)
    a, b = source(magnitude, seed=0), mixed(magnitude, seed=0)
    assert b.dtype == np.float32 and float(np.abs(np.angle(np.exp(1j * (a - b)))).mean()) < 0.05
    # the full training checkpoint loads too; without dropout the output is a point estimate
    point = get_phase_source("gan", checkpoint=str(tmp_path / "checkpoint.pt"), dropout=False, device="cpu")
    np.testing.assert_array_equal(point(magnitude, 0), point(magnitude, 1))
    with torch.no_grad():
        x = torch.from_numpy(magnitude[:1] / np.percentile(magnitude[0], 99.5))[:, None].float()
        expected = torch.atan2(*net.eval()(x)[0].flip(0)).numpy()
    np.testing.assert_allclose(np.exp(1j * point(magnitude[:1], 0)[0]), np.exp(1j * expected), atol=1e-4)


def test_diffusion_source_from_checkpoint(tmp_path, magnitude):
    from monai.networks.nets import DiffusionModelUNet
    from monai.networks.schedulers import DDIMScheduler

    net = DiffusionModelUNet(spatial_dims=2, in_channels=3, out_channels=2, channels=[8, 8],
                             attention_levels=[False, False], num_res_blocks=1, norm_num_groups=4)
    torch.save({"model": net.state_dict()}, tmp_path / "model.pt")
    source = get_phase_source("diffusion", checkpoint=str(tmp_path / "model.pt"), network=net,
                              scheduler=DDIMScheduler(num_train_timesteps=100), num_inference_steps=2, batch_size=2,
                              device="cpu")
    assert not source.amp  # bf16 autocast is for CUDA; the CPU numbers stay float32
    _check_learned(source, magnitude)
    # with autocast (as on a GPU; checked with CPU autocast) the phase is float32, finite and near the float32 one
    mixed = get_phase_source("diffusion", checkpoint=str(tmp_path / "model.pt"), network=net,
                             scheduler=DDIMScheduler(num_train_timesteps=100), num_inference_steps=2, batch_size=2, amp=True,
                             device="cpu")
    a, b = source(magnitude, seed=3), mixed(magnitude, seed=3)
    assert b.dtype == np.float32 and b.shape == a.shape and np.isfinite(b).all()
    assert float(np.abs(np.angle(np.exp(1j * (a - b)))).mean()) < 0.5


def test_diffusion_source_builds_the_bundle_network(tmp_path, repo_root, monkeypatch):
    """Without ``network``: configs/common.json#network_def and a named scheduler from there."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(repo_root / "configs" / "common.json"))
    torch.save(parser.get_parsed_content("network_def").state_dict(), tmp_path / "model.pt")
    monkeypatch.chdir(tmp_path)  # the config is found from the package, not the working folder
    source = get_phase_source("diffusion", checkpoint=str(tmp_path / "model.pt"), scheduler="ddim", num_inference_steps=1,
                              device="cpu")
    phase = source(_head()[None], seed=0)
    assert phase.shape == (1, N, N) and phase.dtype == np.float32


@pytest.mark.parametrize("name", ["gan", "diffusion"])
def test_learned_source_without_weights_says_so(name, tmp_path):
    with pytest.raises(FileNotFoundError, match="no weights"):
        get_phase_source(name, checkpoint=str(tmp_path / "missing.pt"))
