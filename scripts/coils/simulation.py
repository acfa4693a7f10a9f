"""Coil simulation: complex image -> coil sensitivity maps -> noisy multi-coil k-space.

The forward model, per slice::

    y_c = S_c * x + n_c          coil images, c = 1..C        (n ~ CN(0, Sigma), white over pixels)
    k_c = F y_c                  F = centred orthonormal 2-D DFT (``sigpy.fft(..., center=True, norm="ortho")``)

Conventions
-----------
- k-space is ``(coils, H, W)`` (or ``(slices, coils, H, W)``) complex64, DC in the middle, the
  layout of fastMRI files. MONAI's reconstruction code wants real/imag last ``(coils, H, W, 2)``:
  :func:`to_real_imag_last` / :func:`from_real_imag_last` convert (views, no copy for torch).
- Maps are normalised so that ``sum_c |S_c|^2 = 1`` at every pixel (:func:`normalize_maps`).
  Then the SENSE-combined adjoint ``sum_c conj(S_c) y_c`` returns ``x`` exactly (noise-free), RSS of
  the coil images equals ``|x|``, and a coil sees on average ``|x| / sqrt(C)``.
- Noise units are the units of the image ``x``. ``noise_std`` (or the covariance ``noise_cov``,
  a ``(C, C)`` Hermitian PSD matrix) is the per-coil complex noise: ``E[n n^H] = Sigma`` with
  ``Sigma = noise_std**2 * I`` by default; real and imaginary parts each get half of the
  variance. Because maps are normalised, the SENSE-combined image has noise std ``noise_std``
  (white noise), so ``noise_std = 1 / SNR`` of the combined image relative to the image level.
  :class:`SimulateCoilsd` with ``relative_noise=True`` (default) multiplies ``Sigma`` by
  ``ref**2``, ``ref`` the 99.5th percentile of ``|x|`` (:func:`scripts.core.intensity.magnitude_reference`),
  so ``noise_std=0.02`` means combined SNR 50 relative to bright tissue whatever the scale.
  Correlated noise is ``n = L z``, ``L`` the Cholesky factor of ``Sigma`` (an eigen-square-root
  when ``Sigma`` is only semi-definite) and ``z ~ CN(0, I)``. White noise has the same
  distribution in image space and k-space (F is unitary), so it is added to the coil images
  before the FFT; the coil images then give the RSS without an inverse FFT.

Map sources (both behind :class:`MapSource`: ``sample(rng, num_coils, count)`` draws cheap
per-slice specs, ``render(spec, shape)`` makes the maps, cached):

- :class:`BirdcageMaps`: ``sigpy.mri.birdcage_maps`` geometry with a random radius, rotation
  and centre offset per draw, rendered at ``sim_size`` and resampled.
- :class:`EspiritMapBank`: ESPIRiT (:mod:`scripts.core.espirit`, sigpy's algorithm) on fully sampled reference
  k-space (fastMRI h5 files, e.g. the simulated set), run ONCE into a bank file (``.npz``,
  written atomically) that records a sha256 of its inputs (the k-space bytes of every slice
  used plus every ESPIRiT parameter): a bank whose hash no longer matches is rebuilt.
  ESPIRiT runs on the centre of k-space cropped to ``size`` (maps are smooth; this is what
  makes the bank cheap), maps are extended smoothly outside the ESPIRiT support (normalised
  convolution) so that they cover any anatomy they are later applied to, the readout
  oversampling of fastMRI brain data (640 x 320) is cropped to the square recon FOV, and maps
  are normalised. At draw time maps are resampled to the target size (bicubic on real and
  imaginary parts, then re-normalised) and, with ``augment``, randomly flipped.
  Coil count: ``coil_mismatch="match"`` draws only bank entries with exactly the requested
  count (error if there are none); ``"compress"`` (default) also uses entries with more coils,
  reduced to the requested count by PCA coil compression of the maps (the dominant virtual
  coils, as scanners and fastMRI pipelines do), then re-normalised. Entries with fewer coils
  are never used (no coils are invented); when no entry has enough, an error names the counts
  the bank holds.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable

from scripts.io.atomic import save_npz
from scripts.io.fastmri_h5 import anonymous_id, num_slices, read_slice
from scripts.core.fft import _as_tensor, _fft2c, fft2c, ifft2c, to_real_imag_last
from scripts.core.intensity import magnitude_reference

__all__ = [
    "BANK_VERSION",
    "BirdcageMaps",
    "DrawCoilMapsd",
    "EspiritMapBank",
    "MapSource",
    "SimulateCoilsd",
    "birdcage",
    "build_espirit_bank",
    "compress_maps",
    "espirit_maps",
    "load_bank",
    "noise_factor",
    "normalize_maps",
    "resample_maps",
    "simulate_coils",
]

BANK_VERSION = 1
"""Bumped whenever the bank algorithm changes, so old bank files are rebuilt."""


# ----------------------------------------------------------------------------- maps


def _inverse_rss(re: torch.Tensor, im: torch.Tensor, eps: float) -> torch.Tensor:
    """``1 / sqrt(sum_c |S_c|^2)`` (``(..., 1, H, W)``), 0 where the RSS is below ``eps`` times its maximum."""
    power = (re.square() + im.square()).sum(dim=-3, keepdim=True)
    peak = power.amax(dim=(-2, -1), keepdim=True)
    return torch.where(power > (eps**2) * peak, torch.rsqrt(power), torch.zeros_like(power))


def normalize_maps(maps, eps: float = 1e-6):
    """Scale maps ``(..., C, H, W)`` so ``sum_c |S_c|^2 = 1`` where they are non-zero.

    Pixels where the root-sum-of-squares is below ``eps`` times its maximum are set to zero.
    numpy in -> numpy out (complex64); torch in -> torch out.
    """
    t, was_numpy = _as_tensor(maps)
    if t.ndim < 3:
        raise ValueError(f"maps must be (..., C, H, W), got shape {tuple(t.shape)}")
    t = t.to(torch.complex64)
    out = t * _inverse_rss(t.real, t.imag, eps)
    return out.numpy() if was_numpy else out


def resample_maps(maps, shape: Sequence[int], mode: str = "bicubic"):
    """Resample maps ``(C, h, w)`` to ``(C, *shape)`` smoothly (``mode`` interpolation of real and
    imaginary parts), then normalise. numpy in -> numpy out."""
    t, was_numpy = _as_tensor(maps)
    t = t.to(torch.complex64)
    shape = tuple(int(s) for s in shape)
    if tuple(t.shape[-2:]) == shape:
        out = normalize_maps(t)
    else:
        planes = F.interpolate(torch.stack((t.real, t.imag), dim=1), size=shape, mode=mode, align_corners=False)
        re, im = planes[:, 0], planes[:, 1]
        inv = _inverse_rss(re, im, 1e-6)
        out = torch.complex(re.mul_(inv), im.mul_(inv))
    return out.numpy() if was_numpy else out


def compress_maps(maps: np.ndarray, num_coils: int) -> np.ndarray:
    """PCA coil compression of maps ``(C, H, W)`` to the ``num_coils`` dominant virtual coils, normalised."""
    maps = np.asarray(maps)
    c = maps.shape[0]
    if num_coils > c:
        raise ValueError(f"cannot compress {c} coils to {num_coils}")
    if num_coils == c:
        return normalize_maps(maps)
    flat = maps.reshape(c, -1).astype(np.complex128)
    _, vecs = np.linalg.eigh(flat @ flat.conj().T)  # ascending eigenvalues
    a = vecs[:, ::-1][:, :num_coils].conj().T  # (num_coils, C): rows = dominant virtual coils
    return normalize_maps((a @ flat).reshape(num_coils, *maps.shape[1:]).astype(np.complex64))


def _smooth_fill(maps: np.ndarray, sigma: float) -> np.ndarray:
    """Extend maps ``(C, H, W)`` that are zero outside a support smoothly over the whole FOV.

    Normalised convolution: ``G*(S w) / G*w`` outside the support ``w``, the maps inside.
    """
    from scipy.ndimage import gaussian_filter

    support = (np.sum(np.abs(maps) ** 2, axis=0) > 0).astype(np.float64)
    if support.all() or not support.any():
        return maps
    weight = gaussian_filter(support, sigma, mode="nearest")
    filled = np.empty_like(maps)
    for c in range(maps.shape[0]):
        num = gaussian_filter(maps[c].real, sigma, mode="nearest") + 1j * gaussian_filter(maps[c].imag, sigma, mode="nearest")
        filled[c] = np.where(support > 0, maps[c], num / np.maximum(weight, 1e-12))
    return filled


def birdcage(num_coils: int, shape: Sequence[int], radius: float = 1.5, rotation: float = 0.0,
             offset: Sequence[float] = (0.0, 0.0)) -> np.ndarray:
    """2-D birdcage maps ``(C, H, W)`` as ``sigpy.mri.birdcage_maps``, rotated by ``rotation`` (radians)
    and with the array centre shifted by ``offset`` (fractions of the half-FOV, (y, x)); normalised.

    With ``rotation=0`` and ``offset=0`` this equals ``sigpy.mri.birdcage_maps((C, H, W), r=radius)``:
    ``S_c = exp(i (atan2(dx, -dy) - a_c)) / r = (-dy + i dx) exp(-i a_c) / r^2`` (no transcendental
    per pixel), ``(dy, dx)`` the pixel's offset from coil ``c`` at angle ``a_c``.
    """
    ny, nx = (int(s) for s in shape)
    angle = torch.arange(num_coils, dtype=torch.float64) * (2 * np.pi / num_coils) + float(rotation)
    cx = (radius * torch.cos(angle) + float(offset[1])).float()[:, None, None]
    cy = (radius * torch.sin(angle) + float(offset[0])).float()[:, None, None]
    x = ((torch.arange(nx, dtype=torch.float32) - nx / 2.0) / (nx / 2.0))[None, None, :]
    y = ((torch.arange(ny, dtype=torch.float32) - ny / 2.0) / (ny / 2.0))[None, :, None]
    dx, dy = (x - cx).expand(-1, ny, -1), (y - cy).expand(-1, -1, nx)
    inv_r2 = (dx.square() + dy.square()).reciprocal_()
    scale = inv_r2.mul_(torch.rsqrt(inv_r2.sum(0, keepdim=True)))  # 1/r^2 / rss(1/r)
    rot = torch.polar(torch.ones_like(angle), -angle).to(torch.complex64)[:, None, None]
    return torch.complex(-dy, dx).mul_(rot).mul_(scale).numpy()


# ----------------------------------------------------------------------------- forward model


def noise_factor(num_coils: int, noise_std: float = 0.0, noise_cov=None) -> torch.Tensor | float:
    """``L`` with ``L L^H = Sigma``: a scalar for ``noise_std`` (``Sigma = std^2 I``), a ``(C, C)`` tensor for ``noise_cov``."""
    if noise_cov is None:
        return float(noise_std)
    cov = np.asarray(noise_cov, dtype=np.complex128)
    if cov.shape != (num_coils, num_coils):
        raise ValueError(f"noise_cov must be ({num_coils}, {num_coils}) for {num_coils} coils, got {cov.shape}")
    if not np.allclose(cov, cov.conj().T, atol=1e-10 * max(1.0, np.abs(cov).max())):
        raise ValueError("noise_cov must be Hermitian")
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        vals, vecs = np.linalg.eigh(cov)
        if vals.min() < -1e-8 * max(vals.max(), 1e-30):
            raise ValueError("noise_cov must be positive semi-definite") from None
        chol = vecs * np.sqrt(np.clip(vals, 0, None))
    return torch.from_numpy(chol.astype(np.complex64))


def _noise(shape: tuple[int, ...], factor, generator: torch.Generator | None, device: torch.device) -> torch.Tensor | None:
    """Complex Gaussian noise ``(..., C, H, W)`` with per-pixel coil covariance ``L L^H``, on ``device``.

    Drawn on the generator's device (the CPU without one) and moved: a CPU generator gives the same
    noise, so the same k-space, whether the images are on the CPU or a GPU."""
    if isinstance(factor, float) and factor == 0.0:
        return None
    z = torch.randn(shape, dtype=torch.complex64, generator=generator,
                    device=generator.device if generator is not None else "cpu").to(device)  # CN(0, I)
    if isinstance(factor, float):
        return z.mul_(factor)
    c = shape[-3]
    return (factor.to(device) @ z.reshape(*shape[:-3], c, -1)).reshape(shape)


def simulate_coils(image, maps, noise_std: float = 0.0, noise_cov=None, generator: torch.Generator | None = None,
                   return_coil_images: bool = False):
    """Multi-coil k-space of a complex image: ``F(S_c x + n_c)``.

    Args:
        image: complex ``(H, W)`` or ``(S, H, W)`` (numpy or torch).
        maps: ``(C, H, W)`` (shared by all slices) or ``(S, C, H, W)``; normalise them first
            (:func:`normalize_maps`) for the noise units of the module docstring.
        noise_std, noise_cov: noise in image units (see the module docstring); ``noise_cov`` wins.
        generator: torch generator for the noise (seed it for reproducible output).
        return_coil_images: also return the noisy coil images ``y`` (their RSS is the RSS of the k-space).

    Returns:
        k-space ``(C, H, W)`` / ``(S, C, H, W)`` complex64, numpy if ``image`` is numpy else torch
        (and the coil images when asked).
    """
    x, was_numpy = _as_tensor(image)
    s, _ = _as_tensor(maps)
    x, s = x.to(torch.complex64), s.to(device=x.device, dtype=torch.complex64)  # the image's device
    if x.shape[-2:] != s.shape[-2:]:
        raise ValueError(f"image {tuple(x.shape)} and maps {tuple(s.shape)} differ in size")
    if s.ndim not in (3, 4) or x.ndim not in (2, 3) or (s.ndim == 4 and (x.ndim != 3 or s.shape[0] != x.shape[0])):
        raise ValueError(f"image (H,W)|(S,H,W) and maps (C,H,W)|(S,C,H,W) expected, got {tuple(x.shape)} and {tuple(s.shape)}")
    coil = s * x.unsqueeze(-3)
    noise = _noise(tuple(coil.shape), noise_factor(s.shape[-3], noise_std, noise_cov), generator, coil.device)
    if noise is not None:
        coil += noise
    k = _fft2c(coil, inverse=False)
    if was_numpy:
        k, coil = k.numpy(), coil.numpy()
    return (k, coil) if return_coil_images else k


class SimulateCoilsd(Randomizable, MapTransform):
    """Dictionary transform: complex image -> multi-coil k-space through sensitivity maps, plus noise.

    ``d[key]`` complex ``(H, W)`` / ``(S, H, W)`` (a leading channel of 1 is dropped),
    ``d[maps_key]`` maps ``(C, H, W)`` / ``(S, C, H, W)`` (e.g. from :class:`DrawCoilMapsd`).
    Writes ``d[kspace_key]``: complex64 ``(C, H, W)`` / ``(S, C, H, W)`` (``real_imag_last=True``:
    MONAI's ``(..., C, H, W, 2)`` float tensor). Noise: see the module docstring
    (``relative_noise`` scales it by the 99.5th percentile of ``|image|``). Seed with
    ``set_random_state(seed)`` for reproducible noise.
    """

    def __init__(self, keys: KeysCollection, maps_key: str = "maps", kspace_key: str = "kspace",
                 noise_std: float = 0.0, noise_cov=None, relative_noise: bool = True,
                 real_imag_last: bool = False, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.maps_key, self.kspace_key = maps_key, kspace_key
        self.noise_std, self.noise_cov, self.relative_noise = noise_std, noise_cov, relative_noise
        self.real_imag_last = real_imag_last
        self._seed = 0

    def randomize(self, data=None) -> None:
        self._seed = int(self.R.randint(0, 2**31 - 1))

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image, _ = _as_tensor(d[key])
            if image.ndim in (3, 4) and image.shape[0] == 1 and torch.as_tensor(d[self.maps_key]).ndim == 3:
                image = image[0]
            self.randomize()
            scale = magnitude_reference(image.abs()) if self.relative_noise and (self.noise_std or self.noise_cov is not None) else 1.0
            cov = None if self.noise_cov is None else np.asarray(self.noise_cov) * scale**2
            k = simulate_coils(image, d[self.maps_key], self.noise_std * scale, cov,
                               torch.Generator().manual_seed(self._seed))
            d[self.kspace_key] = to_real_imag_last(k) if self.real_imag_last else k
        return d


# ----------------------------------------------------------------------------- map sources


class MapSource:
    """Where coil maps come from. ``sample`` draws cheap per-slice specs (JSON-able, for the
    manifest); ``render`` turns one spec into normalised maps ``(C, H, W)`` complex64 (cached)."""

    name = "maps"

    def __init__(self, cache_mb: float = 256.0) -> None:
        self._cache: OrderedDict = OrderedDict()
        self._cache_bytes, self._cache_limit = 0, int(cache_mb * 2**20)

    def describe(self) -> dict:
        """The settings that change the maps (part of the synthesizer's config hash)."""
        return {"source": self.name}

    def provenance(self) -> dict:
        """What the manifest records beside the specs (e.g. the bank's content hash)."""
        return {}

    def sample(self, rng: np.random.Generator, num_coils: int, count: int) -> list:
        raise NotImplementedError

    def _render(self, spec, shape: tuple[int, int]) -> np.ndarray:
        raise NotImplementedError

    def render(self, spec, shape: Sequence[int]) -> np.ndarray:
        shape = (int(shape[0]), int(shape[1]))
        key = (json.dumps(spec, sort_keys=True), shape)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        maps = np.ascontiguousarray(self._render(spec, shape), dtype=np.complex64)  # cached: do not modify
        self._cache[key] = maps
        self._cache_bytes += maps.nbytes
        while self._cache_bytes > self._cache_limit and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= old.nbytes
        return maps

    def draw(self, rng: np.random.Generator, num_coils: int, shape: Sequence[int], count: int | None = None):
        """Maps ``(C, H, W)`` (``count=None``) or ``(count, C, H, W)``, and their specs."""
        specs = self.sample(rng, num_coils, 1 if count is None else count)
        maps = np.stack([self.render(s, shape) for s in specs])
        return (maps[0], specs[0]) if count is None else (maps, specs)


class BirdcageMaps(MapSource):
    """Simulated birdcage maps with a random geometry per draw.

    Radius (relative to the half-FOV) uniform in ``radius``, rotation uniform in [0, 2 pi),
    centre offset uniform in ``[-offset, offset]`` per axis; rendered at ``sim_size`` and resampled
    (maps are smooth, so this costs nothing in accuracy and most of the time otherwise).
    Draws per slice never repeat, so the render cache is small (it serves maps drawn per volume).
    """

    name = "birdcage"

    def __init__(self, radius: Sequence[float] = (1.2, 2.0), offset: float = 0.1, sim_size: int = 64,
                 cache_mb: float = 32.0) -> None:
        super().__init__(cache_mb)
        self.radius, self.offset, self.sim_size = (float(radius[0]), float(radius[1])), float(offset), int(sim_size)

    def describe(self):
        return {"source": self.name, "radius": list(self.radius), "offset": self.offset, "sim_size": self.sim_size}

    def sample(self, rng, num_coils, count):
        out = []
        for _ in range(count):
            r = rng.uniform(*self.radius)
            rot = rng.uniform(0, 2 * np.pi)
            off = rng.uniform(-self.offset, self.offset, 2)
            out.append({"coils": int(num_coils), "radius": round(float(r), 6), "rotation": round(float(rot), 6),
                        "offset": [round(float(o), 6) for o in off]})
        return out

    def _render(self, spec, shape):
        size = self.sim_size if self.sim_size else max(shape)
        maps = birdcage(spec["coils"], (size, size), spec["radius"], spec["rotation"], spec["offset"])
        return resample_maps(maps, shape, mode="bilinear")


def _crop_center(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Centre crop / zero-pad the last two axes to ``shape``."""
    out = np.zeros(x.shape[:-2] + tuple(shape), dtype=x.dtype)
    src, dst = [], []
    for n, m in zip(x.shape[-2:], shape):
        if n >= m:
            a = n // 2 - m // 2
            src.append(slice(a, a + m)), dst.append(slice(0, m))
        else:
            a = m // 2 - n // 2
            src.append(slice(0, n)), dst.append(slice(a, a + n))
    out[(..., *dst)] = x[(..., *src)]
    return out


def _lowres_kspace(kspace: np.ndarray, size: int | None) -> np.ndarray:
    """Centre crop of k-space whose shorter side is ``size``: lower resolution, same FOV (``None``: unchanged)."""
    kspace = np.asarray(kspace, dtype=np.complex64)
    if not size:
        return kspace
    h, w = kspace.shape[-2:]
    short = min(h, w, int(size))
    return _crop_center(kspace, (max(1, round(h * short / min(h, w))), max(1, round(w * short / min(h, w)))))


def espirit_maps(kspace: np.ndarray, size: int | None = 64, calib_width: int = 24, thresh: float = 0.02,
                 kernel_width: int = 6, crop: float = 0.8, max_iter: int = 30, fill: bool = True) -> np.ndarray:
    """ESPIRiT maps of one fully sampled (at least in the centre) k-space slice ``(C, H, W)``.

    k-space is centre-cropped so that its shorter side is ``size`` (lower resolution, same FOV;
    ``None`` keeps it), ESPIRiT runs on the centred ``calib_width`` square
    (:func:`scripts.core.espirit.espirit_calib`), maps are extended smoothly
    outside the support (``fill``), the longer image side is centre-cropped to a square (the
    recon FOV of readout-oversampled data) and maps are normalised. Returns ``(C, n, n)`` complex64.
    """
    from scripts.core.espirit import calib_box, espirit_calib

    kspace = _lowres_kspace(kspace, size)
    if min(kspace.shape[-2:]) < calib_width:
        raise ValueError(f"k-space {kspace.shape[-2:]} is smaller than the calibration width {calib_width}")
    maps = espirit_calib(kspace, calib_box(kspace.shape, calib_width), kernel_width, thresh, crop, max_iter)
    if fill:
        maps = _smooth_fill(maps, sigma=min(maps.shape[-2:]) / 8.0)
    n = min(maps.shape[-2:])
    return normalize_maps(_crop_center(maps, (n, n)))


def _reference_files(reference) -> list[Path]:
    if isinstance(reference, (str, os.PathLike)):
        ref = Path(reference)
        files = [ref] if ref.is_file() else sorted(p for p in ref.rglob("*.h5") if not p.name.startswith("."))
    else:
        files = sorted(Path(p) for p in reference)
    if not files:
        raise FileNotFoundError(f"no reference k-space (*.h5) found in {reference}")
    return files


def _bank_slices(n: int, per_file: int) -> list[int]:
    """``per_file`` slices spread over the middle half of a volume (the edges hold little anatomy)."""
    if n <= per_file:
        return list(range(n))
    return sorted({int(round(v)) for v in np.linspace(0.25 * (n - 1), 0.75 * (n - 1), per_file)})


def load_bank(path: str | os.PathLike) -> tuple[dict[int, np.ndarray], dict[int, list[str]], dict]:
    """A bank file -> ``({coils: maps (N, C, n, n)}, {coils: entry ids}, meta)``."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        maps = {int(k[5:]): z[k] for k in z.files if k.startswith("maps_")}
        entries = {int(k[8:]): [str(e) for e in z[k]] for k in z.files if k.startswith("entries_")}
    return maps, entries, meta


def build_espirit_bank(reference, bank_file: str | os.PathLike, *, size: int = 64, slices_per_file: int = 3,
                       max_files: int | None = None, calib_width: int = 24, thresh: float = 0.02,
                       kernel_width: int = 6, crop: float = 0.8, max_iter: int = 30, force: bool = False) -> Path:
    """Build (or reuse) the ESPIRiT map bank of the multi-coil reference files under ``reference``.

    The bank's hash covers the k-space bytes of every slice used and every parameter; an existing
    bank with the same hash is reused, any other is rebuilt (written atomically). Single-coil
    files are skipped. Entry ids are ``<anonymous id of the file's relative path>:<slice>``.
    """
    bank_file = Path(bank_file)
    files = _reference_files(reference)[: max_files or None]
    root = Path(reference) if Path(reference).is_dir() else None
    params = {"version": BANK_VERSION, "size": size, "slices_per_file": slices_per_file, "calib_width": calib_width,
              "thresh": thresh, "kernel_width": kernel_width, "crop": crop, "max_iter": max_iter}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode())
    jobs = []
    for path in files:
        n = num_slices(path)
        for i in _bank_slices(n, slices_per_file):
            k = read_slice(path, i)["kspace"]
            if k.ndim != 3:
                break  # single-coil file
            k = np.ascontiguousarray(k, dtype=np.complex64)
            digest.update(repr(k.shape).encode())
            digest.update(k.tobytes())
            rel = path.relative_to(root) if root is not None else path.name
            jobs.append((f"{anonymous_id(rel)}:{i}", _lowres_kspace(k, size)))  # keep only what ESPIRiT reads
    if not jobs:
        raise ValueError(f"no multi-coil k-space in {reference}")
    digest = digest.hexdigest()
    if bank_file.is_file() and not force:
        try:
            if load_bank(bank_file)[2].get("hash") == digest:
                return bank_file
        except Exception:
            pass  # unreadable bank: rebuild
    groups: dict[int, list] = {}
    for entry, k in jobs:
        maps = espirit_maps(k, size, calib_width, thresh, kernel_width, crop, max_iter)
        groups.setdefault(maps.shape[0], []).append((entry, maps))
    arrays = {"meta": np.array(json.dumps({"hash": digest, "params": params}, sort_keys=True))}
    for c, items in sorted(groups.items()):
        arrays[f"maps_{c}"] = np.stack([m for _, m in items])
        arrays[f"entries_{c}"] = np.array([e for e, _ in items])
    save_npz(bank_file, arrays)
    return bank_file


class EspiritMapBank(MapSource):
    """Maps drawn from a bank of ESPIRiT maps (see the module docstring and :func:`build_espirit_bank`).

    The bank is loaded (built first when missing or stale, if ``reference`` is given) on first
    use, so constructing this object in a config costs nothing. Specs are
    ``{"coils": C, "bank_coils": C_bank, "entry": index, "flip": [flip_y, flip_x]}``.
    """

    name = "espirit"

    def __init__(self, bank_file: str | os.PathLike, reference=None, coil_mismatch: str = "compress",
                 augment: bool = True, cache_mb: float = 256.0, **bank_kwargs) -> None:
        super().__init__(cache_mb)
        if coil_mismatch not in ("match", "compress"):
            raise ValueError(f"coil_mismatch must be 'match' or 'compress', got {coil_mismatch!r}")
        self.bank_file, self.reference, self.coil_mismatch, self.augment = Path(bank_file), reference, coil_mismatch, augment
        self.bank_kwargs = bank_kwargs
        self._bank = None

    @property
    def bank(self) -> tuple[dict[int, np.ndarray], dict[int, list[str]], dict]:
        if self._bank is None:
            if self.reference is not None:
                build_espirit_bank(self.reference, self.bank_file, **self.bank_kwargs)
            elif not self.bank_file.is_file():
                raise FileNotFoundError(f"no coil map bank at {self.bank_file} and no reference k-space to build it from")
            self._bank = load_bank(self.bank_file)
        return self._bank

    def build(self) -> Path:
        """Build (or check and reuse) the bank file now; returns its path."""
        _ = self.bank
        return self.bank_file

    @property
    def hash(self) -> str:
        return self.bank[2]["hash"]

    def describe(self):
        return {"source": self.name, "coil_mismatch": self.coil_mismatch, "augment": self.augment,
                "bank": {k: v for k, v in sorted(self.bank_kwargs.items())}}

    def provenance(self):
        return {"bank_hash": self.hash}

    def _candidates(self, num_coils: int) -> list[tuple[int, int]]:
        maps = self.bank[0]
        counts = [c for c in sorted(maps) if c == num_coils or (self.coil_mismatch == "compress" and c > num_coils)]
        if not counts:
            raise ValueError(f"the coil map bank has entries with {sorted(maps)} coils; {num_coils} requested "
                             f"(coil_mismatch={self.coil_mismatch!r}: {'exactly that count' if self.coil_mismatch == 'match' else 'that many or more'} is needed)")
        return [(c, i) for c in counts for i in range(len(maps[c]))]

    def sample(self, rng, num_coils, count):
        candidates = self._candidates(num_coils)
        picks = rng.integers(len(candidates), size=count)
        flips = rng.integers(2, size=(count, 2)) if self.augment else np.zeros((count, 2), int)
        return [{"coils": int(num_coils), "bank_coils": candidates[p][0], "entry": candidates[p][1],
                 "flip": [int(f) for f in fl]} for p, fl in zip(picks, flips)]

    def _render(self, spec, shape):
        maps = self.bank[0][spec["bank_coils"]][spec["entry"]]
        if spec["coils"] < maps.shape[0]:
            maps = compress_maps(maps, spec["coils"])
        fy, fx = spec["flip"]
        if fy or fx:
            maps = maps[:, :: -1 if fy else 1, :: -1 if fx else 1]
        return resample_maps(np.ascontiguousarray(maps), shape)


class DrawCoilMapsd(Randomizable, MapTransform):
    """Dictionary transform: draw coil maps for ``d[key]`` (``(H, W)`` / ``(S, H, W)``) into ``d[maps_key]``.

    ``per_slice=True`` gives ``(S, C, H, W)`` (one draw per slice) for a stack, else ``(C, H, W)``.
    The specs (bank entries or birdcage geometry) go to ``d[f"{maps_key}_spec"]``.
    """

    def __init__(self, keys: KeysCollection, source: MapSource, num_coils: int = 8, maps_key: str = "maps",
                 per_slice: bool = True, allow_missing_keys: bool = False) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.source, self.num_coils, self.maps_key, self.per_slice = source, int(num_coils), maps_key, per_slice

    def randomize(self, data=None) -> None:
        self._rng = np.random.default_rng(int(self.R.randint(0, 2**31 - 1)))

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            shape = tuple(np.shape(d[key]))
            self.randomize()
            count = shape[0] if (self.per_slice and len(shape) == 3) else None
            d[self.maps_key], d[f"{self.maps_key}_spec"] = self.source.draw(self._rng, self.num_coils, shape[-2:], count)
        return d
