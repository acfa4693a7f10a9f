"""The model-zoo bundle of a VarNet trained on synthetic k-space (``python -m scripts.zoo varnet ...``).

Layout as the phase synthesiser's (:mod:`scripts.zoo.build`): ``configs/inference.json`` (the project's
``configs/varnet_inference.json``: a folder of fastMRI files -> reconstruction files, with the checkpoint's
architecture written in and ``ckpt_path = @bundle_root + '/models/model.pt'``), ``configs/train.json`` and
``configs/multi_gpu_train.json`` (``train_varnet.json`` and its DDP overlay, writing ``models/model.pt``),
``configs/metadata.json`` (``network_data_format``: the VarNet as the zoo feeds it, multi-coil k-space in with
the ``mask`` keyword, RSS image out), ``models/model.pt``, ``scripts/``, ``docs/README.md`` (figures from a
study report) and ``LICENSE``. The VarNet is TorchScript-able, so ``ckpt_export`` is checked, not excluded.

The architecture comes from ``varnet.json`` beside the checkpoint (what training writes); the figures from
the study's report folder (``metrics_<test set>.csv``: the source's VarNet, zero-filled and L1-wavelet rows).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from scripts.configs import CONFIG_DIR, generated
from scripts.io.tables import read_csv
from scripts.recon.varnet import read_network_spec
from scripts.recon.varnet_model import build_varnet
from scripts.zoo import BundleError
from scripts.zoo.build import CKPT_PATH, _check_output, assemble, checkpoint_weights
from scripts.zoo.checks import describe
from scripts.zoo.metadata import PIPELINE_KEY, project_metadata, tensor_spec

__all__ = ["build_varnet_bundle", "varnet_configs", "varnet_metadata"]

SIZE, COILS = 64, 4  # the fake input verify_net_in_out builds (the network takes any size and coil count)
FIGURES = ("psnr", "ssim", "nmse")


def varnet_configs(varnet_kwargs: Mapping[str, Any]) -> dict[str, dict]:
    """``{name: config}``: the bundle's inference and training configs with the architecture ``varnet_kwargs``."""
    inference = json.loads(generated()["varnet_inference.json"])
    for key in ("varnet_profiles", "varnet_profile"):
        inference.pop(key)
    inference["varnet_kwargs"] = dict(varnet_kwargs)
    inference["ckpt_path"] = CKPT_PATH
    train = json.loads((CONFIG_DIR / "train_varnet.json").read_text(encoding="utf-8"))
    train["varnet_kwargs"] = dict(varnet_kwargs)
    train.pop("varnet_profile")
    train["output_dir"] = "$os.path.join(@bundle_root, 'models')"
    return {"inference.json": inference, "train.json": train}


def _mask(device: str) -> dict[str, torch.Tensor]:
    """VarNet's ``mask`` keyword for the fake input: equispaced R=4 columns and an 8-column centre."""
    mask = torch.zeros(1, 1, 1, SIZE, 1, dtype=torch.bool, device=device)
    mask[..., ::4, :] = True
    mask[..., SIZE // 2 - 4 : SIZE // 2 + 4, :] = True
    return {"mask": mask}


def _figures(report_dir: str | os.PathLike | None, source: str) -> dict[str, list[dict[str, Any]]]:
    """``{test set: rows}`` of ``source``'s VarNet, zero-filled and L1-wavelet in the study report's CSVs."""
    if report_dir is None:
        return {}
    files = sorted(Path(report_dir).glob("metrics_*.csv"))
    if not files:
        raise BundleError(f"{report_dir}: no metrics_<test set>.csv (a study report folder)")
    out = {}
    for f in files:
        rows = [r for r in read_csv(f)
                if (r["method"] == "varnet" and r["label"] == source) or r["method"] in ("zero_filled", "l1_wavelet")]
        if not any(r["method"] == "varnet" for r in rows):
            raise BundleError(f"{f}: no VarNet rows for source {source!r}")
        out[f.stem.removeprefix("metrics_")] = rows
    return out


def varnet_metadata(varnet_kwargs: Mapping[str, Any], figures: Mapping[str, list], source: str) -> dict:
    """``configs/metadata.json``: the project's card with the VarNet's network and pipeline formats."""
    metrics = {f"{name}_R{r['acceleration']:g}_{m}": r[f"{m}_slice_mean"]
               for name, rows in figures.items() for r in rows if r["method"] == "varnet" for m in FIGURES}
    return project_metadata({
        "name": "MRI VarNet trained on synthetic k-space",
        "task": "Accelerated multi-coil MRI reconstruction",
        "description": (f"End-to-end VarNet (MONAI reconstruction parts, {varnet_kwargs['num_cascades']} cascades) trained "
                        f"on multi-coil k-space synthesised from magnitude images with '{source}' phase by this "
                        "project's pipeline. Inference reconstructs every fastMRI h5 file of a folder: a file with a "
                        "'mask' dataset from its own samples, a fully sampled one after the fixed undersampling mask of "
                        "(file, slice) at --acceleration. network_data_format describes the network; "
                        "pipeline_data_format the files."),
        "data_source": "SIMULATED data only (see docs/README.md)",
        "data_type": "hdf5 (fastMRI multi-coil)",
        "image_classes": "multi-coil undersampled k-space, real and imaginary last",
        "pred_classes": "root-sum-of-squares magnitude image",
        "eval_metrics": metrics,
        "network_data_format": {
            "inputs": {
                "image": tensor_spec("multi-coil masked k-space (channels = coils, any number)", COILS, [SIZE, SIZE, 2],
                                "float32", [], {str(c): f"coil {c}: k-space (H, W, real/imaginary)" for c in range(COILS)}),
                "mask": "bool tensor (B|1, 1, 1|H, W, 1): the sampled k-space (one mask per sample), a keyword "
                        "argument of forward()",
            },
            "outputs": {"pred": tensor_spec("RSS magnitude", 1, [SIZE, SIZE], "float32", [], {"0": "reconstructed magnitude"})},
        },
        PIPELINE_KEY: {
            "inputs": {"kspace": tensor_spec("fastMRI multi-coil k-space (channels = coils, any number)", COILS, ["*", "*"], "complex64", [],
                                        {"0": "kspace (slices, coils, H, W); optional 'mask' (W,) = undersampled"},
                                        files="--input_dir: fastMRI h5 files")},
            "outputs": {"reconstruction": tensor_spec("RSS magnitude", 1, ["*", "*"], "float32", [],
                                                 {"0": "'reconstruction' (slices, H, W), file units"},
                                                 files="OUT/<file name>, OUT/report.json")},
        },
    })


def _readme(name: str, meta: Mapping, kwargs: Mapping, figures: Mapping[str, list], source: str, weights_mb: float,
            checks: Mapping[str, tuple[str, str]]) -> str:
    tables = []
    for test_set, rows in figures.items():
        data = "REAL slices" if test_set == "real" else "SIMULATED held-out split"
        lines = ["| method | R | PSNR dB [95% CI over subjects] | SSIM | NMSE |", "|---|---|---|---|---|"]
        for r in rows:
            label = f"VarNet ({source})" if r["method"] == "varnet" else r["method"]
            lines.append(f"| {label} | {r['acceleration']:g} | {r['psnr_slice_mean']:.2f} "
                         f"[{r['psnr_ci_low']:.2f}, {r['psnr_ci_high']:.2f}] | "
                         f"{r['ssim_slice_mean']:.3f} | {r['nmse_slice_mean']:.4f} |")
        tables.append(f"Test set `{test_set}` ({data}):\n\n" + "\n".join(lines))
    measured = "\n\n".join(tables) or "Not measured (built without a study report)."
    losses = []
    for test_set, rows in figures.items():
        psnr = {(r["method"], r["acceleration"]): r["psnr_slice_mean"] for r in rows}
        worse = [f"R={a:g}" for (m, a), v in sorted(psnr.items()) if m == "varnet" and v < psnr.get(("zero_filled", a), -1e9)]
        if worse:
            losses.append(f"- On `{test_set}` this VarNet is BELOW zero-filled in PSNR at {', '.join(worse)} (table above).")
    check_lines = "\n".join(f"- {describe(k, *v, name, 'mask')}" for k, v in checks.items())
    return f"""# {meta['name']}

{meta['description']}

## Use

```bash
python -m monai.bundle run inference --config_file configs/inference.json --bundle_root . --input_dir IN --output_dir OUT [--acceleration 8]
```

Training from scratch on a fastMRI-format folder with `train/` and `val/`:
`python -m monai.bundle run training --config_file configs/train.json --bundle_root . --dataset_dir DIR`
(several GPUs: `torchrun --nproc_per_node N -m monai.bundle run training --config_file "['configs/train.json','configs/multi_gpu_train.json']" --bundle_root . --dataset_dir DIR`).

## Network

`scripts.recon.varnet_model.VarNet`: `{json.dumps(dict(kwargs))}`; `models/model.pt` is its state dict ({weights_mb:.2f} MB),
loaded with `torch.load(weights_only=True)`. Forward: `net(kspace (B, coils, H, W, 2), mask (B|1, 1, 1|H, W, 1) bool)`
-> `(B, 1, H, W)`; any size and coil count. TorchScript-able.

## Data

Trained on k-space the project synthesised (magnitude + `{source}` phase + coil maps + noise) from its SIMULATED
paired dataset (`scripts.simulate.dataset`, nilearn's MNI152 templates; no patient data). The phase source is what
the study compares; the VarNet is the instrument.

## Measured (study report of the project; PSNR/SSIM with the volume max, as fastMRI)

{measured}

## Limits

{chr(10).join(losses)}
- Trained on 64 px simulated brains with 4 coils: figures on other data are not implied; the real-slice rows are 2 slices.
- Research use only; not for clinical use.

## Model-zoo checks

{check_lines}
"""


def build_varnet_bundle(checkpoint: str | os.PathLike, output: str | os.PathLike,
                        report_dir: str | os.PathLike | None = None, source: str = "diffusion") -> dict[str, Any]:
    """Build the VarNet bundle ``output`` from ``checkpoint`` (with ``varnet.json`` beside it); returns
    ``{"bundle", "checks", "weights_mb"}``; raises :class:`BundleError` with one line."""
    output = Path(output).absolute()
    _check_output(output)
    kwargs = read_network_spec(checkpoint)
    if kwargs is None:
        raise BundleError(f"{checkpoint}: no varnet.json beside it (the architecture training writes)")
    configs = varnet_configs(kwargs)
    weights = checkpoint_weights(checkpoint, build_varnet(**kwargs, channel_dim=True))
    figures = _figures(report_dir, source)
    meta = varnet_metadata(kwargs, figures, source)
    copied = {"multi_gpu_train.json": "multi_gpu_train_varnet.json", "logging.conf": "logging.conf"}
    checks, weights_mb = assemble(output, configs, weights, meta, copied=copied, forward_args=_mask,
                                  readme_text=lambda found, mb: _readme(output.name, meta, kwargs, figures, source, mb, found))
    return {"bundle": str(output), "checks": checks, "weights_mb": weights_mb}
