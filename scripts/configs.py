"""The bundle's configs: the one place networks, schedulers and profiles are defined, read from Python.

Three jobs:

- :func:`parsed` builds an item of a bundle config (e.g. ``network_def`` or
  ``schedulers#ddim`` of ``configs/common.json``) with overrides, so Python code receives the
  objects the configs define instead of keeping copies of their values.
- :func:`run_bundle` initialises, runs and finalises a bundle config in-process, as
  ``python -m monai.bundle run`` does (the studies and ``train_varnet`` train through it).
- Self-contained configs. MONAI resolves a ``%configs/common.json#key`` macro against the
  CURRENT folder, so a config that uses one fails when run from anywhere but the bundle root
  (the model zoo's CI, a MONAI Label app, a user's script). The configs are therefore written
  once, in ``configs/source/`` (where shared definitions are pulled in with those macros), and
  ``python -m scripts.configs`` expands the macros into the self-contained ``configs/*.json``
  that users run. ``python -m scripts.configs --check`` (and a test) fails when they differ.
  MONAI's own macro expansion is a plain deep copy of the referenced item (no recursion), and so
  is this one.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["CONFIG_DIR", "ROOT", "SOURCE_DIR", "as_bool", "device_expr", "expand", "generated", "parsed", "resolve_device",
           "run_bundle"]

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
SOURCE_DIR = CONFIG_DIR / "source"
MACRO = "%"
PRETRAINED_PHASE_MODEL = "bundles/pretrained/phase_rflow_64px.pt"  # the shipped phase model, under ROOT (bundles/pretrained/README.md)


def as_bool(value: Any, name: str) -> bool:
    """A config switch as a bool: ``True``/``False`` or the strings ``true``/``false``/``1``/``0`` (any case).

    The command line hands ``--key false`` over as the string ``'false'``, which Python reads as true."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def parsed(config: str, item: str, **overrides: Any) -> Any:
    """Item ``item`` of ``configs/<config>`` built (instantiated) after setting ``overrides`` (config ids)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIG_DIR / config))
    parser["bundle_root"] = str(ROOT)
    for key, value in overrides.items():
        parser[key] = value
    return parser.get_parsed_content(item, instantiate=True)


def resolve_device(device) -> str:
    """A workflow's device as a string (``None`` or ``""``: the CPU)."""
    return str(device) if device not in (None, "") else "cpu"


def device_expr(device) -> str:
    """``device`` as a config override that evaluates to a ``torch.device`` (how bundle configs hold it)."""
    return f"$torch.device('{resolve_device(device)}')"


def run_bundle(config_file: str | os.PathLike | Sequence[str | os.PathLike], run_id: str = "run",
               cwd: str | os.PathLike | None = None, **overrides: Any) -> None:
    """Initialise, run and finalise ``run_id`` of ``config_file`` (one file or a list merged in order)
    with ``overrides`` as config ids. Relative config paths resolve against the bundle root
    :data:`ROOT`; ``cwd``: the working directory meanwhile (``None`` keeps the caller's)."""
    from monai.bundle import ConfigWorkflow

    files = [str(ROOT / c) for c in (config_file if isinstance(config_file, (list, tuple)) else [config_file])]
    with contextlib.chdir(cwd) if cwd is not None else contextlib.nullcontext():
        wf = ConfigWorkflow(config_file=files if len(files) > 1 else files[0],
                            meta_file=str(ROOT / "configs" / "metadata.json"), logging_file=False,
                            workflow_type=None, run_id=run_id, **overrides)
        wf.initialize()
        wf.run()
        wf.finalize()


def _lookup(source: str, ref: str, cache: dict[str, Any]) -> Any:
    path, _, ids = ref.partition("#")
    if path not in cache:
        file = ROOT / path
        if path.startswith("configs/") and (SOURCE_DIR / Path(path).name).is_file():
            file = SOURCE_DIR / Path(path).name  # the source of a generated config
        if not file.is_file():
            raise FileNotFoundError(f"{source}: macro {MACRO}{ref} names a missing file {path}")
        cache[path] = json.loads(file.read_text())
    value = cache[path]
    for key in ids.split("#") if ids else []:
        value = value[int(key)] if isinstance(value, list) else value[key]
    return copy.deepcopy(value)


def expand(config: Any, source: str = "config", cache: dict[str, Any] | None = None) -> Any:
    """``config`` with every ``"%path#id"`` string replaced by a copy of that item (paths from the bundle root)."""
    cache = {} if cache is None else cache
    if isinstance(config, dict):
        return {k: expand(v, source, cache) for k, v in config.items()}
    if isinstance(config, list):
        return [expand(v, source, cache) for v in config]
    if isinstance(config, str) and config.startswith(MACRO):
        return _lookup(source, config[len(MACRO):], cache)
    return config


def generated() -> dict[str, str]:
    """``{file name: text}`` of every self-contained config made from ``configs/source/``."""
    out = {}
    for src in sorted(SOURCE_DIR.glob("*.json")):
        config = expand(json.loads(src.read_text()), src.name)
        out[src.name] = json.dumps(config, indent=4) + "\n"
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report configs that differ from their source")
    args = parser.parse_args(argv)
    stale = []
    for name, text in generated().items():
        target = CONFIG_DIR / name
        if target.is_file() and target.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            target.write_text(text)
    if args.check and stale:
        print(f"configs out of date with configs/source/: {', '.join(stale)} (run: python -m scripts.configs)")
        return 1
    print(("stale: " if args.check else "written: ") + (", ".join(stale) or "none"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
