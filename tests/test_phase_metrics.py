"""Phase-realism metrics on arrays whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from scripts.core.physics import head_mask
from scripts.phase.metrics import (
    phase_coherence,
    phase_gradient_distance,
    pooled_phase_gradients,
    radial_power_spectrum,
    spectrum_distance,
    wrapped_phase_gradients,
)


def disc(n: int = 64, radius: float = 0.7) -> np.ndarray:
    y, x = np.mgrid[-1 : 1 : n * 1j, -1 : 1 : n * 1j]
    return (x**2 + y**2 < radius**2).astype(np.float64)


def test_coherence_identical_and_constant_offset():
    rng = np.random.default_rng(0)
    mag = rng.uniform(0.5, 1.0, (32, 32))
    phase = rng.uniform(-np.pi, np.pi, (32, 32))
    z = mag * np.exp(1j * phase)
    assert phase_coherence(z, z) == pytest.approx(1.0)
    assert phase_coherence(z * np.exp(1j * 2.0), z) == pytest.approx(1.0)  # a global offset is not an error
    assert phase_coherence(mag * np.exp(1j * (phase + 4 * np.pi)), z) == pytest.approx(1.0)  # wrapping


def test_coherence_independent_uniform_is_near_zero():
    rng = np.random.default_rng(1)
    z = np.exp(1j * rng.uniform(-np.pi, np.pi, (256, 256)))
    z_hat = np.exp(1j * rng.uniform(-np.pi, np.pi, (256, 256)))
    assert phase_coherence(z_hat, z) < 0.02  # about 1/sqrt(N) = 0.004


def test_coherence_weights_default_to_magnitude():
    z = np.array([1.0, 1e-9], dtype=complex)
    z_hat = np.array([1.0, -1.0], dtype=complex)  # wrong only where |z| is negligible
    assert phase_coherence(z_hat, z) == pytest.approx(1.0, abs=1e-6)
    assert phase_coherence(z_hat, z, weight=np.ones(2)) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError):
        phase_coherence(z, np.zeros(2, complex))


@pytest.mark.parametrize("slope", [0.1, -0.7, 2.5, 3.0])
def test_linear_ramp_gradient_equals_slope_with_wrapping(slope):
    n = 40
    yy, xx = np.mgrid[:n, :n]
    # phase grows by many multiples of 2 pi across the image: wrapped differences still give the slope
    z = np.exp(1j * (slope * xx + 0.25 * yy))
    g = wrapped_phase_gradients(z)
    g_axis0, g_axis1 = g[: (n - 1) * n], g[(n - 1) * n :]
    assert np.allclose(g_axis0, 0.25)
    assert np.allclose(g_axis1, slope)


def test_gradient_wraps_beyond_pi():
    z = np.exp(1j * 4.0 * np.arange(10))[None, :].repeat(3, axis=0)
    g = wrapped_phase_gradients(z)[2 * 10 :]  # the axis-1 differences
    assert np.allclose(g, 4.0 - 2 * np.pi)  # 4 rad is the same as 4 - 2 pi
    assert np.all(np.abs(wrapped_phase_gradients(z)) <= np.pi + 1e-12)


def test_gradient_mask_needs_both_pixels():
    z = np.exp(1j * 0.3 * np.arange(16)).reshape(4, 4)
    mask = np.zeros((4, 4), bool)
    mask[1, 1] = mask[1, 2] = True  # one horizontal pair, no vertical pair
    g = wrapped_phase_gradients(z, mask)
    assert g.shape == (1,) and g[0] == pytest.approx(0.3)


def test_head_mask_finds_a_noisy_disc_and_fills_holes():
    rng = np.random.default_rng(2)
    obj = disc(96)
    obj[40:56, 40:56] = 0.0  # a dark hole (ventricle / sinus) inside the head
    noisy = obj + 0.02 * np.abs(rng.normal(size=obj.shape) + 1j * rng.normal(size=obj.shape))
    m = head_mask(noisy)
    truth = disc(96) > 0
    assert (m == truth).mean() > 0.99
    assert m[48, 48]  # hole filled
    assert not head_mask(np.zeros((8, 8))).any()


def test_phase_gradient_distance_orders_smooth_vs_random():
    rng = np.random.default_rng(3)
    n = 64
    yy, xx = np.mgrid[:n, :n] / n
    mag = disc(n)
    masks = [mag > 0]
    real = [mag * np.exp(1j * (3 * xx**2 + 2 * yy))]
    similar = [mag * np.exp(1j * (2.8 * xx**2 + 2.1 * yy + 0.5))]
    uniform = [mag * np.exp(1j * rng.uniform(-np.pi, np.pi, (n, n)))]
    d_similar = phase_gradient_distance(real, similar, masks, masks)
    d_uniform = phase_gradient_distance(real, uniform, masks, masks)
    assert d_similar < 0.01 < 1.0 < d_uniform
    assert phase_gradient_distance(real, real, masks, masks) == 0.0
    assert pooled_phase_gradients(real + similar, masks * 2).size == 2 * wrapped_phase_gradients(real[0], masks[0]).size


def test_radial_spectrum_and_distance():
    rng = np.random.default_rng(4)
    n = 64
    mag = disc(n)
    m = mag > 0
    smooth = mag * np.exp(1j * np.mgrid[:n, :n][1] * 0.05)
    rand = mag * np.exp(1j * rng.uniform(-np.pi, np.pi, (n, n)))
    f, p = radial_power_spectrum(smooth, m)
    assert f.shape == p.shape == (32,) and p.sum() == pytest.approx(1.0)
    assert f[0] > 0 and f[-1] < 0.5
    # a smooth phasor keeps its power at low frequency; a random one spreads it out
    assert p[:4].sum() > 0.9
    assert radial_power_spectrum(rand, m)[1][:4].sum() < 0.2
    assert spectrum_distance([smooth], [smooth], [m], [m]) == 0.0
    assert spectrum_distance([smooth], [rand], [m], [m]) > 1.0
    # sizes may differ: the frequency axis is in cycles/pixel
    big = np.kron(smooth, np.ones((2, 2)))
    assert spectrum_distance([smooth], [big]) < 1.0


def test_realism_keeps_slices_grouped_by_volume(tmp_path):
    """Subsampled test slices stay grouped by file, and the coherence interval resamples files."""
    from scripts.io.fastmri_h5 import write_fastmri
    from scripts.phase.realism import load_test_images, phase_realism

    rng = np.random.default_rng(0)
    for v in range(3):
        z = (disc(32) * (1 + v) * np.exp(1j * rng.uniform(-1, 1, (4, 1, 1)))).astype(np.complex64)  # 4 slices
        write_fastmri(tmp_path / f"vol{v}.h5", z[:, None], extra={"image_complex": z})
    full, some = load_test_images(tmp_path), load_test_images(tmp_path, max_slices=6)
    assert [len(v) for v in full] == [4, 4, 4] and [len(v) for v in some] == [2, 2, 2]
    assert all(np.allclose(np.abs(s).max(), 1.0, atol=0.05) for v in some for s in v)  # normalised per slice
    res = phase_realism("uniform", {}, tmp_path, max_slices=6, classifier={"epochs": 1, "channels": (4, 4, 4)})
    assert res["slices"] == 6 and res["volumes"] == 3
    assert res["coherence_ci_low"] <= res["coherence"] <= res["coherence_ci_high"]
