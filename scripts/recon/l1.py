"""The L1-wavelet compressed-sensing baseline (``sigpy.mri.app.L1WaveletRecon``) and its lambda search.

:func:`l1_wavelet_recon` reconstructs one slice from masked multi-coil k-space and coil maps and returns
the complex image ``x`` (Daubechies-4 wavelets, ``lamda`` in the units of the k-space given). Callers
choose the units: the VarNet evaluation divides k-space by the peak of the zero-filled RSS and shows
the RSS of the coil images ``S_c x``; the prior study divides by the estimated tissue level
(``case.scale``, :func:`scripts.core.sense.estimate_scale`) and multiplies the image back.
:func:`tune_l1_lambda` picks lambda on validation cases that way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from scripts.core.metrics import slice_metrics

__all__ = ["l1_wavelet_recon", "tune_l1_lambda"]


def l1_wavelet_recon(kspace: np.ndarray, mask: np.ndarray, maps: np.ndarray, lamda: float, max_iter: int = 100) -> np.ndarray:
    """L1-wavelet reconstruction ``(H, W)`` complex64 of k-space ``(C, H, W)`` sampled by ``mask``
    (``(H, W)``, ``(1, W)`` or ``(W,)``; unsampled k-space is zeroed) with ``maps`` ``(C, H, W)``."""
    from sigpy.mri.app import L1WaveletRecon

    kspace = np.asarray(kspace, dtype=np.complex64)
    weights = np.broadcast_to(np.asarray(mask, dtype=np.float32).reshape(-1, kspace.shape[-1]), kspace.shape[-2:]).copy()
    x = L1WaveletRecon(kspace * weights, np.asarray(maps, dtype=np.complex64), float(lamda), weights=weights,
                       max_iter=int(max_iter), show_pbar=False).run()
    return np.asarray(x).astype(np.complex64)


def tune_l1_lambda(cases: Sequence[Mapping], grid: Sequence[float], max_iter: int = 100, metric: str = "psnr") -> dict:
    """Choose the L1-wavelet lambda maximising the mean ``metric`` over ``cases`` (the validation split).

    Cases are :class:`scripts.recon.cases.ReconCase` (k-space is divided by their ``scale``, so lambda is
    relative to the tissue level). Returns ``{"lambda": best, "grid": [...], "scores": [...], "metric": metric, "num_cases": n}``.
    """
    scores = []
    for lam in grid:
        vals = []
        for c in cases:
            x = (l1_wavelet_recon(c.kspace / np.float32(c.scale), c.mask, c.maps, lam, max_iter) * c.scale).astype(np.complex64)
            vals.append(slice_metrics(c.reference, x, c.data_range)[metric])
        scores.append(float(np.mean(vals)))
    best = int(np.argmax(scores)) if metric != "nmse" else int(np.argmin(scores))
    return {"lambda": float(grid[best]), "grid": [float(g) for g in grid], "scores": scores, "metric": metric,
            "num_cases": len(cases)}
