"""Reconstruction cases: multi-coil k-space read and resized, undersampled, with coil maps and a reference.

Convention of the prior-regularised reconstruction and its baselines (:mod:`scripts.recon.posterior`,
:mod:`scripts.recon.l1`, the prior study): k-space larger than the working size is centre-cropped in
k-space (:func:`crop_kspace`: same FOV, lower resolution, image magnitudes kept); coil maps are ESPIRiT
(:func:`scripts.core.espirit.espirit_calib`) from the central ``calib_lines`` square of the
*undersampled* k-space, ``crop=0`` (maps cover the whole FOV, background included), kernel
``min(6, calib // 2)`` (:func:`estimate_maps`; at 64 px with 8 calibration lines a 6-wide kernel leaves
too few calibration rows, 4 matches the fully sampled combination to 0.3 %). ESPIRiT aligns the maps'
phase to coil 0, so an image carries coil 0's receive phase, as an ESPIRiT combination of real data
does; :func:`espirit_dataset` writes training copies of a dataset in exactly this convention, so that a
complex prior sees at training time the phase it meets at reconstruction time. :func:`make_case` gives
one undersampled slice with its maps, its reference (the fully sampled k-space combined with the same
maps) and its image scale (:func:`scripts.core.sense.estimate_scale`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from scripts.core.espirit import calib_box, espirit_calib
from scripts.core.fft import fft2c, ifft2c
from scripts.core.masks import default_calib_lines
from scripts.core.sense import SenseOp, estimate_scale

__all__ = ["ReconCase", "crop_kspace", "espirit_dataset", "estimate_maps", "make_case", "read_kspace"]


def estimate_maps(kspace: np.ndarray, calib_width: int, kernel_width: int | None = None, thresh: float = 0.02,
                  crop: float = 0.0) -> np.ndarray:
    """ESPIRiT maps ``(C, H, W)`` complex64 from the central ``calib_width``^2 of centred k-space ``(C, H, W)``.

    Only the calibration region is used, so fully sampled and undersampled k-space with the same
    ACS give the same maps. ``kernel_width`` defaults to ``min(6, calib_width // 2)`` (at least 3).
    """
    kspace = np.asarray(kspace, dtype=np.complex64)
    cw = int(min(calib_width, *kspace.shape[-2:]))
    kw = int(kernel_width or max(3, min(6, cw // 2)))
    return espirit_calib(kspace, calib_box(kspace.shape, cw), kw, thresh, crop)


def crop_kspace(kspace: np.ndarray, size: int | None) -> np.ndarray:
    """Centre-crop (or zero-pad) centred k-space to ``size x size``: same FOV, resolution changed."""
    if size is None or kspace.shape[-2:] == (size, size):
        return kspace
    from scripts.phase.data import center_crop_or_pad

    k = center_crop_or_pad(np.asarray(kspace), (int(size), int(size)))
    return k * np.float32(size / math.sqrt(kspace.shape[-2] * kspace.shape[-1]))  # keep image magnitudes


def read_kspace(path: str | os.PathLike, size: int | None = None, slices: Sequence[int] | None = None,
                remove_oversampling: bool = False) -> tuple[np.ndarray, dict]:
    """Multi-coil k-space ``(S, C, H, W)`` of a fastMRI h5 or a ``.mat`` file, centre-cropped to ``size``.

    ``.mat``: one slice (:func:`scripts.io.real_data.read_mat_kspace`). A stored ``mask`` (fastMRI: 1-D
    over the phase-encoding axis W) marks prospectively undersampled data; it is returned as
    ``info["mask"]`` ``(H, W)``, cropped with the k-space. ``remove_oversampling`` first crops the image
    along the readout axis H to ``W`` rows (fastMRI raw files: 640 readout samples for 320 phase
    encodes); along the readout every line is fully sampled, so this is exact for undersampled data
    too. Returns ``(kspace, info)`` with the original and final sizes.
    """
    from scripts.phase.data import center_crop_or_pad

    path = str(path)
    info: dict[str, Any] = {"file": os.path.basename(path)}
    mask = None
    if path.endswith(".mat"):
        from scripts.io.real_data import read_mat_kspace

        k = read_mat_kspace(path)[None]
    else:
        import h5py

        from scripts.io.fastmri_h5 import num_slices

        n = num_slices(path)  # a readable file with complex kspace, else FastMRIFileError naming the cause
        with h5py.File(path, "r") as f:
            idx = list(range(n)) if slices is None else [int(i) for i in slices]
            k = np.stack([np.asarray(f["kspace"][i]) for i in idx]).astype(np.complex64)
            if k.ndim == 3:
                k = k[:, None]
            mask = np.asarray(f["mask"], dtype=np.float32) if "mask" in f else None
            info["slices"] = idx
    h, w = k.shape[-2:]
    info["original_size"] = [h, w]
    if mask is not None:
        if mask.size not in (w, h * w):
            raise ValueError(f"{path}: mask of shape {mask.shape} does not fit k-space {h}x{w}")
        mask = np.broadcast_to(mask.reshape(-1, w) if mask.size == h * w else mask.reshape(1, w), (h, w))
    if remove_oversampling and h > w:
        if mask is not None and not np.all(mask == mask[:1]):
            raise ValueError(f"{path}: a 2-D sampling mask is not constant along the readout; cannot remove oversampling")
        k = fft2c(center_crop_or_pad(ifft2c(k), (w, w)))
        mask = None if mask is None else mask[:w]  # constant along the readout
    if size:
        k = np.stack([crop_kspace(s, size) for s in k])
        mask = None if mask is None else center_crop_or_pad(mask, (size, size))
    info["mask"] = None if mask is None else np.ascontiguousarray(mask, dtype=np.float32)
    info["size"] = list(k.shape[-2:])
    return k, info


class ReconCase(NamedTuple):
    """One slice to reconstruct (as fastMRI's ``VarNetSample``): undersampled ``kspace`` ``(C, H, W)``, ``mask``
    ``(H, W)`` float32, ESPIRiT ``maps`` from its ACS, the ``reference`` image (the fully sampled k-space
    combined with the maps), ``scale`` (the CG-SENSE estimate of the 99.5th percentile of ``|x|``), and where
    it came from: ``volume`` (subject), ``slice``, ``source`` (split or ``"real"``), ``data_range`` (the
    volume's reference maximum, for PSNR/SSIM; ``None``: the slice's)."""

    kspace: np.ndarray
    mask: np.ndarray
    maps: np.ndarray
    reference: np.ndarray
    scale: float
    volume: str = ""
    slice: int = 0
    source: str = ""
    data_range: float | None = None


def make_case(kspace_full: np.ndarray, mask: np.ndarray, calib_lines: int, kernel_width: int | None = None,
              **where: Any) -> ReconCase:
    """Undersample one slice ``(C, H, W)`` with ``mask`` into a :class:`ReconCase` (``where``: its
    ``volume``, ``slice``, ``source``, ``data_range``); maps by :func:`estimate_maps` from the ACS, the scale
    by :func:`scripts.core.sense.estimate_scale`."""
    y = (kspace_full * mask).astype(np.complex64)
    mask = mask.astype(np.float32)
    maps = estimate_maps(y, calib_lines, kernel_width)
    ref = np.sum(np.conj(maps) * ifft2c(kspace_full.astype(np.complex64)), axis=0)
    scale = float(estimate_scale(torch.from_numpy(y * mask)[None], SenseOp(torch.from_numpy(maps)[None], torch.from_numpy(mask)[None]))[0])
    return ReconCase(y, mask, maps, ref.astype(np.complex64), scale, **where)


def espirit_dataset(src: str | os.PathLike, dst: str | os.PathLike, calib_lines: int | None = None,
                    kernel_width: int | None = None, size: int | None = None, overwrite: bool = False) -> str:
    """Copy a fastMRI-format dataset ``src/{split}/*.h5`` to ``dst`` with ``image_complex`` and
    ``coil_maps`` replaced by the ESPIRiT combination of the reconstruction convention (maps from
    the central ``calib_lines`` of k-space, as :func:`make_case` computes them from the ACS).

    A prior trained on these images sees the coil-0-relative phase it meets at reconstruction.
    ``size``: centre-crop k-space to ``size x size`` first (:func:`crop_kspace`: same FOV, lower
    resolution), as :func:`read_kspace` does for the data to reconstruct. Existing output files
    are kept (resumable) unless ``overwrite``.
    """
    import h5py

    from scripts.io.fastmri_h5 import write_fastmri
    from scripts.phase.data import SPLIT_ALIASES, _h5_files

    src, dst = Path(src), Path(dst)
    for split in SPLIT_ALIASES:
        for name in SPLIT_ALIASES[split]:
            for path in _h5_files(src / name):
                out = dst / split / Path(path).name
                if out.exists() and not overwrite:
                    continue
                with h5py.File(path, "r") as f:
                    k = np.asarray(f["kspace"]).astype(np.complex64)
                    if k.ndim == 3:
                        k = k[:, None]
                    attrs = {a: f.attrs[a] for a in f.attrs if a not in ("max", "norm", "patient_id")}
                    acq = str(f.attrs.get("acquisition", "AXT1"))
                if size:
                    k = np.stack([crop_kspace(s, size) for s in k])
                cw = calib_lines or default_calib_lines(min(k.shape[-2:]))
                maps = np.stack([estimate_maps(s, cw, kernel_width) for s in k])
                image = np.sum(np.conj(maps) * ifft2c(k), axis=1).astype(np.complex64)
                attrs["image_complex_is"] = f"ESPIRiT combination sum_c conj(S_c) ifft(kspace_c), maps from the central {cw} lines (coil-0 phase)"
                write_fastmri(out, k, acquisition=acq, extra={"image_complex": image, "coil_maps": maps}, attrs=attrs)
    return str(dst)
