"""``configs/metadata.json`` of the zoo bundle: the project's card with the network described as the zoo expects.

``network_data_format`` describes the NETWORK as ``monai.bundle.verify_net_in_out`` feeds it: input
``image`` holds the noisy phasor channels followed by the magnitude condition (``in_channels`` of
``network_def``), ``timesteps`` is a keyword argument of its forward, output ``pred`` has
``out_channels`` (the predicted noise, or the velocity under RFlow). What the pipeline reads and
writes (magnitude in; complex image, phase and spread map out) is in the custom key
``pipeline_data_format`` (as the zoo's latent diffusion bundles keep ``autoencoder_data_format``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from scripts.configs import CONFIG_DIR
from scripts.phase.diffusion import PHASOR_CHANNELS
from scripts.zoo.card import eval_metrics

__all__ = ["PIPELINE_KEY", "network_format", "pipeline_format", "project_metadata", "tensor_spec", "zoo_metadata"]

PIPELINE_KEY = "pipeline_data_format"
NAME = "MRI phase synthesis from magnitude (conditional diffusion)"
DESCRIPTION = (
    "Samples realistic phase for magnitude-only MRI (DICOM, NIfTI, PNG, TIFF, fastMRI h5). A conditional diffusion "
    "model (MONAI DiffusionModelUNet) learns p(phase | magnitude): the magnitude, divided by its 99.5th percentile, "
    "is concatenated to the noisy unit phasor (cos, sin of the phase) as an input channel at every denoising step. "
    "Inference writes N phase samples per input as complex NIfTI whose magnitude is exactly the input's, PNG "
    "previews, a phase-spread (circular variance) map and report.json. network_data_format describes the denoising "
    "network; pipeline_data_format what the inference pipeline reads and writes. DiffusionModelUNet cannot be "
    "TorchScripted: the weights ship as a PyTorch state dict, loaded with torch.load(weights_only=True)."
)


def tensor_spec(fmt: str, channels: int, shape: list, dtype: str, value_range: list, channel_def: Mapping[str, str],
                **extra: Any) -> dict:
    """One tensor entry of a ``*_data_format`` in the zoo's schema (an MR image, not patch data)."""
    return {"type": "image", "format": fmt, "modality": "MR", "num_channels": channels, "spatial_shape": shape,
            "dtype": dtype, "value_range": value_range, "is_patch_data": False, "channel_def": dict(channel_def), **extra}


def network_format(facts: Mapping[str, Any]) -> dict:
    """``network_data_format`` of the denoiser from the bundle config's ``facts`` (see :func:`scripts.zoo.build.config_facts`)."""
    size, n_in, n_out = int(facts["image_size"]), int(facts["in_channels"]), int(facts["out_channels"])
    if n_in - PHASOR_CHANNELS != 1 or n_out != PHASOR_CHANNELS:
        raise ValueError(f"expected in_channels {PHASOR_CHANNELS} + 1 and out_channels {PHASOR_CHANNELS}, got {n_in}, {n_out}")
    target = "velocity (x0 - noise)" if facts["scheduler_type"] == "rflow" else "noise (epsilon)"
    parts = ("cos", "sin")
    return {
        "inputs": {
            "image": tensor_spec("noisy phasor + magnitude condition", n_in, [size, size], "float32", [],
                             {**{str(i): f"noisy {parts[i]}(phase) at step t" for i in range(PHASOR_CHANNELS)},
                              str(PHASOR_CHANNELS): "magnitude / its 99.5th percentile (condition)"}),
            "timesteps": f"int64 tensor (batch,): the diffusion step t in [0, {int(facts['num_train_timesteps']) - 1}], "
                         "a keyword argument of forward()",
        },
        "outputs": {
            "pred": tensor_spec(f"predicted {target}", n_out, [size, size], "float32", [],
                            {str(i): f"predicted {target} of the {parts[i]}(phase) channel" for i in range(n_out)}),
        },
    }


def pipeline_format(facts: Mapping[str, Any]) -> dict:
    """The inference pipeline's inputs and outputs (``configs/inference.json``), for ``pipeline_data_format``."""
    n, size = int(facts["num_samples"]), int(facts["image_size"])
    any_shape = ["*", "*"]
    return {
        "inputs": {
            "magnitude": tensor_spec("magnitude", 1, any_shape, "float32", [],
                                 {"0": f"magnitude in any units; 2-D slices (NIfTI/DICOM volumes: along slice_axis); slices "
                                       f"larger than {size} px are sampled at {size} px and the phase resampled back"},
                                 files="--input_dir: DICOM files/series, NIfTI, PNG, TIFF, fastMRI h5 (reconstruction_rss)"),
        },
        "outputs": {
            "complex": tensor_spec("complex", 1, any_shape, "complex64", [],
                               {"0": "input magnitude x exp(i phase sample k): the modulus is exactly the input"},
                               files=f"<id>_sample<k>.nii.gz, k < num_samples ({n} by default), input voxel order and affine"),
            "phase": tensor_spec("phase", 1, any_shape, "float32", [-math.pi, math.pi],
                             {"0": "angle of the complex image, (-pi, pi]"},
                             files="<id>_sample<k>_phase.png (middle slice preview; the values are the complex NIfTI's angle)"),
            "phase_spread": tensor_spec("circular variance", 1, any_shape, "float32", [0, 1],
                                    {"0": "1 - |mean_k exp(i phase_k)|: 0 = samples agree, 1 = phase unknown"},
                                    files="<id>_phase_spread.nii.gz, <id>_phase_spread.png"),
        },
    }


def project_metadata(fields: Mapping[str, Any], version: str | None = None, note: str | None = None) -> dict:
    """The project's ``configs/metadata.json`` (versions, pins, references) with a bundle's ``fields``; the bundle's
    ``version`` (default the project's) with its changelog ``note``."""
    meta = json.loads((CONFIG_DIR / "metadata.json").read_text(encoding="utf-8"))
    version = version or meta["version"]
    note = note or f"model-zoo bundle of '{fields['name']}' (project version {meta['version']})"
    meta.update({"version": version, "changelog": {version: note}, **fields})
    return meta


def zoo_metadata(facts: Mapping[str, Any], card: Mapping[str, Any]) -> dict:
    """The bundle's ``configs/metadata.json``: the project's (versions, pins, references) with the zoo's fields."""
    return project_metadata({
        "name": NAME,
        "task": "Conditional phase synthesis for magnitude-only MRI",
        "description": DESCRIPTION,
        "data_source": card["data"],
        "data_type": "dicom, nibabel, png, tiff, hdf5 (fastMRI)",
        "image_classes": "denoiser input: noisy unit phasor (cos, sin of the phase) and the magnitude / its 99.5th percentile",
        "pred_classes": "denoiser output: the predicted noise (DDPM/DDIM) or velocity (RFlow) of the two phasor channels",
        "eval_metrics": eval_metrics(card),
        "network_data_format": network_format(facts),
        PIPELINE_KEY: pipeline_format(facts),
    }, card.get("version"), card.get("changelog"))
