"""Phase physics of MRI, shared by the simulator and the "physics" phase baseline.

What a complex MR image's phase is made of, and the small functions that build each part:

- **B0 off-resonance.** A susceptibility map ``chi`` (ppm) perturbs the main field. The
  relative field ``delta_b`` (ppm) is the convolution of ``chi`` with the unit dipole,
  computed in k-space by :func:`dipole_kernel`, D(k) = 1/3 - (k.b)^2/|k|^2, D(0) = 0
  (:func:`field_from_susceptibility`, zero-padded 2x so the periodic FFT does not wrap).
  When that is computed on a coarse grid, layers thinner than a voxel (skin, fat, skull)
  are better served by :func:`local_field`, the locally planar slab approximation,
  evaluated at the image resolution. The field accumulates phase during the echo time:
  :func:`b0_phase`, phi = 2*pi * gamma_bar * B0 * delta_b * 1e-6 * TE, gamma_bar =
  42.58 MHz/T. Air/tissue boundaries dominate (chi_air - chi_water is about +9.4 ppm),
  then bone, fat, venous blood, iron and myelin. Scanners shim the field over the brain
  with low-order spherical harmonics: :func:`shim` removes a polynomial fit inside a mask.
- **Chemical shift.** Fat precesses about 3.4 ppm slower than water:
  :func:`chemical_shift_phase` is its extra phase at the echo time, and
  :func:`fat_signal_factor` the complex signal of the six-peak fat spectrum.
- **RF transmit/receive phase.** Smooth, roughly quadratic over the head:
  :func:`rf_phase` (documented random ranges), plus the per-coil receive phase that lives
  in the coil sensitivity maps.
- **Background.** Where there is no signal the phase is that of the noise: uniform.

Susceptibility values are tabulated in :data:`CHI_PPM` (relative to water) and mixed from
tissue fractions by :func:`susceptibility_map`. For a magnitude-only image,
:func:`head_mask` finds the head, :func:`segment_head` gives tissue/air masks and
:func:`slab_from_mask` turns a 2-D head mask into a rounded 3-D slab, so that the dipole
field of a single slice has the structure of a finite head (a 2-D mask extruded to infinity
along B0 has a constant field inside). All phases are computed with ``np.angle``/``atan2``-style functions, never
``arctan(imag/real)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import scipy.fft as sfft
import scipy.ndimage as ndi

__all__ = [
    "CHI_PPM",
    "FAT_PEAKS",
    "FAT_SHIFT_PPM",
    "GAMMA_BAR_HZ_PER_T",
    "b0_phase",
    "chemical_shift_phase",
    "dipole_kernel",
    "fat_signal_factor",
    "field_from_susceptibility",
    "head_mask",
    "local_field",
    "polynomial_basis",
    "rf_phase",
    "segment_head",
    "shim",
    "slab_from_mask",
    "susceptibility_map",
    "unit_vector",
]

GAMMA_BAR_HZ_PER_T = 42.577478e6
"""Proton gyromagnetic ratio over 2*pi (Hz/T)."""

FAT_SHIFT_PPM = -3.4
"""Main (methylene) fat resonance relative to water (ppm)."""

FAT_PEAKS: tuple[tuple[float, float], ...] = (
    (-3.80, 0.087),
    (-3.40, 0.693),
    (-2.60, 0.128),
    (-1.94, 0.004),
    (-0.39, 0.039),
    (0.60, 0.048),
)
"""Six-peak fat spectrum (shift ppm relative to water, relative amplitude; Ren et al. 2008)."""

CHI_PPM: dict[str, float] = {
    # Volume susceptibility relative to water (SI ppm). Water is -9.05 ppm absolute.
    "air": 9.4,  # air +0.36 ppm absolute: +9.4 ppm relative to water/tissue
    "csf": 0.0,  # the usual QSM reference
    "gm": 0.03,  # cortical grey matter, slightly paramagnetic (iron)
    "deep_gm": 0.10,  # iron-rich nuclei (putamen, pallidum); not separated in MNI GM
    "wm": -0.03,  # myelin is diamagnetic
    "vein": 0.45,  # deoxygenated blood, Hct 0.4, Y 0.6: about 0.3-0.5 ppm
    "fat": 0.6,  # adipose tissue, about -8.4 ppm absolute
    "bone": -2.0,  # cortical bone, about -11 ppm absolute
    "marrow": -0.5,  # diploe: trabecular bone + fatty marrow
    "soft": 0.0,  # skin, muscle, vitreous, other soft tissue
}
"""Default susceptibilities (ppm relative to water) used by :func:`susceptibility_map`."""


def unit_vector(v: Sequence[float]) -> np.ndarray:
    """``v`` normalised to unit length (float64)."""
    v = np.asarray(v, dtype=np.float64)
    n = np.linalg.norm(v)
    if not n > 0:
        raise ValueError(f"direction must be non-zero, got {v}")
    return v / n


def _kgrid(shape: Sequence[int], voxel_size: Sequence[float], rfft: bool, dtype=np.float64) -> list[np.ndarray]:
    """Broadcastable spatial-frequency grids (cycles/mm) of an FFT of ``shape``."""
    ndim = len(shape)
    grids = []
    for ax, (n, d) in enumerate(zip(shape, voxel_size)):
        k = sfft.rfftfreq(n, d) if (rfft and ax == ndim - 1) else sfft.fftfreq(n, d)
        grids.append(k.astype(dtype).reshape([-1 if i == ax else 1 for i in range(ndim)]))
    return grids


def dipole_kernel(
    shape: Sequence[int],
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    voxel_size: float | Sequence[float] = 1.0,
    rfft: bool = False,
    dtype=np.float64,
) -> np.ndarray:
    """Unit dipole in k-space: D(k) = 1/3 - (k.b)^2 / |k|^2, with D(0) = 0.

    ``shape`` is 2-D or 3-D, in FFT (un-shifted) order. ``b0_dir`` is the main-field
    direction in array-axis coordinates (3 components; normalised here). For a 2-D
    ``shape`` the object is taken as invariant along a third axis (k_3 = 0), so only the
    first two components of ``b0_dir`` enter ``k.b`` (|b| is still the 3-D norm): B0 along
    that third axis gives D = 1/3 everywhere. ``rfft=True`` returns the half spectrum that
    matches ``scipy.fft.rfftn``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3):
        raise ValueError(f"dipole_kernel needs a 2-D or 3-D shape, got {shape}")
    b = unit_vector(b0_dir)
    if b.size != 3:
        raise ValueError(f"b0_dir must have 3 components, got {b0_dir}")
    vs = np.broadcast_to(np.asarray(voxel_size, dtype=np.float64), (len(shape),))
    ks = _kgrid(shape, vs, rfft, dtype)
    kdotb = sum(k * dtype(bi) for k, bi in zip(ks, b))
    k2 = sum(k * k for k in ks)
    kdotb *= kdotb
    with np.errstate(invalid="ignore", divide="ignore"):
        kdotb /= k2
    d = np.subtract(dtype(1.0 / 3.0), kdotb, dtype=dtype)
    d[(0,) * len(shape)] = 0.0
    return d


def field_from_susceptibility(
    chi: np.ndarray,
    b0_dir: Sequence[float] = (0.0, 0.0, 1.0),
    pad: float = 2.0,
    voxel_size: float | Sequence[float] = 1.0,
    background: float = 0.0,
) -> np.ndarray:
    """Relative field (ppm) of a susceptibility map ``chi`` (ppm), 2-D or 3-D.

    delta_b = IFFT(D(k) * FFT(chi - background)), computed on a grid zero-padded to
    ``pad`` times each size (rounded up to a fast FFT length), then cropped back. Zero
    padding means "``background`` everywhere outside the array": pass
    ``background=CHI_PPM["air"]`` for a head in air whose ``chi`` is relative to water.
    Same shape and float dtype as ``chi`` (float32 unless float64 is given). 2-D input
    follows :func:`dipole_kernel`'s convention (structure invariant along the third axis).
    """
    chi = np.asarray(chi)
    dtype = np.float64 if chi.dtype == np.float64 else np.float32
    shape = chi.shape
    padded = tuple(sfft.next_fast_len(int(np.ceil(n * pad)), real=True) for n in shape)
    work = np.zeros(padded, dtype=dtype)
    work[tuple(slice(0, n) for n in shape)] = chi - background
    spec = sfft.rfftn(work)
    spec *= dipole_kernel(padded, b0_dir, voxel_size, rfft=True, dtype=dtype)
    field = sfft.irfftn(spec, s=padded)
    return np.ascontiguousarray(field[tuple(slice(0, n) for n in shape)], dtype=dtype)


def local_field(delta_chi: np.ndarray, normal: np.ndarray, b0_dir: Sequence[float] = (0.0, 0.0, 1.0)) -> np.ndarray:
    """Field (ppm) of the fine, locally layered part of a susceptibility map: the slab approximation.

    Split chi = chi_smooth + delta_chi, with chi_smooth blurred enough to be computed by
    :func:`field_from_susceptibility` on a coarse grid. ``delta_chi`` lives near interfaces
    (skin, skull, fat layers, cavity walls); where the interface is locally flat with unit
    normal ``normal`` (3, ...), delta_chi varies only along the normal, its spectrum lies on
    k || n, and the dipole kernel is the constant 1/3 - (n.b)^2 there: field = delta_chi *
    (1/3 - (n.b)^2), evaluated point by point at any resolution. Exact for planar layers,
    good where the curvature radius is much larger than the blur. ``normal`` need not be
    normalised; where it is zero, (n.b)^2 is taken as 1/3 (no preferred direction).
    """
    b = unit_vector(b0_dir)
    normal = np.asarray(normal, dtype=np.float64)
    nb = np.tensordot(b, normal, axes=1)
    nn = np.sum(normal * normal, axis=0)
    cos2 = np.divide(nb * nb, nn, out=np.full(nn.shape, 1.0 / 3.0), where=nn > 1e-12)
    return (np.asarray(delta_chi) * (1.0 / 3.0 - cos2)).astype(np.float32)


def b0_phase(field_ppm: np.ndarray | float, te_s: float, b0_t: float) -> np.ndarray:
    """Off-resonance phase (rad): 2*pi * gamma_bar * B0 * field * 1e-6 * TE (unwrapped)."""
    return 2.0 * np.pi * GAMMA_BAR_HZ_PER_T * b0_t * np.asarray(field_ppm) * 1e-6 * te_s


def chemical_shift_phase(te_s: float, b0_t: float, shift_ppm: float = FAT_SHIFT_PPM) -> float:
    """Extra phase (rad) of a species shifted by ``shift_ppm`` from water at echo time ``te_s``."""
    return float(b0_phase(shift_ppm, te_s, b0_t))


def fat_signal_factor(te_s: float, b0_t: float, peaks: Sequence[tuple[float, float]] = FAT_PEAKS) -> complex:
    """Complex factor of the multi-peak fat signal at echo time ``te_s`` relative to its magnitude at TE 0.

    sum_p a_p exp(i * chemical_shift_phase(te, B0, shift_p)) / sum_p a_p. Its angle is fat's
    phase relative to water (about 0 at the "in-phase" echo times, about pi out of phase);
    its modulus < 1 is the dephasing between the peaks.
    """
    amps = np.array([a for _, a in peaks], dtype=np.float64)
    phases = np.array([chemical_shift_phase(te_s, b0_t, shift) for shift, _ in peaks])
    return complex(np.sum(amps * np.exp(1j * phases)) / amps.sum())


def polynomial_basis(coords: Sequence[np.ndarray], order: int) -> list[np.ndarray]:
    """Monomials of total degree <= ``order`` (0, 1 or 2) of the coordinate arrays, in a fixed order.

    1, x_i, then x_i x_j (i <= j). The terms broadcast like the inputs (sparse grids stay sparse).
    """
    if order not in (0, 1, 2):
        raise ValueError("polynomial order must be 0, 1 or 2")
    coords = [np.asarray(c, dtype=np.float64) for c in coords]
    terms = [np.ones((1,) * coords[0].ndim)]
    if order >= 1:
        terms += coords
    if order >= 2:
        terms += [coords[i] * coords[j] for i in range(len(coords)) for j in range(i, len(coords))]
    return terms


def shim(field: np.ndarray, mask: np.ndarray, order: int = 2, weights: np.ndarray | None = None) -> np.ndarray:
    """``field`` minus its least-squares polynomial fit (degree ``order``) inside ``mask``.

    Models a scanner's linear (order 1) or second-order (order 2) shim over the brain:
    the constant, linear and quadratic parts of the off-resonance are cancelled inside the
    shim volume, not outside. Coordinates are array indices scaled to [-1, 1].
    """
    field = np.asarray(field)
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return field.copy()
    axes = [np.linspace(-1, 1, n) for n in field.shape]
    idx = np.nonzero(mask)
    terms = polynomial_basis([axes[k][i] for k, i in enumerate(idx)], order)
    basis_in = np.stack([np.broadcast_to(t, idx[0].shape) for t in terms], axis=1)
    w = np.ones(idx[0].size) if weights is None else np.asarray(weights)[mask]
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(basis_in * sw[:, None], field[mask] * sw, rcond=None)
    out = field.astype(field.dtype, copy=True)
    for c, term in zip(coef, polynomial_basis(np.meshgrid(*axes, indexing="ij", sparse=True), order)):
        out -= (c * term).astype(out.dtype)
    return out


def rf_phase(
    shape: Sequence[int],
    rng: np.random.Generator,
    curvature_rad: tuple[float, float] = (0.3, 2.5),
    linear_rad: tuple[float, float] = (0.0, 1.5),
    centre_shift: float = 0.3,
    constant: bool = True,
) -> np.ndarray:
    """Smooth, roughly quadratic RF (transmit/receive) phase over a 2-D or 3-D grid (rad).

    phi(r) = c0 + g . r + sum_ij Q_ij (r - r0)_i (r - r0)_j, with r in [-1, 1] per axis
    (the field of view) and random parameters:

    - curvature: eigenvalues of Q have magnitudes drawn uniformly in ``curvature_rad``
      (rad from FOV centre to edge, i.e. at |r - r0| = 1), signs random and shared with
      probability 0.7 (a bowl or dome, as a birdcage's B1 phase at 3T), random axes;
    - linear: |g| uniform in ``linear_rad`` (rad from centre to edge), random direction;
    - the centre r0 uniform in [-centre_shift, centre_shift] per axis;
    - c0 uniform in [-pi, pi) when ``constant`` (the receiver's arbitrary phase).
    """
    shape = tuple(int(s) for s in shape)
    nd = len(shape)
    coords = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij", sparse=True)
    r0 = rng.uniform(-centre_shift, centre_shift, nd)
    mags = rng.uniform(*curvature_rad, nd)
    sign = rng.choice([-1.0, 1.0])
    signs = np.where(rng.random(nd) < 0.7, sign, -sign)
    q, _ = np.linalg.qr(rng.normal(size=(nd, nd)))
    quad = q @ np.diag(mags * signs) @ q.T
    g = rng.normal(size=nd)
    g *= rng.uniform(*linear_rad) / max(np.linalg.norm(g), 1e-12)
    c0 = rng.uniform(-np.pi, np.pi) if constant else 0.0
    d = [c - r for c, r in zip(coords, r0)]
    phi = np.zeros(shape) + c0
    for i in range(nd):
        phi = phi + g[i] * coords[i]
        for j in range(nd):
            phi = phi + quad[i, j] * d[i] * d[j]
    return phi


def susceptibility_map(
    fractions: Mapping[str, np.ndarray],
    chi_ppm: Mapping[str, float] | None = None,
) -> np.ndarray:
    """chi = sum_t fraction_t * chi_t (ppm relative to water) from tissue fractions.

    ``fractions`` maps tissue names of :data:`CHI_PPM` (or of ``chi_ppm``, which overrides
    the defaults) to arrays of the same shape, values in [0, 1]; whatever fraction is
    missing from 1 counts as water (chi 0). Air outside the head must be given as a
    fraction ("air") like any other class.
    """
    table = dict(CHI_PPM)
    table.update(chi_ppm or {})
    out = None
    for name, frac in fractions.items():
        if name not in table:
            raise KeyError(f"no susceptibility for tissue {name!r}; known: {sorted(table)}")
        term = np.asarray(frac, dtype=np.float32) * np.float32(table[name])
        out = term if out is None else out + term
    if out is None:
        raise ValueError("no tissue fractions given")
    return out


def head_mask(magnitude: np.ndarray, threshold: float = 0.08, opening: int = 2) -> np.ndarray:
    """Boolean head mask of a 2-D magnitude image (also the mask every phase statistic of
    :mod:`scripts.phase.metrics` is taken in).

    Pixels above ``threshold`` times the 99th percentile of the image; holes filled (dark
    skull, CSF, sinuses inside a closed scalp ring); opened with an ``opening``-pixel
    cross (removes isolated noise); the largest connected component kept; holes filled
    again.
    """
    mag = np.abs(np.asarray(magnitude, dtype=np.float64))
    if mag.ndim != 2:
        raise ValueError(f"head_mask expects a 2-D image, got shape {mag.shape}")
    ref = np.percentile(mag, 99)
    if not ref > 0:
        return np.zeros(mag.shape, dtype=bool)
    m = ndi.binary_fill_holes(mag > threshold * ref)
    if opening > 0:
        m = ndi.binary_opening(m, iterations=opening)
    lab, n = ndi.label(m)
    if n == 0:
        return m
    sizes = np.bincount(lab.ravel())[1:]
    m = lab == (1 + int(np.argmax(sizes)))
    return ndi.binary_fill_holes(m)


def segment_head(magnitude: np.ndarray, threshold: float = 0.08) -> dict[str, np.ndarray]:
    """Tissue/air masks of a 2-D magnitude image (for the physics phase baseline).

    Returns boolean arrays: ``head`` (the head, holes filled: see :func:`head_mask`),
    ``air`` (its complement), ``tissue`` (bright pixels inside the head) and ``dark``
    (dark pixels inside the head: bone, CSF in T1w, internal air or flow voids --
    ambiguous in a magnitude image, so left for the caller to assign a susceptibility).
    """
    mag = np.abs(np.asarray(magnitude, dtype=np.float64))
    head = head_mask(mag, threshold=threshold)
    ref = np.percentile(mag[head], 99) if head.any() else 1.0
    bright = mag > threshold * ref
    return {"head": head, "air": ~head, "tissue": head & bright, "dark": head & ~bright}


def slab_from_mask(mask: np.ndarray, half_depth: int, radius: float | None = None) -> np.ndarray:
    """A rounded 3-D slab ``(2*half_depth+1, H, W)`` whose middle plane is the 2-D ``mask``.

    Plane ``z`` keeps the mask pixels whose centres are deeper than ``R - sqrt(R^2 - z^2)``
    from the mask edge
    (``R`` = ``radius`` in pixels, default the largest inscribed distance), so the head
    rounds off above and below like a sphere of radius ``R`` instead of ending in a flat
    cut. Used to give a single segmented slice a 3-D dipole field.
    """
    mask = np.asarray(mask, dtype=bool)
    depth = ndi.distance_transform_edt(mask) - 0.5  # pixel centres lie half a pixel inside the edge
    r = float(depth.max()) if radius is None else float(radius)
    zs = np.arange(-half_depth, half_depth + 1, dtype=np.float64)
    cut = r - np.sqrt(np.clip(r * r - zs * zs, 0.0, None))
    cut[np.abs(zs) >= r] = np.inf
    return depth[None] > cut[:, None, None]
