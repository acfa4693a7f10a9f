"""Training slices for the phase model, streamed from fastMRI-format h5 folders.

Layout: ``dataset_dir/{train,val,test}/*.h5`` (what :func:`scripts.simulate.dataset.simulate_dataset`
writes); fastMRI's own folder names (``multicoil_train``, ``singlecoil_val``, ...) are
found too. :func:`slice_datalist` lists ``{"file": path, "slice": i}`` items (shapes only
are read); :class:`LoadPhaseSliced` reads ONE slice per item with h5py, so memory does not
grow with the dataset and nothing is cached in memory.

Where the complex image comes from (``complex_source="auto"``, first that applies):

1. ``image_complex`` ``(slices, H, W)`` in the file (the simulator's coil-combined complex
   image, noise included): used as is.
2. single-coil ``kspace`` ``(slices, H, W)``: its centred inverse FFT.
3. multi-coil ``kspace`` ``(slices, C, H, W)`` (real fastMRI data): sensitivity-weighted coil
   combination ``x = sum_c conj(S_c) y_c / sum_c |S_c|^2`` with ESPIRiT maps
   (:mod:`scripts.core.espirit`, calibration from the fully sampled centre). The maps
   are computed with ``crop=0`` so they cover the whole FOV: the background then keeps its
   noise (random phase), which the model must learn to reproduce; with the usual crop the
   background would be exactly 0 and its phase undefined. ESPIRiT fixes the arbitrary
   per-pixel phase of the maps relative to coil 0, so the combined phase is the object
   phase plus coil 0's smooth receive phase, like a scanner's "virtual reference coil"
   combination. ESPIRiT costs about 1.7 s per 128x128 8-coil slice (tens of seconds for
   a 640x320 16-coil fastMRI slice), so the combined image (not the maps: they are C times
   bigger) is cached on disk, one ``.npy`` per slice under ``cache_dir``, keyed by the
   file's absolute path, size and mtime and the ESPIRiT parameters; without ``cache_dir``
   it is recomputed every time. Cache files are written atomically (safe with DataLoader
   workers and DDP ranks).

``complex_source`` can force ``"image_complex"``, ``"coil_maps"`` (the file's own
``coil_maps`` dataset, ``(slices, C, H, W)``) or ``"espirit"``.

Each item becomes ``image``: the unit phasor ``(cos phi, sin phi)`` ``(2, H, W)`` float32 and
``magnitude``: ``|x|`` ``(1, H, W)`` float32 in file units (normalise it with
``scripts.core.intensity.NormalizeMagnituded``), both centre-cropped/zero-padded in image space
to ``spatial_size`` (e.g. fastMRI's 640x320 brain slices -> 320x320).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import h5py
import numpy as np
import sigpy
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform

from scripts.core.complex import complex_to_phasor
from scripts.io.atomic import save_npy
from scripts.io.fastmri_h5 import FastMRIFileError, anonymous_id, num_slices, read_slice

__all__ = [
    "COMPLEX_SOURCES",
    "LoadPhaseSliced",
    "center_crop_or_pad",
    "coil_combine",
    "complex_slice",
    "espirit_combine",
    "find_split",
    "prepare_dataset",
    "files_datalist",
    "slice_datalist",
    "spread_evenly",
]

logger = logging.getLogger(__name__)

COMPLEX_SOURCES = ("auto", "image_complex", "coil_maps", "espirit")
SPLIT_ALIASES = {
    "train": ("train", "multicoil_train", "singlecoil_train", "training"),
    "val": ("val", "multicoil_val", "singlecoil_val", "validation"),
    "test": ("test", "multicoil_test", "singlecoil_test", "multicoil_test_full", "testing"),
}


# --------------------------------------------------------------------------------------
# folders
# --------------------------------------------------------------------------------------
def _h5_files(folder: str | os.PathLike) -> list[str]:
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(str(p) for p in folder.iterdir() if p.suffix in (".h5", ".hdf5") and not p.name.startswith("."))


def find_split(dataset_dir: str | os.PathLike, split: str) -> str:
    """The folder of ``split`` (``train``/``val``/``test`` or a fastMRI alias) under ``dataset_dir``."""
    for name in SPLIT_ALIASES.get(split, (split,)):
        folder = os.path.join(dataset_dir, name)
        if _h5_files(folder):
            return folder
    raise FileNotFoundError(
        f"{dataset_dir}: no h5 files for split {split!r} (looked in {', '.join(SPLIT_ALIASES.get(split, (split,)))})"
    )


def _has_data(dataset_dir: str | os.PathLike) -> bool:
    try:
        find_split(dataset_dir, "train")
        return True
    except FileNotFoundError:
        return False


def prepare_dataset(
    dataset_dir: str | os.PathLike,
    simulate: bool = True,
    image_size: int = 64,
    num_coils: int = 4,
    num_subjects: int = 10,
    slices_per_subject: int = 16,
    seed: int = 0,
) -> str:
    """Return ``dataset_dir``, first simulating a dataset there if it holds no training data.

    Simulation (``scripts.simulate.dataset.simulate_dataset``) happens only when ``simulate`` is true;
    otherwise a missing dataset is an error. Under ``torch.distributed`` rank 0 simulates
    and the other ranks wait at a barrier.
    """
    dataset_dir = str(dataset_dir)
    dist = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank = torch.distributed.get_rank() if dist else 0
    if rank == 0 and not _has_data(dataset_dir):
        if not simulate:
            raise FileNotFoundError(f"{dataset_dir}: no fastMRI-format training data (expected <dir>/train/*.h5)")
        from scripts.simulate.dataset import simulate_dataset

        logger.warning("no training data in %s: simulating %d subjects x %d slices (%dx%d, %d coils)",
                       dataset_dir, num_subjects, slices_per_subject, image_size, image_size, num_coils)
        simulate_dataset(
            output_dir=dataset_dir,
            num_subjects=num_subjects,
            slices_per_subject=slices_per_subject,
            image_size=image_size,
            num_coils=num_coils,
            seed=seed,
        )
    if dist:
        torch.distributed.barrier()
    return dataset_dir


def slice_datalist(dataset_dir: str | os.PathLike, split: str) -> list[dict]:
    """``[{"file": path, "slice": i}, ...]`` for every slice of every readable h5 file of ``split``.

    Only the ``kspace`` shape of each file is read. Unreadable files are skipped with a warning.
    """
    return files_datalist(_h5_files(find_split(dataset_dir, split)))


def spread_evenly(n: int, limit: int | None) -> np.ndarray:
    """Indices of at most ``limit`` of ``n`` items, evenly spread and deterministic (all of them when
    ``limit`` is ``None``/0 or not below ``n``)."""
    if not limit or n <= limit:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, int(limit)).round().astype(int))


def files_datalist(files: Sequence[str]) -> list[dict]:
    """``[{"file": path, "slice": i}, ...]`` for every slice of the readable h5 ``files`` (others skipped with a warning)."""
    items = []
    for path in files:
        try:
            n = num_slices(path)
        except FastMRIFileError as e:
            logger.warning("skipped %s", e)
            continue
        items += [{"file": path, "slice": i} for i in range(n)]
    return items


# --------------------------------------------------------------------------------------
# complex image of one slice
# --------------------------------------------------------------------------------------
def coil_combine(coil_images: np.ndarray, maps: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Sensitivity-weighted (SENSE-1/Roemer) combination ``sum conj(S) y / sum |S|^2`` over axis 0."""
    num = np.sum(np.conj(maps) * coil_images, axis=0)
    den = np.sum(np.abs(maps) ** 2, axis=0)
    return (num / np.maximum(den, eps)).astype(np.complex64)


def espirit_combine(kspace: np.ndarray, calib_width: int = 24, thresh: float = 0.02, kernel_width: int = 6) -> np.ndarray:
    """Complex image of centred multi-coil k-space ``(C, H, W)`` with ESPIRiT maps (``crop=0``) from the
    centred ``calib_width`` square (at most the image; :func:`scripts.core.espirit.espirit_calib`)."""
    from scripts.core.espirit import calib_box, espirit_calib

    kspace = np.asarray(kspace, dtype=np.complex64)
    maps = espirit_calib(kspace, calib_box(kspace.shape, calib_width), kernel_width, thresh, crop=0.0)
    images = sigpy.ifft(kspace, axes=(-2, -1), center=True, norm="ortho")
    return coil_combine(images, np.asarray(maps))


def _cache_path(cache_dir: str, path: str, index: int, params: tuple) -> str:
    st = os.stat(path)
    key = anonymous_id(os.path.abspath(path), st.st_size, st.st_mtime_ns, index, *params)
    return os.path.join(cache_dir, f"{key}.npy")


def complex_slice(
    path: str | os.PathLike,
    index: int,
    complex_source: str = "auto",
    cache_dir: str | os.PathLike | None = None,
    espirit_params: Mapping | None = None,
) -> np.ndarray:
    """The complex image ``(H, W)`` complex64 of one slice; see the module docstring."""
    if complex_source not in COMPLEX_SOURCES:
        raise ValueError(f"complex_source must be one of {COMPLEX_SOURCES}, got {complex_source!r}")
    path = str(path)
    with h5py.File(path, "r") as f:
        keys = set(f.keys())
        kspace_ndim = f["kspace"].ndim if "kspace" in f else 0
    if complex_source in ("auto", "image_complex") and "image_complex" in keys:
        return np.asarray(read_slice(path, index, ("image_complex",))["image_complex"], dtype=np.complex64)
    if complex_source == "image_complex":
        raise FastMRIFileError(path, "no 'image_complex' dataset")
    if kspace_ndim == 0:
        raise FastMRIFileError(path, "no 'kspace' dataset to derive the complex image from")
    if complex_source == "coil_maps":
        if "coil_maps" not in keys:
            raise FastMRIFileError(path, "no 'coil_maps' dataset")
        d = read_slice(path, index, ("kspace", "coil_maps"))
        images = sigpy.ifft(d["kspace"], axes=(-2, -1), center=True, norm="ortho")
        return coil_combine(images, d["coil_maps"])
    kspace = read_slice(path, index, ("kspace",))["kspace"]
    if kspace.ndim == 2:  # single coil
        return sigpy.ifft(kspace, axes=(-2, -1), center=True, norm="ortho").astype(np.complex64)
    params = dict(calib_width=24, thresh=0.02, kernel_width=6, **(espirit_params or {}))
    cache = _cache_path(str(cache_dir), path, index, tuple(sorted(params.items()))) if cache_dir else None
    if cache and os.path.exists(cache):
        try:
            return np.load(cache)
        except Exception:  # a damaged cache entry is recomputed
            pass
    image = espirit_combine(kspace, **params)
    if cache:
        save_npy(cache, image)
    return image


def center_crop_or_pad(image: np.ndarray, size: Sequence[int] | None) -> np.ndarray:
    """Centre-crop / zero-pad the last two axes of ``image`` to ``size`` (image space)."""
    if size is None:
        return image
    out = image
    for axis, target in zip((-2, -1), size):
        n = out.shape[axis]
        if n > target:
            start = (n - target) // 2
            out = np.take(out, range(start, start + target), axis=axis)
        elif n < target:
            pad = [(0, 0)] * out.ndim
            pad[axis] = ((target - n) // 2, target - n - (target - n) // 2)
            out = np.pad(out, pad)
    return out


class LoadPhaseSliced(MapTransform):
    """``{"file", "slice"}`` -> ``image`` (phasor ``(2,H,W)``) and ``magnitude`` (``(1,H,W)``).

    Args:
        keys: the key holding the h5 path (default ``"file"``); the slice index is under ``slice_key``.
        slice_key: key of the slice index.
        spatial_size: centre crop / zero pad in image space to this ``(H, W)`` (``None``: keep).
        complex_source: see the module docstring.
        cache_dir: where ESPIRiT-combined images are cached (``None``: no cache).
        image_key, magnitude_key: output keys.
    """

    def __init__(
        self,
        keys: KeysCollection = "file",
        slice_key: str = "slice",
        spatial_size: Sequence[int] | int | None = None,
        complex_source: str = "auto",
        cache_dir: str | os.PathLike | None = None,
        image_key: str = "image",
        magnitude_key: str = "magnitude",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if isinstance(spatial_size, int):
            spatial_size = (spatial_size, spatial_size)
        self.slice_key = slice_key
        self.spatial_size = None if spatial_size is None else tuple(int(s) for s in spatial_size)
        self.complex_source = complex_source
        self.cache_dir = cache_dir
        self.image_key, self.magnitude_key = image_key, magnitude_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            z = complex_slice(d[key], int(d[self.slice_key]), self.complex_source, self.cache_dir)
            z = center_crop_or_pad(z, self.spatial_size)
            d[self.image_key] = torch.from_numpy(complex_to_phasor(z, dim=0))
            d[self.magnitude_key] = torch.from_numpy(np.abs(z).astype(np.float32)[None])
        return d
