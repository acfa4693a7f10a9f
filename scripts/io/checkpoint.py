"""Training checkpoints: save them atomically, find the one to resume from, load weights safely,
checkpoint the RNGs.

Every training workflow of the bundle (diffusion, GAN, image prior, VarNet) saves full-state
checkpoints with :class:`AtomicCheckpointSaver` (MONAI's ``CheckpointSaver``, written through
:func:`scripts.io.atomic.atomic_path`: ``checkpoint_iteration=N.pt`` every few iterations,
plus a final one) holding at least ``{"model", "trainer"}``, and resumes from
:func:`latest_checkpoint`. Everything is loaded with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointSaver

from scripts.io.atomic import atomic_path, stale_temporaries

__all__ = [
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "RNGState",
    "checkpoint_iteration",
    "latest_checkpoint",
    "load_weights",
    "model_state_dict",
    "remove_stale_temporaries",
    "unwrap",
]


# Why the project wraps MONAI's saver: monai.handlers.CheckpointSaver writes with Ignite's
# DiskSaver(atomic=False), i.e. torch.save straight onto the final name, and Ignite's Checkpoint
# deletes the file it replaces (the previous best ``model.pt``, the oldest of ``n_saved``, the
# previous final checkpoint) before the new one is written. A job killed while saving then
# leaves a truncated file, or no ``model.pt`` at all. (Ignite's atomic=True mode is no cure: its
# NamedTemporaryFile is never fsynced, and a killed writer's ``tmpXXXXXXXX`` is never removed.)
_TEMPORARY = re.compile(r"\.(?P<name>.+\.pt)\.\d+\.[0-9a-f]{8}\.tmp")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the ``.<name>.pt.<pid>.<token>.tmp`` files that dead writers left in ``folder``; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    names = sorted({m["name"] for p in folder.iterdir() if (m := _TEMPORARY.fullmatch(p.name))})
    stale = [tmp for name in names for tmp in stale_temporaries(folder / name)]
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


class AtomicDiskSaver(DiskSaver):
    """Ignite's ``DiskSaver`` writing through :func:`~scripts.io.atomic.atomic_path` (fsync, ``os.replace``).

    ``filename`` fixes the saved name, as MONAI's saver does (``model.pt``): the previous file is
    replaced, never deleted first. The other removals Ignite asks for (the oldest of ``n_saved``,
    a previous final checkpoint) are done once the next checkpoint is complete on disk.
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None, **kwargs: Any):
        super().__init__(dirname, atomic=True, create_dir=True, require_empty=False, **kwargs)
        self.filename = filename
        self._pending: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        super().__call__(checkpoint, self.filename if self.filename is not None else filename, metadata)

    def _save_func(self, checkpoint: Mapping, path: Path, func: Callable) -> None:
        if func is not torch.save:  # xm.save (XLA) writes on the master only: Ignite's own route
            return super()._save_func(checkpoint, path, func)
        with atomic_path(path) as tmp:
            func(checkpoint, tmp, **self.kwargs)
        pending, self._pending = self._pending, []
        for name in pending:
            if name != path.name:  # a name saved again has just been replaced
                (self.dirname / name).unlink(missing_ok=True)

    def remove(self, filename: str) -> None:
        if self.filename is None and idist.get_rank() == self.save_on_rank:
            self._pending.append(filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` (same arguments, file names and contents) saving through
    :class:`AtomicDiskSaver`; on construction it deletes the temporary files of dead writers
    in ``save_dir`` (:func:`remove_stale_temporaries`)."""

    def __init__(self, save_dir: str, save_dict: dict, **kwargs: Any):
        super().__init__(save_dir, save_dict, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler = AtomicDiskSaver(save_dir, filename=checkpoint.save_handler.filename)
        remove_stale_temporaries(save_dir)


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


def model_state_dict(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """The model weights in ``path``: a plain state dict, or the ``"model"`` entry of a full
    checkpoint, read with ``torch.load(..., weights_only=True)`` (returned as found, unchecked)."""
    state = torch.load(path, map_location=map_location, weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    return state


def load_weights(network: torch.nn.Module, path: str | os.PathLike, map_location: Any = "cpu") -> torch.nn.Module:
    """Load ``models/model.pt`` (:func:`model_state_dict`); a DDP/DataParallel wrapper is looked through."""
    unwrap(network).load_state_dict(model_state_dict(path, map_location))
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
