"""Inference I/O for the phase model: magnitude slices in, complex NIfTI / PNG / report out.

- :class:`MagnitudeSlices`: a re-iterable over every slice of every readable input under a
  folder (DICOM, NIfTI, PNG, TIFF, fastMRI h5 through :mod:`scripts.io.magnitude`), one
  volume in memory at a time, for ``monai.data.IterableDataset``. Inputs that cannot be
  read are collected in ``.bad`` (and end up in the report), never fatal.
- :class:`MagnitudeInputd`: the first preprocessing step; it lets slices through and loads a
  path (what MONAI Label passes) with :mod:`scripts.io.magnitude`.
- :class:`NormalizeMagnitudeSliced`: :mod:`scripts.core.intensity`'s per-slice normalisation,
  except that a slice that is entirely zero (an empty end slice of a volume) keeps scale 1
  instead of failing the whole volume: its output is exactly zero whatever the phase.
- :class:`PhaseSampleWriter`: an Ignite handler for the inference ``SupervisedEvaluator``.
  It gathers the slices of each volume and writes, under ``output_dir``:

  * ``<id>_sample<k>.nii.gz``: sample k as a complex64 NIfTI, same voxel order and affine
    as the input (``scripts.io.magnitude.slices_to_volume``), magnitude exactly the input's;
  * ``<id>_phase_spread.nii.gz``: float32 circular variance ``1 - |mean_k exp(i phi_k)|``
    across the samples (0 = samples agree, 1 = phase unknown), the uncertainty map;
  * PNG previews of the middle slice: ``<id>_magnitude.png`` (grey),
    ``<id>_sample<k>_phase.png`` (cyclic colour map over (-pi, pi]) and
    ``<id>_phase_spread.png``;
  * ``report.json``: what was written, the settings, and every skipped input with its
    reason (the only place a source path appears; names use the non-identifying ``id``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Hashable, Iterator, Mapping
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import min_version, optional_import

from scripts.core.intensity import NormalizeMagnituded, normalize_magnitude
from scripts.io.magnitude import MagnitudeVolume, iter_magnitude_volumes, load_magnitude, slices_to_volume

Events, _ = optional_import("ignite.engine", "0.4.11", min_version, "Events")

__all__ = ["MagnitudeInputd", "MagnitudeSlices", "NormalizeMagnitudeSliced", "PhaseSampleWriter", "magnitude_png", "phase_png"]

logger = logging.getLogger(__name__)


class MagnitudeSlices:
    """Re-iterable over the slices of every input under ``root`` (one volume in memory).

    Each item: ``image`` and ``magnitude`` ``(1, H, W)`` float32 (scanner units; ``image``
    gets normalised by the preprocessing, ``magnitude`` is kept for the exact output),
    ``volume_id``, ``slice_index``, ``num_slices``. Volume geometry goes to ``.volumes``
    (by id) for the writer; unreadable inputs go to ``.bad``.
    """

    def __init__(self, root: str | os.PathLike, slice_axis: int = 2) -> None:
        self.root, self.slice_axis = str(root), slice_axis
        self.bad: list = []
        self.volumes: dict[str, MagnitudeVolume] = {}

    def __iter__(self) -> Iterator[dict]:
        self.bad.clear()
        if not os.path.exists(self.root):
            from scripts.io.magnitude import BadInput

            self.bad.append(BadInput(source=self.root, reason="input folder does not exist"))
            return
        for vol in iter_magnitude_volumes(self.root, slice_axis=self.slice_axis, bad=self.bad):
            n = vol.magnitude.shape[0]
            # keep geometry only: a zero-strided stand-in for the pixels (no memory)
            self.volumes[vol.id] = MagnitudeVolume(
                id=vol.id, source="", kind=vol.kind, magnitude=np.broadcast_to(np.float32(0), vol.magnitude.shape),
                affine=vol.affine, slice_axis=vol.slice_axis, frames=vol.frames,
            )
            for i in range(n):
                s = torch.from_numpy(np.ascontiguousarray(vol.magnitude[i])[None])
                yield {"image": s, "magnitude": s.clone(), "volume_id": vol.id, "slice_index": i, "num_slices": n}


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
                d[key] = torch.from_numpy(load_magnitude(d[key], self.slice_axis).magnitude)
            if self.magnitude_key not in d:
                d[self.magnitude_key] = torch.as_tensor(d[key]).clone()
        return d


class NormalizeMagnitudeSliced(NormalizeMagnituded):
    """``NormalizeMagnituded`` that leaves an all-zero slice as is (scale 1) instead of raising."""

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            values = torch.as_tensor(d[key])
            if torch.isfinite(values).all() and not values.abs().max() > 0:
                d[f"{key}_reference"] = 1.0
            else:
                d[key], d[f"{key}_reference"] = normalize_magnitude(d[key])
        return d


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
    ``scripts.phase.diffusion.PhaseToComplexd``), and ``magnitude`` ``(1, H, W)``.

    Args:
        output_dir: where everything is written.
        slices: the :class:`MagnitudeSlices` feeding the evaluator (geometry and skip list).
        png: write PNG previews.
        settings: extra facts for the report (sampler, steps, seed, ...).
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        slices: MagnitudeSlices,
        png: bool = True,
        settings: Mapping | None = None,
        complex_key: str = "complex",
        spread_key: str = "phase_spread",
    ) -> None:
        self.output_dir = str(output_dir)
        self.slices = slices
        self.png = png
        self.settings = dict(settings or {})
        self.complex_key, self.spread_key = complex_key, spread_key
        self._pending: dict[str, dict] = {}
        self.written: list[dict] = []
        self.failed: list[dict] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.STARTED, self.started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.iteration_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    def started(self, engine) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        self._pending.clear()
        self.written, self.failed = [], []

    def iteration_completed(self, engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        if isinstance(batch, dict):  # not decollated: a batch of one
            batch, output = [batch], [output]
        for b, o in zip(batch, output):
            vid = str(_scalar(b["volume_id"]))
            i, n = int(_scalar(b["slice_index"])), int(_scalar(b["num_slices"]))
            entry = self._pending.setdefault(vid, {"n": n, "complex": {}, "spread": {}})
            entry["complex"][i] = _np(o[self.complex_key])
            entry["spread"][i] = _np(o[self.spread_key])[0]
            if len(entry["complex"]) == n:
                self._write(vid, self._pending.pop(vid))

    def _write(self, vid: str, entry: dict) -> None:
        vol = self.slices.volumes.get(vid)
        n = entry["n"]
        samples = np.stack([entry["complex"][i] for i in range(n)], axis=1)  # (N, slices, H, W)
        spread = np.stack([entry["spread"][i] for i in range(n)])  # (slices, H, W)
        affine = vol.affine if vol is not None else np.eye(4)
        files = []
        for k, z in enumerate(samples):
            name = f"{vid}_sample{k}.nii.gz"
            data = slices_to_volume(vol, z) if vol is not None else np.moveaxis(z, 0, -1)
            nib.save(nib.Nifti1Image(np.ascontiguousarray(data.astype(np.complex64)), affine), os.path.join(self.output_dir, name))
            files.append(name)
        name = f"{vid}_phase_spread.nii.gz"
        data = slices_to_volume(vol, spread) if vol is not None else np.moveaxis(spread, 0, -1)
        nib.save(nib.Nifti1Image(np.ascontiguousarray(data.astype(np.float32)), affine), os.path.join(self.output_dir, name))
        files.append(name)
        if self.png:
            mid = n // 2
            magnitude_png(os.path.join(self.output_dir, f"{vid}_magnitude.png"), np.abs(samples[0, mid]))
            files.append(f"{vid}_magnitude.png")
            for k in range(samples.shape[0]):
                phase_png(os.path.join(self.output_dir, f"{vid}_sample{k}_phase.png"), np.angle(samples[k, mid]))
                files.append(f"{vid}_sample{k}_phase.png")
            spread_png(os.path.join(self.output_dir, f"{vid}_phase_spread.png"), spread[mid])
            files.append(f"{vid}_phase_spread.png")
        self.written.append({"id": vid, "kind": vol.kind if vol is not None else None, "slices": n,
                             "samples": int(samples.shape[0]), "shape": list(data.shape), "files": files})
        logger.info("wrote %d samples of %s (%d slices)", samples.shape[0], vid, n)

    def completed(self, engine) -> None:
        for vid, entry in self._pending.items():  # volumes whose slices did not all arrive
            self.failed.append({"id": vid, "reason": f"only {len(entry['complex'])} of {entry['n']} slices processed"})
        self._pending.clear()
        report = {
            "written": self.written,
            "skipped": [{"source": str(b.source), "reason": b.reason} for b in self.slices.bad] + self.failed,
            "settings": self.settings,
        }
        with open(os.path.join(self.output_dir, "report.json"), "w") as f:
            json.dump(report, f, indent=2, default=str)
        logger.info("phase synthesis: %d volumes written, %d skipped; report in %s",
                    len(self.written), len(report["skipped"]), os.path.join(self.output_dir, "report.json"))
