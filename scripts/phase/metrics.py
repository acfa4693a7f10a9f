"""Phase-realism statistics, shared by every phase source.

Phase given magnitude is one-to-many, so pixel error to the true phase is a weak measure.
These compare distributions instead:

- :func:`wrapped_phase_gradients`: angle(z[x+1] * conj(z[x])) along both image axes for
  pixel pairs inside a mask. The phase never needs unwrapping: the product of neighbours
  carries the wrapped difference directly.
- :func:`phase_gradient_distance`: Wasserstein-1 distance (rad) between the pooled
  gradient samples of two lists of complex images.
- :func:`radial_power_spectrum` / :func:`spectrum_distance`: radial power spectrum of the
  unit phasor field exp(i*phi) inside the head (zero outside), on a frequency axis in
  cycles/pixel so that images of different sizes share bins; the distance is the mean
  absolute difference of the two mean log10 spectra (decades).
- :func:`phase_coherence`: |sum w exp(i(phi_hat - phi))| / sum w, w = |z| by default.
- :func:`scripts.core.physics.head_mask`: threshold + morphology; the mask every statistic
  is taken in.

Everything is plain numpy/scipy on 2-D complex arrays; lists may mix sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import wasserstein_distance

from scripts.core.physics import head_mask

__all__ = [
    "phase_coherence",
    "phase_gradient_distance",
    "pooled_phase_gradients",
    "radial_power_spectrum",
    "spectrum_distance",
    "wrapped_phase_gradients",
]


def wrapped_phase_gradients(z: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Wrapped phase differences (rad, in (-pi, pi]) between neighbours along both axes.

    angle(z[i+1, j] * conj(z[i, j])) and angle(z[i, j+1] * conj(z[i, j])) for the pairs whose
    two pixels are both in ``mask`` (all pixels if ``mask`` is None), concatenated
    (axis-0 differences first). A linear phase ramp of slope ``s`` rad/pixel gives ``s``.
    """
    z = np.asarray(z)
    if z.ndim != 2:
        raise ValueError(f"expected a 2-D complex image, got shape {z.shape}")
    m = np.ones(z.shape, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    g0 = np.angle(z[1:, :] * np.conj(z[:-1, :]))[m[1:, :] & m[:-1, :]]
    g1 = np.angle(z[:, 1:] * np.conj(z[:, :-1]))[m[:, 1:] & m[:, :-1]]
    return np.concatenate([g0, g1])


def _masks(images: Sequence[np.ndarray], masks: Sequence[np.ndarray] | None) -> list[np.ndarray]:
    if masks is None:
        return [head_mask(np.abs(z)) for z in images]
    if len(masks) != len(images):
        raise ValueError(f"{len(images)} images but {len(masks)} masks")
    return [np.asarray(m, dtype=bool) for m in masks]


def pooled_phase_gradients(images: Sequence[np.ndarray], masks: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """All :func:`wrapped_phase_gradients` of ``images`` pooled (masks default to :func:`head_mask`)."""
    return np.concatenate([wrapped_phase_gradients(z, m) for z, m in zip(images, _masks(images, masks))])


def phase_gradient_distance(
    real: Sequence[np.ndarray],
    synth: Sequence[np.ndarray],
    real_masks: Sequence[np.ndarray] | None = None,
    synth_masks: Sequence[np.ndarray] | None = None,
) -> float:
    """Wasserstein-1 distance (rad/pixel) between pooled wrapped phase gradients of two image lists."""
    a = pooled_phase_gradients(real, real_masks)
    b = pooled_phase_gradients(synth, synth_masks)
    if a.size == 0 or b.size == 0:
        raise ValueError("no pixel pairs inside the masks")
    return float(wasserstein_distance(a, b))


def radial_power_spectrum(z: np.ndarray, mask: np.ndarray | None = None, n_bins: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Radial power spectrum of the phasor field exp(i*angle(z)) inside ``mask`` (zero outside).

    Returns ``(freq, power)``: bin centres in cycles/pixel over [0, 0.5] and the mean
    |FFT|^2 per annulus normalised to sum 1 (frequencies beyond 0.5 are dropped).
    The mask defaults to :func:`head_mask` of ``|z|``.
    """
    z = np.asarray(z)
    m = head_mask(np.abs(z)) if mask is None else np.asarray(mask, dtype=bool)
    phasor = np.where(m, np.exp(1j * np.angle(z)), 0)
    power = np.abs(np.fft.fft2(phasor)) ** 2
    fy = np.fft.fftfreq(z.shape[0])[:, None]
    fx = np.fft.fftfreq(z.shape[1])[None, :]
    fr = np.sqrt(fy**2 + fx**2).ravel()
    edges = np.linspace(0.0, 0.5, n_bins + 1)
    idx = np.digitize(fr, edges) - 1
    keep = (idx >= 0) & (idx < n_bins)
    sums = np.bincount(idx[keep], weights=power.ravel()[keep], minlength=n_bins)
    counts = np.bincount(idx[keep], minlength=n_bins)
    spec = sums / np.maximum(counts, 1)
    total = spec.sum()
    return 0.5 * (edges[1:] + edges[:-1]), spec / total if total > 0 else spec


def spectrum_distance(
    real: Sequence[np.ndarray],
    synth: Sequence[np.ndarray],
    real_masks: Sequence[np.ndarray] | None = None,
    synth_masks: Sequence[np.ndarray] | None = None,
    n_bins: int = 32,
) -> float:
    """Mean absolute difference (decades) of the log10 mean phasor radial spectra of two lists.

    Each list's :func:`radial_power_spectrum` (normalised to sum 1) is averaged over its
    images; the distance is mean_bins |log10 P_real - log10 P_synth|. Log scale because the
    spectra span several decades and what separates phase models (smooth vs noisy vs
    flat) lives in the high-frequency tail.
    """

    def mean_spectrum(images, masks):
        specs = [radial_power_spectrum(z, m, n_bins)[1] for z, m in zip(images, _masks(images, masks))]
        return np.mean(specs, axis=0)

    a, b = mean_spectrum(real, real_masks), mean_spectrum(synth, synth_masks)
    tiny = 1e-15
    return float(np.mean(np.abs(np.log10(a + tiny) - np.log10(b + tiny))))


def phase_coherence(z_hat: np.ndarray, z: np.ndarray, weight: np.ndarray | None = None) -> float:
    """|sum w exp(i(phi_hat - phi))| / sum w; ``w`` defaults to |z|. 1 = identical phase up to a constant."""
    z_hat, z = np.asarray(z_hat), np.asarray(z)
    w = np.abs(z) if weight is None else np.asarray(weight, dtype=np.float64)
    total = float(np.sum(w))
    if not total > 0:
        raise ValueError("phase_coherence: weights sum to zero")
    rel = np.exp(1j * (np.angle(z_hat) - np.angle(z)))
    return float(np.abs(np.sum(w * rel)) / total)
