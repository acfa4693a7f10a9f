"""Read magnitude-only MRI (DICOM, NIfTI, PNG, TIFF, fastMRI h5) as stacks of 2-D slices.

Every reader returns a :class:`MagnitudeVolume`: ``magnitude`` is ``(slices, H, W)`` float32
(an array; for NIfTI an array-like read slice by slice, ``np.asarray`` it for the whole stack)
in the **original scanner units** (DICOM RescaleSlope/Intercept and NIfTI ``scl_slope`` applied,
nothing else). Normalisation is the caller's job and is always done with
:mod:`scripts.core.intensity`: each slice is divided by its own 99.5th percentile
(``normalize_magnitude(vol.magnitude[i]) -> (slice / ref, ref)``), a pure scale, so
``slice == normalised * ref`` exactly and outputs can be written back in scanner units.

Geometry. Each input is first read as a volume whose voxel->world ``affine`` (RAS, as MONAI
and nibabel give it) is kept; slices are taken along ``slice_axis`` of that volume and, for
4-D inputs, the volumes along the 4th axis are concatenated (volume-major): ``magnitude`` has
``frames * n`` slices. :func:`slices_to_volume` undoes this, so a caller writes a per-slice
result with ``nib.Nifti1Image(slices_to_volume(vol, out), vol.affine)``.

- DICOM: ``(rows, columns, slices)``, slices as displayed (row = image row), sorted by
  position along the slice normal (ImagePositionPatient), InstanceNumber when positions are
  missing; a series that visits every position ``T`` times (multi-echo, dynamics) is 4-D.
  Single files, series folders (grouped by SeriesInstanceUID) and enhanced multi-frame
  files (per-frame functional groups) go through one code path. Files are recognised by a
  ``.dcm``/``.dicom``/``.ima`` suffix or, for any other name, the DICM preamble
  (``pydicom.misc.is_dicom``). Only ``Modality == "MR"`` greyscale magnitude images are
  accepted (ImageType / ComplexImageComponent naming phase, real or imaginary is rejected).
  Read with pydicom itself (``pixel_array``, ``apply_modality_lut``): MONAI's ``PydicomReader``
  orders by InstanceNumber only, takes a whole folder as one series and ignores per-frame
  functional groups. A series in a folder shared with other series is the unit
  ``<folder>#series-<anonymous id of its UID>`` (:func:`find_inputs` makes them).
- NIfTI (MONAI ``NibabelReader``): the stored ``(x, y, z[, t])`` order; complex data -> ``|z|``;
  RGB24/RGBA32 voxels follow the colour policy below. Along the third axis (the default) the
  slices stay on disk (:class:`NiftiSlices`: ``magnitude[i]`` reads one slice, ``np.asarray``
  all), so memory is a few slices whatever the volume; other slice axes read the whole volume.
- PNG (MONAI ``PILReader``), TIFF (``tifffile``): ``(H, W)`` as displayed, identity affine;
  16-bit kept; complex TIFF -> modulus. Colour policy: an RGB(A)/palette image is accepted only when R == G == B
  (a grey image saved as RGB) and any alpha channel is fully opaque; otherwise it is an
  error, never a silent conversion. Multi-page TIFF is a ``(H, W, pages)`` volume.
- fastMRI h5 (:mod:`scripts.io.fastmri_h5`): ``|image_complex|`` when the file is a paired
  complex file (the simulator's, or :mod:`scripts.synthesis.synthesize` output; the complex image is
  then kept as ``MagnitudeVolume.reference`` for the ``ground_truth`` phase source), else
  ``reconstruction_rss`` (multi-coil) or
  ``reconstruction_esc`` (single-coil) if present, else the RSS of ``kspace``; slices are
  the file's slices (``slice_axis`` is 0, identity affine). Undersampled files (a ``mask``
  and no reconstruction) are refused.

2-D inputs are ``(H, W, 1)`` volumes (``slice_axis`` is reported as 2 whatever was asked).
Bad input raises :class:`MagnitudeInputError` with the one-line message ``"<path>: <reason>"``.
Rejected: unreadable/truncated/non-image/empty files, non-MR DICOM, compressed DICOM without
an installed decoder (the message says which to install), colour images, NaN/Inf, an
all-zero volume (single all-zero slices inside a volume are kept; ``scripts.core.intensity``
refuses them per slice), slices smaller than 8x8, more than 4 dimensions, and clearly
signed data (minimum below -1% of the maximum; smaller negative values, e.g. interpolation
ringing, are clipped to 0).

Privacy: no identifying DICOM header value (names, IDs, dates, institutions, UIDs) is kept,
logged or put into an error message (messages quote at most the Modality code). ``id`` is :func:`scripts.io.fastmri_h5.anonymous_id` of the kind, the
path relative to ``root`` and the SeriesInstanceUID; pydicom datasets are dropped as soon as
their pixels and geometry are read; pydicom warnings and log records (which can quote header
values, and decoder tracebacks) are silenced while reading, as are tifffile's (the one-line reason says what
failed). ``source`` is the input path, for error and skip reports only.
"""

from __future__ import annotations

import contextlib
import logging
import operator
import os
import re
import warnings
from collections.abc import Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pydicom
import tifffile
from monai.config import KeysCollection
from monai.data import NibabelReader, PILReader
from monai.transforms import MapTransform
from pydicom.pixels import apply_modality_lut, get_decoder

from scripts.io import fastmri_h5
from scripts.io.fastmri_h5 import FastMRIFileError, anonymous_id

__all__ = [
    "BadInput",
    "LoadMagnituded",
    "MagnitudeInputError",
    "MagnitudeVolume",
    "NiftiSlices",
    "find_inputs",
    "input_key",
    "iter_magnitude_volumes",
    "load_magnitude",
    "scrub_paths",
    "slices_to_volume",
]

logger = logging.getLogger(__name__)

MIN_SIZE = 8
"""Smallest accepted slice height and width."""
SERIES_SEP = "#series-"
"""Unit ``<folder>#series-<anonymous id of SeriesInstanceUID>``: one series of a shared folder."""
NEGATIVE_TOLERANCE = 0.01
"""Negative values down to this fraction of the maximum are clipped to 0; lower ones are refused."""

_SUFFIXES = {".nii": "nifti", ".nii.gz": "nifti", ".png": "png", ".tif": "tiff", ".tiff": "tiff",
             ".h5": "fastmri", ".hdf5": "fastmri", ".dcm": "dicom", ".dicom": "dicom", ".ima": "dicom"}
_PIL_DIRECT = {"1", "L", "LA", "I", "F", "RGB", "RGBA"}  # other PIL modes (P, CMYK, ...) -> RGBA first
_NOT_MAGNITUDE = {"P", "PHASE", "PHASE MAP", "R", "REAL", "I", "IMAGINARY"}


class MagnitudeInputError(ValueError):
    """An input that cannot be used as magnitude; ``str(e) == "<path>: <reason>"`` (one line)."""

    def __init__(self, path: object, reason: str) -> None:
        self.path, self.reason = str(path), " ".join(str(reason).split())
        super().__init__(f"{self.path}: {self.reason}")


@dataclass(repr=False, eq=False)
class MagnitudeVolume:
    """Magnitude slices of one input unit; see the module docstring for the conventions."""

    id: str
    source: str
    kind: str
    magnitude: np.ndarray | NiftiSlices  # NIfTI: slices stay on disk until indexed (see NiftiSlices)
    affine: np.ndarray
    slice_axis: int
    frames: int = 1  # volumes along the 4th axis, concatenated along the slices (1 for 2-D/3-D)
    reference: np.ndarray | None = None  # (slices, H, W) complex paired image, fastMRI ``image_complex`` only

    def __repr__(self) -> str:  # no source (paths may be identifying), no pixel dump
        return (f"MagnitudeVolume(id={self.id!r}, kind={self.kind!r}, shape={tuple(self.magnitude.shape)}, "
                f"slice_axis={self.slice_axis}, frames={self.frames})")


@dataclass
class BadInput:
    """An input unit that was skipped, and why.

    ``source``: its path (to find the file; keep it private), ``reason``: one line with the input's paths scrubbed
    (:func:`scrub_paths`), ``key``: its anonymous :func:`input_key` (what logs and reports name)."""

    source: str
    reason: str
    key: str = ""


def slices_to_volume(volume: MagnitudeVolume, slices: np.ndarray) -> np.ndarray:
    """Put ``slices`` shaped like ``volume.magnitude`` back into the voxel order of ``volume.affine``."""
    slices = np.asarray(slices)
    n, h, w = volume.magnitude.shape
    stacked = slices.reshape(volume.frames, n // volume.frames, h, w, *slices.shape[3:])
    out = np.moveaxis(stacked, (0, 1), (3, volume.slice_axis))
    return out[:, :, :, 0] if volume.frames == 1 else out


# ----------------------------------------------------------------------------- discovery


def _kind(path: str) -> str | None:
    """Input kind from the suffix, else ``'dicom'`` when the file has the DICM preamble."""
    name = os.path.basename(path).lower()
    for suffix, kind in _SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    try:
        return "dicom" if pydicom.misc.is_dicom(path) else None
    except OSError:
        return None


def _suffixless(path: str) -> bool:
    """No suffix, or a numeric one: how DICOM files are named (``IM0001``, ``1.2.840.113619.2.55.3.4``).

    Such a file without the DICM preamble is still listed as an input, so that an empty, cut or
    corrupt DICOM is reported instead of silently left out."""
    suffix = os.path.splitext(os.path.basename(path))[1]
    return suffix == "" or suffix[1:].isdigit()


def _unrecognised(path: str) -> str:
    """Why a file of no known kind is not an input (the reason of :func:`load_magnitude`)."""
    if _suffixless(path):
        return "not a DICOM file (no 'DICM' preamble) and no known suffix (.dcm, .nii, .png, .tif, .h5)"
    return "unsupported file type"


@contextlib.contextmanager
def _quiet(library: str) -> Iterator[None]:
    """Mute warnings and the logger of ``library`` while reading (pydicom: decoder tracebacks, header values;
    tifffile: an ERROR line of its own per damaged page): the input's one-line reason says what failed."""
    log = logging.getLogger(library)
    level = log.level
    log.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.setLevel(level)


def _series_uid(path: str) -> str | None:
    """SeriesInstanceUID from the header only (None if unreadable or absent)."""
    try:
        with _quiet("pydicom"):
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        return str(ds.SeriesInstanceUID) if "SeriesInstanceUID" in ds else None
    except Exception:
        return None


def _group_series(files: Sequence[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Group DICOM files by SeriesInstanceUID; files without a readable UID are returned apart."""
    groups: dict[str, list[str]] = {}
    loose: list[str] = []
    for f in files:
        uid = _series_uid(f)
        (groups.setdefault(uid, []) if uid else loose).append(f)
    return groups, loose


def _dicom_units(folder: str, files: list[str]) -> list[str]:
    """One unit per series: the folder when it holds exactly one clean series, else files / ``#series-`` units."""
    groups, loose = _group_series(files)
    if len(groups) == 1 and not loose and len(files) > 1:
        return [folder]
    units = list(loose)
    for uid, members in groups.items():
        units.append(members[0] if len(members) == 1 else f"{folder}{SERIES_SEP}{anonymous_id(uid)}")
    return units


def find_inputs(root: str | os.PathLike, exclude: Sequence[str | os.PathLike] = (),
                problems: list[tuple[str, str]] | None = None) -> list[str]:
    """Sorted input units under ``root``: image files and DICOM series (hidden files and folders skipped), and files
    without a suffix (or a numeric one) that lack the DICM preamble, so that :func:`load_magnitude` reports them.

    Symbolic links to folders outside ``root`` are followed, each real folder once (a link into
    ``root`` is walked under its real path). ``exclude``: folders whose contents are never inputs
    (e.g. an output folder inside ``root``). ``problems`` receives ``(path, reason)`` for folders
    that cannot be read and for links not followed (loops, folders already visited); they are not
    errors. A missing ``root`` raises ``FileNotFoundError``.
    """
    root = os.fspath(root)
    if os.path.isfile(root):
        return [root]
    if not os.path.isdir(root):
        raise FileNotFoundError(f"input folder {root} does not exist")
    problems = [] if problems is None else problems
    excluded = [os.path.realpath(e) for e in exclude]
    base = os.path.realpath(root)

    def inside(path: str, folders: Sequence[str]) -> bool:
        return any(path == f or path.startswith(f.rstrip(os.sep) + os.sep) for f in folders)

    def unreadable(error: OSError) -> None:
        problems.append((str(error.filename), f"cannot read folder ({error.strerror or type(error).__name__})"))

    if inside(base, excluded):
        return []
    visited = {base}
    units: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=True):
        kept = []
        for d in sorted(d for d in dirnames if not d.startswith(".")):
            path = os.path.join(dirpath, d)
            real = os.path.realpath(path)
            if inside(real, excluded):
                continue
            if real in visited or (os.path.islink(path) and inside(real, [base])):
                looped = inside(os.path.realpath(dirpath), [real])
                problems.append((path, "symbolic link loop" if looped else "already visited"))
                continue
            visited.add(real)
            kept.append(d)
        dirnames[:] = kept
        dicoms = []
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            kind = None if name.startswith(".") else _kind(path)
            if kind == "dicom":
                dicoms.append(path)
            elif kind or (not name.startswith(".") and _suffixless(path)):  # a suffixless non-DICOM: reported
                units.append(path)
        units += _dicom_units(dirpath, dicoms)
    return sorted(units)


def input_key(unit: str, root: str | os.PathLike) -> str:
    """The anonymous name of an input unit: sha256 of its path relative to the archive root."""
    root = os.path.abspath(root)
    rel = "." if os.path.abspath(unit) == root else os.path.relpath(os.path.abspath(unit), root)
    return anonymous_id("input", Path(rel).as_posix())


def _distinctive(name: str) -> bool:
    """A path component that reads as a name, not as a word of a reason: letters mixed with anything else
    (``Doe_John``, ``IM0001``, ``x.dcm``) or a long number (an ID, a date)."""
    return bool(re.search(r"[A-Za-z]", name) and re.search(r"[^A-Za-z]", name)) or bool(re.fullmatch(r"\d{5,}", name))


def scrub_paths(text: str, unit: str, root: str | os.PathLike) -> str:
    """Replace any path under ``root``, the input's path and the components of its relative path by ``<input>``.

    A component that reads as a name (:func:`_distinctive`) is replaced wherever it occurs; a plain word or short
    number (a folder ``DICOM``, ``a``, ``3``, a link ``loop``) only where it stands in a path or quotes, so the
    reason's own words survive ("truncated DICOM pixel data", "symbolic link loop")."""
    absolute, base = os.path.abspath(unit), os.path.abspath(root)
    rel = os.path.relpath(absolute, base) if absolute != base else ""
    paths = {p for p in (unit, absolute, rel) if "/" in p or os.sep in p}
    names = {rel, *Path(rel).parts} - paths - {"", ".", ".."}
    literal = paths | {n for n in names if _distinctive(n)}
    patterns = [re.escape(base) + r"[^\s'\":,;]*"] + [re.escape(p) for p in sorted(literal, key=len, reverse=True)]
    patterns += [rf"(?<=[/\\'\"]){re.escape(n)}|{re.escape(n)}(?=[/\\'\"])" for n in sorted(names - literal, key=len, reverse=True)]
    return re.sub("|".join(patterns), "<input>", text)  # one pass: replacements are not matched again


# ----------------------------------------------------------------------------- DICOM


def _fg(ds: pydicom.Dataset, frame: int, sequence: str, keyword: str):
    """``keyword`` from the per-frame, then shared functional group ``sequence``, then the top level."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items and index < len(items) and items[index].get(sequence):
            value = items[index].get(sequence)[0].get(keyword)
            if value is not None:
                return value
    return ds.get(keyword)


def _check_dicom(ds: pydicom.Dataset, path: str) -> None:
    """Refuse non-MR, colour and phase/real/imaginary images (reasons quote no free-text header value)."""
    has_pixels = "PixelData" in ds or "FloatPixelData" in ds or "DoubleFloatPixelData" in ds
    if not has_pixels and "Modality" not in ds:
        raise MagnitudeInputError(path, "truncated or incomplete DICOM file: it ends before the Modality and the pixel data")
    modality = str(ds.get("Modality", "")).strip()
    if modality != "MR":
        shown = modality if modality.isalnum() and len(modality) <= 4 else "missing"
        raise MagnitudeInputError(path, f"DICOM Modality is {shown}, not MR")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1 or not photometric.startswith("MONOCHROME"):
        raise MagnitudeInputError(path, "colour DICOM (SamplesPerPixel > 1 or not MONOCHROME): magnitude must be greyscale")
    image_type = {str(v).upper() for v in (ds.get("ImageType") or [])}
    component = str(ds.get("ComplexImageComponent", "")).upper()
    if image_type & _NOT_MAGNITUDE or component in {"PHASE", "REAL", "IMAGINARY"}:
        raise MagnitudeInputError(path, "DICOM ImageType/ComplexImageComponent marks a phase, real or imaginary image")
    if not has_pixels:
        raise MagnitudeInputError(path, "DICOM file has no pixel data (truncated, or not an image)")


def _decode_dicom(ds: pydicom.Dataset, path: str) -> np.ndarray:
    """``ds.pixel_array``, with the cause named when it fails: truncated data or a missing/failing decoder."""
    syntax = getattr(ds, "file_meta", {}).get("TransferSyntaxUID")
    try:
        compressed = syntax is not None and bool(syntax.is_compressed)
    except (AttributeError, ValueError):  # not a known transfer syntax: pydicom's own error below
        compressed = False
    if "PixelData" in ds and not compressed:
        frames = int(ds.get("NumberOfFrames", 1) or 1) * int(ds.get("SamplesPerPixel", 1) or 1)
        bits = int(ds.get("BitsAllocated", 0) or 0)
        expected = (int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * frames * bits + 7) // 8
        if len(ds.PixelData) < expected:
            raise MagnitudeInputError(path, f"truncated DICOM pixel data ({len(ds.PixelData)} of {expected} bytes)")
    if compressed:
        try:
            decoder = get_decoder(syntax)
        except NotImplementedError:
            raise MagnitudeInputError(path, f"{syntax.name} pixel data: pydicom has no decoder for it") from None
        if not decoder.is_available:
            needs = "; ".join(m.split(" - requires ", 1)[-1] for m in decoder.missing_dependencies)
            raise MagnitudeInputError(path, f"{syntax.name} pixel data: no decoder installed (install one of: {needs})")
    try:
        return ds.pixel_array
    except Exception as e:
        if compressed:  # the decoders' own messages are not quoted: they may echo header values
            tried = ", ".join(get_decoder(syntax).available_plugins)
            raise MagnitudeInputError(path, f"corrupt or undecodable {syntax.name} pixel data (tried: {tried})") from None
        raise MagnitudeInputError(path, f"unreadable DICOM pixel data ({type(e).__name__})") from None


def _read_dicom_file(path: str) -> tuple[list[dict], str]:
    """Frames of one DICOM file (rescaled pixels, geometry) and its SeriesInstanceUID; the dataset is dropped."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:
        raise MagnitudeInputError(path, f"not a readable DICOM file ({type(e).__name__})") from None
    _check_dicom(ds, path)
    pixels = _decode_dicom(ds, path)
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    pixels = pixels.reshape(n_frames, *pixels.shape[-2:]) if pixels.ndim == 2 or n_frames > 1 else pixels
    if pixels.ndim != 3:
        raise MagnitudeInputError(path, f"unexpected DICOM pixel array shape {pixels.shape}")
    top_level_rescale = "RescaleSlope" in ds or "ModalityLUTSequence" in ds
    values = apply_modality_lut(pixels, ds) if top_level_rescale else pixels
    frames = []
    for i in range(n_frames):
        frame = np.asarray(values[i], dtype=np.float64)
        if not top_level_rescale:  # enhanced multi-frame: rescale per frame from the functional groups
            slope = _fg(ds, i, "PixelValueTransformationSequence", "RescaleSlope")
            intercept = _fg(ds, i, "PixelValueTransformationSequence", "RescaleIntercept")
            frame = frame * float(1.0 if slope is None else slope) + float(0.0 if intercept is None else intercept)
        iop = _fg(ds, i, "PlaneOrientationSequence", "ImageOrientationPatient")
        ipp = _fg(ds, i, "PlanePositionSequence", "ImagePositionPatient")
        spacing = _fg(ds, i, "PixelMeasuresSequence", "PixelSpacing")
        step = (_fg(ds, i, "PixelMeasuresSequence", "SpacingBetweenSlices")
                or _fg(ds, i, "PixelMeasuresSequence", "SliceThickness"))
        frames.append({
            "pixels": frame.astype(np.float32),
            "instance": int(ds.get("InstanceNumber") or 0),
            "iop": None if iop is None else np.asarray(iop, dtype=float),
            "ipp": None if ipp is None else np.asarray(ipp, dtype=float),
            "spacing": np.asarray(spacing if spacing is not None else (1.0, 1.0), dtype=float),
            "step": float(step or 1.0),
        })
    return frames, str(ds.get("SeriesInstanceUID", ""))


def _stack_dicom(frames: list[dict], source: str) -> tuple[np.ndarray, np.ndarray]:
    """Sort frames along the slice normal and stack them; returns the volume and its RAS affine."""
    if len({f["pixels"].shape for f in frames}) > 1:
        raise MagnitudeInputError(source, "DICOM slices have different sizes")
    geometric = all(f["iop"] is not None and f["ipp"] is not None for f in frames)
    if geometric and not all(np.allclose(f["iop"], frames[0]["iop"], atol=1e-4) for f in frames):
        raise MagnitudeInputError(source, "DICOM slices have different orientations (e.g. a localiser)")
    affine = np.eye(4)
    if geometric:
        row_cos, col_cos = frames[0]["iop"][:3], frames[0]["iop"][3:]
        normal = np.cross(row_cos, col_cos)
        positions = np.round([float(f["ipp"] @ normal) for f in frames], 3)
    else:
        positions = np.zeros(len(frames))
    order = sorted(range(len(frames)), key=lambda k: (positions[k], frames[k]["instance"], k))
    unique, counts = np.unique(positions, return_counts=True)
    if len(set(counts)) != 1:
        raise MagnitudeInputError(source, "DICOM series visits its slice positions unequally often")
    n_pos, n_rep = (len(unique), int(counts[0])) if geometric else (len(frames), 1)
    if not geometric:  # no geometry: InstanceNumber order, one frame per slice
        order = sorted(range(len(frames)), key=lambda k: (frames[k]["instance"], k))
    # (rows, cols, positions, repeats): frames at one position are ordered by InstanceNumber
    volume = np.stack([frames[k]["pixels"] for k in order], axis=-1)
    volume = volume.reshape(*volume.shape[:2], n_pos, n_rep)
    if geometric:
        first, last = frames[order[0]]["ipp"], frames[order[-1]]["ipp"]
        dr, dc = frames[0]["spacing"][:2]
        slice_col = (last - first) / (n_pos - 1) if n_pos > 1 else normal * frames[0]["step"]
        affine[:3, :4] = np.column_stack([col_cos * dr, row_cos * dc, slice_col, first])
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine  # DICOM LPS -> RAS
    return (volume[..., 0] if n_rep == 1 else volume), affine


def _dicom_files(unit: str | Sequence[str]) -> tuple[list[str], str, str]:
    """Resolve a DICOM unit to ``(files, source, id_path)`` and check it is one series."""
    if not isinstance(unit, str):
        files = [str(f) for f in unit]
        if not files:
            raise MagnitudeInputError("[]", "empty DICOM file list")
        source = files[0] if len(files) == 1 else os.path.commonpath([os.path.abspath(f) for f in files])
        return files, source, source
    if os.path.isfile(unit):
        return [unit], unit, unit
    folder, _, wanted = (unit.rpartition(SERIES_SEP) if not os.path.isdir(unit) and SERIES_SEP in unit else (unit, "", ""))
    if not os.path.isdir(folder):
        raise MagnitudeInputError(unit, "no such file or folder")
    names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    candidates = [p for p in (os.path.join(folder, n) for n in names) if os.path.isfile(p) and _kind(p) == "dicom"]
    groups, loose = _group_series(candidates)
    if wanted:
        groups = {uid: files for uid, files in groups.items() if anonymous_id(uid) == wanted}
    elif loose:
        raise MagnitudeInputError(unit, f"{len(loose)} DICOM file(s) in the folder have no readable SeriesInstanceUID")
    if len(groups) != 1:
        raise MagnitudeInputError(unit, f"expected one DICOM series, found {len(groups)}; use the units of find_inputs()")
    return next(iter(groups.values())), unit, folder


def _read_dicom(unit: str | Sequence[str]) -> tuple[np.ndarray, np.ndarray, str, str, str]:
    files, source, id_path = _dicom_files(unit)
    frames, uids = [], set()
    with _quiet("pydicom"):  # pydicom warnings and log records may quote header values
        for f in files:
            file_frames, uid = _read_dicom_file(f)
            frames += file_frames
            uids.add(uid)
    if len(uids) > 1:
        raise MagnitudeInputError(source, f"files belong to {len(uids)} DICOM series")
    volume, affine = _stack_dicom(frames, source)
    return volume, affine, source, id_path, uids.pop()


# ----------------------------------------------------------------------------- other formats


class NiftiSlices:
    """``(frames * n, H, W)`` float32 magnitude slices of a NIfTI file, left on disk until indexed.

    ``[i]`` reads one slice through nibabel's array proxy (slices along the third axis are contiguous
    in the file, so a pass in order reads it once, ``.nii.gz`` included); ``np.asarray`` reads all.
    The values are those of the in-memory readers; the constructor reads every slice once to
    validate them (NaN/Inf, all zero, signed), so a bad file fails at loading.
    """

    ndim, dtype = 3, np.dtype(np.float32)

    def __init__(self, dataobj, source: str) -> None:
        self._dataobj, self._source, self._clip = dataobj, source, False
        shape, _, self.frames = _layout(dataobj.shape, 2, source)
        self.shape = (self.frames * shape[2], shape[0], shape[1])
        finite, peak, low = True, -np.inf, np.inf
        for i in range(self.shape[0]):
            data = self[i]
            finite = finite and bool(np.all(np.isfinite(data)))
            if not finite:
                break
            peak, low = max(peak, float(data.max())), min(low, float(data.min()))
        self._clip = _check_range(peak, low, finite, source)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:  # no path
        return f"NiftiSlices(shape={self.shape})"

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, index) -> np.ndarray:
        first, rest = (index[0], index[1:]) if isinstance(index, tuple) and index else (index, ())
        if isinstance(first, slice):  # read only the slices asked for
            rows = range(len(self))[first]
            out = np.empty((len(rows), *self.shape[1:]), np.float32)
            for k, i in enumerate(rows):
                out[k] = self[i]
            return out[(slice(None), *rest)]
        if not isinstance(first, (int, np.integer)):
            return np.asarray(self)[index]
        i = operator.index(first) + (len(self) if first < 0 else 0)
        if not 0 <= i < len(self):
            raise IndexError(f"slice {first} out of range for {len(self)} slices")
        frame, z = divmod(i, self.shape[0] // self.frames)
        where = (slice(None), slice(None), z, frame, 0, 0, 0)[: len(self._dataobj.shape)]  # (x, y, z, t, 1...)
        try:
            data = _scalar_pixels(np.asarray(self._dataobj[where]), self._source).astype(np.float32)
        except MagnitudeInputError:
            raise
        except Exception as e:
            cause = "truncated NIfTI data" if _short_read(e) else "unreadable NIfTI data"
            raise MagnitudeInputError(self._source, f"{cause} ({type(e).__name__})") from None
        data = np.maximum(data, 0.0) if self._clip else data
        return data[rest] if rest else data


def _read_nifti(path: str, slice_axis: int) -> tuple[np.ndarray | NiftiSlices, np.ndarray]:
    """Data (scl_slope applied) and affine: nibabel, through MONAI's ``NibabelReader.read``.

    Slices along the third axis (the default) stay on disk as :class:`NiftiSlices`; reformatting
    along another axis reads the whole volume.
    """
    try:
        img = NibabelReader().read(path, keep_file_open=True)
        _check_nifti_size(img, path)
        if slice_axis == 2 or len(img.shape) == 2:
            return NiftiSlices(img.dataobj, path), np.asarray(img.affine, dtype=float)
        return np.asanyarray(img.dataobj), np.asarray(img.affine, dtype=float)
    except MagnitudeInputError:
        raise
    except Exception as e:
        raise MagnitudeInputError(path, f"not a readable NIfTI file ({type(e).__name__})") from None


def _short_read(error: BaseException) -> bool:
    """Whether a reader's exception says the file ended early (gzip, nibabel, PIL, tifffile wordings)."""
    text = str(error).lower()
    if isinstance(error, EOFError) or any(w in text for w in ("truncated", "not enough data", "end-of-stream")):
        return True
    return "bytes" in text and ("failed to read" in text or "expected" in text)  # tifffile; nibabel


def _check_nifti_size(img, path: str) -> None:
    """An uncompressed NIfTI file shorter than its header says (offset + voxels) is truncated."""
    proxy = img.dataobj
    if path.lower().endswith(".gz") or not hasattr(proxy, "offset"):
        return  # a gzip stream's length is only known by reading it: a cut one fails while reading
    expected = int(proxy.offset) + int(np.prod(proxy.shape, dtype=np.int64)) * np.dtype(proxy.dtype).itemsize
    actual = os.path.getsize(path)
    if actual < expected:
        raise MagnitudeInputError(path, f"truncated NIfTI file ({actual} of {expected} bytes)")


def _scalar_pixels(data: np.ndarray, path: str) -> np.ndarray:
    """Complex -> modulus; structured RGB(A) pixels (NIfTI RGB24/RGBA32) -> the grey rule of :func:`_grey`."""
    if data.dtype.names:
        data = _grey(np.stack([data[name] for name in data.dtype.names], axis=-1), path)
    return np.abs(data) if np.iscomplexobj(data) else data


def _grey(data: np.ndarray, path: str) -> np.ndarray:
    """Channels-last image -> grey: alpha must be opaque, colour channels equal (see module docstring)."""
    channels = data.shape[-1]
    if channels in (2, 4):
        alpha = data[..., -1]
        opaque = np.iinfo(alpha.dtype).max if alpha.dtype.kind in "ui" else 1.0
        if not np.all(alpha == opaque):
            raise MagnitudeInputError(path, "image has a transparent alpha channel")
        data, channels = data[..., :-1], channels - 1
    if channels == 3 and not (np.array_equal(data[..., 0], data[..., 1]) and np.array_equal(data[..., 0], data[..., 2])):
        raise MagnitudeInputError(path, "colour image (R, G, B differ): magnitude must be greyscale")
    if channels not in (1, 3):
        raise MagnitudeInputError(path, f"image with {channels} channels is not greyscale")
    return data[..., 0]


def _read_png(path: str) -> np.ndarray:
    """``(H, W)`` through MONAI's ``PILReader`` (palette/CMYK modes become RGBA, then the grey rule)."""
    def converter(im):
        return im if im.mode in _PIL_DIRECT or im.mode.startswith("I;16") else im.convert("RGBA")

    reader = PILReader(reverse_indexing=False, converter=converter)
    try:
        data, _ = reader.get_data(reader.read(path))
    except Exception as e:
        if _short_read(e):  # PIL: "image file is truncated"
            raise MagnitudeInputError(path, f"truncated PNG image file ({type(e).__name__})") from None
        raise MagnitudeInputError(path, f"not a readable PNG image file ({type(e).__name__})") from None
    return _grey(data, path) if data.ndim == 3 else data


def _read_tiff(path: str) -> np.ndarray:
    """``(H, W[, pages...])`` with ``tifffile``; samples (colour) go through the grey rule."""
    try:
        with _quiet("tifffile"), tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            data, axes = series.asarray(), series.axes
            palette = tif.pages[0].photometric == tifffile.PHOTOMETRIC.PALETTE
    except Exception as e:
        if _short_read(e):  # tifffile: "failed to read N bytes, got M"
            raise MagnitudeInputError(path, f"truncated TIFF file ({type(e).__name__})") from None
        raise MagnitudeInputError(path, f"not a readable TIFF file ({type(e).__name__})") from None
    if palette:
        raise MagnitudeInputError(path, "palette (indexed colour) TIFF: magnitude must be greyscale")
    if "S" in axes:
        data = _grey(np.moveaxis(data, axes.index("S"), -1), path)
    n = data.ndim
    return np.transpose(data, (n - 2, n - 1, *reversed(range(n - 2)))) if n > 2 else data


def _read_fastmri(path: str) -> tuple[np.ndarray, np.ndarray | None]:
    """``(magnitude (slices, H, W), paired complex image or None)``, slice by slice.

    Magnitude: ``|image_complex|`` when present, else the stored reconstruction, else the RSS
    of fully sampled ``kspace``.
    """
    try:
        n = fastmri_h5.num_slices(path)
        with h5py.File(path, "r") as f:
            keys = set(f.keys())
        if "image_complex" in keys:
            reference = np.stack([fastmri_h5.read_slice(path, i, ("image_complex",))["image_complex"] for i in range(n)])
            if reference.ndim != 3 or not np.iscomplexobj(reference):
                raise MagnitudeInputError(path, f"'image_complex' must be complex (slices, H, W), got {reference.shape}")
            return np.abs(reference).astype(np.float32), reference.astype(np.complex64)
        recon = next((k for k in ("reconstruction_rss", "reconstruction_esc") if k in keys), None)
        if recon is None and "mask" in keys:
            raise MagnitudeInputError(path, "undersampled k-space ('mask') and no reconstruction")
        key = recon or "kspace"
        slices = []
        for i in range(n):
            value = fastmri_h5.read_slice(path, i, keys=(key,))[key]
            slices.append(value if recon else fastmri_h5.rss(value if value.ndim == 3 else value[None]))
    except FastMRIFileError as e:
        raise MagnitudeInputError(path, e.reason) from None
    except MagnitudeInputError:
        raise
    except Exception as e:
        raise MagnitudeInputError(path, f"not a readable fastMRI file ({type(e).__name__})") from None
    return np.stack(slices), None


# ----------------------------------------------------------------------------- common


def _layout(shape: Sequence[int], slice_axis: int, source: str) -> tuple[tuple[int, ...], int, int]:
    """Check an array shape: ``(x, y, z[, t])`` without trailing singleton axes (2-D: ``z`` = 1), slice axis, frames."""
    shape = tuple(int(n) for n in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 4:
        raise MagnitudeInputError(source, f"{len(shape)}-D array {shape}: at most 4 dimensions are supported")
    if len(shape) < 2:
        raise MagnitudeInputError(source, f"{len(shape)}-D array is not an image")
    if 0 in shape:
        raise MagnitudeInputError(source, f"empty image: shape {shape} has a zero-length dimension")
    if len(shape) == 2:
        shape, slice_axis = (*shape, 1), 2
    h, w = (n for k, n in enumerate(shape[:3]) if k != slice_axis)
    if min(h, w) < MIN_SIZE:
        raise MagnitudeInputError(source, f"slices of {h}x{w} are smaller than {MIN_SIZE}x{MIN_SIZE}")
    return shape, slice_axis, shape[3] if len(shape) == 4 else 1


def _check_range(peak: float, low: float, finite: bool, source: str) -> bool:
    """Refuse NaN/Inf, all-zero and signed data; ``True`` when small negative values must be clipped to 0."""
    if not finite:
        raise MagnitudeInputError(source, "image contains NaN or Inf")
    if peak <= 0 and low >= 0:
        raise MagnitudeInputError(source, "image is all zero")
    if low < 0 and -low > NEGATIVE_TOLERANCE * max(peak, 0.0):
        raise MagnitudeInputError(source, f"signed image (min {low:.4g}, max {peak:.4g}): not a magnitude image")
    return low < 0


def _to_slices(volume: np.ndarray, slice_axis: int, source: str) -> tuple[np.ndarray, int, int]:
    """Validate a volume and cut it into ``(frames * n, H, W)`` float32 slices along ``slice_axis``."""
    volume = _scalar_pixels(np.asarray(volume), source)
    shape, slice_axis, frames = _layout(volume.shape, slice_axis, source)
    volume = volume.reshape(*shape[:3], frames).astype(np.float32)
    finite = bool(np.all(np.isfinite(volume)))
    if _check_range(float(volume.max()) if finite else 0.0, float(volume.min()) if finite else 0.0, finite, source):
        volume = np.maximum(volume, 0.0)
    stacked = np.moveaxis(volume, (3, slice_axis), (0, 1))
    return np.ascontiguousarray(stacked.reshape(-1, *stacked.shape[2:])), slice_axis, frames


def _relative(path: str, root: str | os.PathLike | None) -> str:
    """The path used in ``id``: relative to ``root`` when given, else absolute."""
    absolute = os.path.abspath(path)
    return os.path.relpath(absolute, os.path.abspath(root)) if root is not None else absolute


def load_magnitude(unit: str | os.PathLike | Sequence[str | os.PathLike], slice_axis: int = 2, *,
                   root: str | os.PathLike | None = None) -> MagnitudeVolume:
    """Load one input unit (file, DICOM folder/file list, or a :func:`find_inputs` unit).

    ``root`` only makes ``id`` relative to an archive root (as :func:`iter_magnitude_volumes` does),
    so ids stay stable when the archive moves. Raises :class:`MagnitudeInputError`.
    """
    if slice_axis not in (0, 1, 2, -1, -2, -3):
        raise ValueError(f"slice_axis must be 0, 1 or 2, got {slice_axis}")
    slice_axis %= 3
    if isinstance(unit, (str, os.PathLike)):
        unit = os.fspath(unit)
        if os.path.isfile(unit):
            if os.path.getsize(unit) == 0:
                raise MagnitudeInputError(unit, "empty file (0 bytes)")
            kind = _kind(unit)
            if kind is None:
                raise MagnitudeInputError(unit, _unrecognised(unit))
        else:
            kind = "dicom"  # a series folder or a #series- unit
    else:
        kind = "dicom"
    uid = ""
    affine, reference = np.eye(4), None
    try:
        if kind == "dicom":
            volume, affine, source, id_path, uid = _read_dicom(unit)
        else:
            source = id_path = unit
            if kind == "nifti":
                volume, affine = _read_nifti(unit, slice_axis)
            elif kind == "png":
                volume = _read_png(unit)
            elif kind == "tiff":
                volume = _read_tiff(unit)
            else:
                (volume, reference), slice_axis = _read_fastmri(unit), 0
    except MemoryError:
        raise
    except MagnitudeInputError:
        raise
    except Exception as e:  # any other library failure on a strange file is a bad input, not a crash
        shown = unit if isinstance(unit, str) else list(unit)
        raise MagnitudeInputError(shown, f"unreadable {kind} input ({type(e).__name__})") from None
    if isinstance(volume, NiftiSlices):
        magnitude, slice_axis, frames = volume, 2, volume.frames
    else:
        magnitude, slice_axis, frames = _to_slices(volume, slice_axis, source)
    return MagnitudeVolume(
        id=anonymous_id(kind, _relative(id_path, root), uid),
        source=source,
        kind=kind,
        magnitude=magnitude,
        affine=np.asarray(affine, dtype=np.float64),
        slice_axis=slice_axis,
        frames=frames,
        reference=reference,
    )


def iter_magnitude_volumes(root: str | os.PathLike, slice_axis: int = 2,
                           bad: list[BadInput] | None = None) -> Iterator[MagnitudeVolume]:
    """Yield every readable unit under ``root`` (one in memory at a time); bad ones (and folders or links
    :func:`find_inputs` could not walk) go to ``bad`` (:class:`BadInput`) and the log, as the line
    ``skipped <key>: <reason>`` (no path: the anonymous :func:`input_key`, paths scrubbed from the reason)."""

    def skip(unit: str, source: str, reason: str) -> None:
        entry = BadInput(source=source, reason=scrub_paths(reason, unit, root), key=input_key(unit, root))
        logger.warning("skipped %s: %s", entry.key, entry.reason)
        if bad is not None:
            bad.append(entry)

    problems: list[tuple[str, str]] = []
    units = find_inputs(root, problems=problems)
    for path, reason in problems:
        skip(path, path, reason)
    for unit in units:
        try:
            volume = load_magnitude(unit, slice_axis, root=root)
        except MagnitudeInputError as e:
            skip(unit, e.path, e.reason)
            continue
        yield volume


class LoadMagnituded(MapTransform):
    """Dictionary transform: ``d[key]`` (a unit) -> ``(slices, H, W)`` float32 magnitude.

    Adds ``d[f"{key}_id"]`` and ``d[f"{key}_info"]`` (``id``, ``kind``, ``affine``, ``slice_axis``,
    ``frames``: enough for :func:`slices_to_volume`); the source path is not copied into the data.
    """

    def __init__(self, keys: KeysCollection, slice_axis: int = 2, root: str | os.PathLike | None = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.slice_axis, self.root = slice_axis, root

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            volume = load_magnitude(d[key], self.slice_axis, root=self.root)
            d[key] = np.asarray(volume.magnitude)
            d[f"{key}_id"] = volume.id
            d[f"{key}_info"] = {"id": volume.id, "kind": volume.kind, "affine": volume.affine,
                                "slice_axis": volume.slice_axis, "frames": volume.frames}
        return d
