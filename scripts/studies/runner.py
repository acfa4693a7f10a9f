"""The one stage runner of both studies.

:class:`StageRunner` runs named stages once: a finished stage leaves
``<root>/stages/<name>.json`` with a hash of its parameters and its (JSON) result, and a re-run
with the same parameters returns that result without running the stage again; a killed stage
is redone (stages write their outputs atomically or overwrite them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from scripts.io.atomic import write_json

__all__ = ["StageRunner", "params_hash"]

logger = logging.getLogger(__name__)


def params_hash(params: Mapping[str, Any]) -> str:
    """A short stable hash of JSON-able stage parameters."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StageRunner:
    """Run each named stage once per parameter set; see the module docstring.

    Args:
        root: the study's working folder; markers go to ``root/stages``.
        log_name: the prefix of the log lines (``"study"``, ``"prior study"``).
    """

    def __init__(self, root: str | os.PathLike, log_name: str = "study") -> None:
        self.root = Path(root)
        self.log_name = log_name
        self.timings: dict[str, float] = {}

    def marker(self, name: str) -> Path:
        return self.root / "stages" / f"{name.replace('/', '__')}.json"

    def __call__(self, name: str, params: Mapping[str, Any], fn: Callable[[], Any]) -> Any:
        """Run ``fn`` unless ``name`` finished earlier with the same ``params``; returns its (JSON) result."""
        marker, digest = self.marker(name), params_hash(params)
        if marker.is_file():
            done = json.loads(marker.read_text())
            if done.get("params_hash") == digest:
                logger.info("%s: %s already done, skipped", self.log_name, name)
                self.timings[name] = 0.0
                return done["result"]
        logger.info("%s: %s ...", self.log_name, name)
        t0 = time.perf_counter()
        result = fn()
        seconds = round(time.perf_counter() - t0, 2)
        self.timings[name] = seconds
        write_json(marker, {"params_hash": digest, "params": params, "result": result, "seconds": seconds}, default=str)
        logger.info("%s: %s done in %.1f s", self.log_name, name, seconds)
        return result
