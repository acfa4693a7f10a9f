"""Turn a magnitude-only archive into multi-coil fastMRI k-space: read -> phase -> coils -> FFT -> write.

Entry point (``configs/synthesize.json``)::

    python -m monai.bundle run synthesize --config_file configs/synthesize.json \\
        --input_dir DIR --output_dir OUT --phase_source NAME

For every input unit under ``input_dir`` (:func:`scripts.io.magnitude.find_inputs`: a NIfTI/PNG/
TIFF/fastMRI file or one DICOM series), one file per phase sample
``OUT/<key>_s<k>.h5`` is written through :func:`scripts.io.fastmri_h5.write_fastmri`:
``kspace`` (slices, coils, H, W) complex64, ``reconstruction_rss``, ``image_complex``
(slices, H, W) = magnitude * exp(i phase) (the coil-combined complex image, normalised units)
and an attribute ``synthesis`` (JSON: the manifest record below). Then ``OUT/manifest.jsonl``
(one record per output, sorted) and ``OUT/skipped.json`` (bad inputs and why).

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
  Each rank writes ``OUT/_parts/{manifest,skipped}-r<rank>-of-<W>.*``; the rank that finds all
  ``W`` parts present merges them (atomically) into ``manifest.jsonl`` / ``skipped.json``.
  :func:`merge_manifests` (config id ``merge_manifest``) does the same by hand.

Privacy: no path, file name or header value of an input reaches any output or log line.
Inputs are named by ``key`` = :func:`input_key` (a sha256 of the path relative to
``input_dir``); the manifest has the magnitude reader's anonymous ``input_id`` and that key;
skipped inputs are reported as ``{"input": key, "reason": ...}`` with every component of the
input's path scrubbed from the reason. To find a reported input, run :func:`locate_inputs`
locally (it prints paths to your own console, never to the outputs). The one exception is
MONAI's runner itself, which echoes its command-line arguments (``--input_dir``/``--output_dir``)
in its log: do not name the archive root after a patient.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import torch

from scripts.coils import simulation as coils
from scripts.io.atomic import stale_temporaries, write_text
from scripts.io.fastmri_h5 import anonymous_id, write_fastmri
from scripts.core.intensity import magnitude_reference
from scripts.io.magnitude import MagnitudeInputError, find_inputs, load_magnitude
from scripts.phase.sources import get_phase_source

__all__ = ["Synthesizer", "derive_seed", "input_key", "locate_inputs", "merge_manifests", "shard"]

logger = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
SKIPPED = "skipped.json"
PARTS = "_parts"


def derive_seed(*parts: object) -> int:
    """A 31-bit seed from ``parts`` (sha256): independent streams per volume, sample and purpose."""
    return int(anonymous_id("seed", *parts), 16) % (2**31 - 1)


def input_key(unit: str, root: str | os.PathLike) -> str:
    """The anonymous name of an input unit: sha256 of its path relative to the archive root."""
    root = os.path.abspath(root)
    rel = "." if os.path.abspath(unit) == root else os.path.relpath(os.path.abspath(unit), root)
    return anonymous_id("input", Path(rel).as_posix())


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


def _scrub(text: str, unit: str, root: str | os.PathLike) -> str:
    """Replace any path under ``root``, the input's path and every component of its relative path by ``<input>``."""
    absolute, base = os.path.abspath(unit), os.path.abspath(root)
    rel = os.path.relpath(absolute, base) if absolute != base else ""
    parts = {unit, absolute, rel, *Path(rel).parts} - {"", ".", ".."}
    patterns = [re.escape(base) + r"[^\s'\":,;]*"] + [re.escape(p) for p in sorted(parts, key=len, reverse=True)]
    return re.sub("|".join(patterns), "<input>", text)  # one pass: replacements are not matched again


class _Unusable(ValueError):
    """This volume cannot be synthesised (the magnitude or the phase source refuses it): skip and report."""


def merge_manifests(output_dir: str | os.PathLike, world_size: int | None = None) -> bool:
    """Merge the per-rank parts into ``manifest.jsonl`` and ``skipped.json`` once all are present.

    Returns ``True`` when merged. ``world_size`` defaults to ``WORLD_SIZE`` (or the only world
    size the parts were written with).
    """
    out = Path(output_dir)
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
        output_dir: where the h5 files, ``manifest.jsonl`` and ``skipped.json`` go.
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
    """

    def __init__(self, input_dir: str | os.PathLike, output_dir: str | os.PathLike, phase_source: str = "zero",
                 phase_source_kwargs: dict | None = None, coil_maps: coils.MapSource | None = None,
                 num_coils: int | Sequence[int] = 8, image_size: int | None = None, seed: int = 0,
                 samples_per_volume: int = 1, noise_std: float = 0.0, noise_cov=None, maps_per_slice: bool = True,
                 slice_axis: int = 2, acquisition: str = "SYNTHETIC",
                 rank: int | None = None, world_size: int | None = None, overwrite: bool = False) -> None:
        self.input_dir, self.output_dir = Path(input_dir), Path(output_dir)
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
        self.maps_per_slice, self.slice_axis, self.acquisition = bool(maps_per_slice), int(slice_axis), str(acquisition)
        self.rank, self.world_size = _rank_world(rank, world_size)
        self.overwrite = bool(overwrite)
        self._source = None
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

    def _resize(self, image: np.ndarray) -> np.ndarray:
        """Resize ``(S, H, W)`` slices to ``image_size`` (longest side, then pad); complex: real and imaginary parts."""
        if self.image_size is None or image.shape[1:] == (self.image_size, self.image_size):
            return image
        if np.iscomplexobj(image):
            return self._resize(image.real) + 1j * self._resize(image.imag)
        from monai.transforms import Resize, ResizeWithPadOrCrop

        n = self.image_size
        x = Resize(spatial_size=n, size_mode="longest", mode="bilinear", anti_aliasing=True)(image)
        return np.asarray(ResizeWithPadOrCrop(spatial_size=(n, n))(x), dtype=np.float32)

    # ------------------------------------------------------------------ one volume

    def synthesize_volume(self, volume, sample: int, path: Path, key: str) -> dict:
        """Phase, coils, FFT and write for one :class:`scripts.io.magnitude.MagnitudeVolume`; returns its record."""
        t = time.perf_counter()
        try:
            scale = magnitude_reference(volume.magnitude)
        except ValueError as e:
            raise _Unusable(str(e)) from None
        magnitude = np.clip(self._resize(volume.magnitude / np.float32(scale)), 0.0, None).astype(np.float32, copy=False)
        # the paired complex image, when the input carries one: only the ground_truth source uses it
        reference = None if volume.reference is None else self._resize(volume.reference / np.float32(scale))
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
        t = self._tick("maps", t)
        for j in range(n):  # slice by slice: memory stays at one volume of k-space, noise is seeded per slice
            maps = self.coil_maps.render(specs[j if self.maps_per_slice else 0], (h, w))
            t = self._tick("maps", t)
            gen = torch.Generator().manual_seed(derive_seed(vseed, "noise", j)) if noisy else None
            kspace[j] = coils.simulate_coils(image[j], maps, self.noise_std, self.noise_cov, generator=gen)
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
        t = time.perf_counter()
        write_fastmri(path, kspace.numpy(), acquisition=self.acquisition, patient_id=volume.id,
                      extra={"image_complex": image.numpy()}, attrs={"synthesis": json.dumps(record, sort_keys=True)})
        self._tick("write", t)
        return record

    # ------------------------------------------------------------------ the archive

    def run(self) -> dict:
        """Process this rank's shard; returns a summary (counts, seconds, merged or not)."""
        if not logger.handlers and not logging.getLogger().handlers:  # the CLI configures no logging: show progress
            handler = logging.StreamHandler()
            handler.setFormatter(logging.Formatter("%(asctime)s - %(levelname)s - %(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
        t0 = time.perf_counter()
        out = self.output_dir
        out.mkdir(parents=True, exist_ok=True)
        units = find_inputs(self.input_dir)
        mine = shard(units, self.rank, self.world_size)
        tag = f"[rank {self.rank}/{self.world_size}]"
        logger.info("%s %d of %d input units; phase source %s; %s maps; output %s", tag, len(mine), len(units),
                    self.phase_source_name, self.settings["maps"]["source"], "config " + self.config_hash)
        records, skipped = [], []
        written = kept = 0

        def skip(key: str, unit: str, reason: str) -> None:
            skipped.append({"input": key, "reason": _scrub(reason, unit, self.input_dir)})
            logger.warning("%s skipped input %s: %s", tag, key, skipped[-1]["reason"])

        for i, unit in enumerate(mine):
            key = input_key(unit, self.input_dir)
            paths = [out / name for name in self.output_names(key)]
            for p in paths:  # a killed writer's leftovers; a live process's temporary files are kept
                for stale in stale_temporaries(p):
                    stale.unlink(missing_ok=True)
            existing = [self._existing_record(p) if p.is_file() else None for p in paths]
            for p, rec in zip(paths, existing):
                if p.is_file() and (rec is None or rec.get("config_hash") != self.config_hash) and not self.overwrite:
                    raise FileExistsError(f"output {p.name} was made with other settings (config {None if rec is None else rec.get('config_hash')}, "
                                          f"now {self.config_hash}): use another output_dir or overwrite=True")
            todo = [k for k, rec in enumerate(existing) if rec is None or rec.get("config_hash") != self.config_hash]
            if not todo:
                records += existing
                kept += len(paths)
                continue
            t = time.perf_counter()
            try:
                volume = load_magnitude(unit, self.slice_axis, root=self.input_dir)
            except MagnitudeInputError as e:
                skip(key, unit, e.reason)
                continue
            self._tick("read", t)
            try:
                for k in range(self.samples):
                    if k in todo:
                        records.append(self.synthesize_volume(volume, k, paths[k], key))
                        written += 1
                    else:
                        records.append(existing[k])
                        kept += 1
            except _Unusable as e:
                skip(key, unit, str(e))
                continue
            finally:
                del volume
            logger.info("%s %d/%d %s: %d slice(s) -> %d file(s)", tag, i + 1, len(mine), key,
                        records[-1]["num_slices"], len(paths))
        name = f"r{self.rank:05d}-of-{self.world_size:05d}"
        records.sort(key=lambda r: r["output"])
        write_text(out / PARTS / f"manifest-{name}.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
        write_text(out / PARTS / f"skipped-{name}.json", json.dumps(sorted(skipped, key=lambda s: s["input"]), indent=1, sort_keys=True) + "\n")
        merged = merge_manifests(out, self.world_size)
        summary = {"rank": self.rank, "world_size": self.world_size, "units": len(mine), "written": written, "kept": kept,
                   "skipped": len(skipped), "slices": sum(r["num_slices"] for r in records), "merged": merged,
                   "seconds": round(time.perf_counter() - t0, 3)}
        logger.info("%s done: %s", tag, json.dumps(summary, sort_keys=True))
        return summary
