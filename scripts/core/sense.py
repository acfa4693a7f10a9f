"""The SENSE forward model ``A = M F S`` on batches of slices, conjugate gradients, and the image scale.

``y = M F S x``: ``x`` ``(B, H, W)`` complex image, ``S`` ``(B, C, H, W)`` coil maps, ``F`` the centred
orthonormal FFT of :mod:`scripts.core.fft`, ``M`` a 0/1 sampling mask. :class:`SenseOp` applies ``A``,
``A^H`` and ``A^H A``; :func:`conjugate_gradient` solves Hermitian systems with one step size per image;
:func:`data_consistency` is the proximal step ``argmin_x w ||A x - y||^2 + ||x - x0||^2`` and
:func:`sense_init` the unregularised CG-SENSE image. :func:`estimate_scale` estimates the 99.5th
percentile of ``|x|`` from undersampled data (default: of a 20-iteration CG-SENSE image; on 12
simulated 64 px slices estimate / true = 0.95 +- 0.11 at 1-D R = 5.3 and 0.89 +- 0.06 at Poisson
R = 8), so that a prior or a regularisation weight can work in units of the tissue level.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from scripts.core.fft import fft2c, ifft2c
from scripts.core.masks import default_calib_lines

__all__ = ["SenseOp", "conjugate_gradient", "data_consistency", "estimate_scale", "sense_init", "zero_filled"]


class SenseOp:
    """``A = M F S`` on a batch: ``maps`` ``(B, C, H, W)`` complex, ``mask`` ``(B or 1, H, W)`` (0/1)."""

    def __init__(self, maps: torch.Tensor, mask: torch.Tensor) -> None:
        self.maps = torch.as_tensor(maps).to(torch.complex64)
        mask = torch.as_tensor(mask, dtype=torch.float32)
        self.mask = mask[:, None] if mask.ndim == 3 else mask.reshape(1, 1, *mask.shape[-2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask * fft2c(self.maps * x[:, None])

    def adjoint(self, k: torch.Tensor) -> torch.Tensor:
        return torch.sum(torch.conj(self.maps) * ifft2c(self.mask * k), dim=1)

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        return self.adjoint(self.forward(x))


def _bdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.sum(torch.conj(a) * b, dim=(-2, -1)).real


def conjugate_gradient(apply: Callable[[torch.Tensor], torch.Tensor], rhs: torch.Tensor, x0: torch.Tensor,
                       iters: int) -> torch.Tensor:
    """Batched CG for a Hermitian positive (semi-)definite ``apply``; one step size per image."""
    x = x0.clone()
    r = rhs - apply(x)
    p = r.clone()
    rs = _bdot(r, r)
    for _ in range(int(iters)):
        ap = apply(p)
        alpha = rs / _bdot(p, ap).clamp_min(1e-30)
        x = x + alpha[:, None, None] * p
        r = r - alpha[:, None, None] * ap
        rs_new = _bdot(r, r)
        p = r + (rs_new / rs.clamp_min(1e-30))[:, None, None] * p
        rs = rs_new
    return x


def data_consistency(x0: torch.Tensor, op: SenseOp, y: torch.Tensor, weight: float, iters: int) -> torch.Tensor:
    """``argmin_x weight * ||A x - y||^2 + ||x - x0||^2`` by ``iters`` CG steps warm-started at ``x0``."""
    if weight <= 0 or iters <= 0:
        return x0
    w = float(weight)
    return conjugate_gradient(lambda v: w * op.normal(v) + v, w * op.adjoint(y) + x0, x0, iters)


def zero_filled(y: torch.Tensor, op: SenseOp) -> torch.Tensor:
    """SENSE-combined zero-filled image ``S^H F^H M y`` ``(B, H, W)``."""
    return op.adjoint(y)


def sense_init(y: torch.Tensor, op: SenseOp, iters: int = 20) -> torch.Tensor:
    """Unregularised CG-SENSE image ``(B, H, W)`` (``iters`` CG steps on the normal equations, from zero)."""
    rhs = op.adjoint(y)
    return conjugate_gradient(op.normal, rhs, torch.zeros_like(rhs), iters)


def _p995(x: torch.Tensor) -> torch.Tensor:
    return torch.quantile(x.abs().flatten(1).float(), 0.995, dim=1)


def estimate_scale(y: torch.Tensor, op: SenseOp, method: str = "sense", calib_lines: int | None = None,
                   iters: int = 20) -> torch.Tensor:
    """Per-image estimate ``(B,)`` of the 99.5th percentile of ``|x|`` from undersampled ``y``: of the
    CG-SENSE image (``"sense"``, ``iters`` steps), of the zero-filled image (``"zero_filled"``, under-estimates
    by ~20 %) or of the zero-filled image of the central ``calib_lines`` square only (``"acs"``)."""
    if method == "zero_filled":
        s = _p995(op.adjoint(y))
    elif method == "sense":
        s = _p995(sense_init(y, op, iters))
    elif method == "acs":
        h, w = y.shape[-2:]
        c = default_calib_lines(min(h, w)) if calib_lines is None else int(calib_lines)
        box = torch.zeros((h, w), device=y.device)
        box[(h - c + 1) // 2 : (h - c + 1) // 2 + c, (w - c + 1) // 2 : (w - c + 1) // 2 + c] = 1
        s = _p995(SenseOp(op.maps, box[None]).adjoint(y))
    else:
        raise ValueError(f"scale method must be 'sense', 'zero_filled' or 'acs', got {method!r}")
    if not torch.all(s > 0):
        raise ValueError("cannot estimate the image scale: the data are all zero")
    return s
