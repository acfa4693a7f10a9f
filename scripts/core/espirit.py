"""ESPIRiT coil sensitivity maps calibrated on a rectangular box of centred k-space: the bundle's one ESPIRiT.

:func:`espirit_calib` is the algorithm of ``sigpy.mri.app.EspiritCalib`` (Uecker et al. 2014: calibration
matrix, SVD with threshold ``thresh``, kernels to image space, per-pixel power iteration, phase aligned
to coil 0, maps zeroed where the eigenvalue is at most ``crop``), with one change: sigpy takes the
calibration data from a centred SQUARE of ``calib_width`` and a square kernel, while the fully sampled
region of a column mask is all rows x a few centre columns (10 columns at 256 px and centre fraction
0.04; the 10x10 square then leaves no eigenvalue above the crop threshold). sigpy has no public way to
calibrate on another region, so the steps are written here with sigpy's public pieces
(``array_to_blocks``, ``resize``, ``ifft``, ``alg.PowerMethod``). A box from :func:`calib_box` (a centred
square) gives sigpy's ``EspiritCalib`` maps (tested to float tolerance); :func:`acs_box` is the fully
sampled box of a mask (:func:`scripts.core.masks.acs_bounds`, all rows for a column mask).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scripts.core.masks import acs_bounds

__all__ = ["acs_box", "calib_box", "espirit_calib"]

Box = tuple[int, int, int, int]


def calib_box(shape: Sequence[int], calib_width: int) -> Box:
    """The centred square of side ``min(calib_width, H, W)`` of k-space of spatial ``shape`` (``(..., H, W)``),
    placed as ``sigpy.resize`` crops it: ``(top, bottom, left, right)``, half-open."""
    h, w = (int(s) for s in shape[-2:])
    c = min(int(calib_width), h, w)
    top, left = h // 2 - c // 2, w // 2 - c // 2
    return top, top + c, left, left + c


def acs_box(mask: np.ndarray, shape: Sequence[int]) -> Box:
    """The fully sampled centre box of ``mask`` (:func:`scripts.core.masks.acs_bounds`) in k-space of spatial
    ``shape``; a column mask (``(W,)`` or ``(1, W)``) is sampled on every row, so its box spans all rows."""
    m = np.asarray(mask, dtype=bool)
    top, bottom, left, right = acs_bounds(m)
    if m.reshape(-1, m.shape[-1]).shape[0] == 1:
        top, bottom = 0, int(shape[-2])
    return top, bottom, left, right


def espirit_calib(
    kspace: np.ndarray,
    box: Box,
    kernel_width: int | Sequence[int] = 6,
    thresh: float = 0.02,
    crop: float = 0.95,
    max_iter: int = 100,
) -> np.ndarray:
    """ESPIRiT maps ``(C, H, W)`` complex64 of centred k-space ``(C, H, W)``, calibrated on ``box``.

    ``box`` = ``(top, bottom, left, right)`` (half-open; :func:`calib_box`, :func:`acs_box`); only the
    k-space inside it is read. ``kernel_width``: one width, or ``(rows, columns)``. Maps are 0 where the
    eigenvalue is at most ``crop`` (``crop=0`` keeps the whole FOV).
    """
    import sigpy as sp

    ksp = np.asarray(kspace, dtype=np.complex64)
    num_coils, img_shape = ksp.shape[0], ksp.shape[1:]
    if ksp.ndim != 3:
        raise ValueError(f"k-space must be (C, H, W), got {ksp.shape}")
    top, bottom, left, right = (int(b) for b in box)
    kw = [int(kernel_width)] * 2 if np.isscalar(kernel_width) else [int(k) for k in kernel_width]
    calib = ksp[:, top:bottom, left:right]
    if calib.shape[1] < kw[0] or calib.shape[2] < kw[1]:
        raise ValueError(f"calibration box {calib.shape[1:]} is smaller than the kernel {tuple(kw)}")
    # calibration matrix: one row per kernel position, (coil, ky, kx) along the row
    mat = sp.array_to_blocks(calib, kw, [1, 1])
    mat = mat.reshape([num_coils, -1, kw[0] * kw[1]]).transpose([1, 0, 2]).reshape([-1, num_coils * kw[0] * kw[1]])
    _, sv, vh = np.linalg.svd(mat, full_matrices=False)
    kernels = vh[sv > thresh * sv.max(), :].reshape([-1, num_coils, *kw])
    # per-pixel (C, C) matrix of the kernels in image space, pixels in sigpy's transposed order
    aha = np.zeros(img_shape[::-1] + (num_coils, num_coils), dtype=ksp.dtype)
    for kernel in kernels:
        img_kernel = sp.ifft(sp.resize(kernel, ksp.shape), axes=(-2, -1))
        a_h = np.expand_dims(img_kernel.T, axis=-1)
        aha += a_h @ np.conj(a_h.swapaxes(-1, -2))
    aha *= sp.prod(img_shape) / (kw[0] * kw[1])
    maps = np.ones(ksp.shape[::-1] + (1,), dtype=ksp.dtype)
    power = sp.alg.PowerMethod(lambda x: aha @ x, maps, max_iter=max_iter,
                               norm_func=lambda x: np.sum(np.abs(x) ** 2, axis=-2, keepdims=True) ** 0.5)
    while not power.done():
        power.update()
    maps = maps.T[0]
    maps *= np.conj(maps[0] / np.abs(maps[0]))  # phase relative to coil 0
    maps *= power.max_eig.T[0] > crop
    return maps
