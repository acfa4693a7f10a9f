"""Phase realism of one phase source on paired complex test data (the metric definitions are in the README).

For every slice of the test files (``image_complex``: the true complex image), the source
gives a phase for the true magnitude; the synthetic image is ``|z| * exp(i * phase)`` on the
SAME magnitude. Figures, each over the test slices:

- ``coherence``: mean over slices of :func:`scripts.phase.metrics.phase_coherence` with the
  true phase (magnitude-weighted; 1 = the true phase up to a constant), with a 95 % CI from a
  bootstrap over volumes (subjects: their slices are correlated);
- ``gradient_distance``: Wasserstein distance of the pooled wrapped phase gradients inside
  the head, synthetic vs true (rad/pixel);
- ``spectrum_distance``: mean |log10| difference of the radial power spectra of the phasor;
- ``auroc``: held-out AUROC of a small CNN told to separate true from synthetic complex
  images (:func:`scripts.phase.two_sample.classifier_two_sample_test`); 0.5 = indistinguishable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from scripts.io.fastmri_h5 import num_slices, read_slice
from scripts.core.intensity import magnitude_reference
from scripts.phase.data import spread_evenly
from scripts.core.metrics import bootstrap_ci
from scripts.phase.metrics import phase_coherence, phase_gradient_distance, spectrum_distance
from scripts.phase.sources import get_phase_source
from scripts.phase.two_sample import classifier_two_sample_test

__all__ = ["load_test_images", "phase_realism", "score_realism"]


def load_test_images(test_dir: str | os.PathLike, max_slices: int | None = None) -> list[np.ndarray]:
    """The true complex images (``image_complex``) of every h5 file under ``test_dir``, normalised, volume by volume
    (``max_slices``: an even spread over all slices, still grouped by volume)."""
    paths = sorted(Path(test_dir).glob("*.h5"))
    if not paths:
        raise FileNotFoundError(f"{test_dir}: no h5 files with 'image_complex' (paired complex test data)")
    counts = [num_slices(p) for p in paths]
    keep = spread_evenly(sum(counts), max_slices)
    owner = np.repeat(np.arange(len(paths)), counts)[keep]
    first = np.cumsum([0, *counts])
    volumes = [np.stack([read_slice(paths[k], int(i), ("image_complex",))["image_complex"] for i in keep[owner == k] - first[k]])
               for k in np.unique(owner)]  # only the kept slices are read
    return [np.stack([s / magnitude_reference(np.abs(s)) for s in v]) for v in volumes]


def score_realism(reference, synthetic, seed: int = 0, classifier: Mapping[str, Any] | None = None,
                  min_classifier: int = 0) -> dict[str, float]:
    """Distances between two lists of complex images, synthetic vs reference (see the module docstring):
    ``gradient_distance``, ``spectrum_distance`` (inside head masks; NaN when the masks hold no pixel) and
    the classifier ``auroc`` (NaN with fewer than ``min_classifier`` reference images)."""
    try:
        gradient = float(phase_gradient_distance(reference, synthetic))
        spectrum = float(spectrum_distance(reference, synthetic))
    except ValueError:
        gradient = spectrum = float("nan")
    auroc = float("nan")
    if len(reference) >= min_classifier:
        auroc = float(classifier_two_sample_test(reference, synthetic, seed=seed, **dict(classifier or {}))["auroc"])
    return {"n_reference": len(reference), "n_synthetic": len(synthetic), "gradient_distance": gradient,
            "spectrum_distance": spectrum, "auroc": auroc}


def phase_realism(
    source: str,
    source_kwargs: Mapping[str, Any],
    test_dir: str | os.PathLike,
    seed: int = 0,
    max_slices: int | None = 64,
    classifier: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Realism figures of ``source`` on the test magnitudes (see the module docstring)."""
    truth = load_test_images(test_dir, max_slices)
    phase_source = get_phase_source(source, **dict(source_kwargs))
    synth = []
    for v, volume in enumerate(truth):
        magnitude = np.abs(volume).astype(np.float32)
        phase = phase_source(magnitude, seed=seed + v, reference=volume)
        synth.append(magnitude * np.exp(1j * phase))
    real_slices = [s for v in truth for s in v]
    synth_slices = [s for v in synth for s in v]
    coherence = [phase_coherence(zs, zr) for zs, zr in zip(synth_slices, real_slices)]
    mean, low, high = bootstrap_ci(coherence, seed=seed, groups=[v for v, volume in enumerate(truth) for _ in volume])
    scores = score_realism(real_slices, synth_slices, seed=seed, classifier=classifier)
    return {"source": source, "slices": len(real_slices), "volumes": len(truth), "coherence": mean,
            "coherence_ci_low": low, "coherence_ci_high": high,
            **{k: scores[k] for k in ("gradient_distance", "spectrum_distance", "auroc")}}
