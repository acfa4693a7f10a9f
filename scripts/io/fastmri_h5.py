"""Read and write fastMRI-format HDF5 files.

Layout written (same as the public fastMRI multi-coil brain files):

- ``kspace``: ``(slices, coils, H, W)`` complex64, centred (DC in the middle);
- ``reconstruction_rss``: ``(slices, H, W)`` float32, root-sum-of-squares of the
  centred inverse FFT of ``kspace``;
- ``ismrmrd_header``: an ISMRMRD XML string with the encoded/recon matrix sizes;
- attrs ``acquisition``, ``max`` (max of ``reconstruction_rss``), ``norm`` (l2 norm of
  ``reconstruction_rss``) and ``patient_id`` (a non-identifying hash).

Extra datasets (e.g. ``image_complex`` from the simulator: the coil-combined complex
image) are allowed: fastMRI readers ignore keys they do not know. Reading a whole file
goes through MONAI's ``FastMRIReader``; slice-level access uses h5py directly so that
datasets stream one slice at a time.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np

from scripts.core.fft import ifft2c
from scripts.io.atomic import atomic_path

__all__ = [
    "FastMRIFileError",
    "anonymous_id",
    "ismrmrd_header",
    "kspace_shape",
    "num_slices",
    "open_fastmri",
    "read_fastmri",
    "read_slice",
    "rss",
    "write_fastmri",
]


class FastMRIFileError(ValueError):
    """A file that is not a usable fastMRI h5 file; ``str(e) == "<path>: <reason>"``, both kept as attributes."""

    def __init__(self, path: object, reason: str) -> None:
        self.path, self.reason = str(path), str(reason)
        super().__init__(f"{self.path}: {self.reason}")

    def __reduce__(self):  # pickles (process pools) with both arguments
        return type(self), (self.path, self.reason)


def anonymous_id(*parts: object) -> str:
    """A non-identifying, stable identifier: the first 16 hex digits of a sha256 of ``parts``.

    File names that are not UTF-8 (``os.walk`` gives them surrogate-escaped) hash as their raw bytes.
    """
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def rss(kspace: np.ndarray, coil_axis: int = -3) -> np.ndarray:
    """Root-sum-of-squares image of centred multi-coil k-space ``(..., coils, H, W)``."""
    images = ifft2c(np.asarray(kspace))
    return np.sqrt(np.sum(np.abs(images) ** 2, axis=coil_axis)).astype(np.float32)


def ismrmrd_header(height: int, width: int, num_coils: int, fov_mm: tuple[float, float] = (220.0, 220.0)) -> str:
    """A minimal ISMRMRD XML header with the encoding sizes fastMRI loaders read."""
    enc = (
        f"<matrixSize><x>{height}</x><y>{width}</y><z>1</z></matrixSize>"
        f"<fieldOfView_mm><x>{fov_mm[0]}</x><y>{fov_mm[1]}</y><z>5.0</z></fieldOfView_mm>"
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD">'
        f"<acquisitionSystemInformation><receiverChannels>{num_coils}</receiverChannels>"
        "</acquisitionSystemInformation>"
        f"<encoding><encodedSpace>{enc}</encodedSpace><reconSpace>{enc}</reconSpace>"
        "<encodingLimits>"
        f"<kspace_encoding_step_1><minimum>0</minimum><maximum>{width - 1}</maximum>"
        f"<center>{width // 2}</center></kspace_encoding_step_1>"
        "</encodingLimits><trajectory>cartesian</trajectory></encoding>"
        "</ismrmrdHeader>"
    )


def write_fastmri(
    path: str | os.PathLike,
    kspace: np.ndarray,
    *,
    acquisition: str = "AXT1",
    patient_id: str = "",
    extra: Mapping[str, np.ndarray] | None = None,
    attrs: Mapping[str, object] | None = None,
) -> Path:
    """Write ``kspace`` ``(slices, coils, H, W)`` (or ``(slices, H, W)`` single-coil) atomically.

    The file is written under a temporary name in the target folder, flushed, then renamed
    (:func:`scripts.io.atomic.atomic_path`), so a killed job never leaves a partial file under
    the final name. ``patient_id`` is stored as :func:`anonymous_id` of the given value, never
    verbatim.
    """
    path = Path(path)
    kspace = np.asarray(kspace)
    if kspace.ndim not in (3, 4) or not np.iscomplexobj(kspace):
        raise FastMRIFileError(path, f"kspace must be complex (slices, [coils,] H, W), got {kspace.dtype} {kspace.shape}")
    kspace = kspace.astype(np.complex64, copy=False)
    multicoil = kspace.ndim == 4
    recon = rss(kspace) if multicoil else np.abs(ifft2c(kspace))
    recon = recon.astype(np.float32)
    height, width = kspace.shape[-2:]
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("kspace", data=kspace)
        f.create_dataset("reconstruction_rss" if multicoil else "reconstruction_esc", data=recon)
        f.create_dataset("ismrmrd_header", data=ismrmrd_header(height, width, kspace.shape[1] if multicoil else 1))
        for key, value in (extra or {}).items():
            f.create_dataset(key, data=value)
        f.attrs["acquisition"] = acquisition
        f.attrs["max"] = float(recon.max())
        f.attrs["norm"] = float(np.linalg.norm(recon))
        f.attrs["patient_id"] = anonymous_id(patient_id)
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
    return path


def open_fastmri(path: str | os.PathLike) -> h5py.File:
    """Open a fastMRI file read-only after checking its ``kspace`` (complex, ``(slices, [coils,] H, W)``); a
    bad file raises :class:`FastMRIFileError` naming it and the reason. Use as a context manager."""
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        empty = os.path.isfile(path) and os.path.getsize(path) == 0
        reason = "empty file (0 bytes)" if empty else f"not a readable HDF5 file ({e.__class__.__name__}: {e})"
        raise FastMRIFileError(path, reason) from None
    reason = None
    if "kspace" not in f:
        reason = f"no 'kspace' dataset (keys: {sorted(f.keys())})"
    elif f["kspace"].ndim not in (3, 4) or f["kspace"].dtype.kind != "c":
        reason = f"'kspace' must be complex (slices, [coils,] H, W), got {f['kspace'].dtype} {f['kspace'].shape}"
    if reason:
        f.close()
        raise FastMRIFileError(path, reason)
    return f


def num_slices(path: str | os.PathLike) -> int:
    """Number of slices in a fastMRI file (validates the file)."""
    with open_fastmri(path) as f:
        return int(f["kspace"].shape[0])


def kspace_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The stored ``kspace`` shape ``(slices, [coils,] H, W)`` of a fastMRI file, without reading data."""
    with open_fastmri(path) as f:
        return tuple(int(n) for n in f["kspace"].shape)


def read_slice(path: str | os.PathLike, index: int, keys: tuple[str, ...] = ("kspace",)) -> dict[str, np.ndarray]:
    """Read one slice of the named datasets (those present) without loading the volume."""
    with open_fastmri(path) as f:
        return {k: np.asarray(f[k][index]) for k in keys if k in f}


def read_fastmri(path: str | os.PathLike) -> dict:
    """Read a whole fastMRI file with MONAI's ``FastMRIReader`` (datasets and attrs in one dict)."""
    from monai.apps.reconstruction.fastmri_reader import FastMRIReader

    open_fastmri(path).close()
    return FastMRIReader().read(str(path))
