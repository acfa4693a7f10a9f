"""Magnitude normalisation that every model in the bundle relies on.

A magnitude image is divided by its 99.5th percentile over the slice (``reference``),
so tissue sits near 1 whatever the scanner units (4h_GE peaks near 8e5, 4h_mpr near 1).
The division is a pure scale: no offset, no clipping, so ``magnitude = normalised *
reference`` is exact and the scale can be undone on output. A slice whose percentile
is not positive and finite (all zero, NaN/Inf) is rejected, not silently scaled.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

PERCENTILE = 99.5

__all__ = ["PERCENTILE", "NormalizeMagnituded", "magnitude_reference", "normalize_magnitude"]


def magnitude_reference(magnitude: np.ndarray | torch.Tensor) -> float:
    """The scale of a magnitude slice: its 99.5th percentile (``ValueError`` if not > 0 and finite)."""
    values = magnitude.detach().cpu().numpy() if isinstance(magnitude, torch.Tensor) else np.asarray(magnitude)
    if not np.all(np.isfinite(values)):
        raise ValueError("magnitude contains NaN or Inf")
    ref = float(np.percentile(np.abs(values), PERCENTILE))
    if not ref > 0:
        nonzero = int(np.count_nonzero(values))
        if nonzero == 0:
            raise ValueError("magnitude is all zero")
        raise ValueError(f"magnitude has almost no signal: {nonzero} of {values.size} pixels are non-zero, "
                         f"so its {PERCENTILE}th percentile (the intensity scale) is 0")
    return ref


def normalize_magnitude(magnitude: np.ndarray | torch.Tensor) -> tuple[np.ndarray | torch.Tensor, float]:
    """Return ``(magnitude / reference, reference)``; see the module docstring."""
    ref = magnitude_reference(magnitude)
    return magnitude / ref, ref


class NormalizeMagnituded(MapTransform):
    """Dictionary transform: scale ``keys`` by :func:`magnitude_reference`, store it under ``<key>_reference``."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key], d[f"{key}_reference"] = normalize_magnitude(d[key])
        return d
