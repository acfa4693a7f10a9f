"""Cartesian under-sampling masks for VarNet training and evaluation.

Three mask types, all on centred k-space (DC at index ``N // 2``):

- ``"equispaced"``: MONAI's :class:`~monai.apps.reconstruction.transforms.EquispacedKspaceMask`
  (fastMRI's equispaced mask: ``round(W * center_fraction)`` centre columns, the rest equally
  spaced with a random offset so that about ``W / R`` columns are kept). The published
  comparison uses this at R = 4, 6, 8, 10 with centre fraction 0.04.
- ``"random"``: MONAI's :class:`~monai.apps.reconstruction.transforms.RandomKspaceMask`
  (centre columns plus columns drawn i.i.d. with the probability that gives ``W / R`` in
  expectation).
- ``"poisson"``: 2-D variable-density Poisson-disc sampling with the generator of
  :func:`sigpy.mri.poisson` (density ``1 / (1 + s|r|)``, corners cropped) and a fully
  sampled ``round(H * cf) x round(W * cf)`` calibration box in the centre.

A mask is returned as a boolean numpy array that broadcasts against ``(coils, H, W)``
k-space: ``(1, W)`` for the column masks, ``(H, W)`` for Poisson. :func:`to_varnet_mask`
gives one sample's VarNet mask, ``(1, 1, 1, W, 1)`` or ``(1, 1, H, W, 1)``; a batch stacks them
(:class:`scripts.recon.varnet_model.VarNet` takes one mask per sample).

The prior-regularised reconstruction names its patterns by calibration lines instead of a centre
fraction (:func:`pattern_mask`: ``"equispaced1d"`` R = 5 and ``"poisson"`` R = 8, the published 30
lines of 256 scaled to the image, :func:`default_calib_lines`), made by the same :func:`make_mask`.

Determinism: every mask is a pure function of ``seed``. :func:`fixed_mask_seed` turns
``(seed, file name, slice, R)`` into a seed, so an evaluation gives every model the same
mask for the same slice and acceleration, whichever order the slices are visited in.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "DEFAULT_ACCELERATIONS",
    "DEFAULT_CENTER_FRACTION",
    "MASK_PATTERNS",
    "MASK_TYPES",
    "MaskSampler",
    "acs_bounds",
    "acs_bounds_t",
    "acs_size",
    "column_mask",
    "default_calib_lines",
    "effective_acceleration",
    "fixed_mask_seed",
    "make_mask",
    "pattern_mask",
    "poisson_mask",
    "to_varnet_mask",
]

MASK_TYPES = ("equispaced", "random", "poisson")
DEFAULT_ACCELERATIONS = (4, 6, 8, 10)
DEFAULT_CENTER_FRACTION = 0.04
MASK_PATTERNS = ("equispaced1d", "poisson")  # the prior-regularised reconstruction's names (:func:`pattern_mask`)
PATTERN_ACCELERATION = {"equispaced1d": 5.0, "poisson": 8.0}
PUBLISHED_CALIB_LINES, PUBLISHED_SIZE = 30, 256  # 30 calibration lines of 256 in the published 1-D R=5 pattern


def fixed_mask_seed(seed: int, *key: object) -> int:
    """A 31-bit seed from ``seed`` and a key (e.g. file name, slice, R); stable across runs and platforms."""
    text = "\x1f".join(str(k) for k in (seed, *key))
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


def column_mask(kind: str, num_cols: int, acceleration: float, center_fraction: float, seed: int) -> np.ndarray:
    """A 1-D column mask ``(num_cols,)`` bool, made by MONAI's equispaced/random k-space mask transform.

    When the ``round(W * center_fraction)`` centre columns alone reach the acceleration, the mask is just
    those columns (MONAI's equispaced mask divides by zero there; its random mask gives the same).
    """
    from monai.apps.reconstruction.transforms.array import EquispacedKspaceMask, RandomKspaceMask

    cls = {"equispaced": EquispacedKspaceMask, "random": RandomKspaceMask}[kind]
    if acceleration <= 1:
        return np.ones(num_cols, dtype=bool)
    num_low = int(round(num_cols * center_fraction))
    if num_low * float(acceleration) >= num_cols:
        mask = np.zeros(num_cols, dtype=bool)
        mask[(num_cols - num_low + 1) // 2 : (num_cols - num_low + 1) // 2 + num_low] = True
        return mask
    transform = cls(center_fractions=[center_fraction], accelerations=[acceleration], spatial_dims=2, is_complex=True)
    transform.set_random_state(seed=int(seed) % (2**32))
    # The transform under-samples whatever it is given; a (1, 1, W, 2) dummy keeps that cheap.
    transform(torch.zeros(1, 1, num_cols, 2))
    mask = np.asarray(transform.mask).reshape(-1) > 0
    # MONAI puts the centre block at [(W - n + 1) // 2, ... + n); it is always at least one column
    # (the DC line) so that the VarNet's ACS search never sees an empty centre.
    mask[num_cols // 2] = True
    return mask


def _poisson_generator():
    try:  # the numba kernel behind sigpy.mri.poisson (sigpy 0.1.27)
        from sigpy.mri.samp import _poisson

        return _poisson
    except ImportError:  # pragma: no cover - other sigpy versions
        return None


def poisson_mask(
    shape: Sequence[int],
    acceleration: float,
    center_fraction: float = DEFAULT_CENTER_FRACTION,
    seed: int = 0,
    crop_corner: bool = True,
    tol: float = 0.02,
    max_iter: int = 40,
    max_attempts: int = 30,
) -> np.ndarray:
    """A 2-D variable-density Poisson-disc mask ``(H, W)`` bool with a fully sampled centre box.

    Same density model and generator as :func:`sigpy.mri.poisson`; the slope search is our
    own because sigpy's bisection never ends when the target acceleration cannot be met
    within its tolerance (it loops forever on, e.g., 32x32 at R = 10 with a 1x1 calibration
    region). Here the search stops after ``max_iter`` steps and keeps the mask whose
    acceleration is closest to the target (relative tolerance ``tol``). The calibration box is
    ``max(2, round(H * cf)) x max(2, round(W * cf))``, placed like MONAI's centre columns.
    """
    ny, nx = (int(s) for s in shape)
    if acceleration <= 1:
        return np.ones((ny, nx), dtype=bool)
    cy, cx = max(2, int(round(ny * center_fraction))), max(2, int(round(nx * center_fraction)))
    generator = _poisson_generator()
    if generator is None:  # pragma: no cover
        import sigpy.mri

        mask = sigpy.mri.poisson((ny, nx), acceleration, calib=(cy, cx), dtype=np.float32, seed=seed, tol=tol * acceleration) > 0
    else:
        y, x = np.mgrid[:ny, :nx].astype(np.float64)
        x = np.maximum(abs(x - nx / 2) - cx / 2, 0)
        x /= max(x.max(), 1e-12)
        y = np.maximum(abs(y - ny / 2) - cy / 2, 0)
        y /= max(y.max(), 1e-12)
        r = np.sqrt(x**2 + y**2)
        lo, hi = 0.0, float(max(nx, ny))
        best, best_err = None, np.inf
        for _ in range(max_iter):
            slope = (lo + hi) / 2
            radius_x = np.clip((1 + r * slope) * nx / max(nx, ny), 1, None)
            radius_y = np.clip((1 + r * slope) * ny / max(nx, ny), 1, None)
            cand = generator(nx, ny, max_attempts, radius_x, radius_y, (cy, cx), int(seed) % (2**32)) > 0
            if crop_corner:
                cand &= r < 1
            cand[(ny - cy + 1) // 2 : (ny - cy + 1) // 2 + cy, (nx - cx + 1) // 2 : (nx - cx + 1) // 2 + cx] = True
            accel = cand.size / cand.sum()
            err = abs(accel - acceleration)
            if err < best_err:
                best, best_err = cand, err
            if err < tol * acceleration:
                break
            if accel < acceleration:
                lo = slope
            else:
                hi = slope
        mask = best
    mask = np.asarray(mask, dtype=bool)
    mask[(ny - cy + 1) // 2 : (ny - cy + 1) // 2 + cy, (nx - cx + 1) // 2 : (nx - cx + 1) // 2 + cx] = True
    return mask


def make_mask(
    mask_type: str,
    shape: Sequence[int],
    acceleration: float,
    center_fraction: float = DEFAULT_CENTER_FRACTION,
    seed: int = 0,
) -> np.ndarray:
    """A boolean mask for k-space of spatial ``shape = (H, W)``: ``(1, W)`` (column masks) or ``(H, W)`` (Poisson)."""
    if mask_type not in MASK_TYPES:
        raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
    height, width = (int(s) for s in shape[-2:])
    return _cached_mask(mask_type, height, width, float(acceleration), float(center_fraction), int(seed))


@functools.lru_cache(maxsize=4096)
def _cached_mask(mask_type: str, height: int, width: int, acceleration: float, center_fraction: float, seed: int) -> np.ndarray:
    # Poisson masks take about a second at 256x256: memoised (read-only arrays), so repeated
    # evaluations in one process and the training mask bank pay once per distinct mask.
    if mask_type == "poisson":
        mask = poisson_mask((height, width), acceleration, center_fraction, seed)
    else:
        mask = column_mask(mask_type, width, acceleration, center_fraction, seed)[None, :]
    mask.setflags(write=False)
    return mask


def default_calib_lines(size: int) -> int:
    """The published 30 calibration lines of 256, scaled to ``size`` (64 px: 8 lines, 32 px: 4), at least 4."""
    return max(4, int(round(PUBLISHED_CALIB_LINES * int(size) / PUBLISHED_SIZE)))


def pattern_mask(pattern: str, shape: Sequence[int], acceleration: float | None = None, calib_lines: int | None = None,
                 seed: int = 0) -> np.ndarray:
    """A mask of the prior-regularised reconstruction, ``(H, W)`` float32 (1 = sampled), by :func:`make_mask`.

    ``"equispaced1d"``: ``"equispaced"`` columns with ``calib_lines`` fully sampled centre columns (default
    R = 5); ``"poisson"``: a ``calib x calib`` centre box (scaled with the aspect ratio; default R = 8).
    ``calib_lines`` defaults to :func:`default_calib_lines` of the shorter side.
    """
    if pattern not in MASK_PATTERNS:
        raise ValueError(f"mask must be one of {MASK_PATTERNS}, got {pattern!r}")
    h, w = (int(s) for s in shape[-2:])
    r = PATTERN_ACCELERATION[pattern] if acceleration is None else float(acceleration)
    if pattern == "equispaced1d":
        n_low = default_calib_lines(w) if calib_lines is None else int(calib_lines)
        cols = make_mask("equispaced", (h, w), r, n_low / w, int(seed))
        return np.broadcast_to(cols.astype(np.float32), (h, w)).copy()
    c = default_calib_lines(min(h, w)) if calib_lines is None else int(calib_lines)
    return make_mask("poisson", (h, w), r, c / min(h, w), int(seed)).astype(np.float32)


def to_varnet_mask(mask: np.ndarray | torch.Tensor) -> torch.Tensor:
    """VarNet's mask layout: bool ``(1, 1, 1, W, 1)`` from ``(W,)``/``(1, W)``, ``(1, 1, H, W, 1)`` from ``(H, W)``."""
    m = mask.bool() if isinstance(mask, torch.Tensor) else torch.from_numpy(np.array(mask, dtype=bool))
    if m.ndim == 1:
        m = m[None]
    if m.ndim != 2:
        raise ValueError(f"mask must be (W,), (1, W) or (H, W), got {tuple(m.shape)}")
    return m[None, None, :, :, None]


def effective_acceleration(mask: np.ndarray) -> float:
    """Number of k-space samples over sampled ones (a column mask counts columns)."""
    mask = np.asarray(mask, dtype=bool)
    return float(mask.size / max(int(mask.sum()), 1))


def acs_bounds(mask: np.ndarray | torch.Tensor) -> tuple[int, int, int, int]:
    """The largest fully sampled box around the k-space centre: ``(top, bottom, left, right)``, half-open.

    ``mask`` is ``(W,)``, ``(1, W)`` or ``(H, W)`` (any leading singleton dims are dropped); for a
    column mask the box spans all rows. Grows one side at a time while the new edge is fully
    sampled, so a lone sample next to the box does not count.
    """
    m = torch.as_tensor(np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask).astype(bool))
    return acs_bounds_t(m.reshape(m.shape[-2:]) if m.ndim >= 2 else m[None])


def acs_bounds_t(m: torch.Tensor) -> tuple[int, int, int, int]:
    """:func:`acs_bounds` of a bool ``(H, W)`` tensor (``H`` = 1: a column mask), in TorchScript-able torch."""
    height, width = m.shape[0], m.shape[1]
    if height == 1:  # column mask: contiguous run through the centre column
        c = width // 2
        if not bool(m[0, c]):
            return 0, 1, c, c
        left, right = c, c + 1
        while left > 0 and bool(m[0, left - 1]):
            left -= 1
        while right < width and bool(m[0, right]):
            right += 1
        return 0, 1, left, right
    cy, cx = height // 2, width // 2
    if not bool(m[cy, cx]):
        return cy, cy, cx, cx
    top, bottom, left, right = cy, cy + 1, cx, cx + 1
    grown = True
    while grown:
        grown = False
        if top > 0 and bool(m[top - 1, left:right].all()):
            top, grown = top - 1, True
        if bottom < height and bool(m[bottom, left:right].all()):
            bottom, grown = bottom + 1, True
        if left > 0 and bool(m[top:bottom, left - 1].all()):
            left, grown = left - 1, True
        if right < width and bool(m[top:bottom, right].all()):
            right, grown = right + 1, True
    return top, bottom, left, right


def acs_size(mask: np.ndarray | torch.Tensor) -> tuple[int, int]:
    """``(rows, columns)`` of :func:`acs_bounds` (rows = 1 for a column mask, meaning all rows)."""
    top, bottom, left, right = acs_bounds(mask)
    return bottom - top, right - left


class MaskSampler:
    """Draws masks for training (random R and pattern) or evaluation (fixed per slice).

    Args:
        mask_type: one of :data:`MASK_TYPES`.
        accelerations: R values; training picks one uniformly per slice (mixed-R training),
            ``[R]`` trains one model per R.
        center_fractions: one value for all R, or one per R.
        seed: base seed of the fixed (evaluation/validation) masks.
        poisson_bank: training draws Poisson masks from this many seeds per R (each costs about
            a second at 256x256 and is memoised); 0 = a fresh mask every time.
    """

    def __init__(
        self,
        mask_type: str = "equispaced",
        accelerations: Sequence[float] = DEFAULT_ACCELERATIONS,
        center_fractions: float | Sequence[float] = DEFAULT_CENTER_FRACTION,
        seed: int = 0,
        poisson_bank: int = 256,
    ):
        if mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
        self.mask_type = mask_type
        self.accelerations = [float(a) for a in (accelerations if isinstance(accelerations, Sequence) else [accelerations])]
        if not self.accelerations:
            raise ValueError("accelerations must not be empty")
        cfs = [float(center_fractions)] if np.isscalar(center_fractions) else [float(c) for c in center_fractions]
        if len(cfs) == 1:
            cfs = cfs * len(self.accelerations)
        if len(cfs) != len(self.accelerations):
            raise ValueError(f"{len(cfs)} centre fractions for {len(self.accelerations)} accelerations")
        self.center_fractions = cfs
        self.seed = int(seed)
        self.poisson_bank = int(poisson_bank)

    def center_fraction(self, acceleration: float) -> float:
        return self.center_fractions[self.accelerations.index(float(acceleration))] if float(acceleration) in self.accelerations else self.center_fractions[0]

    def random(self, shape: Sequence[int], rng: np.random.Generator) -> tuple[np.ndarray, float]:
        """A random mask and its R (training); Poisson masks come from a bank of ``poisson_bank`` per R."""
        i = int(rng.integers(len(self.accelerations)))
        seed = int(rng.integers(self.poisson_bank if self.mask_type == "poisson" and self.poisson_bank else 2**31 - 1))
        return make_mask(self.mask_type, shape, self.accelerations[i], self.center_fractions[i], seed), self.accelerations[i]

    def fixed(self, shape: Sequence[int], key: Sequence[object], acceleration: float | None = None) -> tuple[np.ndarray, float]:
        """The mask for ``key`` (e.g. ``(file name, slice)``): the same on every call and for every model.

        Without ``acceleration`` the R is itself a fixed choice from ``accelerations`` (mixed-R validation).
        """
        if acceleration is None:
            acceleration = self.accelerations[fixed_mask_seed(self.seed, "R", *key) % len(self.accelerations)]
        seed = fixed_mask_seed(self.seed, self.mask_type, *key, float(acceleration))
        return make_mask(self.mask_type, shape, acceleration, self.center_fraction(acceleration), seed), float(acceleration)
