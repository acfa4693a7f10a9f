"""``python -m scripts.zoo --checkpoint PATH [--output DIR] [--card CARD.json] [--set KEY=VALUE ...] [--half]``: the phase
synthesiser's bundle; ``python -m scripts.zoo --kind varnet --checkpoint .../model.pt [--report REPORT_DIR] [--source S]``:
a VarNet's (:mod:`scripts.zoo.varnet_bundle`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from scripts.configs import ROOT
from scripts.zoo import BundleError
from scripts.zoo.build import build_bundle
from scripts.zoo.checks import describe
from scripts.zoo.varnet_bundle import build_varnet_bundle

DEFAULT_OUTPUT = {"phase": ROOT / "bundles" / "mri_phase_synthesis", "varnet": ROOT / "bundles" / "mri_varnet_synthetic"}


def _setting(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value  # a plain string


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.zoo",
                                     description="Build a model-zoo bundle: the phase synthesiser or a VarNet (bundles/README.md).")
    parser.add_argument("--kind", choices=sorted(DEFAULT_OUTPUT), default="phase", help="which model (default: %(default)s)")
    parser.add_argument("--checkpoint", required=True, help="trained weights: models/model.pt or a full training checkpoint")
    parser.add_argument("--output", help="the bundle folder; its name is the bundle's (default: bundles/mri_phase_synthesis "
                                         "or bundles/mri_varnet_synthetic)")
    parser.add_argument("--report", help="varnet: the study's report folder (metrics_<test set>.csv) for the figures")
    parser.add_argument("--source", default="diffusion", help="varnet: the phase source it was trained on (default: %(default)s)")
    parser.add_argument("--card", help="the model card, a JSON file (scripts/zoo/card.py)")
    parser.add_argument("--set", action="append", type=_setting, default=[], metavar="KEY=VALUE",
                        help="a config setting the checkpoint was trained with (JSON value), over the card's (sampler.network_overrides)")
    parser.add_argument("--half", action="store_true", help="store the weights as float16 (half the size)")
    args = parser.parse_args(argv)
    output = args.output or str(DEFAULT_OUTPUT[args.kind])
    try:
        if args.kind == "varnet":
            out = build_varnet_bundle(args.checkpoint, output, args.report, args.source)
        else:
            out = build_bundle(args.checkpoint, output, args.card, dict(args.set), args.half)
    except BundleError as e:
        print(f"zoo: {e}", file=sys.stderr)
        return 1
    name = Path(out["bundle"]).name
    print(f"bundle: {out['bundle']}")
    if args.kind == "varnet":
        print(f"models/model.pt: {out['weights_mb']:.2f} MB")
    else:
        print(f"models/model.pt: {out['weights_mb']:.2f} MB, {out['weights_dtype']} state dict")
        given = "" if out["image_size_given"] else " (the project default: give the training size with --set image_size=N)"
        print(f"image_size: {out['image_size']} px{given}")
    forward_arg = "mask" if args.kind == "varnet" else "timesteps"
    for check, (status, detail) in out["checks"].items():
        print(f"zoo check {describe(check, status, detail, name, forward_arg)}")
    return 1 if any(status == "failed" for status, _ in out["checks"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
