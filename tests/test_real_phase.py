"""Simulated phase against REAL complex brain slices (skipped when the real data is absent).

Like is compared with like: the real data are per-coil images of T1-weighted gradient-echo
scans (4h_GE: T1 GRE; 4h_mpr: MPRAGE; 4 coils, 256 x 256), so the simulator makes per-coil
images of T1-weighted gradient echoes (spoiled GRE and MPRAGE-like) with 4 coils at
256 x 256 (pixel 0.8-1.0 mm, as the real ~0.9 mm). Both sets then go through the SAME
resampling: the central 128 x 128 of k-space with a Tukey(0.5) window (pixel ~1.8 mm). The
real images were reconstructed with k-space filtering (their background noise is
correlated between neighbouring pixels, lag-1 correlation 0.1-0.7) while the simulator
writes raw, unfiltered k-space; the common window puts both on the same footing.

Statistic: wrapped phase gradients angle(z[x+1] conj(z[x])) inside the head mask, pooled
over images; distance: Wasserstein-1 (rad/pixel) to the pooled real gradients. The naive
phase sources (zero phase, i.i.d. uniform phase on the real magnitudes) are scored the same
way so that the bound means something. Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io as sio
import scipy.signal
import sigpy

from scripts.core.physics import head_mask
from scripts.phase.metrics import phase_gradient_distance, pooled_phase_gradients, spectrum_distance
from scripts.simulate.dataset import simulate_subject

T1_GRE = ("T1_SPGR", "T1_MPRAGE")
SEED, SUBJECTS, SLICES, SIZE, COILS = 0, 8, 6, 256, 4
CROP, TUKEY = 128, 0.5

# Bounds (rad/pixel at ~1.8 mm). The simulator scored 0.029 when this test was written, the
# zero-phase baseline 0.111 and the uniform one 1.46.
MAX_W_SIM = 0.04
MAX_RATIO_TO_ZERO = 0.5


def resample(image: np.ndarray, n: int = CROP, alpha: float = TUKEY) -> np.ndarray:
    """Central ``n`` x ``n`` of the centred k-space of ``image``, Tukey-windowed, back to image space."""
    k = sigpy.fft(image, center=True, norm="ortho")
    c0, c1 = k.shape[0] // 2, k.shape[1] // 2
    k = k[c0 - n // 2 : c0 + n // 2, c1 - n // 2 : c1 + n // 2]
    w = scipy.signal.windows.tukey(n, alpha)
    return sigpy.ifft(k * w[:, None] * w[None, :], center=True, norm="ortho")


@pytest.fixture(scope="module")
def real_coils(real_dir) -> list[np.ndarray]:
    images = []
    for name in ("4h_GE.mat", "4h_mpr.mat"):
        data = sio.loadmat(real_dir / "brain_4coil" / name)["DATA"]
        assert data.shape == (256, 256, 4) and np.iscomplexobj(data)
        data = data / np.percentile(np.abs(data), 99.5)
        images += [resample(data[..., c]) for c in range(data.shape[-1])]
    return images


@pytest.fixture(scope="module")
def sim_coils() -> list[np.ndarray]:
    images = []
    for subject in range(SUBJECTS):
        sim = simulate_subject(SEED, subject, SLICES, SIZE, COILS, sequences=T1_GRE)
        coils = sigpy.ifft(sim["kspace"], axes=(-2, -1), center=True, norm="ortho")
        images += [resample(coils[s, c]) for s in range(1, SLICES) for c in range(COILS)]  # skip the skull-base slice
    return images


def describe(name: str, images: list[np.ndarray], real: list[np.ndarray]) -> dict:
    g = np.abs(pooled_phase_gradients(images))
    row = {
        "W": phase_gradient_distance(real, images),
        "spec": spectrum_distance(real, images),
        "median": float(np.median(g)),
        "p90": float(np.percentile(g, 90)),
    }
    print(f"  {name:<28} W={row['W']:.4f} rad/px  spectrum={row['spec']:.3f} dex  |grad| median={row['median']:.3f} p90={row['p90']:.3f}")
    return row


def test_simulated_phase_gradients_close_to_real(real_coils, sim_coils):
    rng = np.random.default_rng(0)
    zero = [np.abs(z).astype(np.complex128) for z in real_coils]
    uniform = [np.abs(z) * np.exp(1j * rng.uniform(-np.pi, np.pi, z.shape)) for z in real_coils]
    print(
        f"\nphase-gradient statistics, {len(real_coils)} real per-coil images vs {len(sim_coils)} simulated "
        f"({CROP}x{CROP}, Tukey {TUKEY}):"
    )
    real = describe("real (itself)", real_coils, real_coils)
    sim = describe("simulator (T1 GRE)", sim_coils, real_coils)
    zer = describe("zero phase (real |z|)", zero, real_coils)
    uni = describe("uniform phase (real |z|)", uniform, real_coils)
    assert real["W"] == 0.0
    assert sim["W"] < MAX_W_SIM
    assert sim["W"] < MAX_RATIO_TO_ZERO * zer["W"]
    assert uni["W"] > 10 * sim["W"]
    assert sim["spec"] < zer["spec"] < uni["spec"]


def test_simulated_images_look_like_real_ones(real_coils, sim_coils):
    """Coarse sanity on the same images: head fills the view, phase is smooth inside, noise outside."""
    for images in (real_coils, sim_coils):
        fill = np.array([head_mask(np.abs(z)).mean() for z in images])
        assert 0.25 < np.median(fill) < 0.75
        inside = np.concatenate([np.abs(pooled_phase_gradients([z])) for z in images])
        assert np.median(inside) < 0.15  # smooth phase inside the head
        bg = np.concatenate([np.angle(z[:8, :8]).ravel() for z in images])
        assert np.abs(np.mean(np.exp(1j * bg))) < 0.2  # the background corner is noise: no preferred phase


def test_single_coil_real_slice_is_readable(real_dir):
    """The single-coil centred k-space slice: its phase statistics, for the record (printed, loosely bounded)."""
    k = sio.loadmat(real_dir / "brain_1coil" / "kspace_brain_1ch.mat")["kspace_1ch"]
    z = sigpy.ifft(k, center=True, norm="ortho")
    assert z.shape == (160, 220)
    g = np.abs(pooled_phase_gradients([z]))
    print(f"\nsingle-coil real slice (160x220): |grad| median {np.median(g):.3f} rad/px, p90 {np.percentile(g, 90):.3f}")
    assert np.median(g) < 0.3
