"""The L1-wavelet compressed-sensing baseline, batched and device-generic, and its lambda search.

:func:`l1_wavelet_batch` is the algorithm of ``sigpy.mri.app.L1WaveletRecon`` (FISTA on
``1/2 ||M F S x - y||^2 + lamda ||W x||_1``, Daubechies-4 wavelets with zero padding at the maximum
level, the wavelet treated as unitary in the proximal step, the step size ``1 / max eig(A^H A)`` from a
30-step power iteration), written in torch so that it runs on the GPU and on a batch of slices (one
lambda per slice) at once: sigpy's wavelet transform always runs on the CPU through pywt, even on a GPU.
The wavelet is ``ptwt`` (pywt's transform in torch, same coefficients). With the same step size it
gives sigpy's image to float tolerance (tested); unlike sigpy, the power iteration starts from a
seeded vector, so the same call gives the same image.

:func:`l1_wavelet_recon` reconstructs one slice (numpy in, numpy out). Callers choose the units: the
VarNet evaluation divides k-space by the peak of the zero-filled RSS and shows the RSS of the coil
images ``S_c x``; the prior study divides by the estimated tissue level (``case.scale``,
:func:`scripts.core.sense.estimate_scale`) and multiplies the image back. :func:`l1_wavelet_scaled` does
the latter for a batch of slices and :func:`tune_l1_lambda` picks lambda on validation cases that way, all
the grid's lambdas of a case in one batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from scripts.core.metrics import slice_metrics
from scripts.core.sense import SenseOp

__all__ = ["l1_wavelet_batch", "l1_wavelet_recon", "l1_wavelet_scaled", "max_eigenvalue", "tune_l1_lambda", "wavelet_soft_threshold"]


def max_eigenvalue(normal, shape: Sequence[int], device, iters: int = 30, seed: int = 0) -> torch.Tensor:
    """Largest eigenvalue ``(B,)`` of each image's Hermitian ``normal`` operator on images ``shape`` = ``(B, H, W)``:
    ``iters`` power-iteration steps (sigpy's ``MaxEig``) from a seeded complex Gaussian drawn on the CPU."""
    g = torch.Generator().manual_seed(int(seed))
    x = torch.randn(*shape[1:], 2, generator=g).mul_(0.5**0.5)
    x = torch.view_as_complex(x).to(device).expand(*shape)  # one start for every image: a batch is its slices
    eig = torch.ones(shape[0], device=device)
    for _ in range(int(iters)):
        y = normal(x)
        eig = torch.linalg.vector_norm(y.flatten(1), dim=1)
        x = y / eig[:, None, None]
    return eig


def _resize_even(x: torch.Tensor) -> torch.Tensor:
    """Zero-pad odd sides to even, as sigpy's ``fwt`` does (``sigpy.resize``: the pad goes first)."""
    h, w = x.shape[-2:]
    return torch.nn.functional.pad(x, (w % 2, 0, h % 2, 0)) if h % 2 or w % 2 else x


def wavelet_soft_threshold(x: torch.Tensor, threshold: torch.Tensor, wave_name: str = "db4") -> torch.Tensor:
    """``W^H soft(W x, threshold)`` for complex images ``x`` ``(B, H, W)`` and ``threshold`` ``(B,)``: sigpy's
    ``prox.UnitaryTransform(prox.L1Reg(...), linop.Wavelet(...))`` (all coefficients thresholded on their
    complex magnitude, the approximation included)."""
    import ptwt
    import pywt

    b, h, w = x.shape
    z = _resize_even(x)
    level = pywt.dwtn_max_level(z.shape[-2:], wave_name)
    # ptwt transforms real images: real and imaginary parts as one batch of 2B
    coeffs = ptwt.wavedec2(torch.cat([z.real, z.imag]), wave_name, mode="zero", level=level)
    t = threshold.to(x.real.dtype).reshape(b, 1, 1)

    def soft(c: torch.Tensor) -> torch.Tensor:
        mag = torch.hypot(c[:b], c[b:])
        gain = torch.clamp(mag - t, min=0) / torch.where(mag > 0, mag, torch.ones_like(mag))
        return torch.cat([c[:b] * gain, c[b:] * gain])

    shrunk = [soft(coeffs[0])] + [ptwt.constants.WaveletDetailTuple2d(*(soft(c) for c in d)) for d in coeffs[1:]]
    r = ptwt.waverec2(shrunk, wave_name)
    hh, ww = r.shape[-2:]
    r = r[..., hh - h :, ww - w :]  # sigpy.resize back to the image: the crop takes the first row/column of odd sides
    return torch.complex(r[:b], r[b:])


CPU_CHUNK_ELEMENTS = 2**18
"""On a CPU, slices are reconstructed this many k-space samples (coils x H x W) at a time: batching small
slices pays (64 px, 4 coils: 8 at once 3x faster per slice), large ones lose to cache misses (256 px,
16 coils: 4 at once 2.6x slower per slice; ``bench/bench_device.py``)."""


@torch.no_grad()
def l1_wavelet_batch(kspace: torch.Tensor, mask: torch.Tensor, maps: torch.Tensor, lamda, max_iter: int = 100, *,
                     alpha=None, wave_name: str = "db4", power_iter: int = 30, seed: int = 0,
                     chunk: int | None = None) -> torch.Tensor:
    """L1-wavelet images ``(B, H, W)`` complex64 of k-space ``(B, C, H, W)`` sampled by ``mask`` (0/1,
    ``(B or 1, H, W)``, ``(B or 1, 1, W)`` or ``(W,)``; unsampled k-space is zeroed) with coil ``maps`` ``(B, C, H, W)``,
    on the device of ``kspace``. ``lamda`` and ``alpha`` (the FISTA step; default ``1 / max eig(A^H A)``)
    are one number or one per slice. ``chunk``: slices at a time (default: all on a GPU; on a CPU, as many as
    hold :data:`CPU_CHUNK_ELEMENTS` k-space samples); a slice's result does not depend on the chunk beyond float
    rounding."""
    kspace = torch.as_tensor(kspace).to(torch.complex64)
    device = kspace.device
    b, c, h, w = kspace.shape
    mask = torch.as_tensor(mask, dtype=torch.float32, device=device)
    mask = mask[None] if mask.ndim == 1 else mask  # (W,) -> (1, W): one column mask
    mask = mask.reshape(-1, *mask.shape[-2:]).expand(-1, h, w)
    per_slice = lambda v: torch.as_tensor(v, dtype=torch.float32, device=device).reshape(-1).expand(b)  # noqa: E731
    if chunk is None:
        chunk = b if device.type != "cpu" else max(1, CPU_CHUNK_ELEMENTS // (c * h * w))
    if chunk < b:
        lam, step = per_slice(lamda), None if alpha is None else per_slice(alpha)
        return torch.cat([l1_wavelet_batch(kspace[i : i + chunk], mask[i : i + chunk] if len(mask) > 1 else mask,
                                           maps[i : i + chunk], lam[i : i + chunk], max_iter,
                                           alpha=None if step is None else step[i : i + chunk], wave_name=wave_name,
                                           power_iter=power_iter, seed=seed, chunk=chunk) for i in range(0, b, chunk)])
    op = SenseOp(torch.as_tensor(maps).to(device=device, dtype=torch.complex64), mask)
    lamda = per_slice(lamda)
    if alpha is None:
        eig = max_eigenvalue(op.normal, (b, h, w), device, power_iter, seed)
        alpha = torch.where(eig > 0, 1 / eig, torch.ones_like(eig))
    alpha = per_slice(alpha)
    a = alpha[:, None, None]
    aty = op.adjoint(kspace)
    x = torch.zeros((b, h, w), dtype=torch.complex64, device=device)
    z, t = x.clone(), 1.0
    for _ in range(int(max_iter)):
        x_old = x
        x = z - a * (op.normal(z) - aty)
        x = wavelet_soft_threshold(x, lamda * alpha, wave_name)
        t_old, t = t, (1 + (1 + 4 * t * t) ** 0.5) / 2
        z = x + ((t_old - 1) / t) * (x - x_old)
    return x


def l1_wavelet_recon(kspace: np.ndarray, mask: np.ndarray, maps: np.ndarray, lamda: float, max_iter: int = 100,
                     device: str | torch.device = "cpu") -> np.ndarray:
    """L1-wavelet reconstruction ``(H, W)`` complex64 of k-space ``(C, H, W)`` sampled by ``mask`` (``(H, W)``,
    ``(1, W)`` or ``(W,)``) with ``maps`` ``(C, H, W)``, computed on ``device`` (:func:`l1_wavelet_batch`)."""
    k = torch.from_numpy(np.ascontiguousarray(kspace, dtype=np.complex64))[None].to(device)
    s = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.complex64))[None]
    return l1_wavelet_batch(k, np.asarray(mask, dtype=np.float32), s, float(lamda), max_iter)[0].cpu().numpy()


def l1_wavelet_scaled(kspace: np.ndarray, mask: np.ndarray, maps: np.ndarray, scales: Sequence[float], lamda,
                      max_iter: int = 100, device: str | torch.device = "cpu", batch_size: int = 16) -> np.ndarray:
    """L1-wavelet images ``(B, H, W)`` complex64 of k-space ``(B, C, H, W)`` with ``maps`` ``(B, C, H, W)``, in
    units of the per-slice ``scales``: ``x_b = scale_b * L1(kspace_b / scale_b)``, so that ``lamda`` (one, or
    one per slice) is relative to the tissue level. One ``mask`` (``(H, W)``, ``(1, W)`` or ``(W,)``) for all
    slices; ``batch_size`` slices at a time on ``device``."""
    kspace, maps = np.asarray(kspace), np.asarray(maps)
    scales = np.asarray(scales, dtype=np.float32).reshape(-1)
    lamda = np.broadcast_to(np.asarray(lamda, dtype=np.float32), scales.shape)
    m = np.asarray(mask, dtype=np.float32)
    out = []
    for i in range(0, len(kspace), int(batch_size)):
        sl = slice(i, i + int(batch_size))
        k = torch.from_numpy(np.ascontiguousarray(kspace[sl] / scales[sl, None, None, None], dtype=np.complex64))
        s = torch.from_numpy(np.ascontiguousarray(maps[sl], dtype=np.complex64))
        x = l1_wavelet_batch(k.to(device), m, s, torch.from_numpy(lamda[sl].copy()), max_iter).cpu().numpy()
        out.append((x * scales[sl, None, None]).astype(np.complex64))
    return np.concatenate(out)


def tune_l1_lambda(cases: Sequence[Mapping], grid: Sequence[float], max_iter: int = 100, metric: str = "psnr",
                   device: str | torch.device = "cpu") -> dict:
    """Choose the L1-wavelet lambda maximising the mean ``metric`` over ``cases`` (the validation split).

    Cases are :class:`scripts.recon.cases.ReconCase` (k-space is divided by their ``scale``, so lambda is
    relative to the tissue level); each case's grid runs as one batch on ``device``. Returns
    ``{"lambda": best, "grid": [...], "scores": [...], "metric": metric, "num_cases": n}``.
    """
    n = len(grid)
    per_case = []
    for c in cases:
        x = l1_wavelet_scaled(np.repeat(c.kspace[None], n, 0), c.mask, np.repeat(c.maps[None], n, 0), [c.scale] * n,
                              [float(g) for g in grid], max_iter, device)
        per_case.append([slice_metrics(c.reference, xi, c.data_range)[metric] for xi in x])
    scores = [float(v) for v in np.mean(per_case, axis=0)]
    best = int(np.argmax(scores)) if metric != "nmse" else int(np.argmin(scores))
    return {"lambda": float(grid[best]), "grid": [float(g) for g in grid], "scores": scores, "metric": metric,
            "num_cases": len(cases)}
