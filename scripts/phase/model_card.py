"""The card of a shipped phase model: its realism next to the baselines, on named test data.

``python -m scripts.phase.model_card --checkpoint W --test_dir D [--real_dir R] --output card.json``
scores the diffusion model in ``W`` and the ``smooth`` and ``physics`` baselines with
:func:`scripts.phase.realism.phase_realism` on the paired complex test files in ``D`` (the
study's simulated test split) and, when given, on real paired slices ``R`` (fastMRI h5 with
``image_complex``), and writes the figures with their data provenance and the weights' size
and hash. The card says which data every figure came from: ``simulated`` or ``real``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from scripts.io.atomic import write_json

__all__ = ["BASELINES", "model_card", "sha256"]

BASELINES = ("smooth", "physics")


def sha256(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes (the card's link to its weights file)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def model_card(checkpoint: str | os.PathLike, test_sets: Mapping[str, tuple[str, str | os.PathLike]], *,
               sampler: Mapping[str, Any] | None = None, recipe: Mapping[str, Any] | None = None,
               realism: Mapping[str, Any] | None = None, seed: int = 0,
               baselines: Sequence[str] = BASELINES) -> dict[str, Any]:
    """Realism of the model in ``checkpoint`` and of ``baselines`` on each test set.

    ``test_sets``: ``{name: (provenance, folder)}`` with provenance ``"simulated"`` or ``"real"``;
    ``sampler``: the diffusion source's arguments (``scheduler``, ``num_inference_steps``,
    ``network_overrides``); ``recipe``: how the model was trained (recorded as given).
    """
    from scripts.phase.realism import phase_realism

    realism = dict(realism or {})
    figures: dict[str, Any] = {}
    for name, (provenance, folder) in test_sets.items():
        if provenance not in ("simulated", "real"):
            raise ValueError(f"test set {name!r}: provenance must be 'simulated' or 'real', got {provenance!r}")
        rows = {"diffusion": phase_realism("diffusion", {"checkpoint": str(checkpoint), **dict(sampler or {})}, folder,
                                           seed=seed, **realism)}
        rows.update({b: phase_realism(b, {}, folder, seed=seed, **realism) for b in baselines})
        figures[name] = {"data": provenance, "folder": Path(folder).name, "sources": rows}
    return {"checkpoint": Path(checkpoint).name, "bytes": os.path.getsize(checkpoint), "sha256": sha256(checkpoint),
            "sampler": dict(sampler or {}), "recipe": dict(recipe or {}), "realism_settings": realism, "seed": seed,
            "test_sets": figures}


def main(argv: Sequence[str] | None = None) -> None:
    import json

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--test_dir", required=True, help="paired SIMULATED test split (fastMRI h5 with image_complex)")
    p.add_argument("--real_dir", help="paired REAL slices (fastMRI h5 with image_complex)")
    p.add_argument("--sampler", default="{}", help="JSON: scheduler, num_inference_steps, network_overrides")
    p.add_argument("--recipe", default="{}", help="JSON: how the model was trained")
    p.add_argument("--max_slices", type=int, default=64)
    p.add_argument("--output", required=True)
    a = p.parse_args(argv)
    sets = {"simulated_test_split": ("simulated", a.test_dir)}
    if a.real_dir:
        sets["real_slices"] = ("real", a.real_dir)
    card = model_card(a.checkpoint, sets, sampler=json.loads(a.sampler), recipe=json.loads(a.recipe),
                      realism={"max_slices": a.max_slices})
    write_json(a.output, card)
    for name, t in card["test_sets"].items():
        for source, r in t["sources"].items():
            print(f"{name} ({t['data']}) {source}: auroc {r['auroc']:.3f} gradient {r['gradient_distance']:.3f} "
                  f"coherence {r['coherence']:.3f}")


if __name__ == "__main__":
    main()
