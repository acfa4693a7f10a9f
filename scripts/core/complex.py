"""Complex images and phase: wrapping, the phasor and real/imaginary channel representations.

Every function takes NumPy arrays or torch tensors and returns the same kind (torch is only
imported by a caller that has tensors: NumPy-only users such as the phase sources stay light).

Phase is always returned in ``(-pi, pi]``: :func:`wrap_phase` is the one place that decides
the interval. ``atan2`` (``np.angle``) can return exactly ``-pi`` (for a ``-0.0`` imaginary
part), which is mapped to ``+pi``; the interval is taken in the output dtype (for float32,
``float32(pi)`` is the largest value and a value that rounds to ``-float32(pi)`` becomes
``+float32(pi)``).

- :func:`complex_to_phasor` / :func:`phasor_to_phase`: the unit phasor ``(cos phi, sin phi)``
  as two channels (what the phase models see and produce; continuous on the circle, unlike
  ``phi`` itself) and back, whatever length the vector has.
- :func:`complex_to_channels` / :func:`channels_to_complex`: real and imaginary parts as two
  channels (what the complex image prior sees and produces) and back.
- :func:`apply_phase`: ``magnitude * exp(i * phase)`` keeping the magnitude exactly.
- :func:`circular_variance`: the per-pixel spread of phase samples.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "apply_phase",
    "channels_to_complex",
    "circular_variance",
    "complex_to_channels",
    "complex_to_phasor",
    "phasor_to_phase",
    "wrap_phase",
]

_EDGE = 1e-6  # |imag| / |real| below which a value on the negative real axis is put at +pi


def _is_tensor(*values) -> bool:
    """Whether any of ``values`` is a torch tensor (without importing torch: none can be if it is not loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and any(isinstance(v, torch.Tensor) for v in values)


def wrap_phase(phase: np.ndarray | torch.Tensor, dtype=None) -> np.ndarray | torch.Tensor:
    """Wrap any real phase to ``(-pi, pi]`` in ``dtype`` (default: the input's floating dtype).

    Values already in ``[-pi, pi]`` (``pi`` as the input's dtype rounds it) are kept as they
    are; others are wrapped exactly through the phasor, ``angle(exp(i * phase))`` (NumPy: in
    float64; torch: in the tensor's dtype). The result is rounded to ``dtype`` and a value
    at or below ``-pi`` of that dtype becomes ``+pi`` of that dtype. NaN stays NaN.
    """
    if _is_tensor(phase):
        import torch

        x = phase if phase.is_floating_point() else phase.to(torch.get_default_dtype())
        out = x.dtype if dtype is None else dtype
        pi_in = float(torch.tensor(math.pi, dtype=x.dtype))
        w = torch.where(x.abs() <= pi_in, x, torch.atan2(torch.sin(x), torch.cos(x))).to(out)
        pi_out = float(torch.tensor(math.pi, dtype=out))
        return torch.where(w <= -pi_out, torch.full_like(w, pi_out), w)
    x = np.asarray(phase)
    in_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float64)
    out = in_dtype if dtype is None else np.dtype(dtype)
    x64 = x.astype(np.float64)
    inside = np.abs(x64) <= np.float64(in_dtype.type(np.pi))
    w = x64 if inside.all() else np.where(inside, x64, np.angle(np.exp(1j * x64)))
    w = w.astype(out)
    pi_out = out.type(np.pi)
    return np.where(w <= -pi_out, pi_out, w).astype(out, copy=False)


def complex_to_phasor(z: np.ndarray | torch.Tensor, dim: int = 0) -> np.ndarray | torch.Tensor:
    """Unit phasor ``(cos phi, sin phi)`` of a complex array, stacked at ``dim`` (float32).

    A pixel that is exactly zero has no phase; it gets ``(1, 0)`` (``angle(0) == 0``).
    """
    if _is_tensor(z):
        import torch

        phi = torch.angle(z)
        return torch.stack((torch.cos(phi), torch.sin(phi)), dim=dim).float()
    phi = np.angle(z)
    return np.stack((np.cos(phi), np.sin(phi)), axis=dim).astype(np.float32)


def phasor_to_phase(p: np.ndarray | torch.Tensor, dim: int = -3) -> np.ndarray | torch.Tensor:
    """Phase in (-pi, pi] of a 2-channel phasor (any length), channels at ``dim``."""
    if _is_tensor(p):
        import torch

        c, s = p.select(dim, 0), p.select(dim, 1)
        return wrap_phase(torch.atan2(s, c))
    p = np.asarray(p)
    c, s = np.take(p, 0, axis=dim), np.take(p, 1, axis=dim)
    return wrap_phase(np.arctan2(s, c))


def complex_to_channels(z: np.ndarray | torch.Tensor, dim: int = 0) -> np.ndarray | torch.Tensor:
    """Real and imaginary parts stacked at ``dim`` (float32)."""
    if _is_tensor(z):
        import torch

        return torch.stack((z.real, z.imag), dim=dim).float()
    z = np.asarray(z)
    return np.stack((z.real, z.imag), axis=dim).astype(np.float32)


def channels_to_complex(x: np.ndarray | torch.Tensor, dim: int = -3) -> np.ndarray | torch.Tensor:
    """Inverse of :func:`complex_to_channels` (complex64)."""
    if _is_tensor(x):
        import torch

        return torch.complex(x.select(dim, 0).float(), x.select(dim, 1).float())
    x = np.asarray(x)
    return (np.take(x, 0, axis=dim) + 1j * np.take(x, 1, axis=dim)).astype(np.complex64)


def apply_phase(magnitude: np.ndarray | torch.Tensor, phase: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """``magnitude * exp(i * phase)`` as complex64, computed in float64 so ``|z| == magnitude``
    to float32 rounding (about 1e-7 relative). Broadcasts (e.g. one magnitude, N phases).

    A phase within float32 rounding of +-pi lands on the negative real axis, where the
    float32 ``angle`` of the stored value can read -pi (or below -pi in float64); values
    within ``1e-6`` rad below the axis get a +0.0 imaginary part, so ``angle(z)`` is always
    in (-pi, pi] (there: exactly +pi; ``|z|`` unchanged to float32 rounding). A zero
    magnitude gives ``+0+0j`` (angle 0), never a signed zero whose angle would be -pi.
    """
    if _is_tensor(magnitude, phase):
        import torch

        m = torch.as_tensor(magnitude).double()
        ph = torch.as_tensor(phase, device=m.device).double()
        m, ph = torch.broadcast_tensors(m, ph)
        z = torch.polar(m, ph).to(torch.complex64)
        edge = (z.real < 0) & (z.imag <= 0) & (z.imag.abs() <= _EDGE * z.real.abs())
        if edge.any():
            z = torch.where(edge, torch.complex(z.real, torch.zeros_like(z.real)), z)
        return torch.where(m == 0, torch.zeros_like(z), z)  # +0+0j: angle 0, not atan2(-0, -0) = -pi
    m = np.asarray(magnitude, dtype=np.float64)
    z = (m * np.exp(1j * np.asarray(phase, dtype=np.float64))).astype(np.complex64)
    edge = (z.real < 0) & (z.imag <= 0) & (np.abs(z.imag) <= _EDGE * np.abs(z.real))
    if np.any(edge):
        z = np.where(edge, z.real.astype(np.complex64), z)
    return np.where(np.broadcast_to(m, z.shape) == 0, np.complex64(0), z).astype(np.complex64)


def circular_variance(phase: np.ndarray | torch.Tensor, dim: int = 0) -> np.ndarray | torch.Tensor:
    """Per-pixel phase spread across samples: ``1 - |mean_n exp(i phi_n)|`` in [0, 1].

    0: all samples agree; 1: phases spread uniformly round the circle (or cancel exactly).
    """
    if _is_tensor(phase):
        import torch

        ph = phase.double()
        r = torch.hypot(torch.cos(ph).mean(dim), torch.sin(ph).mean(dim))
        return (1.0 - r).clamp_(0.0, 1.0).float()
    ph = np.asarray(phase, dtype=np.float64)
    r = np.hypot(np.cos(ph).mean(axis=dim), np.sin(ph).mean(axis=dim))
    return np.clip(1.0 - r, 0.0, 1.0).astype(np.float32)
