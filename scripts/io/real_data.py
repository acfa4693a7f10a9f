"""Reader of the real multi-coil ``.mat`` slices (never part of the bundle; ``../shared/data/real_complex``).

A file holds one slice: ``DATA`` ``(H, W, C)``, the fully sampled coil IMAGES (the real 4-coil brain
slices), or a ``kspace*`` key ``(H, W[, C])``, centred k-space. :func:`read_mat_kspace` returns the coil
k-space ``(C, H, W)`` complex64 (centred orthonormal FFT of :mod:`scripts.core.fft`) in the file's own
units, which differ by up to 1e6 between scanners: any cropping or scaling is the caller's.
:func:`is_phantom` tells phantoms (``*Ph*`` in the name), which are not brains, from the rest.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from scripts.core.fft import fft2c

__all__ = ["is_phantom", "read_mat_kspace"]


def is_phantom(path: str | os.PathLike) -> bool:
    """Whether a real-data file is a phantom (``*Ph*`` in its name, e.g. ``4h_Ph.mat``): phantoms are
    not brains and are left out of every real test set."""
    return "Ph" in Path(path).stem


def read_mat_kspace(path: str | os.PathLike) -> np.ndarray:
    """Coil k-space ``(C, H, W)`` complex64 of one ``.mat`` slice (``DATA`` coil images or a ``kspace*`` key)."""
    import scipy.io

    d = scipy.io.loadmat(str(path))
    if "DATA" in d:
        return fft2c(np.moveaxis(np.asarray(d["DATA"]), -1, 0).astype(np.complex64))
    key = next((k for k in d if k.startswith("kspace")), None)
    if key is None:
        raise KeyError(f"{path}: no 'DATA' or 'kspace*' variable")
    k = np.asarray(d[key]).astype(np.complex64)
    return k[None] if k.ndim == 2 else np.moveaxis(k, -1, 0)
