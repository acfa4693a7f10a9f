"""Training checkpoints: find the one to resume from, load weights safely, checkpoint the RNGs.

Every training workflow of the bundle (diffusion, GAN, image prior, VarNet) saves full-state
checkpoints with Ignite's ``CheckpointSaver`` (``checkpoint_iteration=N.pt`` every few
iterations, plus a final one) holding at least ``{"model", "trainer"}``, and resumes from
:func:`latest_checkpoint`. Everything is loaded with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["RNGState", "checkpoint_iteration", "latest_checkpoint", "load_weights", "unwrap"]


def checkpoint_iteration(path: str | os.PathLike) -> int | None:
    """The trainer iteration stored in a full checkpoint (``None`` if unreadable/partial)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a partial file from a killed job, or not a checkpoint
        return None
    trainer = ckpt.get("trainer") if isinstance(ckpt, dict) else None
    if not isinstance(trainer, dict) or "iteration" not in trainer:
        return None
    return int(trainer["iteration"])


def latest_checkpoint(ckpt_dir: str | os.PathLike, prefix: str = "checkpoint") -> str | None:
    """The newest readable full-state checkpoint ``<prefix>*.pt`` in ``ckpt_dir``, or ``None``.

    "Newest" is the highest trainer iteration stored inside (:func:`checkpoint_iteration`), so
    interval (``checkpoint_iteration=N.pt``) and final checkpoints (``checkpoint_final.pt``,
    ``checkpoint_final_iteration=N.pt``) compare by what they hold, not by name; on a tie the
    first name in sorted order wins. Files that do not load (a job killed while writing) or
    hold no trainer state (e.g. a best-metric ``model.pt``) are skipped, so resuming falls back
    to the previous checkpoint.
    """
    if not os.path.isdir(ckpt_dir):
        return None
    best, best_it = None, -1
    for name in sorted(os.listdir(ckpt_dir)):
        if not (name.startswith(prefix) and name.endswith(".pt")):
            continue
        path = os.path.join(ckpt_dir, name)
        it = checkpoint_iteration(path)
        if it is not None and it > best_it:
            best, best_it = path, it
    return best


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The network inside a DDP / DataParallel wrapper (``network.module``), else ``network``."""
    return network.module if hasattr(network, "module") and isinstance(network.module, torch.nn.Module) else network


def load_weights(network: torch.nn.Module, path: str | os.PathLike, map_location: Any = "cpu") -> torch.nn.Module:
    """Load ``models/model.pt`` (a plain state dict, or a checkpoint holding ``"model"``)
    with ``torch.load(..., weights_only=True)``; a DDP/DataParallel wrapper is looked through."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    unwrap(network).load_state_dict(state)
    return network


class RNGState:
    """The global random number generators as a checkpointable object (``state_dict``/``load_state_dict``).

    Put it in the ``CheckpointSaver`` ``save_dict`` and the ``CheckpointLoader`` ``load_dict``
    so a resumed run draws the same noise, timesteps and shuffles as an uninterrupted one
    (exactly so when it resumes at an epoch boundary; Ignite does not restore a data
    loader's position inside an epoch). Python ``random``, NumPy and torch (CPU and CUDA)
    generators; stored as tensors and ints, so it loads with ``weights_only=True``. Under
    DDP rank 0's state is saved; on loading, the other ranks reseed from it plus their rank.
    """

    def state_dict(self) -> dict:
        import random

        np_state = np.random.get_state()
        py_state = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": int(np_state[2]),
            "numpy_gauss": [int(np_state[3]), float(np_state[4])],
            "python_version": int(py_state[0]),
            "python_state": torch.tensor(py_state[1], dtype=torch.int64),
            "python_gauss": py_state[2],
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: Mapping) -> None:
        import random

        torch.set_rng_state(state["torch"].cpu())
        keys = state["numpy_keys"].cpu().numpy().astype(np.uint32)
        has_gauss, cached = state["numpy_gauss"]
        np.random.set_state(("MT19937", keys, int(state["numpy_pos"]), int(has_gauss), float(cached)))
        random.setstate((int(state["python_version"]), tuple(int(v) for v in state["python_state"].tolist()), state["python_gauss"]))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])
        dist = torch.distributed.is_available() and torch.distributed.is_initialized()
        rank = torch.distributed.get_rank() if dist else 0
        if rank:  # rank 0 saved the state: other ranks derive their own streams from it
            seed = (int(torch.randint(0, 2**62, (1,)).item()) + 7919 * rank) % (2**63 - 1)
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            random.seed(seed)
