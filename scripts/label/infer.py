"""The phase synthesiser as a MONAI Label inference task.

MONAI Label's ``BundleInferTask`` treats a bundle as a segmentation network: it returned the phase as
a "segmentation" labelled ``cos(phase)``/``sin(phase)``, dropped the complex image and the spread map,
and failed on 3-D inputs. :class:`PhaseSynthesisTask` runs this bundle's own inference
(``configs/inference.json``: the shipped phase model by default, 2-D and 3-D magnitude images of every
reader the bundle has) on the request's image and returns, as a task of type ``others``:

* the result file: ``<id>_phase.nii.gz``, float32 phase in radians (-pi, pi] of sample 0, in the input's
  voxel grid and affine (what a viewer overlays on the magnitude);
* the result JSON: ``complex`` (the complex64 NIfTI of every sample: magnitude exactly the input's),
  ``phase``, ``phase_spread`` (circular variance across the samples, 0 = they agree), ``samples``,
  ``shape`` and the run's ``notes``; paths on the server, in a fresh folder per request.

Request keys (besides MONAI Label's ``image``): ``num_samples``, ``seed``, ``num_inference_steps``,
``device``; their defaults are the task's ``config()`` (shown in MONAI Label clients). An input the
bundle cannot use (unreadable, empty) raises ``ValueError`` with the bundle's one-line reason. Only the
task interface is imported from MONAI Label (``monailabel.interfaces.tasks.infer_v2``), so this module
needs the ``monailabel`` package alone (``pip install --no-deps monailabel==0.8.5``); the server needs
``requirements-monailabel.txt`` (see ``bundles/monailabel_app/README.md``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from scripts.configs import CONFIG_DIR, ROOT, PRETRAINED_PHASE_MODEL, run_bundle
from scripts.synthesis.synthesize import OneLineExit

__all__ = ["PhaseSynthesisTask"]

_SUFFIXES = (".nii.gz", ".nii", ".h5", ".png", ".tif", ".tiff", ".dcm")


def _link_input(image: str, folder: Path) -> None:
    """Put ``image`` (a file, or a DICOM series folder) in ``folder`` under a neutral name, keeping its suffix."""
    src = Path(image)
    if not src.exists():
        raise ValueError(f"{image}: no such file or folder")
    suffix = "" if src.is_dir() else next((s for s in _SUFFIXES if src.name.lower().endswith(s)), src.suffix)
    os.symlink(src.resolve(), folder / f"image{suffix}", target_is_directory=src.is_dir())


class PhaseSynthesisTask(InferTask):
    """Sample phase for a magnitude image with this bundle's inference config (see the module docstring).

    Args:
        ckpt_path: phase model weights (default: the shipped model).
        config_file: the inference config (default: ``configs/inference.json``).
        num_samples / seed / num_inference_steps: request defaults.
        output_root: parent of the per-request output folders (default: the system temp folder).
        overrides: further config ids for the bundle run (e.g. ``unet_channels`` for another model).
    """

    def __init__(self, ckpt_path: str | os.PathLike | None = None, config_file: str | os.PathLike | None = None,
                 num_samples: int = 1, seed: int = 0, num_inference_steps: int | None = None,
                 output_root: str | os.PathLike | None = None, description: str | None = None, **overrides: Any) -> None:
        config: dict[str, Any] = {"num_samples": int(num_samples), "seed": int(seed)}
        if num_inference_steps is not None:
            config["num_inference_steps"] = int(num_inference_steps)
        super().__init__(type=InferType.OTHERS, labels=None, dimension=3, config=config,
                         description=description or "Realistic phase for a magnitude image (conditional diffusion); "
                                                    "result: phase in radians, plus complex image and spread map")
        self.ckpt_path = str(ckpt_path) if ckpt_path else str(ROOT / PRETRAINED_PHASE_MODEL)
        self.config_file = str(config_file) if config_file else str(CONFIG_DIR / "inference.json")
        self.output_root = output_root
        self.overrides = overrides

    def is_valid(self) -> bool:
        return Path(self.ckpt_path).is_file()

    def get_path(self, validate: bool = True) -> str | None:
        return self.ckpt_path if self.is_valid() or not validate else None

    def _settings(self, request: Mapping[str, Any]) -> dict[str, Any]:
        settings = {k: request.get(k, v) for k, v in self.config().items()}
        device = request.get("device") or ("cuda" if torch.cuda.is_available() else "cpu")
        settings = {k: int(v) for k, v in settings.items()}
        return {**self.overrides, **settings, "device": f"$torch.device({str(device)!r})"}

    def __call__(self, request: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        if not self.is_valid():
            raise ValueError(f"phase model not found: {self.ckpt_path}")
        image = request["image"]
        output_dir = Path(tempfile.mkdtemp(prefix="phase_synthesis_", dir=self.output_root))
        with tempfile.TemporaryDirectory(prefix="phase_input_") as input_dir:
            _link_input(str(image), Path(input_dir))
            try:
                run_bundle(self.config_file, input_dir=input_dir, output_dir=str(output_dir), ckpt_path=self.ckpt_path,
                           write_png=False, **self._settings(request))
            except OneLineExit as e:  # the bundle's one-line reason, as an error MONAI Label reports
                raise ValueError(str(e.code)) from None
        report = json.loads((output_dir / "report.json").read_text())
        if not report["written"]:
            reason = report["skipped"][0]["reason"] if report["skipped"] else "nothing written"
            raise ValueError(f"phase synthesis: {reason}")
        entry = report["written"][0]
        complex_files = [str(output_dir / f) for f in entry["files"] if "_sample" in f and f.endswith(".nii.gz")]
        spread = next(str(output_dir / f) for f in entry["files"] if f.endswith("_phase_spread.nii.gz"))
        shape = _nifti_shape(str(image))
        for path in (*complex_files, spread):
            _reshape_nifti(path, shape)
        first = nib.load(complex_files[0])
        phase = str(output_dir / f"{entry['id']}_phase.nii.gz")
        nib.save(nib.Nifti1Image(np.angle(np.asarray(first.dataobj)).astype(np.float32), first.affine), phase)
        return phase, {"complex": complex_files, "phase": phase, "phase_spread": spread, "samples": entry["samples"],
                       "shape": list(first.shape), "notes": entry.get("notes", []), "output_dir": str(output_dir)}


def _nifti_shape(image: str) -> tuple[int, ...] | None:
    """The array shape of a NIfTI ``image`` (``None`` for other inputs)."""
    return tuple(nib.load(image).shape) if image.lower().endswith((".nii", ".nii.gz")) else None


def _reshape_nifti(path: str, shape: tuple[int, ...] | None) -> None:
    """Give the output NIfTI at ``path`` the input's ``shape`` (the bundle writes a 2-D input as ``(H, W, 1)``)."""
    img = nib.load(path)
    if shape is None or img.shape == shape or int(np.prod(img.shape)) != int(np.prod(shape)):
        return
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj).reshape(shape), img.affine), path)
