"""Atomic file writes: write under a temporary name in the destination folder, then rename.

The one implementation of "write to a temporary name, then rename": fastMRI h5 files, the
dataset summary, coil map banks, ESPIRiT caches, synthesis manifests, prior cards, training and
study state, CSV tables all go through :func:`atomic_path`. The data is written to a
temporary file beside the target, synced to disk, and renamed over the target with
``os.replace`` (atomic on POSIX within one file system), so a killed job never leaves a
partial file under the final name. On any error, a ``KeyboardInterrupt`` included, the
temporary file is removed.

The temporary name is ``.<name>.<pid>.<token>.tmp`` (``<token>`` random per call), hidden and
unique per process and per call: two processes writing the same target never share or
delete each other's temporary file. What a killed writer leaves behind is found by
:func:`stale_temporaries`, which only returns the files of writers that are no longer alive.
"""

from __future__ import annotations

import glob
import json
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "atomic_path",
    "save_npy",
    "save_npz",
    "stale_temporaries",
    "temporary_name",
    "write_bytes",
    "write_json",
    "write_text",
]

SUFFIX = ".tmp"
_TOKEN = re.compile(r"\d+\.[0-9a-f]{8}")


def temporary_name(path: str | os.PathLike) -> Path:
    """A fresh temporary name for ``path``: ``<folder>/.<name>.<pid>.<token>.tmp``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{SUFFIX}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it replaces ``path``.

    The folder is created if needed. The caller creates the file (``open(tmp, "wb")``,
    ``h5py.File(tmp, "w")``, ...) and closes it inside the ``with`` block; on leaving the block
    the file is synced to disk (``fsync``) and renamed to ``path``. If the block raises, the
    temporary file is removed and the exception propagates; ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        if fsync:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (``encoding``, no newline translation); returns ``path``."""
    return write_bytes(path, text.encode(encoding))


def write_json(path: str | os.PathLike, data: Any, *, end: str = "\n", indent: int | None = 2,
               sort_keys: bool = True, **dumps_kwargs: Any) -> Path:
    """Write ``json.dumps(data, indent=indent, sort_keys=sort_keys, **dumps_kwargs) + end`` to ``path``
    atomically (UTF-8); returns ``path``."""
    return write_text(path, json.dumps(data, indent=indent, sort_keys=sort_keys, **dumps_kwargs) + end)


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """``np.save`` to ``path`` atomically (the name is kept as given: no ``.npy`` is appended)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, array)
    return Path(path)


def save_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> Path:
    """``np.savez`` of ``arrays`` to ``path`` atomically (no ``.npz`` is appended)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return Path(path)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except (OSError, OverflowError):  # no such pid (e.g. digits of an older writer's random name)
        return False
    return True


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """The temporary files of ``path`` left by writers that are no longer running.

    A temporary file ``.<name>.<pid>.<token>.tmp`` is stale when no process ``<pid>`` runs on
    this machine; an older writer's ``.<name>.<word>.tmp`` is stale unless ``<word>`` is the
    pid of a live process. The files of live writers (this process included) are never
    returned, so deleting what this returns cannot break a concurrent write on this machine.
    (A pid is only meaningful on the machine that wrote the file: writers on other hosts
    sharing the folder must not write the same target.)
    """
    path = Path(path)
    stale = []
    for tmp in sorted(path.parent.glob(f".{glob.escape(path.name)}.*{SUFFIX}")):
        middle = tmp.name[len(path.name) + 2: -len(SUFFIX)]
        if _TOKEN.fullmatch(middle):  # <pid>.<token>: this module's
            pid = middle.split(".")[0]
        elif "." not in middle:  # one word: an older writer's (random, or a bare pid)
            pid = middle
        else:  # e.g. the temporary file of another target, "<name>.<more>"
            continue
        if not (pid.isdigit() and _alive(int(pid))):
            stale.append(tmp)
    return stale
