"""Run a bundle config in-process: what ``python -m monai.bundle run`` does, from Python.

The study (diffusion / GAN training), VarNet training and the prior study all train through
their bundle configs, so one ``ConfigWorkflow`` call serves them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["ROOT", "run_bundle"]

ROOT = Path(__file__).resolve().parents[2]


def run_bundle(config_file: str | os.PathLike | Sequence[str | os.PathLike], run_id: str = "training",
               cwd: str | os.PathLike | None = None, **overrides: Any) -> None:
    """Initialise, run and finalise ``run_id`` of ``config_file`` (one file or a list merged in order)
    with ``overrides`` as config ids. ``cwd``: the working directory meanwhile (the bundle root
    :data:`ROOT` makes relative config paths and the configs' ``%configs/...`` macros resolve from
    any folder; ``None`` keeps the caller's)."""
    from monai.bundle import ConfigWorkflow

    files = [str(c) for c in config_file] if isinstance(config_file, (list, tuple)) else str(config_file)
    with contextlib.chdir(cwd) if cwd is not None else contextlib.nullcontext():
        wf = ConfigWorkflow(config_file=files, meta_file=str(ROOT / "configs" / "metadata.json"), logging_file=False,
                            workflow_type=None, run_id=run_id, **overrides)
        wf.initialize()
        wf.run()
        wf.finalize()
