"""Shared pytest fixtures: the optional real complex slices and small synthetic inputs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Real, fully sampled complex slices (never part of the project); tests skip without them.
REAL_DIR = Path(os.environ.get("PHASE_REAL_DATA", ROOT.parent / "shared" / "data" / "real_complex"))


@pytest.fixture(scope="session")
def real_dir() -> Path:
    """Folder of the real complex slices; skips the test when it is absent."""
    if not REAL_DIR.is_dir():
        pytest.skip(f"real complex slices not found at {REAL_DIR} (set PHASE_REAL_DATA)")
    return REAL_DIR


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny networks gain nothing from intra-op threads; on a shared 2-core machine two threads
    spin against other jobs (seen 50x slower). Every test runs on one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def python_path(root: Path = ROOT) -> str:
    """``PYTHONPATH`` for a subprocess: the bundle root (default: this repository) first, the caller's entries kept."""
    return os.pathsep.join([str(root), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], clean: Path | None = None, nproc: int = 2, timeout: int = 240):
    """``python -m torch.distributed.run --nproc_per_node N <args>`` from the bundle root on CPU (gloo).

    Relaunched once (after removing ``clean``) on torch's rare gloo teardown abort of one CPU rank
    ("terminate called without an active exception"; seen once in CI, 0 of 72 launches here); any
    other failure, or this one twice, is returned as it is."""
    import shutil
    import subprocess

    # CPU ranks even on a GPU machine (two ranks on one GPU would get NCCL, which refuses to share a device)
    env = {**os.environ, "PYTHONPATH": python_path(), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}

    def launch():
        if clean is not None:
            shutil.rmtree(clean, ignore_errors=True)
        launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                    "--master_port", str(free_port())]
        return subprocess.run(launcher + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)

    proc = launch()
    if proc.returncode != 0 and "terminate called without an active exception" in proc.stderr:
        proc = launch()
    return proc
