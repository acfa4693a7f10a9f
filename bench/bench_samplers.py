"""Benchmark the phase samplers of one trained model pair (not a test).

For DDPM 1000 steps, DDIM {10, 25, 50} steps, deterministic (eta=0) and stochastic
(eta=1, ``kind:steps:eta`` in ``--samplers``) (all on the model trained with the DDPM
epsilon objective) and rectified flow {10, 25} steps (on a model trained with the RFlow
velocity objective: RFlow cannot sample from an epsilon model), prints per sampler:

- network evaluations (NFE) per slice and seconds per slice (all slices in one batch);
- phase-gradient distance: Wasserstein-1 (rad/pixel) between the pooled wrapped phase
  gradients inside the head of the true val images and of ``|z| exp(i phi_hat)``
  (``scripts.phase.metrics.phase_gradient_distance``; lower is better);
- phase coherence ``|sum w exp(i(phi_hat - phi))| / sum w``, w = |z| (mean over slices;
  invariant to a global phase offset; 1 = the true phase);
- background check: mean resultant length of the wrapped neighbour phase differences
  outside the (dilated) head mask: about 0 for noise-like (uniform, independent) phase,
  near 1 for smooth phase. The true noisy images give the reference value;

with ratios against the first sampler of ``--samplers`` (DDPM-1000 by default) from the
same run, plus two reference rows (zero phase, and
the true phase of a different val slice). Writes ``results.json`` and PNGs of the phase
maps beside the true phase to ``--out``.

Example (models trained with ``configs/train.json``; see the report):

    OMP_NUM_THREADS=1 python bench/bench_samplers.py \
        --ddpm_weights /tmp/phase_run/ddpm/models/model.pt \
        --rflow_weights /tmp/phase_run/rflow/models/model.pt \
        --dataset_dir /tmp/phase_run/sim64 --num_slices 16 --out /tmp/phase_run/bench
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.ndimage as ndi
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from monai.bundle import ConfigParser  # noqa: E402

from scripts.phase.diffusion import PhaseSamplingInferer  # noqa: E402
from scripts.core.intensity import normalize_magnitude  # noqa: E402
from scripts.core.physics import head_mask  # noqa: E402
from scripts.io.checkpoint import load_weights  # noqa: E402
from scripts.phase.data import center_crop_or_pad, complex_slice, slice_datalist  # noqa: E402
from scripts.phase.metrics import phase_coherence, phase_gradient_distance  # noqa: E402

DEFAULT_SAMPLERS = "ddpm:1000,ddim:10,ddim:25,ddim:50,ddim:10:1,ddim:25:1,ddim:50:1,rflow:10,rflow:25"


def load_config(overrides: dict) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "common.json"))
    parser.update(overrides)
    return parser


def load_val(dataset_dir: str, split: str, n: int, size: int):
    items = slice_datalist(dataset_dir, split)
    pick = np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))
    truth = [center_crop_or_pad(complex_slice(items[i]["file"], items[i]["slice"]), (size, size)) for i in pick]
    return truth


def background_mask(z: np.ndarray) -> np.ndarray:
    return ~ndi.binary_dilation(head_mask(np.abs(z)), iterations=3)


def background_gradient_resultant(images) -> float:
    """Mean resultant length of neighbour phase differences in the background (0: noise-like)."""
    vals = []
    for z in images:
        m = background_mask(z)
        for a, b, mm in ((z[1:], z[:-1], m[1:] & m[:-1]), (z[:, 1:], z[:, :-1], m[:, 1:] & m[:, :-1])):
            d = a * np.conj(b)
            vals.append(np.exp(1j * np.angle(d[mm])))
    return float(np.abs(np.mean(np.concatenate(vals))))


def metrics(truth, synth) -> dict:
    return {
        "phase_gradient_distance": phase_gradient_distance(truth, synth),
        "phase_coherence": float(np.mean([phase_coherence(s, t) for s, t in zip(synth, truth)])),
        "background_gradient_resultant": background_gradient_resultant(synth),
    }


def save_maps(path: Path, truth, rows: dict, k: int = 4) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["magnitude", "true phase"] + list(rows)
    k = min(k, len(truth))
    fig, axes = plt.subplots(k, len(names), figsize=(1.9 * len(names), 2.0 * k), squeeze=False)
    for r in range(k):
        z = truth[r]
        panels = [np.abs(z), np.angle(z)] + [np.angle(rows[n][r]) for n in rows]
        for c, (name, img) in enumerate(zip(names, panels)):
            ax = axes[r, c]
            if c == 0:
                ax.imshow(img, cmap="gray", vmin=0, vmax=np.percentile(img, 99.5))
            else:
                ax.imshow(img, cmap="twilight", vmin=-np.pi, vmax=np.pi, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_samples(path: Path, z: np.ndarray, phases: np.ndarray, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from scripts.core.complex import circular_variance

    n = phases.shape[0]
    fig, axes = plt.subplots(1, n + 3, figsize=(1.9 * (n + 3), 2.2))
    axes[0].imshow(np.abs(z), cmap="gray", vmin=0, vmax=np.percentile(np.abs(z), 99.5))
    axes[0].set_title("magnitude", fontsize=8)
    axes[1].imshow(np.angle(z), cmap="twilight", vmin=-np.pi, vmax=np.pi, interpolation="nearest")
    axes[1].set_title("true phase", fontsize=8)
    for i in range(n):
        axes[2 + i].imshow(phases[i], cmap="twilight", vmin=-np.pi, vmax=np.pi, interpolation="nearest")
        axes[2 + i].set_title(f"sample {i}", fontsize=8)
    axes[-1].imshow(circular_variance(phases), cmap="magma", vmin=0, vmax=1)
    axes[-1].set_title("circular variance", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ddpm_weights", required=True, help="model.pt trained with scheduler_type ddpm (also used by DDIM)")
    ap.add_argument("--rflow_weights", default=None, help="model.pt trained with scheduler_type rflow")
    ap.add_argument("--dataset_dir", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--num_slices", type=int, default=16)
    ap.add_argument("--samplers", default=DEFAULT_SAMPLERS)
    ap.add_argument("--override", default="{}", help="JSON dict of configs/common.json overrides (network shape, ...)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--diversity_samples", type=int, default=4, help="samples of one slice for the diversity figure")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    parser = load_config(json.loads(args.override))
    size = int(parser.get_parsed_content("image_size"))
    truth = load_val(args.dataset_dir, args.split, args.num_slices, size)
    cond = torch.stack([torch.as_tensor(normalize_magnitude(np.abs(z).astype(np.float32))[0]) for z in truth])[:, None]
    print(f"{len(truth)} {args.split} slices of {size}x{size} from {args.dataset_dir} (data: {'simulated' if 'sim' in args.dataset_dir else 'see path'})")

    nets = {}
    for kind, path in (("eps", args.ddpm_weights), ("rflow", args.rflow_weights)):
        if path:
            nets[kind] = load_weights(parser.get_parsed_content("network_def", instantiate=True, lazy=False), path).eval()

    results, synth_rows = {}, {}
    for spec in args.samplers.split(","):
        kind, steps, *eta = spec.split(":")
        eta = float(eta[0]) if eta else 0.0
        net = nets.get("rflow" if kind == "rflow" else "eps")
        if net is None:
            print(f"skip {spec}: no {'RFlow' if kind == 'rflow' else 'DDPM'}-trained weights")
            continue
        sched = parser.get_parsed_content(f"schedulers#{kind}", instantiate=True, lazy=False)
        inferer = PhaseSamplingInferer(sched, num_inference_steps=int(steps), num_samples=1, seed=args.seed, eta=eta)
        t0 = time.perf_counter()
        phase = inferer(cond, net)[:, 0].numpy()
        seconds = time.perf_counter() - t0
        synth = [np.abs(z) * np.exp(1j * p) for z, p in zip(truth, phase)]
        name = f"{kind.upper() if kind != 'rflow' else 'RFlow'}-{steps}" + (f" eta={eta:g}" if kind == "ddim" else "")
        results[name] = {"nfe_per_slice": inferer.last_nfe, "seconds_per_slice": seconds / len(truth), **metrics(truth, synth)}
        synth_rows[name] = synth
        r = results[name]
        print(f"{name:10s} NFE {r['nfe_per_slice']:5d}  {r['seconds_per_slice']:8.3f} s/slice  "
              f"grad-dist {r['phase_gradient_distance']:.4f}  coherence {r['phase_coherence']:.4f}  "
              f"bg-resultant {r['background_gradient_resultant']:.3f}", flush=True)

    # reference rows (no network)
    refs = {
        "true phase (reference)": truth,
        "zero phase": [np.abs(z).astype(np.complex64) for z in truth],
        "phase of another slice": [np.abs(z) * np.exp(1j * np.angle(truth[(i + 1) % len(truth)])) for i, z in enumerate(truth)],
    }
    for name, synth in refs.items():
        results[name] = {"nfe_per_slice": 0, "seconds_per_slice": 0.0, **metrics(truth, synth)}

    # ratios against the first sampler of the list (DDPM-1000 by default), same run
    base = next(iter(results.values())) if synth_rows else None
    header = ("sampler", "NFE/slice", "s/slice", "grad-dist", "coherence", "bg-resultant", "NFE ratio", "time ratio", "dist ratio", "coh ratio")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, r in results.items():
        ratios = ["", "", "", ""]
        if base and r["nfe_per_slice"]:
            ratios = [f"{r['nfe_per_slice'] / base['nfe_per_slice']:.3f}", f"{r['seconds_per_slice'] / base['seconds_per_slice']:.3f}",
                      f"{r['phase_gradient_distance'] / base['phase_gradient_distance']:.2f}",
                      f"{r['phase_coherence'] / base['phase_coherence']:.2f}"]
        lines.append(f"| {name} | {r['nfe_per_slice']} | {r['seconds_per_slice']:.3f} | {r['phase_gradient_distance']:.4f} | "
                     f"{r['phase_coherence']:.4f} | {r['background_gradient_resultant']:.3f} | " + " | ".join(ratios) + " |")
    table = "\n".join(lines)
    print(table)

    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({"args": vars(args), "results": results, "table": table}, indent=2))
        save_maps(out / "phase_maps.png", truth, synth_rows)
        # diversity: several samples of one slice with the fastest good sampler of each model
        for kind, name, steps, eta in (("ddim", "DDIM-50 eta=1", 50, 1.0), ("rflow", "RFlow-25", 25, 0.0)):
            net = nets.get("rflow" if kind == "rflow" else "eps")
            if net is None:
                continue
            sched = parser.get_parsed_content(f"schedulers#{kind}", instantiate=True, lazy=False)
            inferer = PhaseSamplingInferer(sched, num_inference_steps=steps, num_samples=args.diversity_samples, seed=args.seed, eta=eta)
            i = len(truth) // 2
            phases = inferer(cond[i : i + 1], net)[0].numpy()
            save_samples(out / f"samples_{kind}.png", truth[i], phases, f"{name}: {args.diversity_samples} samples of one {args.split} slice")
        print(f"wrote {out}/results.json, phase_maps.png, samples_*.png")
    return results


if __name__ == "__main__":
    main()
