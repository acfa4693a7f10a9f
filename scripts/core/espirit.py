"""ESPIRiT coil sensitivity maps calibrated on a rectangular box of centred k-space: the bundle's one ESPIRiT.

:func:`espirit_calib` is the algorithm of ``sigpy.mri.app.EspiritCalib`` (Uecker et al. 2014: calibration
matrix, SVD with threshold ``thresh``, kernels to image space, per-pixel power iteration, phase aligned
to coil 0, maps zeroed where the eigenvalue is at most ``crop``), with one change: sigpy takes the
calibration data from a centred SQUARE of ``calib_width`` and a square kernel, while the fully sampled
region of a column mask is all rows x a few centre columns (10 columns at 256 px and centre fraction
0.04; the 10x10 square then leaves no eigenvalue above the crop threshold). sigpy has no public way to
calibrate on another region, and it runs on the GPU only through cupy, so the steps are written here
in torch (device-generic: numpy or CPU tensors in, the same maps as on a GPU). A box from :func:`calib_box` (a centred
square) gives sigpy's ``EspiritCalib`` maps (tested to float tolerance); :func:`acs_box` is the fully
sampled box of a mask (:func:`scripts.core.masks.acs_bounds`, all rows for a column mask).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

import torch

from scripts.core.fft import ifft2c
from scripts.core.masks import acs_bounds

__all__ = ["acs_box", "calib_box", "espirit_calib"]

Box = tuple[int, int, int, int]
KERNEL_CHUNK_ELEMENTS = 2**23  # image-space kernel samples held at once (64 MB complex64)


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
    kspace,
    box: Box,
    kernel_width: int | Sequence[int] = 6,
    thresh: float = 0.02,
    crop: float = 0.95,
    max_iter: int = 100,
    device: str | torch.device | None = None,
):
    """ESPIRiT maps ``(C, H, W)`` complex64 of centred k-space ``(C, H, W)``, calibrated on ``box``.

    ``box`` = ``(top, bottom, left, right)`` (half-open; :func:`calib_box`, :func:`acs_box`); only the
    k-space inside it is read. ``kernel_width``: one width, or ``(rows, columns)``. Maps are 0 where the
    eigenvalue is at most ``crop`` (``crop=0`` keeps the whole FOV). numpy in, numpy out; torch in, torch
    out; computed on ``device`` (default: where ``kspace`` is).
    """
    was_numpy = not isinstance(kspace, torch.Tensor)
    ksp = torch.as_tensor(np.asarray(kspace) if was_numpy else kspace).to(device=device, dtype=torch.complex64)
    if ksp.ndim != 3:
        raise ValueError(f"k-space must be (C, H, W), got {tuple(ksp.shape)}")
    num_coils, (h, w) = ksp.shape[0], ksp.shape[1:]
    top, bottom, left, right = (int(b) for b in box)
    kw = [int(kernel_width)] * 2 if np.isscalar(kernel_width) else [int(k) for k in kernel_width]
    calib = ksp[:, top:bottom, left:right]
    if calib.shape[1] < kw[0] or calib.shape[2] < kw[1]:
        raise ValueError(f"calibration box {tuple(calib.shape[1:])} is smaller than the kernel {tuple(kw)}")
    # calibration matrix: one row per kernel position, (coil, ky, kx) along the row (sigpy's array_to_blocks)
    mat = calib.unfold(1, kw[0], 1).unfold(2, kw[1], 1).reshape(num_coils, -1, kw[0] * kw[1])
    mat = mat.transpose(0, 1).reshape(-1, num_coils * kw[0] * kw[1])
    _, sv, vh = torch.linalg.svd(mat.to(torch.complex128), full_matrices=False)  # small: double precision is free
    kernels = vh[sv > thresh * sv.max()].reshape(-1, num_coils, *kw).to(ksp.dtype)
    # the kernels in image space (zero-padded to the k-space as sigpy.resize places them), then per pixel
    # the (C, C) matrix sum_k a_k a_k^H; its leading eigenvector is the maps, its eigenvalue the crop test
    # (kernels a few at a time: all of them at 256 px and 16 coils would take gigabytes). Pixel-major
    # (H*W, C, C) batched matmuls: 2-4x faster on a CPU than broadcasting over (C, C, H, W)
    y0, x0 = h // 2 - kw[0] // 2, w // 2 - kw[1] // 2
    aha = torch.zeros((h * w, num_coils, num_coils), dtype=ksp.dtype, device=ksp.device)
    step = max(1, KERNEL_CHUNK_ELEMENTS // (num_coils * h * w))
    for start in range(0, kernels.shape[0], step):
        part = kernels[start : start + step]
        padded = torch.zeros((part.shape[0], num_coils, h, w), dtype=ksp.dtype, device=ksp.device)
        padded[..., y0 : y0 + kw[0], x0 : x0 + kw[1]] = part
        img = ifft2c(padded).reshape(part.shape[0], num_coils, h * w).permute(2, 1, 0)  # (H*W, C, kernels)
        aha += img @ img.conj().transpose(1, 2)
    aha *= h * w / (kw[0] * kw[1])
    # per-pixel power iteration from ones (sigpy's alg.PowerMethod with a per-pixel norm)
    maps = torch.ones((h * w, num_coils, 1), dtype=ksp.dtype, device=ksp.device)
    eig = torch.ones((h * w, 1, 1), device=ksp.device)
    for _ in range(int(max_iter)):
        y = aha @ maps
        eig = torch.view_as_real(y).square().sum(dim=(1, 3), keepdim=True)[..., 0].sqrt()  # vector_norm: 10x slower
        maps = y / eig
    maps = maps[..., 0].T.reshape(num_coils, h, w)
    eig = eig.reshape(h, w)
    maps = maps * torch.conj(maps[0] / maps[0].abs())  # phase relative to coil 0
    maps = maps * (eig > crop)
    return maps.cpu().numpy() if was_numpy else maps
