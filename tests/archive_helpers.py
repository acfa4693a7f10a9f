"""Builders and asserts shared by the batch-boundary and archive tests (not a test module)."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT, python_path
from scripts.synthesis.synthesize import input_key

PHI = "ZZJOHNDOE"
PHI_FOLDER = f"{PHI}_19710203"
TINY_NET = {"image_size": 32, "unet_channels": [8, 16], "unet_attention_levels": [False, True], "unet_num_head_channels": 8}


def head(h: int, w: int) -> np.ndarray:
    """A smooth elliptical 'head' in [0, 1.3]: signal inside, zero outside."""
    yy, xx = np.mgrid[-1 : 1 : h * 1j, -1 : 1 : w * 1j]
    return ((xx / 0.8) ** 2 + (yy / 0.9) ** 2 < 1) * (1 + 0.3 * np.sin(5 * xx))


def keys(archive: Path, names) -> dict[str, str]:
    """``{input key: name}`` of names relative to ``archive``."""
    return {input_key(archive / n, archive): n for n in names}


def pydicom_file(name: str) -> str:
    """A file of pydicom's test data (skips the test when it is not installed)."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} not available")
    return path


def tiny_checkpoint(path: Path, **net) -> Path:
    """An untrained tiny phase model (``{"model": state_dict}``) at ``path`` (robustness needs no training)."""
    from scripts.configs import parsed

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save({"model": parsed("common.json", "network_def", **{**TINY_NET, **net}).state_dict()}, path)
    return path


@contextmanager
def captured_log():
    """Every log record of the process (any logger), as text."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root, level = logging.getLogger(), logging.getLogger().level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def assert_no_phi(folders, *texts: str) -> None:
    """No file under ``folders`` and none of ``texts`` contains :data:`PHI` (any case)."""
    blobs = {str(p): p.read_bytes() for d in folders for p in Path(d).rglob("*") if p.is_file()}
    blobs.update({f"text {i}": t.encode("utf-8", "surrogateescape") for i, t in enumerate(texts)})
    assert len(blobs) > len(texts)
    hits = [name for name, blob in blobs.items() if PHI.lower().encode() in blob.lower()]
    assert not hits, f"{PHI} found in {hits}"


def bundle_cli(run_id: str, config: str, argv, cwd: Path = ROOT, env: dict | None = None,
               timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run <run_id> --config_file configs/<config> <argv>`` in ``cwd`` (one thread)."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", str(ROOT / "configs" / config), *map(str, argv)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": python_path(), **(env or {})}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, errors="surrogateescape", timeout=timeout)
