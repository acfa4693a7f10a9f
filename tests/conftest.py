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
