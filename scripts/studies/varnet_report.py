"""The study report: markdown + CSVs + figures, each figure labelled with the data it came from.

Written by :func:`write_report` from the outputs of :class:`scripts.studies.varnet_study.Study`:

- ``report.md``: first line, the instrument check (:func:`instrument_check`: does the VarNet trained on
  ground-truth k-space beat zero-filled on its validation split?); provenance, the main table (NMSE / PSNR / SSIM per phase source x R with
  95% intervals that resample volumes, i.e. subjects) per test set, preceded by the ground-truth VarNet's gaps to
  zero-filled and L1-wavelet (:func:`instrument_gaps`), the phase-realism table, the
  ranking per R, stage timings;
- ``metrics_<test set>.csv`` (summary rows), ``slices_<test set>.csv`` (per slice),
  ``realism.csv``;
- ``metric_vs_R_<test set>.png``; ``recon_grid_R<r>_<test set>.png`` (target, zero-filled,
  each source's reconstruction and its error map, one test slice); ``phase_gallery.png``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scripts.io.tables import read_csv, write_csv

__all__ = ["instrument_check", "instrument_gaps", "write_report"]

METRICS = ("nmse", "psnr", "ssim")
FORMAT = {"nmse": "{:.4f}", "psnr": "{:.2f}", "ssim": "{:.4f}"}


def instrument_check(summary: Sequence[Mapping[str, Any]]) -> tuple[bool, str]:
    """Whether the VarNet beats zero-filled in mean PSNR AND SSIM at every R of ``summary`` (evaluator rows of
    one VarNet and the zero-filled method on the same slices), and a one-line verdict with the figures."""
    by = {(r["method"], float(r["acceleration"])): r for r in summary}
    rs = sorted({a for m, a in by if m == "varnet"} & {a for m, a in by if m == "zero_filled"})
    if not rs:
        return False, "**INSTRUMENT NOT CHECKED**: no VarNet and zero-filled rows on the validation split."
    cells, ok = [], True
    for r in rs:
        v, z = by[("varnet", r)], by[("zero_filled", r)]
        good = v["psnr_slice_mean"] > z["psnr_slice_mean"] and v["ssim_slice_mean"] > z["ssim_slice_mean"]
        ok &= good
        cells.append(f"R={r:g}: PSNR {v['psnr_slice_mean']:.2f} vs {z['psnr_slice_mean']:.2f} dB, "
                     f"SSIM {v['ssim_slice_mean']:.3f} vs {z['ssim_slice_mean']:.3f}")
    figures = "; ".join(cells)
    if ok:
        return True, (f"Instrument check passed: the VarNet trained on ground-truth k-space beats zero-filled on its "
                      f"validation split at every R ({figures}).")
    return False, ("**INSTRUMENT FAILED: the VarNet trained on ground-truth k-space does not beat zero-filled on its "
                   f"validation split ({figures}); the ranking of phase sources below means nothing.**")


def instrument_gaps(summary: Sequence[Mapping[str, Any]], slices: Sequence[Mapping[str, Any]],
                    source: str = "ground_truth") -> list[str]:
    """Markdown lines: per R, the ``source`` VarNet against zero-filled and L1-wavelet on one test set.

    Each line gives both methods' mean PSNR with its subject-bootstrap interval, the gap, the paired gap
    (per-slice difference, 95 % interval resampling volumes: the same slices and masks, so subject
    differences cancel), whether the two intervals overlap, and the SSIMs; then whether the issue's bar
    holds (>= 2 dB over zero-filled, intervals apart, higher SSIM), or, from fewer than
    ``MIN_VERDICT_VOLUMES`` volumes, the gap per volume and no verdict (:func:`_bar`)."""
    from scripts.core.metrics import bootstrap_ci

    rows = {(_label(r), float(r["acceleration"])): r for r in summary}
    per_slice: dict[tuple[str, float], dict[tuple[str, float], Mapping[str, Any]]] = {}
    for r in slices:
        per_slice.setdefault((_label(r), float(r["acceleration"])), {})[(r["file"], float(r["slice"]))] = r
    lines = []
    for acc in sorted({a for name, a in rows if name == source}):
        v = rows[(source, acc)]
        cells = []
        for ref in ("zero_filled", "l1_wavelet"):
            if (ref, acc) not in rows:
                continue
            z = rows[(ref, acc)]
            pairs = [(x, per_slice[(ref, acc)][k]) for k, x in per_slice.get((source, acc), {}).items()
                     if k in per_slice.get((ref, acc), {})]
            diff, low, high = bootstrap_ci([a["psnr"] - b["psnr"] for a, b in pairs], groups=[a["file"] for a, _ in pairs])
            apart = v["psnr_ci_low"] > z["psnr_ci_high"] or z["psnr_ci_low"] > v["psnr_ci_high"]
            cell = (f"{ref} {z['psnr_slice_mean']:.2f} [{z['psnr_ci_low']:.2f}, {z['psnr_ci_high']:.2f}]: "
                    f"{diff:+.2f} dB (paired [{low:+.2f}, {high:+.2f}]; intervals {'apart' if apart else 'overlap'}), "
                    f"SSIM {v['ssim_slice_mean']:.3f} vs {z['ssim_slice_mean']:.3f}")
            if ref == "zero_filled":
                cell += "; " + _bar(diff, apart, v["ssim_slice_mean"] > z["ssim_slice_mean"], pairs)
            cells.append(cell)
        lines.append(f"- R={acc:g}: {source} VarNet {v['psnr_slice_mean']:.2f} [{v['psnr_ci_low']:.2f}, "
                     f"{v['psnr_ci_high']:.2f}] dB vs " + "; vs ".join(cells))
    return lines


def _bar(diff: float, apart: bool, higher_ssim: bool, pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> str:
    """The bar over zero-filled (>= 2 dB, intervals apart, higher SSIM), or, from fewer than
    ``MIN_VERDICT_VOLUMES`` volumes (``file`` of the ``(VarNet, zero-filled)`` slice ``pairs``), the
    mean PSNR gap per volume and in how many the VarNet is ahead: no verdict."""
    from scripts.core.metrics import MIN_VERDICT_VOLUMES, group_means

    gaps = group_means([a["psnr"] - b["psnr"] for a, b in pairs], [a["file"] for a, _ in pairs])
    if len(gaps) >= MIN_VERDICT_VOLUMES:
        return f"bar (>= 2 dB, apart, higher SSIM) {'met' if diff >= 2 and apart and higher_ssim else 'NOT met'}"
    ahead = sum(g > 0 for g in gaps.values())
    return (f"per volume {', '.join(f'{Path(f).stem} {g:+.2f}' for f, g in gaps.items())} dB (ahead in {ahead} of "
            f"{len(gaps)}); too few volumes for the bar (n={len(gaps)} < {MIN_VERDICT_VOLUMES}: the intervals "
            "are about their range)")


def _label(row: Mapping[str, Any]) -> str:
    return row["label"] if row["method"] == "varnet" else row["method"]


def _cell(row: Mapping[str, Any], metric: str) -> str:
    f = FORMAT[metric]
    mean, low, high = row[f"{metric}_slice_mean"], row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]
    if int(row["volumes"]) < 2:  # nothing to resample
        return f.format(mean)
    return f"{f.format(mean)} [{f.format(low)}, {f.format(high)}]"


def _table(summary: Sequence[Mapping[str, Any]], accelerations: Sequence[int], order: Sequence[str]) -> list[str]:
    lines = ["| source | " + " | ".join(f"R={r} {m.upper()}" for r in accelerations for m in METRICS) + " |",
             "|---|" + "---|" * (len(accelerations) * len(METRICS))]
    by = {(_label(r), int(r["acceleration"])): r for r in summary}
    for name in order:
        if any((name, r) in by for r in accelerations):
            cells = [_cell(by[(name, r)], m) if (name, r) in by else "" for r in accelerations for m in METRICS]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _ranking(summary: Sequence[Mapping[str, Any]], accelerations: Sequence[int], sources: Sequence[str]) -> list[str]:
    lines = []
    for r in accelerations:
        rows = [x for x in summary if int(x["acceleration"]) == r and x["method"] == "varnet" and x["label"] in sources]
        rows.sort(key=lambda x: -x["ssim_slice_mean"])
        lines.append(f"- R={r}, by mean SSIM: " + " > ".join(f"{x['label']} ({x['ssim_slice_mean']:.4f})" for x in rows))
    return lines


def _plot_metric_vs_r(summary, accelerations, order, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, metric in zip(axes, METRICS):
        for name in order:
            rows = sorted((x for x in summary if _label(x) == name), key=lambda x: x["acceleration"])
            if not rows:
                continue
            r = [x["acceleration"] for x in rows]
            mean = np.array([x[f"{metric}_slice_mean"] for x in rows])
            low = np.array([x[f"{metric}_ci_low"] for x in rows])
            high = np.array([x[f"{metric}_ci_high"] for x in rows])
            style = "--" if name in ("zero_filled", "l1_wavelet") else "-"
            ax.errorbar(r, mean, yerr=[mean - low, high - mean], fmt=style + "o", capsize=3, label=name, ms=4)
        ax.set_xlabel("acceleration R")
        ax.set_title(metric.upper())
        ax.set_xticks(accelerations)
    axes[-1].legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _recon_grid(study, files: Sequence[str], checkpoints: Mapping[str, str], r: int, path: Path, title: str) -> None:
    """Target, zero-filled, and each source's VarNet reconstruction with |error| x 5, one test slice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from scripts.io.fastmri_h5 import read_slice
    from scripts.core.masks import MaskSampler
    from scripts.recon.varnet import load_varnet, prepare_example, varnet_reconstruct

    file = files[0]
    s = 0
    data = read_slice(file, s, keys=("kspace", "reconstruction_rss"))
    kspace = data["kspace"] if data["kspace"].ndim == 3 else data["kspace"][None]
    sampler = MaskSampler(study.mask_type, [float(r)], study.center_fraction, seed=study.seed)
    mask, _ = sampler.fixed(kspace.shape[-2:], (Path(file).name, s), float(r))
    example = prepare_example(kspace, mask, data.get("reconstruction_rss"))
    target = (example["target"] * example["scale"]).numpy()
    images = {"target": target, "zero_filled": example["zero_filled"].numpy()}
    with torch.no_grad():
        for source, ckpt in checkpoints.items():
            images[source] = varnet_reconstruct(load_varnet(ckpt).eval(), example)
    vmax = float(target.max())
    fig, axes = plt.subplots(2, len(images), figsize=(2.1 * len(images), 4.6))
    for j, (name, img) in enumerate(images.items()):
        axes[0, j].imshow(img, cmap="gray", vmin=0, vmax=vmax)
        axes[0, j].set_title(name, fontsize=8)
        if name != "target":
            axes[1, j].imshow(np.abs(img - target) * 5, cmap="magma", vmin=0, vmax=vmax)
        for ax in axes[:, j]:
            ax.axis("off")
    fig.suptitle(f"{title}; R={r}; bottom row |error| x 5", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _provenance(study) -> list[str]:
    summary = study.source_dir / "dataset.json"
    info = json.loads(summary.read_text()) if summary.is_file() else {}
    simulated = bool(info) and "simulated" in json.dumps(info).lower()
    counts = {s: len(list((study.dataset_dir / s).glob("*.h5"))) for s in ("train", "val", "test")}
    lines = [
        "## Data provenance",
        "",
        f"- Paired complex dataset: `{study.source_dir}` — "
        + ("**SIMULATED** (physics-based, from nilearn's MNI152 templates; `dataset.json` beside it)." if simulated
           else "user-supplied fastMRI-format data (not simulated by this bundle)."),
        f"- Files per split (subjects/volumes): train {counts['train']}, val {counts['val']}, test {counts['test']}; "
        f"image {study.image_size}x{study.image_size}, {study.num_coils} coils; seed {study.seed}.",
        "- Phase models (diffusion, GAN) train on the paired `train` split. The magnitude-only archive is the "
        "magnitude of the `train`/`val` splits; every phase source gives it phase, then the SAME coil simulation "
        f"(`scripts.synthesis.synthesize`, settings {json.dumps(study.synthesis, default=str)}) makes its k-space, so the "
        "sources differ only in phase.",
        f"- VarNet per source: {json.dumps(study.varnet, default=str)}; masks {study.mask_type}, centre fraction "
        f"{study.center_fraction}, R = {study.accelerations} (mixed during training, fixed per slice at test).",
        (f"- L1-wavelet lambda {study.l1_tuning['lambda']:g}, chosen on the paired `val` split (mean PSNR over R per "
         f"lambda: {json.dumps(study.l1_tuning['val_psnr'])}); never tuned on a test set."
         if study.l1_tuning else
         f"- L1-wavelet lambda {study.evaluation.get('l1_lambda', 0.005)} (fixed in the config, not tuned)."),
        "- Test set `test_split`: the ground-truth k-space of the held-out `test` split"
        + (" (simulated data: results prove the pipeline, not the science)." if simulated else "."),
    ]
    if study.real_test_dir is not None:
        lines.append(f"- Test set `real`: REAL fully sampled 4-coil brain slices from `{study.real_test_dir}` "
                     f"(phantoms excluded), centre of k-space cropped to {study.image_size}x{study.image_size}: "
                     "train on synthetic, test on real. Very few slices: their intervals are about their "
                     "range, and the gap lines give each slice's gap and no verdict.")
    return lines


def write_report(study, evaluations: Mapping[str, Mapping[str, str]], realism: Mapping[str, Mapping[str, Any]],
                 checkpoints: Mapping[str, str], seconds: float, gate: str | None = None) -> Path:
    """Write the report folder (see the module docstring); returns the path of ``report.md``. ``gate``: the
    evaluator folder of the ground-truth VarNet and zero-filled on the validation split (the first line
    of the report is its :func:`instrument_check` verdict)."""
    out = study.report_dir
    out.mkdir(parents=True, exist_ok=True)
    order = [*study.sources, "zero_filled", "l1_wavelet"]
    if gate is None:
        verdict = "**INSTRUMENT NOT CHECKED**: `ground_truth` is not among the phase sources."
    else:
        verdict = instrument_check(read_csv(Path(gate) / "summary.csv"))[1]
    lines = [
        verdict,
        "",
        "# Phase-source comparison: VarNet trained on synthetic k-space",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} in {seconds / 60:.1f} min. "
        "Cells: mean over test slices [95% interval, bootstrap over volumes (subjects): slices of one volume are "
        "correlated; no interval for a single volume].",
        "",
        *_provenance(study),
    ]
    varnets = {s: str(study.study_dir / "varnet" / s / "model.pt") for s in study.sources}
    for test_set, dirs in evaluations.items():
        summary = [row for d in dirs.values() for row in read_csv(Path(d) / "summary.csv")]
        slices = [row for d in dirs.values() for row in read_csv(Path(d) / "slice_metrics.csv")]
        write_csv(summary, out / f"metrics_{test_set}.csv")
        write_csv(slices, out / f"slices_{test_set}.csv")
        title = f"test set: {test_set} ({'REAL slices' if test_set == 'real' else 'held-out split of the paired dataset'})"
        _plot_metric_vs_r(summary, study.accelerations, order, out / f"metric_vs_R_{test_set}.png", title)
        test_files = (sorted(str(p) for p in (study.dataset_dir / "test").glob("*.h5")) if test_set == "test_split"
                      else sorted(str(p) for p in (study.study_dir / "real_test").glob("*.h5")))
        grids = []
        for r in (4, 8):
            if r in study.accelerations and test_files:
                grid = out / f"recon_grid_R{r}_{test_set}.png"
                _recon_grid(study, test_files, {s: c for s, c in varnets.items() if os.path.exists(c)}, r, grid, title)
                grids.append(grid.name)
        skipped = max((int(r.get("skipped_files") or 0) for r in summary), default=0)
        note = [f"**{skipped} test file(s) could not be evaluated and are not in these figures** (reasons in "
                "`skipped.json` beside each evaluation's CSVs).", ""] if skipped else []
        gaps = instrument_gaps(summary, slices) if "ground_truth" in study.sources else []
        gaps = ["The instrument on this test set (PSNR, mean [95% interval over subjects]):", "", *gaps, ""] if gaps else []
        lines += ["", f"## Reconstruction, {title}", "", *note, *gaps, *_table(summary, study.accelerations, order), "",
                  *_ranking(summary, study.accelerations, study.sources), "",
                  f"![metrics vs R](metric_vs_R_{test_set}.png)", *[f"![recon]({g})" for g in grids]]
    rows = [dict(r) for r in realism.values()]
    if rows:
        write_csv(rows, out / "realism.csv")
        lines += ["", "## Phase realism on the test magnitudes (held-out split of the paired dataset)", "",
                  "| source | coherence with true phase [95% CI] | gradient W1 (rad/px) | spectrum dist. (decades) | "
                  "classifier AUROC (0.5 = indistinguishable) |", "|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['source']} | {r['coherence']:.3f} [{r['coherence_ci_low']:.3f}, "
                         f"{r['coherence_ci_high']:.3f}] | {r['gradient_distance']:.4f} | "
                         f"{r['spectrum_distance']:.3f} | {r['auroc']:.3f} |")
    from scripts.studies.gallery import make_gallery

    gallery_sources = [s for s in study.sources if s != "ground_truth"]
    kwargs = {s: {k: v for k, v in study._source_kwargs(s, checkpoints).items() if k != "checkpoint"}
              for s in gallery_sources}
    make_gallery(out, dataset_dir=study.dataset_dir, sources=gallery_sources, checkpoints=dict(checkpoints),
                 source_kwargs=kwargs, seed=study.seed)
    lines += ["", "## Phase gallery (one test slice, held-out split of the paired dataset)", "",
              "![gallery](phase_gallery.png)", "", "## Stage timings (s; 0 = done in an earlier run)", ""]
    lines += [f"- {name}: {t:.1f}" for name, t in study.timings.items()]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
