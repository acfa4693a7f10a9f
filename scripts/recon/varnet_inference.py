"""VarNet inference on a folder of fastMRI multi-coil h5 files: k-space in, fastMRI reconstruction files out.

Each ``*.h5`` under ``input_dir`` (sorted, sub-folders included, the output folder excluded) is
reconstructed slice by slice (one slice in memory at a time):

- a file with a ``mask`` dataset (fastMRI's undersampled test and challenge files: ``(W,)``) is
  reconstructed from its own samples;
- a fully sampled file is first undersampled with the fixed mask of (file name, slice) at
  ``acceleration`` (``mask_type``, ``center_fraction``, ``seed``: the same masks as
  :func:`scripts.recon.evaluate.evaluate_varnet`), which is how a user tries the model on their data.

Output, per input, ``<output_dir>/<file name>`` (fastMRI's layout, to match the ground truth; folder names are
never used, and a repeated name gets the input's anonymous key): ``reconstruction`` ``(slices, h, w)`` float32 in the
file's units (fastMRI's submission layout; centre-cropped to ``crop_size`` when given), written atomically;
``report.json`` lists what was written and the skipped inputs (``{"input": key, "reason": ...}``, the
batch-input rule of :mod:`scripts.synthesis.synthesize`: one bad file is one log line, the rest go on; all
bad or none found ends with one line).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from scripts.core.masks import DEFAULT_CENTER_FRACTION, MaskSampler
from scripts.io.atomic import atomic_path, write_json
from scripts.io.fastmri_h5 import FastMRIFileError, open_fastmri
from scripts.recon.varnet import prepare_example, varnet_reconstruct
from scripts.io.magnitude import find_inputs, input_key
from scripts.synthesis.synthesize import NoUsableInput, reject_input

__all__ = ["reconstruct_folder", "reconstruct_file"]

logger = logging.getLogger(__name__)


def reconstruct_file(network: torch.nn.Module, path: str | os.PathLike, output: str | os.PathLike, sampler: MaskSampler,
                     acceleration: float, crop_size: Sequence[int] | None = None,
                     device: str | torch.device = "cpu") -> dict[str, Any]:
    """Reconstruct every slice of ``path`` into ``output`` (see the module docstring); returns its report entry.
    The file is opened once; its own ``mask`` ``(W,)``, when it has one, is used for every slice."""
    images = []
    with open_fastmri(path) as f:
        shape = tuple(int(n) for n in f["kspace"].shape)
        if len(shape) != 4:
            raise FastMRIFileError(path, f"multi-coil k-space (slices, coils, H, W) expected, got {shape}")
        stored = np.asarray(f["mask"], dtype=bool).reshape(1, -1) if "mask" in f else None
        if stored is not None and stored.shape[-1] != shape[-1]:
            raise FastMRIFileError(path, f"'mask' has {stored.shape[-1]} columns, 'kspace' {shape[-1]}")
        target_shape = tuple(crop_size) if crop_size else shape[-2:]
        for s in range(shape[0]):
            kspace = np.asarray(f["kspace"][s])
            mask = stored if stored is not None else sampler.fixed(shape[-2:], (Path(path).name, s), acceleration)[0]
            example = prepare_example(kspace, mask, np.zeros(target_shape, np.float32))
            images.append(varnet_reconstruct(network, example, device))
    recon = np.stack(images).astype(np.float32)
    with atomic_path(output) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("reconstruction", data=recon)
        f.attrs["acceleration"] = float("nan") if stored is not None else float(acceleration)
        f.attrs["mask"] = "stored" if stored is not None else sampler.mask_type
    return {"slices": int(shape[0]), "mask": "stored" if stored is not None else f"{sampler.mask_type} R={acceleration:g}",
            "shape": list(recon.shape)}


def reconstruct_folder(network: torch.nn.Module, input_dir: str | os.PathLike, output_dir: str | os.PathLike,
                       acceleration: float = 4.0, mask_type: str = "equispaced",
                       center_fraction: float = DEFAULT_CENTER_FRACTION, seed: int = 0,
                       crop_size: Sequence[int] | None = None, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Reconstruct every h5 file under ``input_dir`` into ``output_dir``; returns and writes ``report.json``."""
    network = network.to(device).eval()
    output_dir = Path(output_dir)
    if not Path(input_dir).is_dir():
        raise NoUsableInput(f"varnet inference: input folder {input_dir} does not exist")
    problems: list[tuple[str, str]] = []
    files = [p for p in find_inputs(input_dir, exclude=[output_dir], problems=problems) if p.lower().endswith(".h5")]
    skipped = [reject_input(path, input_dir, reason) for path, reason in problems]
    if not files:
        raise NoUsableInput(f"varnet inference: no .h5 files under {input_dir}")
    sampler = MaskSampler(mask_type, [float(acceleration)], center_fraction, seed=seed)
    written, names = [], set()
    for path in files:
        key = input_key(path, input_dir)
        # fastMRI's layout: the input's file name (it matches the ground truth); never its folders' names
        name = Path(path).name if Path(path).name not in names else f"{Path(path).stem}_{key}.h5"
        try:
            entry = reconstruct_file(network, path, output_dir / name, sampler, float(acceleration), crop_size, device)
        except MemoryError:
            raise
        except Exception as e:  # this file only
            skipped.append(reject_input(path, input_dir, e))
            continue
        names.add(name)
        written.append({"input": key, "output": name, **entry})
        logger.info("reconstructed %s (%d slices)", key, entry["slices"])
    report = {"written": written, "skipped": skipped,
              "settings": {"acceleration": float(acceleration), "mask_type": mask_type, "center_fraction": center_fraction,
                           "seed": int(seed), "crop_size": None if crop_size is None else list(crop_size)}}
    write_json(output_dir / "report.json", report)
    if not written:
        raise NoUsableInput(f"varnet inference: all {len(skipped)} input(s) failed; the reasons are in {output_dir / 'report.json'}")
    return report
