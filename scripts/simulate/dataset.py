"""The embedded default dataset: paired complex multi-coil brain MRI simulated from real anatomy.

Anatomy comes from a registry package, offline: nilearn's bundled MNI152 (2009c) brain
mask and grey/white-matter probability maps (1 mm and 2 mm). The templates are
brain-only, so a head is built around them on the 2 mm grid: a smooth intracranial
envelope (the brain mask, blurred and closed; extruded downwards below z = -40 mm as a
neck/skull-base block), a skull (inner table, fatty diploe, outer table), a scalp
(subcutaneous fat, skin), a face block with eyes and orbital fat, air cavities at
anatomically plausible MNI positions (frontal, ethmoid, sphenoid and maxillary sinuses,
nasal cavity, mastoid air cells, ear canals) and the large venous sinuses (superior
sagittal, transverse). Small medullary/cortical veins are added per slice.

Per subject (``np.random.default_rng([seed, subject])``: subjects do not depend on the order
they are made in), drawn once:

- contrast ``T1`` (spin echo, spoiled gradient echo, or MPRAGE-like inversion-recovery
  gradient echo), ``T2`` (spin echo) or ``FLAIR`` (inversion-recovery spin echo) with
  random TR/TE/TI/flip (:data:`SEQUENCES`) and field 1.5 T or 3 T;
- tissue PD/T1/T2/T2* (:data:`TISSUES`, each scaled by U(0.9, 1.1));
- head pose: yaw U(-10, 10) deg, pitch U(-15, 15), roll U(-6, 6) (the pitch and roll
  tilt B0 relative to the head), in-plane shift U(-8, 8) mm, size U(0.88, 1.04) per axis
  (the MNI152 head is larger than average), a smooth 3-D elastic displacement (5x5x5
  control grid over the head, sd 2.5 mm);
- skull U(4, 7) mm (outer quarters cortical bone, middle half diploe with a fatty-marrow
  fraction U(0.4, 0.8)), frontal bone thickened by U(5, 9) mm over the frontal sinus,
  scalp fat U(2, 5) mm, skin U(1.5, 3) mm, each thickness modulated by +-20 % smoothly
  around the head; cavity sizes x U(0.75, 1.3), centres +-3 mm, frontal sinus absent with
  probability 0.1; superior sagittal sinus U(3, 4.5) x U(2.5, 3.5) mm semi-axes;
  8-29 small veins (radius U(0.4, 1) mm, chi U(0.3, 0.5) ppm) crossing each slice;
- field of view U(215, 250) mm x the larger in-plane size factor, slices evenly spaced
  from z U(-22, -5) to U(45, 65) mm (x the axial size factor);
- the B0 field: computed ONCE per subject in 3-D on the 2 mm grid by the dipole kernel
  (:func:`scripts.core.physics.field_from_susceptibility`) from the susceptibility map blurred
  by 3 mm, second-order shimmed over the brain; the fine remainder (thin skin, fat and
  bone layers, cavity walls) added per pixel by the slab approximation
  (:func:`scripts.core.physics.local_field`); plus an imperfect-shim residual (constant
  N(0, 0.03) ppm, linear up to 0.05 ppm per 100 mm); sampled on each slice with the same deformation as the anatomy, so magnitude and phase
  maps stay consistent; phase = 2 pi gamma_bar B0 field TE_phase, where TE_phase = TE for
  gradient echoes and U(0, 2) ms (the refocusing residual) for spin echoes; fat is the
  six-peak spectrum of :func:`scripts.core.physics.fat_signal_factor` at TE_phase; gradient
  echoes use a fat-water in-phase TE (+-0.1 ms) with probability 0.7 when one is in range;
- transmit/receive phase: :func:`scripts.core.physics.rf_phase` over the (slices, H, W) box
  (its documented ranges: curvature U(0.3, 2.5) rad, linear U(0, 1.5) rad centre-to-edge);
- coils: ``sigpy.mri.birdcage_maps`` with radius U(1.05, 1.45) x half-FOV, rotated by
  U(0, 2 pi), centre shifted U(-0.08, 0.08) FOV, each coil with an extra smooth phase
  (wave and cable effects: constant U(-pi, pi), in-plane linear U(0.5, 3) rad
  centre-to-edge in a random direction, quadratic U(-1.5, 1.5) rad, through-slab linear
  U(-1, 1) rad); maps keep sum_c |S_c|^2 = 1;
- noise: white complex Gaussian per coil, standard deviation p99(|x|) / SNR, SNR
  log-uniform in (40, 200) (per-coil SNR of the images about half of that), correlated
  across coils (correlation coefficients up to about 0.3). Raw k-space: no apodisation.

Not modelled: chemical-shift displacement of fat, flow and motion phase, multi-echo or
partial-Fourier acquisition, phase-encode wrap-around (the field of view holds the head),
brain lesions.

Each file (``{split}/subject_{index:05d}.h5``, written by
:func:`scripts.io.fastmri_h5.write_fastmri`) holds ``kspace`` (slices, coils, H, W)
complex64 = FFT(S_c * x + noise_c) (centred, orthonormal), ``coil_maps`` (slices, coils,
H, W) complex64 and ``image_complex`` (slices, H, W) complex64 = sum_c conj(S_c) *
IFFT(kspace_c): the coil combination of the NOISY coil images, i.e. the noiseless object
``x`` plus the noise projected on the coil maps (exactly ``x`` when ``noise=False``). Its
background is noise with uniform random phase, like a coil-combined real acquisition;
the conditional phase model trains on it. ``x`` is scaled so that its 99th percentile
magnitude over the subject is 1. Attributes record every random parameter.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import scipy.ndimage as ndi

from scripts.io.atomic import write_json
from scripts.io.fastmri_h5 import write_fastmri
from scripts.core.fft import fft2c, ifft2c
from scripts.core.physics import (
    CHI_PPM,
    GAMMA_BAR_HZ_PER_T,
    b0_phase,
    fat_signal_factor,
    field_from_susceptibility,
    local_field,
    rf_phase,
    shim,
    susceptibility_map,
)

__all__ = [
    "CAVITIES",
    "GENERATOR_VERSION",
    "SEQUENCES",
    "TISSUES",
    "head_geometry",
    "load_templates",
    "sample_subject",
    "simulate_dataset",
    "simulate_subject",
    "split_of",
    "tissue_fractions",
    "tissue_signals",
]

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
PROVENANCE = (
    "simulated from nilearn MNI152 templates (MNI152NLin2009cAsym brain mask and GM/WM "
    "probability maps bundled with nilearn) by scripts.simulate.dataset"
)
SPLITS = ("train", "val", "test")

# --------------------------------------------------------------------------- tissues
TISSUES: dict[str, dict[str, tuple[float, float] | float]] = {
    # pd (relative), and (1.5 T, 3 T) values of T1, T2, T2* in ms. Each drawn x U(0.9, 1.1).
    "gm": {"pd": 0.80, "t1": (1100.0, 1550.0), "t2": (100.0, 95.0), "t2s": (65.0, 50.0)},
    "wm": {"pd": 0.70, "t1": (650.0, 900.0), "t2": (80.0, 70.0), "t2s": (60.0, 45.0)},
    "csf": {"pd": 1.00, "t1": (4000.0, 4200.0), "t2": (1800.0, 1700.0), "t2s": (400.0, 300.0)},
    "soft": {"pd": 0.75, "t1": (900.0, 1400.0), "t2": (45.0, 40.0), "t2s": (30.0, 25.0)},
    "eye": {"pd": 1.00, "t1": (3800.0, 4000.0), "t2": (1000.0, 900.0), "t2s": (300.0, 200.0)},
    "vein": {"pd": 0.85, "t1": (1400.0, 1650.0), "t2": (180.0, 60.0), "t2s": (50.0, 20.0)},
    "bone": {"pd": 0.05, "t1": (300.0, 300.0), "t2": (1.0, 1.0), "t2s": (0.5, 0.5)},
    "fat": {"pd": 0.90, "t1": (260.0, 380.0), "t2": (80.0, 70.0), "t2s": (35.0, 30.0)},
}
"""Relaxation parameters per tissue class (literature values, rounded)."""

# name: (probability, weighting, acquisition attr, gradient echo?, {param: (low, high)})
SEQUENCES: dict[str, tuple[float, str, str, bool, dict[str, tuple[float, float]]]] = {
    "T1_SE": (0.14, "T1", "AXT1", False, {"tr": (400.0, 700.0), "te": (8.0, 20.0)}),
    "T1_SPGR": (0.14, "T1", "AXT1", True, {"tr": (8.0, 25.0), "te": (2.5, 8.0), "flip": (10.0, 30.0)}),
    "T1_MPRAGE": (0.12, "T1", "AXT1", True, {"tr": (2000.0, 2500.0), "te": (2.5, 4.5), "ti_factor": (1.0, 1.25)}),
    "T2_SE": (0.35, "T2", "AXT2", False, {"tr": (3000.0, 6000.0), "te": (80.0, 120.0)}),
    "FLAIR": (0.25, "FLAIR", "AXFLAIR", False, {"tr": (8000.0, 10000.0), "te": (90.0, 140.0), "ti_factor": (0.93, 1.07)}),
}
"""Sequences: (probability, weighting, fastMRI acquisition name, gradient echo?, parameter
ranges in ms/degrees). The inversion time TI of FLAIR and of the MPRAGE-like sequence is
the CSF null point times ``ti_factor`` (FLAIR: CSF near zero, either sign; MPRAGE: CSF
small and positive, as in the magnitude of a real MPRAGE)."""

# name: (centre mm, semi-axes mm, air share, mirrored in x)
CAVITIES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float], float, bool]] = {
    "frontal_sinus": ((0.0, 0.0, 6.0), (13.0, 5.5, 10.0), 1.0, False),  # y set from the frontal bone
    "ethmoid": ((0.0, 48.0, -36.0), (9.0, 14.0, 8.0), 0.8, False),
    "sphenoid": ((0.0, 18.0, -42.0), (12.0, 11.0, 9.0), 1.0, False),
    "nasal": ((0.0, 72.0, -55.0), (9.0, 20.0, 14.0), 1.0, False),
    "maxillary": ((30.0, 55.0, -58.0), (12.0, 15.0, 14.0), 1.0, True),
    "mastoid": ((56.0, -32.0, -44.0), (10.0, 12.0, 12.0), 0.6, True),
    "ear_canal": ((72.0, -20.0, -40.0), (18.0, 4.0, 4.0), 1.0, True),
}
"""Air cavities (MNI mm, head frame): ellipsoids; "air share" < 1 for honeycombed cells.
Cavities never replace brain: their air is confined to bone, scalp, face and neck tissue."""

EYES = ((33.0, 62.0, -40.0), 12.0)  # centre (mirrored in x), radius mm
HEAD_CENTRE = np.array([0.0, -17.0, 10.0])
NECK_Z = -40.0
NECK_EXTENSION_MM = 100.0
CHI_SMOOTH_MM = 3.0
IN_PHASE_PROBABILITY = 0.7
SNR_RANGE = (40.0, 200.0)
RF_PHASE = {"curvature_rad": (0.3, 2.5), "linear_rad": (0.0, 1.5)}


# --------------------------------------------------------------------------- anatomy
@dataclass(frozen=True)
class Templates:
    gm: np.ndarray  # float32 probability
    wm: np.ndarray
    brain: np.ndarray  # float32 0/1 brain mask
    origin: np.ndarray  # mm of voxel (0, 0, 0)
    voxel: float  # mm


@functools.lru_cache(maxsize=2)
def load_templates(resolution: int = 2) -> Templates:
    """nilearn's MNI152 brain mask + GM/WM maps at ``resolution`` mm (1 or 2), cached; offline."""
    from nilearn import datasets

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        imgs = [
            datasets.load_mni152_gm_template(resolution=resolution),
            datasets.load_mni152_wm_template(resolution=resolution),
            datasets.load_mni152_brain_mask(resolution=resolution),
        ]
    gm, wm, brain = (np.ascontiguousarray(im.get_fdata(dtype=np.float32)) for im in imgs)
    aff = imgs[0].affine
    if not np.allclose(aff[:3, :3], np.diag([resolution] * 3)):
        raise RuntimeError(f"unexpected MNI152 template affine {aff}")
    total = gm + wm
    scale = np.where(total > 1, 1 / np.maximum(total, 1e-6), 1).astype(np.float32)
    return Templates(gm * scale, wm * scale, (brain > 0.5).astype(np.float32), aff[:3, 3].astype(np.float64), float(resolution))


@dataclass(frozen=True)
class HeadGeometry:
    templates: Templates  # the 2 mm templates
    dist: np.ndarray  # signed distance (mm) to the intracranial envelope, > 0 outside
    frontal_y: float  # anterior edge (mm) of the envelope at the midline, z = +6 mm


@functools.lru_cache(maxsize=1)
def head_geometry() -> HeadGeometry:
    """The intracranial envelope on the 2 mm grid and its signed distance map (cached)."""
    t = load_templates(2)
    env = ndi.gaussian_filter(t.brain, sigma=2.0) > 0.3  # closes sulci and the fissure, ~1-2 mm out
    kz = int(round((NECK_Z - t.origin[2]) / t.voxel))
    block = env[:, :, kz : kz + 10].any(axis=2)
    env[:, :, :kz] = block[:, :, None]
    dist = (ndi.distance_transform_edt(~env) - ndi.distance_transform_edt(env)) * t.voxel
    ix = int(round((0.0 - t.origin[0]) / t.voxel))
    iz = int(round((6.0 - t.origin[2]) / t.voxel))
    ys = np.nonzero(env[ix, :, iz])[0]
    frontal_y = float(t.origin[1] + t.voxel * ys.max())
    return HeadGeometry(t, dist.astype(np.float32), frontal_y)


def _step(d: np.ndarray, edge: np.ndarray | float, width: float) -> np.ndarray:
    """Partial-volume step: 0 well below ``edge``, 1 well above, linear over ``width`` mm."""
    return np.clip((d - edge) / width + 0.5, 0.0, 1.0)


def _ellipsoid(pos: np.ndarray, centre, semi, width: float, axes: list[np.ndarray] | None = None) -> np.ndarray:
    """Partial-volume indicator of an axis-aligned ellipsoid at head-frame positions ``pos`` (3, ...).

    With ``axes`` (the 1-D coordinates of which ``pos`` is the ``ij`` meshgrid) only the
    ellipsoid's bounding box is evaluated.
    """
    c = np.asarray(centre, dtype=np.float32)
    a = np.asarray(semi, dtype=np.float32)
    out = np.zeros(pos.shape[1:], dtype=np.float32)
    box = (slice(None),) * (pos.ndim - 1)
    if axes is not None:
        box = tuple(
            slice(int(np.searchsorted(ax, c[k] - a[k] - width)), int(np.searchsorted(ax, c[k] + a[k] + width)))
            for k, ax in enumerate(axes)
        )
        if any(b.start >= b.stop for b in box):
            return out
    sub = pos[(slice(None),) + box]
    shp = (3,) + (1,) * (pos.ndim - 1)
    q = np.sqrt(np.sum(((sub - c.reshape(shp)) / a.reshape(shp)) ** 2, axis=0))
    out[box] = np.clip((1.0 - q) * float(np.min(a)) / width + 0.5, 0.0, 1.0)
    return out


def tissue_fractions(
    pos: np.ndarray,
    gm: np.ndarray,
    wm: np.ndarray,
    brain: np.ndarray,
    dist: np.ndarray,
    anat: dict,
    width: float,
    axes: list[np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Tissue fractions at head-frame positions ``pos`` (3, ...) mm (MNI axes: x right, y anterior, z superior).

    ``gm``, ``wm``, ``brain`` and ``dist`` are the template maps already sampled at ``pos``;
    ``anat`` is the subject's anatomy (from :func:`sample_subject`); ``width`` the
    partial-volume width in mm (the pixel or voxel size); ``axes`` (optional) the 1-D
    coordinates when ``pos`` is their ``ij`` meshgrid (faster). Returns float32 fractions
    summing to 1 per point: gm, wm, csf, bone, fat, soft, eye, vein, air.
    """
    f = np.float32
    pos = pos.astype(f, copy=False)
    u = pos - HEAD_CENTRE.reshape((3,) + (1,) * (pos.ndim - 1))
    u = u / np.maximum(np.sqrt(np.sum(u * u, axis=0)), 1e-6)
    mods = [1.0 + np.tensordot(np.asarray(anat[k]), u, axes=1) for k in ("skull_var", "fat_var", "skin_var")]
    fs = anat["frontal_sinus"]
    fs_centre = np.reshape(fs["centre"], (3,) + (1,) * (pos.ndim - 1)).astype(f)
    bulge = anat["frontal_bulge_mm"] * np.exp(-np.sum((pos - fs_centre) ** 2, axis=0) / (2 * 14.0**2))
    t_sk = anat["skull_mm"] * mods[0] + bulge
    t_fat = t_sk + anat["fat_mm"] * mods[1]
    t_out = t_fat + anat["skin_mm"] * mods[2]
    s0, s_in, s_dip, s_sk, s_fat, s_out = (
        _step(dist, e, width) for e in (0.0, 0.25 * t_sk, 0.75 * t_sk, t_sk, t_fat, t_out)
    )
    marrow = anat["marrow_fraction"]
    inside = 1.0 - s0
    below = _step(-pos[2], -NECK_Z, width)  # 1 below the neck level
    brain_in = inside * np.clip(brain + (1 - below), 0, 1)
    gw = inside * (gm + wm)
    keep = np.where(gw > brain_in, brain_in / np.maximum(gw, 1e-6), 1.0)  # GM/WM only inside the brain
    out = {
        "gm": inside * gm * keep,
        "wm": inside * wm * keep,
        "csf": np.clip(brain_in - gw * keep, 0, None),
        "soft": (inside - brain_in) + (s_fat - s_out),  # neck block below the brain, skin
        "fat": (s_sk - s_fat) + marrow * (s_in - s_dip),  # scalp fat, fatty marrow of the diploe
        "bone": (s0 - s_in) + (s_dip - s_sk) + (1 - marrow) * (s_in - s_dip),
        "air": s_out,
    }
    # face block: soft tissue (70 %) and fat outside the skull, anterior-inferior
    face = _ellipsoid(pos, (0.0, 58.0, -48.0), (48.0, 42.0, 46.0), width, axes) * s_sk
    for k in ("soft", "fat", "air"):
        out[k] = out[k] * (1 - face)
    out["soft"] += 0.7 * face
    out["fat"] += 0.3 * face
    # eyes and orbital fat override everything
    (ex, ey, ez), er = EYES
    eye = np.zeros_like(dist)
    orbit = np.zeros_like(dist)
    for sx in (1.0, -1.0):
        eye = np.maximum(eye, _ellipsoid(pos, (sx * ex, ey, ez), (er, er, er), width, axes))
        orbit = np.maximum(orbit, _ellipsoid(pos, (sx * ex, ey - 6.0, ez), (er + 6, er + 9, er + 5), width, axes))
    orbit = np.clip(orbit - eye, 0, 1)
    for k in out:
        out[k] = out[k] * (1 - eye - orbit)
    out["eye"] = eye
    out["fat"] += orbit
    # venous sinuses just inside the skull: superior sagittal (midline, z > -5), transverse
    sss = np.clip(1 - np.sqrt((pos[0] / anat["sss_mm"][0]) ** 2 + ((dist + 4.0) / anat["sss_mm"][1]) ** 2), 0, None)
    sss = np.clip(sss * anat["sss_mm"][1] / width + 0.5, 0, 1) * (sss > 0) * _step(pos[2], -5.0, 4.0) * _step(-pos[1], -60.0, 4.0)
    ts = np.clip(1 - np.sqrt(((pos[2] - anat["ts_z_mm"]) / 3.5) ** 2 + ((dist + 3.5) / 3.0) ** 2), 0, None)
    ts = np.clip(ts * 3.0 / width + 0.5, 0, 1) * (ts > 0) * _step(-pos[1], 70.0, 6.0) * _step(-np.abs(pos[0]), -58.0, 6.0)
    vein = np.maximum(sss, ts)
    for k in out:
        out[k] = out[k] * (1 - vein)
    out["vein"] = vein
    # air cavities
    air = np.zeros_like(dist)
    for cav in anat["cavities"]:
        air = np.maximum(air, cav["share"] * _ellipsoid(pos, cav["centre"], cav["semi"], width, axes))
    air = air * (1 - inside * np.clip(brain, 0, 1))
    for k in out:
        out[k] = out[k] * (1 - air)
    out["air"] += air
    total = sum(out.values())  # 1 up to overlaps of partial-volume edges (face block on the skull)
    return {k: (v / total).astype(f, copy=False) for k, v in out.items()}


# --------------------------------------------------------------------------- subject parameters
def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _random_vector(rng: np.random.Generator, dim: int, lo: float, hi: float) -> list[float]:
    """A vector with uniformly random direction and length U(lo, hi)."""
    v = rng.normal(size=dim)
    return (v / max(float(np.linalg.norm(v)), 1e-12) * _u(rng, lo, hi)).tolist()


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Head-to-scanner rotation (degrees): yaw about z, pitch about x (nodding), roll about y."""
    a, b, c = np.deg2rad([yaw, pitch, roll])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    ry = np.array([[np.cos(c), 0, np.sin(c)], [0, 1, 0], [-np.sin(c), 0, np.cos(c)]])
    return rz @ rx @ ry


def sample_subject(rng: np.random.Generator, num_coils: int, num_slices: int, sequences: Sequence[str] | None = None) -> dict:
    """Draw every random parameter of one subject (JSON-serialisable; see the module docstring).

    ``sequences`` restricts the draw to some names of :data:`SEQUENCES` (their relative
    probabilities kept); the default uses all.
    """
    names = _check_sequences(sequences)
    probs = np.array([SEQUENCES[n][0] for n in names])
    seq = names[int(rng.choice(len(names), p=probs / probs.sum()))]
    _, weighting, acq, gre, ranges = SEQUENCES[seq]
    b0 = 3.0 if rng.random() < 0.6 else 1.5
    fi = 0 if b0 == 1.5 else 1
    tissues = {}
    for name, t in TISSUES.items():
        tissues[name] = {
            "pd": t["pd"] * _u(rng, 0.9, 1.1),
            "t1": t["t1"][fi] * _u(rng, 0.9, 1.1),
            "t2": t["t2"][fi] * _u(rng, 0.9, 1.1),
            "t2s": t["t2s"][fi] * _u(rng, 0.9, 1.1),
        }
    params = {k: _u(rng, *v) for k, v in ranges.items()}
    if "ti_factor" in params:
        t1c = tissues["csf"]["t1"]
        null = t1c * math.log(2.0 / (1.0 + math.exp(-params["tr"] / t1c)))
        params["ti"] = null * params.pop("ti_factor")
    if gre and rng.random() < IN_PHASE_PROBABILITY:
        # clinical gradient echoes often use a fat-water "in-phase" echo time: k / (3.4 ppm * gamma_bar * B0)
        period = 1e3 / (3.4e-6 * GAMMA_BAR_HZ_PER_T * b0)
        lo, hi = ranges["te"]
        ks = [k for k in range(1, 20) if lo - 0.3 <= k * period <= hi + 0.3]
        if ks:
            params["te"] = float(ks[int(rng.integers(len(ks)))] * period + rng.uniform(-0.1, 0.1))
    te_phase = params["te"] if gre else _u(rng, 0.0, 2.0)
    geo = head_geometry()
    cavities = []
    for name, (centre, semi, share, mirrored) in CAVITIES.items():
        if name == "frontal_sinus" and rng.random() < 0.1:
            continue
        scale = rng.uniform(0.75, 1.3, 3)
        for sx in (1.0, -1.0) if mirrored else (1.0,):
            c = np.array(centre) * np.array([sx, 1, 1]) + rng.uniform(-3, 3, 3)
            if name == "frontal_sinus":
                c[1] = geo.frontal_y + 4.0 + rng.uniform(-1.5, 1.5)
            cavities.append({"name": name, "centre": c.tolist(), "semi": (np.array(semi) * scale).tolist(), "share": share})
    fs_centre = next((c["centre"] for c in cavities if c["name"] == "frontal_sinus"), [0.0, geo.frontal_y + 4.0, 6.0])
    anat = {
        "skull_mm": _u(rng, 4.0, 7.0),
        "marrow_fraction": _u(rng, 0.4, 0.8),
        "fat_mm": _u(rng, 2.0, 5.0),
        "skin_mm": _u(rng, 1.5, 3.0),
        "skull_var": rng.uniform(-0.2, 0.2, 3).tolist(),
        "fat_var": rng.uniform(-0.2, 0.2, 3).tolist(),
        "skin_var": rng.uniform(-0.2, 0.2, 3).tolist(),
        "frontal_sinus": {"centre": fs_centre},
        "frontal_bulge_mm": _u(rng, 5.0, 9.0),
        "sss_mm": [_u(rng, 3.0, 4.5), _u(rng, 2.5, 3.5)],
        "ts_z_mm": _u(rng, -10.0, -4.0),
        "cavities": cavities,
    }
    pose = {
        "yaw_deg": _u(rng, -10, 10),
        "pitch_deg": _u(rng, -15, 15),
        "roll_deg": _u(rng, -6, 6),
        "shift_mm": rng.uniform(-8, 8, 2).tolist(),
        "scale": rng.uniform(0.88, 1.04, 3).tolist(),
        "elastic_mm": rng.normal(0.0, 2.5, (3, 5, 5, 5)).tolist(),
        "fov_mm": 0.0,  # set below from the head size
        "z_range_mm": [_u(rng, -22.0, -5.0), _u(rng, 45.0, 65.0)],
    }
    pose["fov_mm"] = _u(rng, 215.0, 250.0) * max(pose["scale"][:2])  # the head (about 210 mm) fits
    rot = _rotation(pose["yaw_deg"], pose["pitch_deg"], pose["roll_deg"])
    b0_dir_head = (rot.T @ np.array([0.0, 0.0, 1.0])).tolist()
    field = {
        "b0_t": b0,
        "b0_dir_head": b0_dir_head,
        "offset_ppm": float(rng.normal(0.0, 0.03)),
        "gradient_ppm_per_100mm": (rng.normal(size=3) * _u(rng, 0.0, 0.05) / math.sqrt(3)).tolist(),
        "small_veins_per_slice": int(rng.integers(8, 30)),
        "vein_chi_ppm": _u(rng, 0.3, 0.5),
        "vein_signal_factor": _u(rng, 0.6, 1.2) if gre else _u(rng, 0.1, 0.6),
    }
    coils = {
        "num_coils": int(num_coils),
        "radius": _u(rng, 1.05, 1.45),
        "rotation_rad": _u(rng, 0.0, 2 * math.pi),
        "centre_shift": rng.uniform(-0.08, 0.08, 2).tolist(),
        "phase_const": rng.uniform(-math.pi, math.pi, num_coils).tolist(),
        "phase_linear": [_random_vector(rng, 2, 0.5, 3.0) for _ in range(num_coils)],
        "phase_quadratic": rng.uniform(-1.5, 1.5, num_coils).tolist(),
        "phase_z": rng.uniform(-1.0, 1.0, num_coils).tolist(),
        "noise_correlation": _u(rng, 0.0, 0.3),
    }
    snr = float(math.exp(rng.uniform(math.log(SNR_RANGE[0]), math.log(SNR_RANGE[1]))))
    return {
        "sequence": seq,
        "weighting": weighting,
        "acquisition": acq,
        "gradient_echo": gre,
        "sequence_params": params,
        "te_phase_ms": te_phase,
        "tissues": tissues,
        "anatomy": anat,
        "pose": pose,
        "field": field,
        "coils": coils,
        "snr": snr,
        "num_slices": int(num_slices),
    }


def _check_sequences(sequences: Sequence[str] | None) -> list[str]:
    if sequences is None:
        return list(SEQUENCES)
    names = [str(x) for x in ([sequences] if isinstance(sequences, str) else sequences)]
    bad = [x for x in names if x not in SEQUENCES]
    if bad or not names:
        raise ValueError(f"unknown sequences {bad or names}; choose from {list(SEQUENCES)}")
    return [n for n in SEQUENCES if n in names]


# --------------------------------------------------------------------------- signal
def _signal(seq: str, t: dict, p: dict, t2_key: str) -> float:
    """Signed steady-state signal of one tissue (ms, degrees)."""
    e1 = math.exp(-p["tr"] / t["t1"])
    decay = math.exp(-p["te"] / t[t2_key])
    if seq in ("T1_SE", "T2_SE"):
        return t["pd"] * (1 - e1) * decay
    if seq == "T1_SPGR":
        a = math.radians(p["flip"])
        return t["pd"] * math.sin(a) * (1 - e1) / (1 - math.cos(a) * e1) * decay
    if seq in ("T1_MPRAGE", "FLAIR"):
        return t["pd"] * (1 - 2 * math.exp(-p["ti"] / t["t1"]) + e1) * decay
    raise ValueError(f"unknown sequence {seq}")


def tissue_signals(subject: dict) -> dict[str, float]:
    """Signed signal per tissue class for the subject's sequence (fat separate, air 0)."""
    seq, p = subject["sequence"], subject["sequence_params"]
    t2_key = "t2s" if subject["gradient_echo"] else "t2"
    sig = {name: _signal(seq, t, p, t2_key) for name, t in subject["tissues"].items()}
    sig["vein"] *= subject["field"]["vein_signal_factor"]
    sig["air"] = 0.0
    return sig


# --------------------------------------------------------------------------- geometry per slice
def _scanner_grid(n: int, fov: float, shift: list[float], rows=None, cols=None) -> tuple[np.ndarray, np.ndarray]:
    """Scanner x (patient right-to-left across columns, radiological) and y (anterior at the top) in mm.

    ``rows``/``cols`` (optional, fractional pixel indices) pick a sub-grid; default all pixels.
    """
    rows = np.arange(n, dtype=np.float64) if rows is None else np.asarray(rows, dtype=np.float64)
    cols = np.arange(n, dtype=np.float64) if cols is None else np.asarray(cols, dtype=np.float64)
    y = -(rows - (n - 1) / 2.0)[:, None] * (fov / n) + shift[1]
    x = -(cols - (n - 1) / 2.0)[None, :] * (fov / n) + shift[0]
    return np.broadcast_to(x, (rows.size, cols.size)), np.broadcast_to(y, (rows.size, cols.size))


def _head_positions(subject: dict, n: int, z_mm: float) -> np.ndarray:
    """Head-frame (template) mm positions (3, n, n) of the pixels of the slice at scanner z ``z_mm``."""
    pose = subject["pose"]
    rot = _rotation(pose["yaw_deg"], pose["pitch_deg"], pose["roll_deg"])
    scale = np.reshape(pose["scale"], (3, 1, 1))

    def rigid(rows=None, cols=None):
        x, y = _scanner_grid(n, pose["fov_mm"], pose["shift_mm"], rows, cols)
        # rotation about the scanner isocentre, which is the MNI origin
        return np.tensordot(rot.T, np.stack([x, y, np.full_like(x, z_mm)]), axes=1) / scale

    ph = rigid()
    # elastic: cubic interpolation of the 5x5x5 control displacements over the head box, evaluated
    # on a 33 x 33 sub-grid of the slice and interpolated linearly (it is smooth on that scale)
    m = min(n, 33)
    sub = np.linspace(0.0, n - 1.0, m)
    lo, hi = np.array([-100.0, -135.0, -75.0]), np.array([100.0, 100.0, 110.0])
    idx = (rigid(sub, sub) - lo.reshape(3, 1, 1)) / ((hi - lo) / 4.0).reshape(3, 1, 1)
    ctrl = np.asarray(pose["elastic_mm"])
    coarse = [ndi.map_coordinates(ctrl[k], idx, order=3, mode="nearest") for k in range(3)]
    up = np.arange(n, dtype=np.float64) * (m - 1) / max(n - 1, 1)
    grid = np.stack(np.meshgrid(up, up, indexing="ij"))
    disp = np.stack([ndi.map_coordinates(c, grid, order=1, mode="nearest") for c in coarse])
    return ph + disp


def _sample(volume: np.ndarray, pos: np.ndarray, origin: np.ndarray, voxel: float, order: int = 1, cval: float = 0.0) -> np.ndarray:
    idx = (pos - origin.reshape((3,) + (1,) * (pos.ndim - 1))) / voxel
    return ndi.map_coordinates(volume, idx, order=order, mode="constant", cval=cval, prefilter=False).astype(np.float32)


def _chi(fr: dict[str, np.ndarray]) -> np.ndarray:
    """Susceptibility (ppm relative to water) of a fractions dict of :func:`tissue_fractions`."""
    return susceptibility_map({k: v for k, v in fr.items() if k != "eye"} | {"soft": fr["soft"] + fr["eye"]})


@dataclass(frozen=True)
class SubjectField:
    """The smooth part of a subject's B0 field and what the slab approximation needs, on the 2 mm grid."""

    field: np.ndarray  # ppm, dipole field of chi_smooth, shimmed over the brain
    chi_smooth: np.ndarray  # ppm, chi blurred by CHI_SMOOTH_MM
    normal: np.ndarray  # (3, ...) gradient of chi_smooth: the local interface normal (unnormalised)


def _subject_field(subject: dict) -> SubjectField:
    """B0 field of the subject: 3-D dipole field of the blurred chi map on the 2 mm grid, shimmed.

    The fine remainder chi - chi_smooth (thin skin, fat and bone layers, cavity walls) is
    added per pixel by :func:`scripts.core.physics.local_field` at the image resolution: a
    2 mm grid cannot hold 2-4 mm layers, and their coarse dipole field would be rough.
    """
    geo = head_geometry()
    t = geo.templates
    shape = t.brain.shape
    axes = [(t.origin[k] + t.voxel * np.arange(shape[k])).astype(np.float32) for k in range(3)]
    pos = np.stack(np.meshgrid(*axes, indexing="ij"))
    fr = tissue_fractions(pos, t.gm, t.wm, t.brain, geo.dist, subject["anatomy"], width=t.voxel, axes=axes)
    chi = _chi(fr)
    # the neck goes on below the template: repeat its bottom plane, so that the end of the
    # tissue column (a strong air/tissue interface) lies far below the brain
    ext = int(round(NECK_EXTENSION_MM / t.voxel))
    chi = np.concatenate([np.repeat(chi[:, :, :1], ext, axis=2), chi], axis=2)
    chi = ndi.gaussian_filter(chi, CHI_SMOOTH_MM / t.voxel, mode="nearest")
    field = field_from_susceptibility(chi, subject["field"]["b0_dir_head"], pad=2.0, voxel_size=t.voxel, background=CHI_PPM["air"])
    field = np.ascontiguousarray(field[:, :, ext:])
    chi = np.ascontiguousarray(chi[:, :, ext:])
    shim_mask = (t.brain > 0.5) & (pos[2] > -45.0)
    normal = np.stack(np.gradient(chi)).astype(np.float32)
    return SubjectField(_shim_coarse(field, shim_mask), chi, normal)


def _shim_coarse(field: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Second-order shim fitted on every other voxel of ``mask`` (same fit, 8x fewer rows)."""
    sub = np.zeros_like(mask)
    sub[::2, ::2, ::2] = mask[::2, ::2, ::2]
    return shim(field, sub, order=2)


def _coil_maps(subject: dict, n: int) -> np.ndarray:
    """Per-subject coil maps (coils, n, n) complex64 with sum |S|^2 = 1 (before the through-slab phase)."""
    import sigpy.mri

    c = subject["coils"]
    nc = c["num_coils"]
    m = int(math.ceil(n * 1.5)) + 8
    m += m % 2
    maps = sigpy.mri.birdcage_maps((nc, m, m), r=c["radius"] * n / m, dtype=np.complex128)
    # rotate and shift: sample the oversized maps on the rotated n x n grid
    g = (np.arange(n) - n / 2.0)
    yy, xx = np.meshgrid(g, g, indexing="ij")
    th = c["rotation_rad"]
    sy = yy * math.cos(th) - xx * math.sin(th) + c["centre_shift"][0] * n + m / 2.0
    sx = yy * math.sin(th) + xx * math.cos(th) + c["centre_shift"][1] * n + m / 2.0
    coords = np.stack([sy, sx])
    out = np.empty((nc, n, n), dtype=np.complex128)
    for k in range(nc):
        re = ndi.map_coordinates(maps[k].real, coords, order=1, mode="nearest")
        im = ndi.map_coordinates(maps[k].imag, coords, order=1, mode="nearest")
        out[k] = re + 1j * im
    out /= np.sqrt(np.sum(np.abs(out) ** 2, axis=0, keepdims=True))
    r = np.linspace(-1.0, 1.0, n)
    r2 = r[:, None] ** 2 + r[None, :] ** 2
    for k in range(nc):
        gy, gx = c["phase_linear"][k]
        out[k] *= np.exp(1j * (c["phase_const"][k] + gy * r[:, None] + gx * r[None, :] + c["phase_quadratic"][k] * r2))
    return out


def _small_veins(
    rng: np.random.Generator, brain2d: np.ndarray, count: int, pixel: float, chi: float
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Small veins crossing the slice: Gaussian partial-volume dots in the brain, split in two tilt groups.

    Returns the vein fraction map and, per group, its susceptibility map; the caller gives
    each group its own effective B0 direction (a vein tilted from the slice normal sees B0
    tilted the other way).
    """
    n = brain2d.shape[0]
    frac = np.zeros(brain2d.shape, dtype=np.float64)
    groups = [np.zeros_like(frac), np.zeros_like(frac)]
    cand = np.flatnonzero(brain2d.ravel() > 0.5)
    if cand.size == 0 or count == 0:
        return frac.astype(np.float32), [g.astype(np.float32) for g in groups]
    picks = rng.choice(cand, size=count)
    radii = rng.uniform(0.4, 1.0, count)  # mm
    grp = rng.integers(0, 2, count)
    yy, xx = np.mgrid[:n, :n]
    for p, r, gi in zip(picks, radii, grp):
        cy, cx = divmod(int(p), n)
        s = max(r / math.sqrt(2.0), 0.5 * pixel) / pixel  # blob sd in pixels
        h = int(math.ceil(3 * s)) + 1
        ys, xs = slice(max(cy - h, 0), min(cy + h + 1, n)), slice(max(cx - h, 0), min(cx + h + 1, n))
        blob = np.exp(-((yy[ys, xs] - cy) ** 2 + (xx[ys, xs] - cx) ** 2) / (2 * s * s))
        blob *= min(1.0, (r / pixel) ** 2 / (2 * s * s))  # area pi r^2 conserved
        frac[ys, xs] = np.maximum(frac[ys, xs], blob)
        groups[gi][ys, xs] += chi * blob
    return np.clip(frac, 0, 1).astype(np.float32), [g.astype(np.float32) for g in groups]


def simulate_subject(
    seed: int,
    index: int,
    num_slices: int,
    image_size: int,
    num_coils: int,
    noise: bool = True,
    sequences: Sequence[str] | None = None,
) -> dict:
    """Simulate one subject: returns kspace, image_complex, coil_maps, the subject parameters and extras.

    Deterministic in ``(seed, index)``; see the module docstring for the model.
    Extra keys (not written to files): ``object`` (noiseless complex x), ``field_ppm``
    (S, H, W) and ``fractions`` of the last slice.
    """
    rng = np.random.default_rng([int(seed), int(index)])
    subject = sample_subject(rng, num_coils, num_slices, sequences)
    n = int(image_size)
    pixel = subject["pose"]["fov_mm"] / n
    res = 1 if pixel < 1.5 else 2
    tpl = load_templates(res)
    geo = head_geometry()
    t2 = geo.templates
    sf = _subject_field(subject)
    sig = tissue_signals(subject)
    fparams = subject["field"]
    b0 = fparams["b0_t"]
    te_s = subject["te_phase_ms"] * 1e-3
    fat_factor = fat_signal_factor(te_s, b0)
    z_lo, z_hi = np.asarray(subject["pose"]["z_range_mm"]) * subject["pose"]["scale"][2]
    zs = np.linspace(z_lo, z_hi, num_slices) if num_slices > 1 else np.array([0.5 * (z_lo + z_hi)])
    rf = rf_phase((num_slices, n, n), rng, **RF_PHASE)
    obj = np.empty((num_slices, n, n), dtype=np.complex128)
    fields = np.empty((num_slices, n, n), dtype=np.float32)
    grad = np.asarray(fparams["gradient_ppm_per_100mm"])
    for s, z in enumerate(zs):
        pos = _head_positions(subject, n, float(z))
        gm = _sample(tpl.gm, pos, tpl.origin, tpl.voxel)
        wm = _sample(tpl.wm, pos, tpl.origin, tpl.voxel)
        brain = _sample(t2.brain, pos, t2.origin, t2.voxel)
        dist = _sample(geo.dist, pos, t2.origin, t2.voxel, cval=100.0)
        fr = tissue_fractions(pos, gm, wm, brain, dist, subject["anatomy"], width=pixel)
        field = _sample(sf.field, pos, t2.origin, t2.voxel, order=1)  # linear: no ringing at layer steps
        chi_smooth = _sample(sf.chi_smooth, pos, t2.origin, t2.voxel, cval=CHI_PPM["air"])
        normal = np.stack([_sample(sf.normal[k], pos, t2.origin, t2.voxel) for k in range(3)])
        field += local_field(_chi(fr) - chi_smooth, normal, fparams["b0_dir_head"])
        field += fparams["offset_ppm"] + np.tensordot(grad, pos - HEAD_CENTRE.reshape(3, 1, 1), axes=1) / 100.0
        vfrac, vchi = _small_veins(rng, fr["gm"] + fr["wm"], fparams["small_veins_per_slice"], pixel, fparams["vein_chi_ppm"])
        for g in vchi:
            tilt = rng.normal(size=3) * np.array([0.6, 0.6, 1.0])
            field += field_from_susceptibility(g, tilt, pad=1.25, voxel_size=pixel)  # local: little padding
        for k in fr:
            fr[k] = fr[k] * (1 - vfrac)
        fr["vein"] = fr["vein"] + vfrac
        water = sum(sig[k] * fr[k] for k in fr if k != "fat")
        fat = sig["fat"] * fr["fat"]
        phase = b0_phase(field, te_s, b0) + rf[s]
        obj[s] = (water + fat * fat_factor) * np.exp(1j * phase)
        fields[s] = field
    ref = float(np.percentile(np.abs(obj), 99))
    obj /= ref if ref > 0 else 1.0
    base = _coil_maps(subject, n)
    c = subject["coils"]
    zn = np.linspace(-1.0, 1.0, num_slices) if num_slices > 1 else np.zeros(1)
    maps = base[None] * np.exp(1j * np.outer(zn, c["phase_z"]))[:, :, None, None]
    coil_img = maps * obj[:, None]
    if noise:
        sigma = 1.0 / subject["snr"]  # obj's 99th percentile is 1
        nc = num_coils
        a = rng.normal(size=(nc, nc)) + 1j * rng.normal(size=(nc, nc))
        psi = np.eye(nc) * (1 - c["noise_correlation"]) + c["noise_correlation"] * (a @ a.conj().T) / (2 * nc)
        d = np.sqrt(np.real(np.diag(psi)))
        psi = psi / np.outer(d, d)
        chol = np.linalg.cholesky(psi)
        subject["noise_covariance"] = {"real": np.real(psi).tolist(), "imag": np.imag(psi).tolist(), "sigma": sigma}
        white = (rng.normal(size=coil_img.shape) + 1j * rng.normal(size=coil_img.shape)) * (sigma / math.sqrt(2))
        coil_img = coil_img + np.matmul(chol, white.reshape(num_slices, nc, -1)).reshape(coil_img.shape)
    maps = maps.astype(np.complex64)
    kspace = fft2c(coil_img.astype(np.complex64))
    image = np.sum(np.conj(maps) * ifft2c(kspace), axis=1)
    subject["slice_z_mm"] = zs.tolist()
    subject["pixel_mm"] = pixel
    subject["template_resolution_mm"] = res
    subject["noise"] = bool(noise)
    return {
        "kspace": kspace,
        "image_complex": image.astype(np.complex64),
        "coil_maps": maps.astype(np.complex64),
        "subject": subject,
        "object": obj.astype(np.complex64),
        "field_ppm": fields,
        "fractions": fr,
    }


# --------------------------------------------------------------------------- dataset
def split_of(index: int, num_subjects: int, split_fractions=(0.6, 0.2, 0.2)) -> str:
    """Split of subject ``index``: contiguous blocks train, val, test sized by ``split_fractions``.

    Every split with a non-zero fraction gets at least one subject when there are enough.
    """
    fr = np.asarray(split_fractions, dtype=np.float64)
    if fr.shape != (3,) or (fr < 0).any() or fr.sum() <= 0:
        raise ValueError(f"split_fractions must be three non-negative numbers, got {split_fractions}")
    fr = fr / fr.sum()
    counts = np.floor(fr * num_subjects).astype(int)
    for k in np.argsort(-(fr * num_subjects - counts), kind="stable"):
        if counts.sum() < num_subjects:
            counts[k] += 1
    for k in range(3):  # borrow from the largest split so that no requested split is empty
        if fr[k] > 0 and counts[k] == 0 and counts.max() > 1:
            counts[int(np.argmax(counts))] -= 1
            counts[k] += 1
    bounds = np.cumsum(counts)
    return SPLITS[int(np.searchsorted(bounds, index, side="right"))]


def _file_params(seed: int, slices: int, size: int, coils: int, noise: bool, sequences: list[str]) -> dict:
    return {
        "seed": int(seed),
        "slices": int(slices),
        "image_size": int(size),
        "num_coils": int(coils),
        "noise": bool(noise),
        "sequences": sequences,
        "generator_version": GENERATOR_VERSION,
    }


def _existing_ok(path: Path, expected: dict) -> bool:
    try:
        with h5py.File(path, "r") as f:
            got = json.loads(f.attrs["file_params"])
    except Exception:
        return False
    return got == expected


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core


def _make_subject(path: Path, seed: int, i: int, split: str, slices_per_subject: int, image_size: int, num_coils: int,
                  noise: bool, seq_names: list[str], expected: dict) -> str:
    """Simulate subject ``i`` and write its file (atomically); returns its sequence name."""
    sim = simulate_subject(seed, i, slices_per_subject, image_size, num_coils, noise, seq_names)
    subj = sim["subject"]
    seq = subj["sequence"]
    attrs = {
        "file_params": json.dumps(expected, sort_keys=True),
        "params_json": json.dumps(subj, sort_keys=True),
        "provenance": PROVENANCE,
        "subject_index": i,
        "seed": seed,
        "split": split,
        "sequence": seq,
        "weighting": subj["weighting"],
        "b0_t": subj["field"]["b0_t"],
        "te_ms": subj["sequence_params"]["te"],
        "tr_ms": subj["sequence_params"]["tr"],
        "ti_ms": subj["sequence_params"].get("ti", 0.0),
        "flip_deg": subj["sequence_params"].get("flip", 90.0),
        "te_phase_ms": subj["te_phase_ms"],
        "snr": subj["snr"] if noise else float("inf"),
        "fov_mm": subj["pose"]["fov_mm"],
        "slice_z_mm": np.asarray(subj["slice_z_mm"]),
        "image_complex_is": "noisy coil combination sum_c conj(S_c) ifft(kspace_c)" if noise else "noiseless object",
    }
    write_fastmri(
        path,
        sim["kspace"],
        acquisition=subj["acquisition"],
        patient_id=f"simulated-mni152-seed{seed}-subject{i}",
        extra={"image_complex": sim["image_complex"], "coil_maps": sim["coil_maps"]},
        attrs=attrs,
    )
    return seq


def simulate_dataset(
    output_dir: str | os.PathLike,
    num_subjects: int = 10,
    slices_per_subject: int = 16,
    image_size: int = 64,
    num_coils: int = 4,
    seed: int = 0,
    split_fractions=(0.6, 0.2, 0.2),
    overwrite: bool = False,
    noise: bool = True,
    sequences: Sequence[str] | None = None,
    num_workers: int = 0,
) -> dict:
    """Write the simulated dataset under ``output_dir`` and return the ``dataset.json`` summary.

    One fastMRI-format h5 file per subject in ``train/``, ``val/`` or ``test/``
    (:func:`split_of`). Existing files made with the same parameters are kept (the run is
    resumable, and files are written atomically); a file made with other parameters, or
    a subject file in the wrong split folder, raises ``FileExistsError`` unless
    ``overwrite`` (then it is replaced/removed). Same arguments -> byte-identical files, with any
    ``num_workers`` (> 1: subjects are simulated in that many processes, one CPU thread each).
    """
    out = Path(output_dir)
    num_subjects, slices_per_subject = int(num_subjects), int(slices_per_subject)
    image_size, num_coils, seed = int(image_size), int(num_coils), int(seed)
    if num_subjects < 1 or slices_per_subject < 1 or image_size < 8 or num_coils < 1:
        raise ValueError("num_subjects, slices_per_subject, num_coils must be >= 1 and image_size >= 8")
    if image_size % 2:
        raise ValueError(f"image_size must be even, got {image_size}")
    seq_names = _check_sequences(sequences)
    expected = _file_params(seed, slices_per_subject, image_size, num_coils, noise, seq_names)
    assignment = {i: split_of(i, num_subjects, split_fractions) for i in range(num_subjects)}
    for split in SPLITS:  # a subject file left in another split by an earlier run
        for p in sorted((out / split).glob("subject_*.h5")):
            try:
                i = int(p.stem.split("_")[1])
            except ValueError:
                continue
            if assignment.get(i, split) != split:
                if not overwrite:
                    raise FileExistsError(f"{p} belongs to split {assignment[i]!r} now; rerun with overwrite=True")
                p.unlink()
    t0 = time.perf_counter()
    kept = 0
    todo: list[tuple[int, str, Path]] = []
    files = {s: [] for s in SPLITS}
    acq_counts = {s: {} for s in SPLITS}
    for i in range(num_subjects):
        split = assignment[i]
        path = out / split / f"subject_{i:05d}.h5"
        files[split].append(path.relative_to(out).as_posix())
        if path.exists() and not overwrite:
            if not _existing_ok(path, expected):
                raise FileExistsError(f"{path} was made with other parameters; rerun with overwrite=True or another output_dir")
            with h5py.File(path, "r") as f:
                seq = str(f.attrs["sequence"])
            kept += 1
        else:
            todo.append((i, split, path))
            continue
        acq_counts[split][seq] = acq_counts[split].get(seq, 0) + 1
    # subjects depend on (seed, index) only, so worker processes write the same bytes as one process
    jobs = [(path, seed, i, split, slices_per_subject, image_size, num_coils, noise, seq_names, expected)
            for i, split, path in todo]
    if int(num_workers) > 1 and len(jobs) > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(min(int(num_workers), len(jobs)), mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_worker_init) as pool:
            seqs = list(pool.map(_make_subject, *zip(*jobs)))
    else:
        seqs = [_make_subject(*job) for job in jobs]
    made = len(todo)
    for (_, split, _), seq in zip(todo, seqs):
        acq_counts[split][seq] = acq_counts[split].get(seq, 0) + 1
    elapsed = time.perf_counter() - t0
    total_bytes = sum((out / f).stat().st_size for s in SPLITS for f in files[s])
    summary = {
        "provenance": PROVENANCE,
        "generator": "scripts.simulate.dataset.simulate_dataset",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "num_subjects": num_subjects,
        "slices_per_subject": slices_per_subject,
        "image_size": image_size,
        "num_coils": num_coils,
        "noise": bool(noise),
        "sequences": seq_names,
        "split_fractions": [float(x) for x in split_fractions],
        "datasets": {
            "kspace": "(slices, coils, H, W) complex64, centred orthonormal FFT of the coil images",
            "reconstruction_rss": "(slices, H, W) float32, RSS of the inverse FFT of kspace",
            "image_complex": "(slices, H, W) complex64, "
            + ("sum_c conj(coil_maps_c) * ifft(kspace_c): noisy coil combination" if noise else "noiseless object"),
            "coil_maps": "(slices, coils, H, W) complex64, sum_c |S_c|^2 = 1",
        },
        "splits": {
            s: {
                "subjects": len(files[s]),
                "slices": len(files[s]) * slices_per_subject,
                "files": files[s],
                "sequences": dict(sorted(acq_counts[s].items())),
            }
            for s in SPLITS
        },
        "total_slices": num_subjects * slices_per_subject,
        "total_bytes": int(total_bytes),
    }
    write_json(out / "dataset.json", summary)
    rate = made * slices_per_subject / elapsed if made and elapsed > 0 else float("nan")
    report = (
        f"Simulated dataset in {out}: {num_subjects} subjects x {slices_per_subject} slices of "
        f"{image_size}x{image_size} with {num_coils} coils (seed {seed}, noise {'on' if noise else 'off'}); "
        f"train/val/test = {len(files['train'])}/{len(files['val'])}/{len(files['test'])} subjects; "
        f"{made} files written, {kept} kept from an earlier run, {total_bytes / 1e6:.1f} MB in all; "
        f"{elapsed:.1f} s ({rate:.1f} slices/s written). Provenance: {PROVENANCE}."
    )
    logger.info(report)
    print(report)
    return summary
