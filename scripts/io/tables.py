"""Tables: rows of dicts written as CSV (evaluation metrics, study summaries), atomically."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scripts.io.atomic import atomic_path

__all__ = ["read_csv", "write_csv"]


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Rows (dicts) to CSV at ``path`` (written atomically); the columns are the union of the keys
    in first-seen order. Returns ``path``."""
    path = Path(path)
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_csv(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a CSV written by :func:`write_csv`, numbers as floats (every other cell as text)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for k, v in row.items():
            try:
                row[k] = float(v)
            except (TypeError, ValueError):
                pass
    return rows
