"""Inference I/O for the phase model: magnitude slices in, complex NIfTI / PNG / report out.

- :class:`MagnitudeSlices`: a re-iterable over the preprocessed slices of every readable input
  under a folder (DICOM, NIfTI, PNG, TIFF, fastMRI h5 through :mod:`scripts.io.magnitude`; the
  output folder excluded), one volume in memory at a time, for ``monai.data.IterableDataset``.
- :class:`MagnitudeInputd`: the first preprocessing step; it lets slices through and loads a
  path (what MONAI Label passes) with :mod:`scripts.io.magnitude`.
- :class:`NormalizeMagnitudeSliced`: :mod:`scripts.core.intensity`'s per-slice normalisation,
  except that a slice without signal (99.5th percentile 0: all zero, or a handful of non-zero
  pixels) gets phase zero (noted in the report) instead of failing the whole volume.
- :class:`FitSampleSized` / :class:`PhaseToInputd`: a slice larger than the model's
  ``image_size`` (config ``max_sample_size``) is sampled at that size (area average, aspect kept)
  and its phase resampled back to the input's size; the magnitude output stays exactly the input's.
- :func:`guarded_iteration` and :class:`PhaseSampleWriter`: the input boundary. Whatever one
  input raises (reading, normalising, sampling, writing; not ``MemoryError`` or
  ``KeyboardInterrupt``) skips that input only: one log line ``<key>: <reason>``
  (:func:`scripts.synthesis.synthesize.reject_input`) and an entry in the report. A missing or
  empty input folder, or a run whose inputs all failed, ends with
  :class:`scripts.synthesis.synthesize.NoUsableInput` (one line, exit status 1).
- :class:`PhaseModelLoader` (in place of MONAI's ``CheckpointLoader``): a missing, unreadable or mismatched
  phase model ends the run before any input is read with one line (:class:`NoUsableModel`) naming the file and
  the fix (the training command, or the ``--unet_*`` settings the file was made with).

The writer gathers the slices of each volume and writes, under ``output_dir``:

* ``<id>_sample<k>.nii.gz``: sample k as a complex64 NIfTI, same voxel order and affine
  as the input (``scripts.io.magnitude.slices_to_volume``), magnitude exactly the input's;
* ``<id>_phase_spread.nii.gz``: float32 circular variance ``1 - |mean_k exp(i phi_k)|``
  across the samples (0 = samples agree, 1 = phase unknown), the uncertainty map;
* PNG previews of the middle slice: ``<id>_magnitude.png`` (grey),
  ``<id>_sample<k>_phase.png`` (cyclic colour map over (-pi, pi]) and
  ``<id>_phase_spread.png``;
* ``report.json``: ``written`` (per volume: ``id``, the anonymous ``input`` key of
  :func:`scripts.synthesis.synthesize.input_key`, its ``position`` in the sorted input
  listing, ``notes``, files), ``skipped`` (``{"input": key, "reason": ...}``) and the settings.
  No path or file name of an input appears in it, in the file names or in the log;
* opt-in (``write_input_map``): ``input_map.PRIVATE.json``, input key -> path relative to the
  input folder (it names the inputs: keep it private).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import decollate_batch
from monai.transforms import MapTransform
from monai.utils import min_version, optional_import

from scripts.configs import as_bool
from scripts.core.complex import phasor_to_phase
from scripts.core.intensity import NormalizeMagnituded, normalize_magnitude
from scripts.io.atomic import write_json
from scripts.io.checkpoint import model_state_dict, unwrap
from scripts.io.magnitude import MagnitudeVolume, load_magnitude, slices_to_volume
from scripts.synthesis.synthesize import NoUsableInput, OneLineExit, input_key, list_inputs, reject_input, write_input_map

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

__all__ = ["FitSampleSized", "MagnitudeInputd", "MagnitudeSlices", "NoUsableModel", "NormalizeMagnitudeSliced",
           "PhaseModelLoader", "PhaseSampleWriter", "PhaseToInputd", "guarded_iteration", "load_phase_model",
           "magnitude_png", "phase_png"]

logger = logging.getLogger(__name__)

TRAIN_COMMAND = "python -m monai.bundle run training --config_file configs/train.json"
"""What makes ``models/model.pt``, a phase model of one's own (inference loads the shipped one by default)."""


class NoUsableModel(OneLineExit):
    """Inference cannot start: its phase model file is missing, unreadable or made for another network (one line)."""


def _unet_settings(state: Mapping) -> str:
    """The ``--unet_*`` overrides a ``DiffusionModelUNet`` state dict was made with, as far as its tensors tell
    (channels, attention levels, residual blocks; not head channels or norm groups), or ``""``."""
    channels: list[int] = []
    while (weight := state.get(f"down_blocks.{len(channels)}.resnets.0.conv1.conv.weight")) is not None:
        channels.append(int(weight.shape[0]))
    if not channels:
        return ""
    levels = [any(k.startswith(f"down_blocks.{i}.attentions.") for k in state) for i in range(len(channels))]
    blocks = len({k.split(".")[3] for k in state if k.startswith("down_blocks.0.resnets.")})
    compact = {"separators": (",", ":")}
    return (f"--unet_channels '{json.dumps(channels, **compact)}' --unet_attention_levels '{json.dumps(levels, **compact)}'"
            f" --unet_num_res_blocks {blocks}")


def load_phase_model(network: torch.nn.Module, path: str | os.PathLike, map_location: Any = None) -> torch.nn.Module:
    """Load the phase model weights (a plain state dict, or a checkpoint holding ``"model"``) into ``network`` with
    ``torch.load(..., weights_only=True)``; a file that is missing, unreadable or shaped for another network raises
    :class:`NoUsableModel`, one line naming the file and the fix."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise NoUsableModel(f"inference: no phase model at {path}: train one with `{TRAIN_COMMAND}` or pass --ckpt_path")
    try:
        state = model_state_dict(path, map_location)  # torch.load(..., weights_only=True)
    except Exception as e:  # truncated, not a torch file, or objects that weights_only refuses
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise NoUsableModel(f"inference: phase model {path} is not a readable weights file ({type(e).__name__}: {first}); "
                            f"train one with `{TRAIN_COMMAND}` or pass another --ckpt_path") from None
    if not isinstance(state, Mapping) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise NoUsableModel(f"inference: phase model {path} holds no model weights (a state dict, or a checkpoint "
                            f"with 'model'); train one with `{TRAIN_COMMAND}` or pass another --ckpt_path")
    target = unwrap(network)
    expected = target.state_dict()
    differ = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if differ or missing or unexpected:
        found = []
        if differ:
            k = differ[0]
            found.append(f"{len(differ)} of {len(expected)} tensors differ in shape "
                         f"(e.g. {k}: file {list(state[k].shape)}, network {list(expected[k].shape)})")
        found += [f"{len(keys)} {what} (e.g. {keys[0]})" for keys, what in ((missing, "missing"), (unexpected, "unexpected")) if keys]
        made = _unet_settings(state)
        fix = f"pass the settings it was made with: {made}" if made else "pass the --unet_* settings it was trained with"
        raise NoUsableModel(f"inference: phase model {path} does not fit the configured network: {'; '.join(found)}; "
                            f"{fix} (and --unet_num_head_channels / --unet_norm_num_groups if they differ), or another --ckpt_path")
    target.load_state_dict(state)
    logger.info("phase model loaded from %s", path)
    return network


class PhaseModelLoader:
    """Ignite handler in place of MONAI's ``CheckpointLoader`` (whose missing or mismatched file ends inference in an
    86-line traceback): :func:`load_phase_model` when attached, i.e. when the evaluator is built, so a bad file ends
    the run before any input is read, with one line (an exception inside the run would add ignite's error line)."""

    def __init__(self, load_path: str | os.PathLike, network: torch.nn.Module, map_location: Any = None) -> None:
        self.load_path, self.network, self.map_location = load_path, network, map_location

    def attach(self, engine) -> None:
        load_phase_model(self.network, self.load_path, self.map_location)


class MagnitudeSlices:
    """Re-iterable over the preprocessed slices of every input under ``root`` (one volume in memory).

    Each item is ``transform`` of ``image`` and ``magnitude`` ``(1, H, W)`` float32 (scanner units;
    ``image`` gets normalised, ``magnitude`` is kept for the exact output), ``volume_id``,
    ``slice_index``, ``num_slices``. Every slice of a volume is preprocessed before the first is
    yielded, so an input whose reading or preprocessing raises yields nothing: it goes to ``.bad``
    (``{"input": key, "reason": ...}``, :func:`scripts.synthesis.synthesize.reject_input`), as do
    the entries :func:`scripts.io.magnitude.find_inputs` could not list. The folders ``exclude``
    (the run's outputs) are never read. ``.inputs[volume_id]``: the report's ``input`` key,
    ``position`` in the sorted input listing and ``notes``; ``.volumes``: geometry for the writer;
    ``.units``: the listing (paths: keep them private). A missing or empty ``root`` raises
    :class:`scripts.synthesis.synthesize.NoUsableInput`.
    """

    def __init__(self, root: str | os.PathLike, slice_axis: int = 2, transform=None,
                 exclude: Sequence[str | os.PathLike] = ()) -> None:
        self.root, self.slice_axis, self.transform = str(root), slice_axis, transform
        self.exclude = [os.fspath(e) for e in exclude]
        self.bad: list[dict] = []
        self.inputs: dict[str, dict] = {}
        self.units: list[str] = []
        self.volumes: dict[str, MagnitudeVolume] = {}
        self._unit: dict[str, str] = {}

    def reject(self, volume_id: str, error: BaseException | str) -> None:
        """Report a yielded volume that failed later (sampling, writing): its input goes to ``.bad``."""
        self.bad.append(reject_input(self._unit[volume_id], self.root, error))
        self.inputs.pop(volume_id, None)

    def _items(self, vol: MagnitudeVolume) -> list[dict]:
        n = vol.magnitude.shape[0]
        items = []
        for i in range(n):
            s = torch.from_numpy(np.ascontiguousarray(vol.magnitude[i])[None])
            item = {"image": s, "magnitude": s.clone(), "volume_id": vol.id, "slice_index": i, "num_slices": n}
            items.append(item if self.transform is None else self.transform(item))
        return items

    @staticmethod
    def _notes(items: list[dict]) -> list[str]:
        """What the report should say about a volume's slices: phase set to zero, sampled at a smaller size."""
        notes = []
        blank = sum(float(torch.as_tensor(it.get("image_reference", 1.0))) == 0 for it in items)
        if blank:
            notes.append(f"{blank} slice(s) without signal (99.5th percentile 0): phase set to zero")
        sampled, shape = tuple(items[0]["image"].shape[-2:]), tuple(items[0]["magnitude"].shape[-2:])
        if sampled != shape:
            notes.append(f"phase sampled at {sampled[0]}x{sampled[1]} and resampled to the input's {shape[0]}x{shape[1]}")
        return notes

    def __iter__(self) -> Iterator[dict]:
        self.inputs.clear()
        self._unit.clear()
        self.units, self.bad = list_inputs(self.root, self.exclude, "inference")
        for position, unit in enumerate(self.units):
            try:
                vol = load_magnitude(unit, self.slice_axis, root=self.root)
                items = self._items(vol)
            except MemoryError:
                raise
            except Exception as e:  # this input only: report it and go on
                self.bad.append(reject_input(unit, self.root, e))
                continue
            # keep geometry only: a zero-strided stand-in for the pixels (no memory)
            self.volumes[vol.id] = MagnitudeVolume(
                id=vol.id, source="", kind=vol.kind, magnitude=np.broadcast_to(np.float32(0), vol.magnitude.shape),
                affine=vol.affine, slice_axis=vol.slice_axis, frames=vol.frames,
            )
            self._unit[vol.id] = unit
            self.inputs[vol.id] = {"input": input_key(unit, self.root), "position": position, "notes": self._notes(items)}
            del vol
            yield from items


class MagnitudeInputd(MapTransform):
    """First preprocessing step: slices pass through; a path (as MONAI Label hands one) is loaded.

    A path is read with :func:`scripts.io.magnitude.load_magnitude` into ``(slices, H, W)``
    (a 2-D image gives ``(1, H, W)``, one channel). ``magnitude_key`` gets an unnormalised
    copy when absent, so the output keeps exactly the input magnitude.
    """

    def __init__(self, keys: KeysCollection = "image", magnitude_key: str = "magnitude", slice_axis: int = 2,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.magnitude_key, self.slice_axis = magnitude_key, slice_axis

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            if isinstance(d[key], (str, os.PathLike)):
                d[key] = torch.from_numpy(np.asarray(load_magnitude(d[key], self.slice_axis).magnitude))
            if self.magnitude_key not in d:
                d[self.magnitude_key] = torch.as_tensor(d[key]).clone()
        return d


class NormalizeMagnitudeSliced(NormalizeMagnituded):
    """``NormalizeMagnituded`` for one slice of a volume: a slice without signal (99.5th percentile 0: all
    zero, or a handful of non-zero pixels) becomes zeros with ``<key>_reference`` 0 instead of raising;
    :class:`PhaseToInputd` then gives it phase zero. NaN or Inf still raise."""

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            values = torch.as_tensor(d[key])
            try:
                d[key], d[f"{key}_reference"] = normalize_magnitude(values)
            except ValueError:
                if not torch.isfinite(values).all():
                    raise
                d[key], d[f"{key}_reference"] = torch.zeros_like(values), 0.0
        return d


class FitSampleSized(MapTransform):
    """Resample a slice whose longest side exceeds ``max_size`` down to it (area average, aspect kept): the sampler
    then never runs (nor attends) at more than ``max_size`` pixels a side. ``None`` or 0: no limit."""

    def __init__(self, keys: KeysCollection = "image", max_size: int | None = None, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.max_size = int(max_size) if max_size else None

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            x = torch.as_tensor(d[key])
            h, w = x.shape[-2:]
            if self.max_size is not None and max(h, w) > self.max_size:
                scale = self.max_size / max(h, w)
                size = (max(1, round(h * scale)), max(1, round(w * scale)))
                d[key] = F.interpolate(x.reshape(1, -1, h, w).float(), size=size, mode="area").reshape(*x.shape[:-2], *size)
        return d


class PhaseToInputd(MapTransform):
    """Phase samples ``(N, h, w)`` onto their input slice: resampled to the size of ``like_key`` when the sampler
    saw a smaller slice (:class:`FitSampleSized`; bilinear on unit phasors, so wrapping is respected), and zero
    on a slice without signal (``reference_key`` 0, :class:`NormalizeMagnitudeSliced`)."""

    def __init__(self, keys: KeysCollection = "pred", like_key: str = "magnitude", reference_key: str = "image_reference",
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.like_key, self.reference_key = like_key, reference_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        size = tuple(torch.as_tensor(d[self.like_key]).shape[-2:])
        blank = float(torch.as_tensor(d.get(self.reference_key, 1.0))) == 0
        for key in self.key_iterator(d):
            phase = torch.as_tensor(d[key]).detach().float()
            if tuple(phase.shape[-2:]) != size:
                phasor = torch.stack((torch.cos(phase), torch.sin(phase)), dim=1)
                phase = phasor_to_phase(F.interpolate(phasor, size=size, mode="bilinear", align_corners=False), dim=1)
            d[key] = torch.zeros_like(phase) if blank else phase
        return d


def guarded_iteration(engine, batchdata) -> list[dict]:
    """The evaluator's ``iteration_update``: its own iteration, except that an exception of one batch (sampling,
    post-processing) becomes the output ``{"failed": exception}`` per item, for :class:`PhaseSampleWriter` to
    report against the item's volume, and the run goes on (``MemoryError`` still ends it)."""
    try:
        return engine._iteration(engine, batchdata)
    except MemoryError:
        raise
    except Exception as e:
        batch = engine.state.batch
        engine.state.batch = batch if isinstance(batch, list) else decollate_batch(batch, detach=True)
        return [{"failed": e} for _ in engine.state.batch]


def _png(path: str, rgb: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(rgb).save(path)


def magnitude_png(path: str, magnitude: np.ndarray) -> None:
    """Grey PNG, 0 .. 99.5th percentile."""
    m = np.asarray(magnitude, dtype=np.float64)
    ref = np.percentile(m, 99.5) if m.size else 0.0
    img = np.clip(m / ref, 0, 1) if ref > 0 else np.zeros_like(m)
    _png(path, (img * 255).round().astype(np.uint8))


def phase_png(path: str, phase: np.ndarray, cmap: str = "twilight") -> None:
    """Phase in (-pi, pi] through a cyclic colour map (the colours wrap as the phase does)."""
    from matplotlib import colormaps

    x = (np.asarray(phase, dtype=np.float64) + np.pi) / (2 * np.pi)
    _png(path, (colormaps[cmap](x)[..., :3] * 255).round().astype(np.uint8))


def spread_png(path: str, spread: np.ndarray) -> None:
    from matplotlib import colormaps

    _png(path, (colormaps["magma"](np.clip(spread, 0, 1))[..., :3] * 255).round().astype(np.uint8))


def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().as_subclass(torch.Tensor).numpy()
    return np.asarray(x)


def _scalar(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.item()
    if isinstance(x, (list, tuple)) and len(x) == 1:
        return x[0]
    return x


class PhaseSampleWriter:
    """Ignite handler: assemble per-slice phase samples into volumes and write them.

    Reads from each decollated item: ``volume_id``, ``slice_index``, ``num_slices`` (batch),
    ``complex_key`` ``(N, H, W)`` complex64 and ``spread_key`` ``(1, H, W)`` (output, from
    ``scripts.phase.diffusion.PhaseToComplexd``), and ``magnitude`` ``(1, H, W)``. An output
    ``{"failed": exception}`` (:func:`guarded_iteration`), or a failed write, reports the volume's
    input as skipped (its files are removed) and the run goes on. At the end ``report.json`` is
    written; a run that wrote nothing then raises :class:`scripts.synthesis.synthesize.NoUsableInput`.

    Args:
        output_dir: where everything is written.
        slices: the :class:`MagnitudeSlices` feeding the evaluator (geometry, input keys, skip list).
        png: write PNG previews.
        settings: extra facts for the report (sampler, steps, seed, ...).
        input_map: also write ``input_map.PRIVATE.json`` (input key -> path relative to the input folder).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        slices: MagnitudeSlices,
        png: bool = True,
        settings: Mapping | None = None,
        complex_key: str = "complex",
        spread_key: str = "phase_spread",
        input_map: bool = False,
    ) -> None:
        self.output_dir = str(output_dir)
        self.slices = slices
        self.png = as_bool(png, "write_png")
        self.input_map = as_bool(input_map, "write_input_map")
        self.settings = dict(settings or {})
        self.complex_key, self.spread_key = complex_key, spread_key
        self._pending: dict[str, dict] = {}
        self._failed: set[str] = set()
        self.written: list[dict] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def started(self, engine) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        self._pending.clear()
        self._failed.clear()
        self.written = []

    def _fail(self, vid: str, error: BaseException | str) -> None:
        self._pending.pop(vid, None)
        self._failed.add(vid)
        self.slices.reject(vid, error)

    def iteration_completed(self, engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        if isinstance(batch, dict):  # not decollated: a batch of one
            batch, output = [batch], [output]
        for b, o in zip(batch, output):
            vid = str(_scalar(b["volume_id"]))
            if vid in self._failed:
                continue
            if "failed" in o:
                self._fail(vid, o["failed"])
                continue
            i, n = int(_scalar(b["slice_index"])), int(_scalar(b["num_slices"]))
            entry = self._pending.setdefault(vid, {"n": n, "complex": {}, "spread": {}})
            entry["complex"][i] = _np(o[self.complex_key])
            entry["spread"][i] = _np(o[self.spread_key])[0]
            if len(entry["complex"]) == n:
                try:
                    self._write(vid, self._pending.pop(vid))
                except MemoryError:
                    raise
                except Exception as e:  # this volume only
                    self._fail(vid, e)

    def _write(self, vid: str, entry: dict) -> None:
        """Write one volume's files; on any error the files written so far are removed."""
        files: list[str] = []
        try:
            self._write_files(vid, entry, files)
        except BaseException:
            for name in files:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self.output_dir, name))
            raise

    def _write_files(self, vid: str, entry: dict, files: list[str]) -> None:
        vol = self.slices.volumes.get(vid)
        n = entry["n"]
        samples = np.stack([entry["complex"][i] for i in range(n)], axis=1)  # (N, slices, H, W)
        spread = np.stack([entry["spread"][i] for i in range(n)])  # (slices, H, W)
        affine = vol.affine if vol is not None else np.eye(4)

        def save(name: str, data: np.ndarray) -> None:
            files.append(name)
            nib.save(nib.Nifti1Image(np.ascontiguousarray(data), affine), os.path.join(self.output_dir, name))

        for k, z in enumerate(samples):
            data = slices_to_volume(vol, z) if vol is not None else np.moveaxis(z, 0, -1)
            save(f"{vid}_sample{k}.nii.gz", data.astype(np.complex64))
        data = slices_to_volume(vol, spread) if vol is not None else np.moveaxis(spread, 0, -1)
        save(f"{vid}_phase_spread.nii.gz", data.astype(np.float32))
        if self.png:
            mid = n // 2
            previews = [(f"{vid}_magnitude.png", magnitude_png, np.abs(samples[0, mid]))]
            previews += [(f"{vid}_sample{k}_phase.png", phase_png, np.angle(samples[k, mid])) for k in range(samples.shape[0])]
            previews.append((f"{vid}_phase_spread.png", spread_png, spread[mid]))
            for name, draw, image in previews:
                files.append(name)
                draw(os.path.join(self.output_dir, name), image)
        self.written.append({"id": vid, **self.slices.inputs.get(vid, {}), "kind": vol.kind if vol is not None else None,
                             "slices": n, "samples": int(samples.shape[0]), "shape": list(data.shape), "files": list(files)})
        logger.info("wrote %d samples of %s (%d slices)", samples.shape[0], vid, n)

    def completed(self, engine) -> None:
        for vid, entry in list(self._pending.items()):  # volumes whose slices did not all arrive
            self._fail(vid, f"only {len(entry['complex'])} of {entry['n']} slices processed")
        report = {"written": self.written, "skipped": self.slices.bad, "settings": self.settings}
        write_json(os.path.join(self.output_dir, "report.json"), report, default=str)
        if self.input_map:
            write_input_map(self.output_dir, self.slices.root, self.slices.units)
        logger.info("phase synthesis: %d volumes written, %d skipped; report in %s",
                    len(self.written), len(report["skipped"]), os.path.join(self.output_dir, "report.json"))
        if not self.written:
            raise NoUsableInput(f"inference: all {len(self.slices.bad)} input(s) failed; the reasons are in "
                                f"{os.path.join(self.output_dir, 'report.json')}")
