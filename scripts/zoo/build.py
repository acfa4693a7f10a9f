"""Build the model-zoo bundle folder of the phase synthesiser from a checkpoint.

Layout (``models/<bundle>/`` in the zoo): ``configs/`` (``inference.json`` and ``train.json`` made
self-contained from ``configs/source/`` by :func:`scripts.configs.generated`, with the card's settings
and ``ckpt_path = @bundle_root + '/models/model.pt'``; ``multi_gpu_train.json``, ``logging.conf``;
``metadata.json`` from :mod:`scripts.zoo.metadata`), ``models/model.pt`` (the checkpoint's weights as a
plain state dict, float16 with ``half``), ``scripts/`` (a copy of this package less ``scripts.zoo``: the
code the configs import), ``docs/README.md`` (:mod:`scripts.zoo.card`) and ``LICENSE``. Nothing is
downloaded at run time (no ``large_files.yml``).

The checkpoint is checked against the bundle's network before anything is written; the folder is
built beside the output and renamed into place, so a failed build leaves the previous bundle as it was.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from scripts.configs import CONFIG_DIR, ROOT, generated
from scripts.io.checkpoint import model_state_dict
from scripts.phase.model_card import sha256
from scripts.zoo import BundleError
from scripts.zoo.card import read_card, readme
from scripts.zoo.checks import ForwardArgs, timestep_args, run_checks
from scripts.zoo.metadata import PIPELINE_KEY, zoo_metadata

__all__ = ["CKPT_PATH", "assemble", "build_bundle", "bundle_configs", "checkpoint_weights", "config_facts"]

GENERATED = ("inference.json", "train.json")
COPIED = ("multi_gpu_train.json", "logging.conf")
CKPT_PATH = "$@bundle_root + '/models/model.pt'"
FACTS = {"image_size": "image_size", "in_channels": "network_def#in_channels", "out_channels": "network_def#out_channels",
         "channels": "network_def#channels", "attention_levels": "network_def#attention_levels",
         "num_res_blocks": "network_def#num_res_blocks", "num_head_channels": "network_def#num_head_channels",
         "norm_num_groups": "network_def#norm_num_groups", "scheduler_type": "scheduler_type",
         "num_train_timesteps": "num_train_timesteps", "sampler_type": "sampler_type",
         "num_inference_steps": "num_inference_steps", "num_samples": "num_samples"}


def bundle_configs(settings: Mapping[str, Any]) -> dict[str, dict]:
    """``{name: config}`` of the bundle's self-contained configs with ``settings`` (config ids) applied."""
    from monai.bundle import ConfigParser

    parsers = {name: ConfigParser(json.loads(text)) for name, text in generated().items() if name in GENERATED}
    if unknown := [k for k in settings if not any(k in p for p in parsers.values())]:
        raise BundleError(f"setting(s) {', '.join(unknown)}: not a config id of {' or '.join(GENERATED)}")
    for parser in parsers.values():
        for key, value in settings.items():
            if key in parser:
                parser[key] = copy.deepcopy(value)
    parsers["inference.json"]["ckpt_path"] = CKPT_PATH
    configs = {name: parser.get("") for name, parser in parsers.items()}
    for name, config in configs.items():
        if '"%' in (text := json.dumps(config)) or "common.json" in text:
            raise BundleError(f"configs/source/{name}: a reference to the project's configs survives expansion")
    return configs


def config_facts(inference: Mapping[str, Any]) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``(network, facts)`` of an inference config: its ``network_def`` built on the CPU and the settings in :data:`FACTS`."""
    from monai.bundle import ConfigParser

    parser = ConfigParser(copy.deepcopy(dict(inference)))
    try:
        facts = {k: parser.get_parsed_content(ref) for k, ref in FACTS.items()}
        network = parser.get_parsed_content("network_def")
    except Exception as e:  # a bad setting: the config's own error, in one line
        raise BundleError(f"the bundle config does not build: {type(e).__name__}: {str(e).strip().splitlines()[0]}") from e
    return network.cpu(), facts


def checkpoint_weights(path: str | os.PathLike, network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model state dict in ``path`` loaded into ``network`` (keys and shapes must match), as a plain state dict."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    try:
        state = model_state_dict(path)
    except Exception as e:  # not a checkpoint, truncated, or pickled objects weights_only refuses
        raise BundleError(f"{path}: not a PyTorch checkpoint readable with weights_only=True ({type(e).__name__})") from None
    if not isinstance(state, Mapping) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise BundleError(f"{path}: holds no model state dict (a plain state dict, or a checkpoint with 'model')")
    expected = network.state_dict()
    problems = []
    if missing := [k for k in expected if k not in state]:
        problems.append(f"{len(missing)} key(s) missing, e.g. {missing[0]}")
    if unexpected := [k for k in state if k not in expected]:
        problems.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]}")
    if shapes := [k for k in expected if k in state and state[k].shape != expected[k].shape]:
        k = shapes[0]
        problems.append(f"{len(shapes)} shape mismatch(es), e.g. {k}: {tuple(state[k].shape)} in the file, "
                        f"{tuple(expected[k].shape)} in the network")
    if problems:
        raise BundleError(f"{path}: does not match the bundle's network ({'; '.join(problems)}); give the settings it "
                          "was trained with in the card (sampler.network_overrides) or with --set KEY=VALUE")
    network.load_state_dict(state)
    return network.state_dict()


def _not_copied(folder: str, names: list[str]) -> set[str]:
    skip = {n for n in names if n == "__pycache__" or n.endswith((".pyc", ".tmp"))}
    return skip | ({"zoo", "label"} if Path(folder) == ROOT / "scripts" else set())


def _write(folder: Path, configs: Mapping[str, dict], weights: Mapping[str, torch.Tensor], meta: Mapping,
           copied: Mapping[str, str] | None = None) -> None:
    """The bundle's files in ``folder``; ``copied``: ``{name in the bundle: project config}`` (default :data:`COPIED`)."""
    (folder / "configs").mkdir(parents=True)
    for name, config in {**configs, "metadata.json": meta}.items():
        (folder / "configs" / name).write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")
    for name, source in (copied or {n: n for n in COPIED}).items():
        shutil.copy2(CONFIG_DIR / source, folder / "configs" / name)
    shutil.copy2(ROOT / "LICENSE", folder / "LICENSE")
    shutil.copytree(ROOT / "scripts", folder / "scripts", ignore=_not_copied)
    (folder / "models").mkdir()
    torch.save(dict(weights), folder / "models" / "model.pt")


def _check_output(output: Path) -> None:
    """An existing ``output`` must be a bundle this command built (it will be replaced), never any other folder."""
    try:
        ours = PIPELINE_KEY in json.loads((output / "configs" / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        ours = False
    if output.exists() and not ours:
        raise BundleError(f"{output}: exists and is not a bundle built by scripts.zoo; choose another --output")


def _replace(built: Path, output: Path) -> None:
    """Rename ``built`` to ``output``, replacing a previous bundle there."""
    if output.exists():
        old = output.with_name(f".{output.name}.old-{secrets.token_hex(4)}")
        os.replace(output, old)
        os.replace(built, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(built, output)


def assemble(output: Path, configs: Mapping[str, dict], weights: Mapping[str, torch.Tensor], meta: Mapping,
             readme_text: Callable[[dict, float], str], copied: Mapping[str, str] | None = None,
             forward_args: ForwardArgs = timestep_args) -> tuple[dict[str, tuple[str, str]], float]:
    """Write a bundle beside ``output`` (:func:`_write`), run the zoo's checks on it, write ``docs/README.md`` =
    ``readme_text(checks, weights_mb)`` and rename it into place; returns ``(checks, weights_mb)``.
    The checks look for ``docs/README.md``, so it is written once before them and once with their results."""
    output.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    try:
        _write(work, configs, weights, meta, copied)
        weights_mb = (work / "models" / "model.pt").stat().st_size / 1e6
        (work / "docs").mkdir()
        (work / "docs" / "README.md").write_text(readme_text({}, weights_mb), encoding="utf-8")
        checks = run_checks(work, forward_args=forward_args)
        (work / "docs" / "README.md").write_text(readme_text(checks, weights_mb), encoding="utf-8")
        _replace(work, output)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return checks, weights_mb


def build_bundle(checkpoint: str | os.PathLike, output: str | os.PathLike, card: str | os.PathLike | None = None,
                 settings: Mapping[str, Any] | None = None, half: bool = False) -> dict[str, Any]:
    """Build the bundle ``output`` (its folder name is the bundle's name) from ``checkpoint``.

    ``settings`` (config ids, e.g. ``{"image_size": 128}``) override the card's. Returns
    ``{"bundle", "checks", "weights_mb", "weights_dtype", "image_size", "image_size_given"}``; raises :class:`BundleError` with one line."""
    output = Path(output).absolute()
    _check_output(output)
    info = read_card(card)
    configs = bundle_configs({**info["settings"], **(settings or {})})
    network, facts = config_facts(configs["inference.json"])
    weights = checkpoint_weights(checkpoint, network)
    if info["sha256"]:
        digest = sha256(checkpoint)
        if digest != info["sha256"]:
            raise BundleError(f"{card}: made for another checkpoint (sha256 {info['sha256'][:12]}..., "
                              f"{checkpoint} has {digest[:12]}...)")
    if half:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    facts["weights_dtype"] = "float16" if half else "float32"
    meta = zoo_metadata(facts, info)
    checks, facts["weights_mb"] = assemble(
        output, configs, weights, meta, lambda found, mb: readme(output.name, meta, {**facts, "weights_mb": mb}, info, found))
    return {"bundle": str(output), "checks": checks, **{k: facts[k] for k in ("weights_mb", "weights_dtype", "image_size")},
            "image_size_given": "image_size" in {**info["settings"], **(settings or {})}}
