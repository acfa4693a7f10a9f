"""The model card of a checkpoint (``--card CARD.json``) and the bundle's ``docs/README.md`` made from it.

The card is the JSON that ``python -m scripts.phase.model_card`` writes; the keys used here (all optional):

- ``sha256``: the checkpoint's hash; a card made for another file is refused;
- ``sampler``: ``network_overrides`` (the config settings the model was trained with, written into the
  bundle's configs) and ``num_inference_steps``;
- ``recipe``: how the model was trained (shown as given);
- ``test_sets``: ``{name: {"data": "simulated"|"real", "sources": {source: figures}}}``, the realism
  figures of :func:`scripts.phase.realism.phase_realism` for the model (``diffusion``) and baselines.

Keys a person may add: ``version`` and ``changelog`` (the bundle's version and its note), ``data``
(the training data's provenance; default: the project's SIMULATED dataset) and ``limits`` (added to
those every bundle states). Other keys are kept out of the bundle.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from numbers import Real
from pathlib import Path
from typing import Any

from scripts.zoo import BundleError
from scripts.zoo.checks import describe

__all__ = ["FIGURES", "eval_metrics", "read_card", "readme"]

SIMULATED = (
    "SIMULATED data: paired complex multi-coil brain slices made by `scripts.simulate.dataset` (the project's "
    "`configs/simulate.json`; the bundle's `configs/train.json` makes it on first use) from nilearn's bundled MNI152 "
    "T1 / grey / white-matter templates: contrasts from signal equations, a B0 field from a susceptibility map by the "
    "dipole kernel, smooth transmit/receive phase, simulated coils and noise. No real patient data."
)
LIMITS = (
    "The phase is a plausible sample of p(phase | magnitude), not the patient's true phase. Research use only: "
    "synthesising training data for MRI reconstruction; not for clinical use.",
    "2-D slices: a slice larger than the training size is sampled at that size (area average, aspect kept) and its "
    "phase resampled back; the magnitude is never changed.",
    "A model trained on simulated data learns the simulator's phase (template anatomy, B0 from a template "
    "susceptibility map, smooth RF phase); figures measured on simulated test data do not show its realism on "
    "real archives.",
)
FIGURES = {  # scripts.phase.realism
    "coherence": "magnitude-weighted phase coherence with the true phase, 95 % interval over volumes (1 = true up to a constant)",
    "gradient_distance": "Wasserstein distance of wrapped phase gradients inside the head, rad/pixel (0 = same)",
    "spectrum_distance": "mean |log10| difference of the phasor's radial power spectra (0 = same)",
    "auroc": "held-out AUROC of a CNN separating true from synthetic complex images (0.5 = indistinguishable)",
}


def _lines(value: Any, name: str, path: str) -> list[str]:
    """A card entry as lines: text, a list of text, or an object (``key: value``)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    if isinstance(value, dict):
        return [f"{k}: {v if isinstance(v, str) else json.dumps(v)}" for k, v in value.items()]
    raise BundleError(f"{path}: card key {name!r} must be text, a list of text or an object")


def _object(card: Mapping, key: str, path: str) -> dict:
    value = card.get(key) or {}
    if not isinstance(value, dict):
        raise BundleError(f"{path}: card key {key!r} must be a JSON object")
    return value


def _number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def read_card(path: str | os.PathLike | None) -> dict[str, Any]:
    """The card at ``path`` (``None``: no card) checked and with defaults; :class:`BundleError` names what is wrong."""
    card: Any = {}
    where = str(path)
    if path is not None:
        try:
            card = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise BundleError(f"{path}: not a readable JSON card ({type(e).__name__})") from None
        if not isinstance(card, dict):
            raise BundleError(f"{path}: a card is a JSON object")
    sampler, test_sets = _object(card, "sampler", where), _object(card, "test_sets", where)
    settings = dict(_object(sampler, "network_overrides", where))
    if sampler.get("num_inference_steps") is not None:
        settings["num_inference_steps"] = sampler["num_inference_steps"]
    for name, test in test_sets.items():
        sources = test.get("sources") if isinstance(test, dict) else None
        if not (isinstance(sources, dict) and test.get("data") in ("simulated", "real")
                and all(isinstance(f, dict) for f in sources.values())):
            raise BundleError(f"{where}: test set {name!r} needs 'data' ('simulated' or 'real') and 'sources' (figures per source)")
    return {
        "sha256": card.get("sha256"),
        "settings": settings,
        "version": card.get("version"),
        "changelog": card.get("changelog"),
        "recipe": _lines(card.get("recipe"), "recipe", where),
        "data": " ".join(_lines(card.get("data"), "data", where)) or SIMULATED,
        "test_sets": test_sets,
        "limits": [*LIMITS, *_lines(card.get("limits"), "limits", where)],
    }


def eval_metrics(card: Mapping[str, Any]) -> dict[str, float]:
    """The model's own realism figures, ``{"<test set>_<figure>": value}`` (finite numbers only), for the metadata."""
    return {f"{name}_{k}": v for name, test in card["test_sets"].items()
            for k, v in test["sources"].get("diffusion", {}).items() if k in FIGURES and _number(v)}


def _cell(figures: Mapping[str, Any], key: str) -> str:
    if not _number(figures.get(key)):
        return "n/a"
    low, high = figures.get(f"{key}_ci_low"), figures.get(f"{key}_ci_high")
    return f"{figures[key]:.3f}" + (f" [{low:.3f}, {high:.3f}]" if _number(low) and _number(high) else "")


def _realism(card: Mapping[str, Any]) -> str:
    if not card["test_sets"]:
        return "Not measured for this checkpoint (its card holds no realism figures)."
    parts = []
    for name, test in card["test_sets"].items():
        data = "SIMULATED (`scripts.simulate.dataset`)" if test["data"] == "simulated" else "REAL"
        first = next(iter(test["sources"].values()), {})
        size = f", {first['volumes']} volumes / {first['slices']} slices" if "volumes" in first and "slices" in first else ""
        rows = [(f"`{source}`", *(_cell(f, k) for k in FIGURES)) for source, f in test["sources"].items()]
        parts.append(f"`{name}`: {data} test data{size}.\n\n{_table(rows, ('source', *FIGURES))}")
    legend = "; ".join(f"{k}: {v}" for k, v in FIGURES.items())
    return "\n\n".join(parts) + f"\n\nThe model is `diffusion`; the other rows are baselines on the same slices. {legend}."


def _table(rows: list[tuple[Any, ...]], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows])


def readme(name: str, meta: Mapping[str, Any], facts: Mapping[str, Any], card: Mapping[str, Any],
           checks: Mapping[str, tuple[str, str]]) -> str:
    """``docs/README.md`` of bundle ``name`` from its metadata, config ``facts``, ``card`` and zoo check results."""
    pipeline = meta["pipeline_data_format"]
    io_rows = [(f"in: `{k}`", v["dtype"], v["channel_def"]["0"], v["files"]) for k, v in pipeline["inputs"].items()]
    io_rows += [(f"out: `{k}`", v["dtype"], v["channel_def"]["0"], v["files"]) for k, v in pipeline["outputs"].items()]
    net = meta["network_data_format"]
    image, pred = net["inputs"]["image"], net["outputs"]["pred"]
    settings = [(k, f"`{json.dumps(facts[k])}`") for k in ("image_size", "channels", "attention_levels", "num_res_blocks",
                                                            "num_head_channels", "norm_num_groups", "scheduler_type",
                                                            "num_train_timesteps", "sampler_type", "num_inference_steps",
                                                            "num_samples")]
    training = ("\n".join(f"- {line}" for line in card["recipe"])
                or "Not stated (the bundle was built without a training recipe in its card).")
    check_lines = "\n".join(f"- {describe(k, *v, name)}" for k, v in checks.items())
    return f"""# {meta['name']}

{meta['description']}

Version {meta['version']}: {meta['changelog'][meta['version']]}. {meta['intended_use']}

## Contents

| file | what |
|---|---|
| `configs/inference.json` | phase sampling for a folder of magnitude images (self-contained; weights from `models/model.pt`) |
| `configs/train.json`, `configs/multi_gpu_train.json` | training from scratch (`--dataset_dir`: a fastMRI-format folder; simulated on first use when empty) and its DDP overlay |
| `configs/metadata.json` | the zoo metadata; `pipeline_data_format` describes the pipeline's inputs and outputs |
| `models/model.pt` | `DiffusionModelUNet` state dict, {facts['weights_dtype']}, {facts['weights_mb']:.2f} MB |
| `scripts/` | the project's Python package, which the configs import |
| `docs/README.md`, `LICENSE` | this file; the licence |

Nothing is downloaded at run time.

## Use

From this folder (in the model zoo: `models/{name}/`), on CPU or GPU:

```bash
python -m monai.bundle run inference --config_file configs/inference.json --bundle_root . --input_dir IN --output_dir OUT
```

Options: `--num_samples N`, `--num_inference_steps S`, `--slice_axis 0|1|2`, `--seed`, `--write_png false`,
`--write_input_map true`. From another folder, pass the absolute `--config_file` and `--bundle_root` and put this
folder on `PYTHONPATH` (MONAI's runner adds the bundle root to `sys.path` only after a config's `initialize`).
Training: `python -m monai.bundle run training --config_file configs/train.json --bundle_root . [--dataset_dir DIR]`
(it retrains from scratch and writes `models/model.pt` at its best validation loss; several GPUs:
`torchrun --nproc_per_node N -m monai.bundle run training --config_file "['configs/train.json','configs/multi_gpu_train.json']" --bundle_root .`).

## Pipeline inputs and outputs

Every slice is divided by its 99.5th percentile before sampling, a pure scale undone on output, so each complex
output carries the input magnitude exactly. An input that fails is skipped with one line and listed in
`report.json`; the run goes on.

{_table(io_rows, ("", "dtype", "meaning", "files"))}

## Network

`DiffusionModelUNet` (2-D), a denoiser: input `image` {image['num_channels']} channels x {image['spatial_shape']}
({', '.join(image['channel_def'].values())}) and `timesteps`; output `pred` {pred['num_channels']} channels
({', '.join(pred['channel_def'].values())}). Sampling runs `num_inference_steps` reverse steps per sample.

{_table(settings, ("setting", "value"))}

## Training

{training}

## Data

{card['data']}

## Measured realism

{_realism(card)}

## Limits

{chr(10).join(f"- {line}" for line in card['limits'])}

## Model-zoo checks

Run when the bundle was built, as the zoo's `ci/verify_bundle.py` runs them (`verify_net_in_out` with
`extra_forward_args={{"timesteps": ...}}`, which the diffusion UNet's forward needs):

{check_lines}

## License

See `LICENSE`.
"""
