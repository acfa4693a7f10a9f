"""Centred, orthonormal 2-D FFTs over the last two axes, and MONAI's real/imaginary-last layout.

``fft2c(x) == fftshift(fft2(ifftshift(x), norm="ortho"))`` over the last two axes (fastMRI's
convention, identical to ``sigpy.fft(x, axes=(-2, -1), center=True)``). Written here rather than
taken from sigpy or ``monai.data.fft_utils.fftn_centered`` for speed on archive-scale data: for
even sizes the centring shifts are a chessboard modulation, so a batched torch FFT needs two
multiplications instead of four copies. numpy in, numpy out; torch in, torch out.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["fft2c", "ifft2c", "to_real_imag_last", "from_real_imag_last"]


def _as_tensor(x) -> tuple[torch.Tensor, bool]:
    if isinstance(x, torch.Tensor):
        return x, False
    return torch.from_numpy(np.ascontiguousarray(x)), True


def _checker(h: int, w: int, device=None) -> torch.Tensor:
    """``(-1)**(y + x)``: for even sizes, centring shifts are this modulation (no copies)."""
    y = 1 - 2 * (torch.arange(h, device=device) % 2)
    x = 1 - 2 * (torch.arange(w, device=device) % 2)
    return (y[:, None] * x[None, :]).to(torch.float32)


def _fft2c(x: torch.Tensor, inverse: bool) -> torch.Tensor:
    h, w = x.shape[-2:]
    fn = torch.fft.ifft2 if inverse else torch.fft.fft2
    if h % 2 or w % 2:
        return torch.fft.fftshift(fn(torch.fft.ifftshift(x, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))
    # For even sizes fftshift(F(ifftshift(x))) = (-1)^(H/2 + W/2) chk * F(chk * x), chk = (-1)^(y + x),
    # for the forward and the inverse DFT alike: two multiplications instead of four copies.
    chk = _checker(h, w, x.device)
    out = fn(x * chk, norm="ortho")
    return out.mul_(-chk if (h // 2 + w // 2) % 2 else chk)


def fft2c(x):
    """Centred orthonormal 2-D FFT over the last two axes (numpy in, numpy out; torch in, torch out).

    Same numbers as ``sigpy.fft(x, axes=(-2, -1), center=True, norm="ortho")`` and MONAI's
    ``fftn_centered``, computed with ``torch.fft`` (several times faster than numpy's FFT here).
    """
    t, was_numpy = _as_tensor(x)
    out = _fft2c(t.to(torch.complex64) if not t.is_complex() else t, inverse=False)
    return out.numpy() if was_numpy else out


def ifft2c(k):
    """Inverse of :func:`fft2c` (``sigpy.ifft(k, axes=(-2, -1), center=True, norm="ortho")``)."""
    t, was_numpy = _as_tensor(k)
    out = _fft2c(t.to(torch.complex64) if not t.is_complex() else t, inverse=True)
    return out.numpy() if was_numpy else out


def to_real_imag_last(x) -> torch.Tensor:
    """Complex ``(..., H, W)`` -> MONAI's real/imag-last float ``(..., H, W, 2)`` tensor (a view for complex64 tensors)."""
    t, _ = _as_tensor(x)
    return torch.view_as_real(t.to(torch.complex64).contiguous())


def from_real_imag_last(x) -> torch.Tensor:
    """MONAI's ``(..., H, W, 2)`` real/imag-last tensor -> complex64 ``(..., H, W)``."""
    t, _ = _as_tensor(x)
    if t.shape[-1] != 2:
        raise ValueError(f"expected a real/imag-last array (..., 2), got shape {tuple(t.shape)}")
    return torch.view_as_complex(t.to(torch.float32).contiguous())
