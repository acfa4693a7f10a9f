"""Turn a magnitude-only archive into multi-coil fastMRI k-space: read -> phase -> coils -> FFT -> write.

Entry point (``configs/synthesize.json``)::

    python -m monai.bundle run synthesize --config_file configs/synthesize.json \\
        --input_dir DIR --output_dir OUT --phase_source NAME

For every input unit under ``input_dir`` (:func:`scripts.io.magnitude.find_inputs`: a NIfTI/PNG/
TIFF/fastMRI file or one DICOM series; ``OUT`` and ``REPORT`` are never read as inputs), one file per
phase sample ``OUT/<key>_s<k>.h5`` is written through :func:`scripts.io.fastmri_h5.write_fastmri`:
``kspace`` (slices, coils, H, W) complex64, ``reconstruction_rss``, ``image_complex``
(slices, H, W) = magnitude * exp(i phase) (the coil-combined complex image, normalised units)
and an attribute ``synthesis`` (JSON: the manifest record below). ``OUT`` holds nothing but these
files (fastMRI's ``SliceDataset`` opens every entry of its folder); the report goes to ``REPORT``
(``report_dir``, default the sibling ``<OUT>_report``): ``manifest.jsonl`` (one record per output,
sorted), ``skipped.json`` (bad inputs and why) and, opt-in, ``input_map.PRIVATE.json``.

Input boundary: whatever one input raises (reading, normalising, phase, writing) skips that input
only: it is logged as one line ``<key>: <reason>`` (:func:`reject_input`; the innermost cause,
paths scrubbed) and listed in ``skipped.json`` with what :func:`scripts.io.magnitude.find_inputs`
could not list. ``MemoryError`` and ``KeyboardInterrupt`` end the run. A missing or empty
``input_dir``, or a shard whose inputs all failed, ends it with :class:`NoUsableInput` (one line,
exit status 1 from ``python -m monai.bundle run``).

Pipeline per unit: the magnitude volume is divided by its volume-wide 99.5th percentile
(:func:`scripts.core.intensity.magnitude_reference`; the factor is recorded as ``magnitude_scale``, so
scanner units are ``image * magnitude_scale``), optionally resized to ``image_size``
(aspect kept: longest side resized with anti-aliasing, then zero-padded to a square), given a
phase by the phase source (the whole ``(S, H, W)`` stack in one call, so network sources batch
on their device), multiplied by coil maps drawn per slice (or per volume), noised
(:mod:`scripts.coils.simulation`, ``noise_std`` relative to the normalised tissue level ~1) and FFT'd.

Archive scale:

- Streaming: one unit is in memory at a time; nothing accumulates but the (small) records.
- Reproducible and order-free: every random draw derives from ``(seed, volume id, sample)``
  (:func:`derive_seed`); noise is seeded per slice, so neither the input order nor the sharding
  changes a byte. Same settings -> byte-identical files, manifest and report.
- Resumable: outputs are written under a temporary name and renamed, so a file under its
  final name is complete. A rerun skips units whose outputs exist (their records are read
  back from the file), deletes the ``.tmp`` files that killed writers left for its own units
  (:func:`scripts.io.atomic.stale_temporaries`: never a live process's), and rebuilds the
  manifest. Existing outputs made with other settings (``config_hash``) raise an error
  unless ``overwrite=True``.
- Sharding: under ``torchrun`` (or any launcher setting ``RANK``/``WORLD_SIZE``) rank ``r``
  takes units ``r, r + W, r + 2W, ...`` of the sorted input list; no process group is needed.
  Each rank writes ``REPORT/_parts/{manifest,skipped}-r<rank>-of-<W>.*``; the rank that finds all
  ``W`` parts present merges them (atomically) into ``manifest.jsonl`` / ``skipped.json``.
  :func:`merge_manifests` (config id ``merge_manifest``) does the same by hand.
- Concurrent runs: two processes on one ``OUT`` with the same settings both finish with every
  output intact (temporary names are per process, every file is replaced atomically, nothing
  deletes a live process's files).

Privacy: no path, file name or header value of an input reaches any output or log line.
Inputs are named by ``key`` = :func:`input_key` (a sha256 of the path relative to
``input_dir``); the manifest has the magnitude reader's anonymous ``input_id`` and that key;
skipped inputs are reported as ``{"input": key, "reason": ...}`` with the input's path and the names in it
scrubbed from the reason (:func:`scripts.io.magnitude.scrub_paths`). To find a reported input, run :func:`locate_inputs`
locally (it prints paths to your own console, never to the outputs), or opt in to
``write_input_map`` (``REPORT/input_map.PRIVATE.json``: key -> relative path). The one exception is
MONAI's runner itself, which echoes its command-line arguments (``--input_dir``/``--output_dir``)
in its log (and :class:`NoUsableInput` names a missing or empty ``input_dir``): do not name the
archive root after a patient.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import torch

from scripts.coils import simulation as coils
from scripts.configs import as_bool, resolve_device
from scripts.io.atomic import stale_temporaries, write_json, write_text
from scripts.io.fastmri_h5 import FastMRIFileError, anonymous_id, write_fastmri
from scripts.core.intensity import magnitude_reference
from scripts.io.magnitude import MagnitudeInputError, find_inputs, input_key, load_magnitude
from scripts.io.magnitude import scrub_paths as _scrub
from scripts.phase.sources import get_phase_source

__all__ = ["NoUsableInput", "OneLineExit", "Synthesizer", "derive_seed", "failure_reason", "input_key", "list_inputs", "locate_inputs",
           "merge_manifests", "reject_input", "shard", "write_input_map"]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
SKIPPED = "skipped.json"
PARTS = "_parts"
INPUT_MAP = "input_map.PRIVATE.json"


class OneLineExit(SystemExit):
    """Ends a command-line run with exit status 1 and its message as the one line on the console.

    A ``SystemExit`` because MONAI wraps any ``Exception`` of a config expression into "Failed to evaluate
    ConfigExpression" under a long traceback.
    """

    def __str__(self) -> str:
        return str(self.code)


class NoUsableInput(OneLineExit):
    """A batch run that made nothing: its input folder is missing or empty, or every input failed."""


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from ``parts`` (sha256): independent streams per volume, sample and purpose."""
    return int(anonymous_id("seed", *parts), 16) % (2**31 - 1)


def locate_inputs(input_dir: str | os.PathLike, keys: Sequence[str]) -> dict[str, str]:
    """``{key: path}`` for reported keys (run it locally: it reads paths, so keep its output private)."""
    wanted = set(keys)
    return {k: u for u in find_inputs(input_dir) if (k := input_key(u, input_dir)) in wanted}


def shard(items: Sequence, rank: int, world_size: int) -> list:
    """Items ``rank, rank + W, ...``: every item goes to exactly one rank."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world size {world_size}")
    return list(items[rank::world_size])


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    rank = int(os.environ.get("RANK", 0)) if rank is None else int(rank)
    world_size = int(os.environ.get("WORLD_SIZE", 1)) if world_size is None else int(world_size)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad RANK={rank} / WORLD_SIZE={world_size}")
    return rank, world_size


def _jsonable(value):
    """JSON view of config values; objects become their type name (no memory addresses, no paths)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, complex):
        return [value.real, value.imag]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, torch.device):
        return str(value)
    return f"<{type(value).__name__}>"  # paths and objects: no file names, no memory addresses


class _Unusable(ValueError):
    """This volume cannot be synthesised (the magnitude or the phase source refuses it): skip and report."""


def failure_reason(error: BaseException | str, unit: str, root: str | os.PathLike) -> str:
    """One line saying why ``unit`` failed: the innermost cause as ``Type: message`` (a reader's or the
    synthesiser's refusal: its message), every path of the input scrubbed."""
    if isinstance(error, BaseException):
        while error.__cause__ is not None:  # MONAI and Ignite wrap the real cause ("applying transform ...")
            error = error.__cause__
        if isinstance(error, (MagnitudeInputError, FastMRIFileError)):
            error = error.reason
        elif not isinstance(error, _Unusable):
            error = f"{type(error).__name__}: {error}"
    return _scrub(" ".join(str(error).split()), unit, root)


def reject_input(unit: str, root: str | os.PathLike, error: BaseException | str) -> dict:
    """The report entry ``{"input": key, "reason": ...}`` of a failed input, logged as the line ``<key>: <reason>``."""
    entry = {"input": input_key(unit, root), "reason": failure_reason(error, unit, root)}
    logger.warning("%s: %s", entry["input"], entry["reason"])
    return entry


def list_inputs(root: str | os.PathLike, exclude: Sequence[str | os.PathLike], workflow: str) -> tuple[list[str], list[dict]]:
    """``(units, rejected)``: :func:`scripts.io.magnitude.find_inputs` of ``root`` without the ``exclude`` folders
    (a run's own outputs) and the report entries of what could not be listed; :class:`NoUsableInput` when the
    folder is missing or holds nothing."""
    problems: list = []
    try:
        units = find_inputs(root, exclude=[os.fspath(e) for e in exclude], problems=problems)
    except FileNotFoundError:
        raise NoUsableInput(f"{workflow}: input_dir {os.fspath(root)} does not exist") from None
    if not units and not problems:
        raise NoUsableInput(f"{workflow}: no input (DICOM, NIfTI, PNG, TIFF, fastMRI h5) under input_dir {os.fspath(root)}")
    return units, [reject_input(path, root, reason) for path, reason in problems]


def write_input_map(folder: str | os.PathLike, root: str | os.PathLike, units: Sequence[str]) -> Path:
    """``folder/input_map.PRIVATE.json``: ``{key: path relative to root}`` (opt-in: it names the inputs, keep it private)."""
    base = os.path.abspath(root)
    mapping = {input_key(u, root): Path(os.path.relpath(os.path.abspath(u), base)).as_posix() for u in units}
    return write_json(Path(folder) / INPUT_MAP, mapping)


def merge_manifests(report_dir: str | os.PathLike, world_size: int | None = None) -> bool:
    """Merge the per-rank parts of ``report_dir`` into its ``manifest.jsonl`` and ``skipped.json`` once all are present.

    Returns ``True`` when merged. ``world_size`` defaults to ``WORLD_SIZE`` (or the only world
    size the parts were written with). Parts and merged files are only ever replaced atomically, so
    processes merging at once all leave complete files.
    """
    out = Path(report_dir)
    parts = out / PARTS
    if world_size is None:
        env = os.environ.get("WORLD_SIZE")
        sizes = {p.stem.rsplit("-of-", 1)[1] for p in parts.glob("manifest-r*-of-*.jsonl")}
        if env is not None:
            world_size = int(env)
        elif len(sizes) == 1:
            world_size = int(sizes.pop())
        else:
            raise ValueError(f"cannot tell the world size from the parts in {parts}: pass world_size")
    names = [f"r{r:05d}-of-{world_size:05d}" for r in range(world_size)]
    manifests = [parts / f"manifest-{n}.jsonl" for n in names]
    skips = [parts / f"skipped-{n}.json" for n in names]
    missing = [p.name for p in manifests + skips if not p.is_file()]
    if missing:
        logger.info("manifest not merged yet: %d of %d parts missing", len(missing), 2 * world_size)
        return False
    records = [json.loads(line) for p in manifests for line in p.read_text(encoding="utf-8").splitlines() if line]
    records.sort(key=lambda r: r["output"])
    skipped = sorted((s for p in skips for s in json.loads(p.read_text(encoding="utf-8"))), key=lambda s: s["input"])
    write_text(out / MANIFEST, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    write_text(out / SKIPPED, json.dumps(skipped, indent=1, sort_keys=True) + "\n")
    return True


class Synthesizer:
    """Synthesise multi-coil k-space for every input unit of a magnitude-only archive.

    Args:
        input_dir: archive root (any mix of DICOM series, NIfTI, PNG, TIFF, fastMRI h5).
        output_dir: where the h5 files go (nothing else: fastMRI's ``SliceDataset`` opens every entry of it).
        report_dir: where ``manifest.jsonl``, ``skipped.json`` and the per-rank ``_parts/`` go
            (``None``: the sibling folder ``<output_dir>_report``).
        phase_source, phase_source_kwargs: :func:`scripts.phase.sources.get_phase_source` arguments.
        coil_maps: a :class:`scripts.coils.simulation.MapSource` (default :class:`scripts.coils.simulation.BirdcageMaps`).
        num_coils: coils per output (4 to 32), or a list to draw the count from per volume.
        image_size: output matrix ``N`` (``N x N``), or ``None`` to keep the input size.
        seed: global seed; see :func:`derive_seed`.
        samples_per_volume: phase samples (output files) per input unit.
        noise_std, noise_cov: coil noise relative to the normalised image (tissue ~1), see :mod:`scripts.coils.simulation`.
        maps_per_slice: draw maps per slice (``True``) or once per volume.
        slice_axis: passed to :func:`scripts.io.magnitude.load_magnitude`.
        acquisition: the fastMRI ``acquisition`` attribute.
        rank, world_size: shard; default from ``RANK`` / ``WORLD_SIZE``.
        overwrite: replace outputs made with other settings instead of raising.
        write_input_map: also write ``report_dir/input_map.PRIVATE.json`` (key -> input path; names the inputs).
        device: where coils, noise and FFT run (default the CPU; a GPU gives the same k-space to float
            tolerance: the noise is drawn on the CPU). Not part of the settings hash. The phase source picks
            its own device (``phase_source_kwargs``).
    """

    def __init__(self, input_dir: str | os.PathLike, output_dir: str | os.PathLike, phase_source: str = "zero",
                 phase_source_kwargs: dict | None = None, coil_maps: coils.MapSource | None = None,
                 num_coils: int | Sequence[int] = 8, image_size: int | None = None, seed: int = 0,
                 samples_per_volume: int = 1, noise_std: float = 0.0, noise_cov=None, maps_per_slice: bool = True,
                 slice_axis: int = 2, acquisition: str = "SYNTHETIC",
                 rank: int | None = None, world_size: int | None = None, overwrite: bool = False,
                 report_dir: str | os.PathLike | None = None, write_input_map: bool = False,
                 device: str | torch.device | None = None) -> None:
        self.input_dir, self.output_dir = Path(input_dir), Path(output_dir)
        # coils, noise and FFT run here; the noise is drawn on the CPU (seeded per slice) whatever the device
        self.device = torch.device(resolve_device(device))
        self.report_dir = Path(f"{self.output_dir}_report") if report_dir in (None, "") else Path(report_dir)
        self.write_input_map = as_bool(write_input_map, "write_input_map")
        self.phase_source_name = str(phase_source)
        self.phase_source_kwargs = dict(phase_source_kwargs or {})
        self.coil_maps = coil_maps if coil_maps is not None else coils.BirdcageMaps()
        counts = [int(num_coils)] if np.ndim(num_coils) == 0 else [int(c) for c in num_coils]
        if not counts or min(counts) < 1:
            raise ValueError(f"num_coils must be a positive int or a list of them, got {num_coils}")
        if noise_cov is not None and len(counts) > 1:
            raise ValueError("noise_cov fixes the coil count: give a single num_coils with it")
        self.num_coils = counts
        self.image_size = None if image_size in (None, 0) else int(image_size)
        self.seed, self.samples = int(seed), int(samples_per_volume)
        self.noise_std, self.noise_cov = float(noise_std), (None if noise_cov is None else np.asarray(noise_cov))
        self.maps_per_slice = as_bool(maps_per_slice, "maps_per_slice")
        self.slice_axis, self.acquisition = int(slice_axis), str(acquisition)
        self.rank, self.world_size = _rank_world(rank, world_size)
        self.overwrite = as_bool(overwrite, "overwrite")
        self._source = None
        self._writer: ThreadPoolExecutor | None = None  # set by run(): outputs are written beside the compute
        self._writes: list = []
        self._write_abort = False
        self.timings: dict[str, float] = {}
        self.settings = {
            "phase_source": self.phase_source_name, "phase_source_kwargs": _jsonable(self.phase_source_kwargs),
            "maps": self.coil_maps.describe(), "num_coils": self.num_coils, "image_size": self.image_size,
            "seed": self.seed, "samples_per_volume": self.samples, "noise_std": self.noise_std,
            "noise_cov": _jsonable(self.noise_cov), "maps_per_slice": self.maps_per_slice,
            "slice_axis": self.slice_axis, "acquisition": self.acquisition,
        }
        self.config_hash = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ helpers

    @property
    def phase_source(self):
        if self._source is None:
            self._source = get_phase_source(self.phase_source_name, **self.phase_source_kwargs)
        return self._source

    def _tick(self, stage: str, t0: float) -> float:
        t = time.perf_counter()
        self.timings[stage] = self.timings.get(stage, 0.0) + t - t0
        return t

    def output_names(self, key: str) -> list[str]:
        return [f"{key}_s{k}.h5" for k in range(self.samples)]

    def _existing_record(self, path: Path) -> dict | None:
        try:
            with h5py.File(path, "r") as f:
                record = json.loads(f.attrs["synthesis"])
        except Exception:
            return None
        return record

    def _resize(self, image, pad: bool = True) -> np.ndarray:
        """``(S, H, W)`` slices (an array, or a lazy :class:`scripts.io.magnitude.NiftiSlices`) at ``image_size``.

        One slice at a time, float32, as MONAI's ``Resize(n, size_mode="longest", anti_aliasing=True)``
        (its sizes, default sigma and bilinear step; the Gaussian by :meth:`_smooth`), then, with ``pad``,
        zero-padded to a square; complex: real and imaginary parts.
        """
        n = self.image_size
        if n is None or tuple(image.shape[1:]) == (n, n):
            return np.asarray(image)
        if np.iscomplexobj(image):
            return self._resize(image.real, pad) + 1j * self._resize(image.imag, pad)
        from monai.transforms import Resize, ResizeWithPadOrCrop

        shape = image.shape[1:]
        size = tuple(int(round(s * n / max(shape))) for s in shape)
        sigma = ((torch.tensor(shape, dtype=torch.float) / torch.tensor(size, dtype=torch.float) - 1) / 2).clamp(min=0)
        resize = Resize(spatial_size=size, mode="bilinear", anti_aliasing=False, dtype=torch.float32)
        out = np.stack([np.asarray(resize(self._smooth(np.asarray(image[i], dtype=np.float32), sigma)[None]))[0]
                        for i in range(len(image))])
        return np.asarray(ResizeWithPadOrCrop(spatial_size=(n, n))(out), dtype=np.float32) if pad else out

    @staticmethod
    def _smooth(image: np.ndarray, sigma: torch.Tensor) -> np.ndarray:
        """MONAI's anti-aliasing ``GaussianFilter`` (erf kernel to 4 sigma, zero padding) of one slice, by FFT.

        Same values to float32 rounding, in a few copies of the slice: torch's direct convolution of a
        4096 x 4096 slice at sigma 31.5 (to 64 x 64) takes 1.2 GB.
        """
        from monai.networks.layers.convutils import gaussian_1d
        from scipy.fft import irfft, next_fast_len, rfft

        for axis, s in enumerate(sigma):
            if s <= 0:
                continue
            kernel = gaussian_1d(s, truncated=4.0, approx="erf").numpy()
            r, length = len(kernel) // 2, image.shape[axis]
            m = next_fast_len(length + 2 * r, real=True)
            spectrum = rfft(image, m, axis=axis)
            spectrum *= np.expand_dims(rfft(kernel, m), 1 - axis)
            image = np.take(irfft(spectrum, m, axis=axis), np.arange(r, r + length), axis=axis)
        return image.astype(np.float32, copy=False)

    # ------------------------------------------------------------------ one volume

    def prepare_volume(self, volume) -> tuple[np.ndarray, np.ndarray | None, float]:
        """``(magnitude, reference, scale)`` of one :class:`scripts.io.magnitude.MagnitudeVolume` at ``image_size``,
        once per volume whatever the number of samples.

        The magnitude is resized slice by slice (a NIfTI volume is read from disk one slice at a time), so
        memory is a few input slices plus the output; the scale is the percentile of the resized slices.
        """
        try:
            resized = self._resize(volume.magnitude, pad=False)
            scale = magnitude_reference(resized)
        except MagnitudeInputError as e:  # a lazy volume read after loading
            raise _Unusable(e.reason) from None
        except ValueError as e:
            raise _Unusable(str(e)) from None
        magnitude = np.clip(self._resize(resized / np.float32(scale)), 0.0, None).astype(np.float32, copy=False)
        # the paired complex image, when the input carries one: only the ground_truth source uses it
        reference = None if volume.reference is None else self._resize(volume.reference / np.float32(scale))
        return magnitude, reference, scale

    def synthesize_volume(self, volume, sample: int, path: Path, key: str, prepared=None) -> dict:
        """Phase, coils, FFT and write for one :class:`scripts.io.magnitude.MagnitudeVolume`; returns its record.
        ``prepared``: its :meth:`prepare_volume` (computed here when not given)."""
        t = time.perf_counter()
        magnitude, reference, scale = prepared if prepared is not None else self.prepare_volume(volume)
        vseed = derive_seed(self.seed, volume.id, sample)
        rng = np.random.default_rng(derive_seed(vseed, "coils"))
        num_coils = self.num_coils[0] if len(self.num_coils) == 1 else int(rng.choice(self.num_coils))
        t = self._tick("read", t)

        try:
            phase = np.asarray(self.phase_source(magnitude, seed=derive_seed(vseed, "phase"), reference=reference))
        except ValueError as e:
            raise _Unusable(f"phase source {self.phase_source_name!r}: {e}") from None
        if phase.shape != magnitude.shape or not np.all(np.isfinite(phase)):
            raise ValueError(f"phase source {self.phase_source_name!r} returned {phase.dtype} {phase.shape} "
                             f"(finite: {bool(np.all(np.isfinite(phase)))}) for magnitude {magnitude.shape}")
        image = torch.polar(torch.from_numpy(magnitude), torch.from_numpy(phase.astype(np.float32, copy=False)))
        t = self._tick("phase", t)

        n, h, w = magnitude.shape
        specs = self.coil_maps.sample(rng, num_coils, n if self.maps_per_slice else 1)
        noisy = self.noise_cov is not None or self.noise_std > 0
        kspace = torch.empty((n, num_coils, h, w), dtype=torch.complex64)
        on_device = image.to(self.device)
        t = self._tick("maps", t)
        for j in range(n):  # slice by slice: memory stays at one volume of k-space, noise is seeded per slice
            maps = self.coil_maps.render(specs[j if self.maps_per_slice else 0], (h, w))
            t = self._tick("maps", t)
            gen = torch.Generator().manual_seed(derive_seed(vseed, "noise", j)) if noisy else None
            kspace[j] = coils.simulate_coils(on_device[j], maps, self.noise_std, self.noise_cov, generator=gen).cpu()
            t = self._tick("coils", t)

        record = {
            "output": path.name, "input_key": key, "input_id": volume.id, "kind": volume.kind, "sample": sample,
            "seed": vseed, "global_seed": self.seed, "phase_source": self.phase_source_name,
            "phase_source_kwargs": _jsonable(self.phase_source_kwargs), "num_slices": n, "shape": [h, w],
            "num_coils": num_coils, "magnitude_scale": float(scale), "noise_std": self.noise_std,
            "noise_cov": _jsonable(self.noise_cov),
            "coil_maps": {"source": self.coil_maps.name, "per_slice": self.maps_per_slice, "specs": specs,
                          **self.coil_maps.provenance()},
            "config_hash": self.config_hash,
        }
        if getattr(self.phase_source, "amp", False):  # a network source sampled in bf16 (CUDA): say so per file
            record["phase_source_precision"] = "bf16 autocast"
        self._write(path, kspace.numpy(), image.numpy(), volume.id, record)
        return record

    def _write(self, path: Path, kspace: np.ndarray, image: np.ndarray, volume_id: str, record: dict) -> None:
        """Write one output (atomically): at once, or on the writer thread while :meth:`run` computes the next
        unit (the files and bytes are the same; ``run`` waits for a unit's files before it counts them)."""
        def write():
            if self._write_abort:  # a kill (KeyboardInterrupt, SystemExit) in an earlier write ends the writing
                return
            t = time.perf_counter()
            try:
                write_fastmri(path, kspace, acquisition=self.acquisition, patient_id=volume_id,
                              extra={"image_complex": image}, attrs={"synthesis": json.dumps(record, sort_keys=True)})
            except BaseException as e:
                self._write_abort = not isinstance(e, Exception)  # a kill, not a failed write: stop writing
                raise
            self._tick("write", t)  # only this thread ticks "write"

        if self._writer is None:
            write()
        else:
            self._writes.append(self._writer.submit(write))

    # ------------------------------------------------------------------ the archive

    def _existing(self, paths: Sequence[Path]) -> list[dict | None]:
        """Records of a unit's finished outputs (``None`` where absent), once a killed writer's temporary files are
        gone. An output made with other settings raises ``FileExistsError`` (never mixed) unless ``overwrite``."""
        for p in paths:  # a killed writer's leftovers; a live process's temporary files are kept
            for stale in stale_temporaries(p):
                stale.unlink(missing_ok=True)
        existing = [self._existing_record(p) if p.is_file() else None for p in paths]
        for p, rec in zip(paths, existing):
            if p.is_file() and (rec is None or rec.get("config_hash") != self.config_hash) and not self.overwrite:
                raise FileExistsError(f"output {p.name} was made with other settings (config {None if rec is None else rec.get('config_hash')}, "
                                      f"now {self.config_hash}): use another output_dir or overwrite=True")
        return existing

    def _synthesize_unit(self, unit: str, key: str, todo: Sequence[tuple[int, Path]], recs: list) -> None:
        """Read ``unit`` and make its samples ``todo`` (``(sample, path)``), appending each record to ``recs`` as
        its file goes to the writer (:meth:`_write`: ``self._writes`` gets one entry per record)."""
        t = time.perf_counter()
        volume = load_magnitude(unit, self.slice_axis, root=self.input_dir)
        self._tick("read", t)
        prepared = self.prepare_volume(volume)
        for k, path in todo:
            recs.append(self.synthesize_volume(volume, k, path, key, prepared))

    @staticmethod
    def _landed(writes: Sequence) -> list[Exception | None]:
        """Wait for each write: its failure (not ``MemoryError``), or ``None`` where the file landed."""
        errors: list[Exception | None] = []
        for w in writes:
            try:
                w.result()
                errors.append(None)
            except MemoryError:
                raise
            except Exception as e:  # noqa: PERF203 - every write is awaited
                errors.append(e)
        return errors

    def run(self) -> dict:
        """Process this rank's shard; returns a summary (counts, seconds, merged or not).

        Whatever one input raises (reading, normalising, phase, writing; not ``MemoryError`` or ``KeyboardInterrupt``)
        skips that input: logged as ``<key>: <reason>`` and reported in ``skipped.json``. Raises
        :class:`NoUsableInput` when ``input_dir`` is missing or empty, or when every input of the shard failed.
        """
        if not logger.handlers and not logging.getLogger().handlers:  # the CLI configures no logging: show progress
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s - %(levelname)s - %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
        t0 = time.perf_counter()
        out, report = self.output_dir, self.report_dir
        units, unlisted = list_inputs(self.input_dir, [out, report], "synthesize")
        out.mkdir(parents=True, exist_ok=True)
        if self.write_input_map and self.rank == 0:
            write_input_map(report, self.input_dir, units)
        mine = shard(units, self.rank, self.world_size)
        tag = f"[rank {self.rank}/{self.world_size}]"
        logger.info("%s %d of %d input units; phase source %s; %s maps; output %s", tag, len(mine), len(units),
                    self.phase_source_name, self.settings["maps"]["source"], "config " + self.config_hash)
        records, skipped = [], (unlisted if self.rank == 0 else [])
        kept = 0
        pending = None  # (index, unit, key, records, writes) of the unit whose files are being written

        def land(i, unit, key, recs, writes, error=None) -> None:
            """Count the unit's files that landed; a failure (``error``: its compute's) skips the unit."""
            errors = self._landed(writes)
            records.extend(r for r, e in zip(recs, errors) if e is None)  # files on disk are in the manifest
            error = error or next((e for e in errors if e is not None), None)
            if error is not None:  # this input only: report it and go on
                skipped.append(reject_input(unit, self.input_dir, error))
            else:
                logger.info("%s %d/%d %s: %d slice(s) -> %d file(s)", tag, i + 1, len(mine), key, recs[-1]["num_slices"],
                            len(recs))

        # one writer thread: a unit's files are written while the next unit is computed (two units in memory at most)
        self._write_abort = False
        with ThreadPoolExecutor(1, thread_name_prefix="synthesize-write") as self._writer:
            try:
                for i, unit in enumerate(mine):
                    key = input_key(unit, self.input_dir)
                    paths = [out / name for name in self.output_names(key)]
                    existing = self._existing(paths)
                    current = [rec is not None and rec.get("config_hash") == self.config_hash for rec in existing]
                    records += [rec for rec, ok in zip(existing, current) if ok]
                    kept += sum(current)
                    todo = [(k, p) for k, (p, ok) in enumerate(zip(paths, current)) if not ok]
                    if not todo:
                        continue
                    self._writes, recs = [], []
                    try:
                        self._synthesize_unit(unit, key, todo, recs)
                    except MemoryError:
                        raise
                    except Exception as e:  # this input only: its earlier samples' files count, the unit is reported
                        land(i, unit, key, recs, self._writes, e)
                        continue
                    if pending is not None:
                        land(*pending)
                    pending = (i, unit, key, recs, self._writes)
                if pending is not None:
                    land(*pending)
            except BaseException:  # a kill or a fatal error: queued writes are dropped, the one running finishes
                self._write_abort = True
                self._writer.shutdown(wait=False, cancel_futures=True)
                raise
            finally:
                self._writer, self._writes = None, []
        name = f"r{self.rank:05d}-of-{self.world_size:05d}"
        records.sort(key=lambda r: r["output"])
        write_text(report / PARTS / f"manifest-{name}.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        write_text(report / PARTS / f"skipped-{name}.json", json.dumps(sorted(skipped, key=lambda s: s["input"]), indent=1, sort_keys=True) + "\n")
        merged = merge_manifests(report, self.world_size)
        summary = {"rank": self.rank, "world_size": self.world_size, "units": len(mine), "written": len(records) - kept,
                   "kept": kept, "skipped": len(skipped), "slices": sum(r["num_slices"] for r in records), "merged": merged,
                   "seconds": round(time.perf_counter() - t0, 3)}
        logger.info("%s done: %s", tag, json.dumps(summary, sort_keys=True))
        if skipped and not records:
            raise NoUsableInput(f"synthesize: all {len(skipped)} input(s) failed; the reasons are in {report / SKIPPED}")
        return summary
