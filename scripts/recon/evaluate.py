"""Evaluate reconstructions on ONE fixed test set: VarNet, zero-filled and L1-wavelet, per R.

Every method sees the same masks: the mask of a slice is a pure function of
``(seed, mask type, file name, slice index, R)`` (:meth:`scripts.core.masks.MaskSampler.fixed`),
so models trained on different data are compared on identical measurements. Metrics use
the fastMRI definitions (:mod:`scripts.core.metrics`): per slice NMSE / PSNR / SSIM with the
volume max as data range, per volume NMSE and PSNR over the volume and SSIM averaged over
its slices, all on the RSS magnitude centre-cropped to ``crop_size`` (or to the stored
``reconstruction_rss`` shape).

Methods:

- ``varnet``: the trained network (:func:`scripts.recon.varnet.load_varnet`), ``batch_size`` (slice, R) items of a
  file per forward pass, each with its own mask;
- ``zero_filled``: RSS of the inverse FFT of the masked k-space;
- ``l1_wavelet`` (NaN rows, with a warning, where the ACS is too small for ESPIRiT, e.g.
  one column at 32 px and centre fraction 0.04): :func:`l1_wavelet_images` (Daubechies-4 wavelets, ``lamda`` from
  the config; ``batch_size`` (slice, R) items of a file in one batch, on the evaluation's ``device``) with ESPIRiT maps (:func:`acs_espirit_maps`) on the fully
  sampled centre (ACS) of the same masked k-space; its image is shown as the RSS of the
  coil images ``S_c x`` so it is comparable with the RSS ground truth. The k-space is
  divided by the same per-slice factor as the VarNet input (max of the zero-filled RSS),
  so ``lamda`` is relative to an image of peak ~1.

Outputs (``output_dir``): ``slice_metrics.csv``, ``volume_metrics.csv``, ``summary.csv``
(per method and R: mean of the volume metrics, the mean over slices and its 95% CI from a
bootstrap over volumes, ``skipped_files``) and ``skipped.json``, written by :func:`evaluate_varnet`.

Input boundary (the rule of ``synthesize`` and ``inference``): whatever one test file raises (not HDF5,
no or malformed ``kspace``, a method failing on one of its slices; not ``MemoryError`` or a GPU out-of-memory
error) skips that file only: one log line ``<key>: <reason>`` (:func:`scripts.synthesis.synthesize.reject_input`: the anonymous
input key, the cause with paths scrubbed), an entry ``{"input": key, "reason": ...}`` in ``skipped.json``,
its count in every summary row; the metrics are computed on the other files. A missing or empty
``test_dir``, or a run whose files all failed, ends with :class:`scripts.synthesis.synthesize.NoUsableInput`
(one line, exit status 1; ``skipped.json`` is written first).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from scripts.io.atomic import write_json
from scripts.io.fastmri_h5 import num_slices, read_slice
from scripts.io.tables import write_csv
from scripts.core.espirit import acs_box, espirit_calib
from scripts.core.masks import DEFAULT_ACCELERATIONS, DEFAULT_CENTER_FRACTION, MaskSampler, effective_acceleration
from scripts.core.metrics import METRICS, center_crop, interval_table, slice_metrics, volume_metrics
from scripts.recon.l1 import l1_wavelet_batch
from scripts.recon.varnet import list_h5, load_varnet, prepare_example, varnet_reconstruct_batch
from scripts.synthesis.synthesize import NoUsableInput, reject_input

__all__ = [
    "DEFAULT_METHODS",
    "acs_espirit_maps",
    "evaluate_varnet",
    "format_summary",
    "l1_wavelet_images",
    "summarize",
]

logger = logging.getLogger(__name__)

DEFAULT_METHODS = ("varnet", "zero_filled", "l1_wavelet")
SKIPPED = "skipped.json"


def acs_espirit_maps(
    masked_kspace,
    mask: np.ndarray,
    kernel_width: int = 6,
    thresh: float = 0.02,
    crop: float = 0.95,
    max_iter: int = 100,
):
    """ESPIRiT maps ``(C, H, W)`` (:func:`scripts.core.espirit.espirit_calib`) from the fully sampled centre
    of ``masked_kspace`` (numpy in, numpy out; a tensor in, a tensor on its device out): the ACS box of
    :func:`scripts.core.espirit.acs_box` (all rows x the centre columns for a column mask, the centre box
    for a 2-D mask; a centred square would leave no eigenvalue above the crop on the real 4-coil slices).

    The kernel is ``kernel_width`` clipped to half the box side (at least 2) in each direction: on the
    real 4-coil MPRAGE slice at R = 4 (10 ACS columns) a 6-wide kernel gave maps that made L1-wavelet
    diverge (NMSE 0.68), 5 or 4 gave NMSE 0.017 / 0.013.
    """
    if not isinstance(masked_kspace, torch.Tensor):
        masked_kspace = np.asarray(masked_kspace, dtype=np.complex64)
    top, bottom, left, right = acs_box(mask, masked_kspace.shape)
    if min(bottom - top, right - left) < 2:
        raise ValueError(f"ACS box {bottom - top}x{right - left} is too small for ESPIRiT")
    kw = [int(max(2, min(kernel_width, n // 2))) for n in (bottom - top, right - left)]
    return espirit_calib(masked_kspace, (top, bottom, left, right), kw, thresh, crop, max_iter)


def l1_wavelet_images(kspaces: Sequence[np.ndarray], masks: Sequence[np.ndarray], scales: Sequence[float],
                      shape: Sequence[int], lamda: float, max_iter: int = 100, espirit: Mapping[str, Any] | None = None,
                      device: str | torch.device = "cpu", where: Sequence[str] | None = None) -> list[np.ndarray]:
    """The evaluation's L1-wavelet images of ``kspaces`` (one full ``(C, H, W)`` k-space per mask, all of one
    shape) under ``masks``, in one batch on ``device``: each divided by its ``scales`` entry, ACS ESPIRiT maps
    (:func:`acs_espirit_maps`), :func:`scripts.recon.l1.l1_wavelet_batch`, the RSS of ``S_c x`` centre-cropped to
    ``shape`` and scaled back. A mask whose ACS is too small for ESPIRiT gives a NaN image and a warning naming
    its ``where`` label (default: its index)."""
    wheres = [f"item {i}" for i in range(len(masks))] if where is None else list(where)
    if not len(kspaces) == len(masks) == len(scales) == len(wheres):
        raise ValueError(f"l1_wavelet_images: {len(kspaces)} k-spaces, {len(masks)} masks, {len(scales)} scales and "
                         f"{len(wheres)} labels: one each per image")
    rows = [np.asarray(m, dtype=np.float32).reshape(-1, kspaces[0].shape[-1]) for m in masks]  # (1 or H, W)
    batch: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    for i, (k, m, scale) in enumerate(zip(kspaces, rows, scales)):
        masked = torch.from_numpy((k * m).astype(np.complex64) / np.float32(scale)).to(device)
        try:
            batch.append((i, masked, acs_espirit_maps(masked, masks[i], **dict(espirit or {}))))
        except ValueError as e:  # an ACS too small for ESPIRiT: NaN metrics, not a failed study
            logger.warning("l1_wavelet skipped for %s: %s", wheres[i], e)
    images = [np.full(tuple(shape), np.nan, dtype=np.float32) for _ in masks]
    if batch:
        idx, k, maps = zip(*batch)
        maps = torch.stack(maps)
        x = l1_wavelet_batch(torch.stack(k), torch.from_numpy(np.stack([rows[i] for i in idx])), maps, lamda, max_iter)
        rss = torch.sqrt(torch.sum(torch.abs(maps * x[:, None]) ** 2, dim=1)).float().cpu().numpy()  # RSS of S_c x
        for i, image in zip(idx, rss):
            images[i] = center_crop(image, shape) * np.float32(scales[i])
    return images


class _Item(NamedTuple):
    """One (slice, R) of a test file waiting for its batch: the :func:`prepare_example` input, the full k-space and
    the mask (for L1-wavelet)."""

    slice: int
    r: float
    example: dict[str, Any]
    kspace: np.ndarray
    mask: np.ndarray


def summarize(
    slice_rows: Sequence[Mapping[str, Any]],
    volume_rows: Sequence[Mapping[str, Any]],
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Per (label, method, R): the mean of the volume metrics (the fastMRI headline numbers, ``<metric>``)
    and :func:`scripts.core.metrics.interval_table` of the slices (mean with a 95 % CI that resamples volumes)."""
    by = ("label", "method", "acceleration")
    volumes: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in volume_rows:
        volumes.setdefault(tuple(r.get(k, "") for k in by), []).append(r)
    slices = {tuple(r[k] for k in by): r for r in interval_table(slice_rows, by, METRICS, "file", n_bootstrap, seed)}
    out = []
    for key, vols in volumes.items():
        row = {**dict(zip(by, key)), "volumes": len(vols), "slices": slices[key]["slices"]}
        for m in METRICS:
            row[m] = float(np.mean([v[m] for v in vols]))
            row.update({k: v for k, v in slices[key].items() if k.startswith(f"{m}_")})
        out.append(row)
    return out


def format_summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width text table of :func:`summarize` rows (for logs and the CLI)."""
    head = f"{'label':<12} {'method':<12} {'R':>5} {'vols':>5} {'NMSE':>8} {'PSNR':>7} {'SSIM':>7}  SSIM 95% CI (volumes)"
    lines = [head, "-" * len(head)]
    for r in rows:
        ci = f"[{r['ssim_ci_low']:.4f}, {r['ssim_ci_high']:.4f}]" if r["volumes"] > 1 else "- (1 volume)"
        lines.append(
            f"{str(r.get('label') or '-'):<12} {r['method']:<12} {r['acceleration']:>5g} {r['volumes']:>5d} "
            f"{r['nmse']:>8.4f} {r['psnr']:>7.2f} {r['ssim']:>7.4f}  {ci}"
        )
    skipped = max((int(r.get("skipped_files") or 0) for r in rows), default=0)
    if skipped:
        lines.append(f"{skipped} test file(s) skipped (reasons in skipped.json): not in these figures")
    return "\n".join(lines)


def _test_files(test_dir: str | os.PathLike | Iterable[str | os.PathLike]) -> tuple[list[str], str]:
    """``(files, root)``: the sorted test files and the folder their report keys are relative to;
    :class:`scripts.synthesis.synthesize.NoUsableInput` when the folder is missing or there are no files."""
    if not isinstance(test_dir, (str, os.PathLike)):
        files = sorted(str(f) for f in test_dir)
        if not files:
            raise NoUsableInput("evaluate: the list of test files is empty")
        return files, os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
    folder = os.fspath(test_dir)
    if not os.path.isdir(folder):
        raise NoUsableInput(f"evaluate: test_dir {folder} {'is not a folder' if os.path.exists(folder) else 'does not exist'}")
    try:
        files = list_h5(folder, "test")
    except FileNotFoundError:  # neither a test/ folder nor .h5 files
        files = []
    if not files:
        raise NoUsableInput(f"evaluate: no .h5 test files in test_dir {folder} (or its test/ folder)")
    return files, folder


def evaluate_varnet(
    checkpoint: str | os.PathLike | None,
    test_dir: str | os.PathLike | Iterable[str | os.PathLike],
    output_dir: str | os.PathLike | None = None,
    accelerations: Sequence[float] = DEFAULT_ACCELERATIONS,
    mask_type: str = "equispaced",
    center_fraction: float = DEFAULT_CENTER_FRACTION,
    seed: int = 0,
    crop_size: Sequence[int] | None = None,
    methods: Sequence[str] | None = None,
    label: str = "",
    network: torch.nn.Module | None = None,
    varnet_kwargs: Mapping[str, Any] | None = None,
    l1_lambda: float = 0.005,
    l1_max_iter: int = 100,
    espirit: Mapping[str, Any] | None = None,
    device: str | torch.device = "cpu",
    max_slices_per_volume: int | None = None,
    n_bootstrap: int = 1000,
    batch_size: int | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Evaluate a VarNet checkpoint (and the reference methods) on a fixed test set.

    Args:
        checkpoint: VarNet weights (``model.pt`` of :func:`scripts.recon.varnet.train_varnet`), or
            ``None`` (then only the reference methods run unless ``network`` is given).
        test_dir: folder of fastMRI h5 files (its ``test/`` sub-folder when there is one), or a list of files.
        output_dir: where the CSVs go (``None``: nothing written).
        accelerations: R values; each slice is evaluated at every R.
        mask_type / center_fraction / seed: the fixed masks (default: equispaced, 0.04, 0).
        crop_size: centre crop of ground truth and reconstructions (default: as stored).
        methods: subset of ``("varnet", "zero_filled", "l1_wavelet")``; default all (without
            ``varnet`` when there is no model).
        label: a tag copied into every row (e.g. the phase source the model was trained on).
        network / varnet_kwargs: a ready network, or the architecture (default: ``varnet.json``
            beside the checkpoint).
        l1_lambda / l1_max_iter / espirit: L1-wavelet regularisation weight, iterations and
            :func:`acs_espirit_maps` kwargs.
        max_slices_per_volume: evaluate only the first N slices of each volume.
        batch_size: (slice, R) items of one file reconstructed together by VarNet and by L1-wavelet (default: the
            number of accelerations, one slice at every R); a GPU wants tens, a CPU's memory few at 256 px or more.
    Returns:
        ``{"slices": [...], "volumes": [...], "summary": [...], "skipped": [...]}``: lists of plain dict rows with
        ``label, method, acceleration, mask_type, center_fraction, file, [slice], nmse, psnr, ssim``, and the
        skipped files (see the module docstring).
    """
    if checkpoint is not None and str(checkpoint).strip().lower() in ("", "none", "null"):
        checkpoint = None
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise FileNotFoundError(f"VarNet checkpoint not found: {checkpoint}")
    has_model = checkpoint is not None or network is not None
    methods = tuple(methods) if methods is not None else (DEFAULT_METHODS if has_model else DEFAULT_METHODS[1:])
    unknown = set(methods) - set(DEFAULT_METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {DEFAULT_METHODS}")
    if "varnet" in methods:
        if network is None:
            if checkpoint is None:
                raise ValueError("method 'varnet' needs a checkpoint or a network")
            network = load_varnet(checkpoint, varnet_kwargs, device=device)
        network = network.to(device).eval()
    accelerations = [float(a) for a in accelerations]
    batch_size = len(accelerations) if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    sampler = MaskSampler(mask_type, accelerations, center_fraction, seed=seed)
    files, root = _test_files(test_dir)

    def evaluate_file(path: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[tuple[str, float], float]]:
        """Slice rows, volume rows and seconds per (method, R) of one test file."""
        name = Path(path).name
        count = num_slices(path)
        if max_slices_per_volume:
            count = min(count, int(max_slices_per_volume))
        if count < 1:
            raise ValueError("'kspace' holds no slices")
        gt_slices: list[np.ndarray] = []
        preds: dict[tuple[str, float], list[np.ndarray]] = {(m, r): [] for m in methods for r in accelerations}
        seconds = dict.fromkeys(preds, 0.0)
        rows: list[dict[str, Any]] = []
        volumes: list[dict[str, Any]] = []
        accels: dict[tuple[float, int], float] = {}
        pending: list[_Item] = []

        def run_batch() -> None:
            """The learned and L1-wavelet images of the pending (slice, R) items, in one batch each."""
            for method in ("varnet", "l1_wavelet"):
                if method not in methods:
                    continue
                t0 = time.perf_counter()
                if method == "varnet":
                    images = varnet_reconstruct_batch(network, [item.example for item in pending], device)
                else:
                    images = l1_wavelet_images([item.kspace for item in pending], [item.mask for item in pending],
                                               [float(item.example["scale"]) for item in pending], gt_slices[0].shape,
                                               l1_lambda, l1_max_iter, espirit, device,
                                               [f"{name} slice {item.slice} R={item.r:g}" for item in pending])
                share = (time.perf_counter() - t0) / len(pending)
                for item, image in zip(pending, images):
                    preds[(method, item.r)].append(image)
                    seconds[(method, item.r)] += share
            pending.clear()

        for s in range(count):
            data = read_slice(path, s, keys=("kspace", "reconstruction_rss"))
            kspace = data["kspace"] if data["kspace"].ndim == 3 else data["kspace"][None]
            target = data.get("reconstruction_rss")
            for r in accelerations:
                mask, _ = sampler.fixed(kspace.shape[-2:], (name, s), r)
                accels[(r, s)] = effective_acceleration(mask)
                example = prepare_example(kspace, mask, target, crop_size)
                if len(gt_slices) == s:
                    gt_slices.append((example["target"] * example["scale"]).numpy())
                if "zero_filled" in methods:
                    preds[("zero_filled", r)].append(example["zero_filled"].numpy())
                pending.append(_Item(s, r, example, kspace, mask))
                if len(pending) >= batch_size:
                    run_batch()
        if pending:
            run_batch()
        gt_volume = np.stack(gt_slices)
        for (method, r), images in preds.items():
            pred_volume = np.stack(images)
            common = {"label": label, "method": method, "acceleration": r, "mask_type": mask_type, "center_fraction": center_fraction, "file": name}
            data_range = float(gt_volume.max())  # fastMRI: PSNR and SSIM of a slice use the volume max
            for s, (g, p) in enumerate(zip(gt_volume, pred_volume)):
                values = slice_metrics(g, p, data_range)
                rows.append({**common, "slice": s, "effective_acceleration": accels[(r, s)], **values})
            volumes.append({**common, "slices": count, **volume_metrics(gt_volume, pred_volume)})
        logger.info("evaluated %s (%d slices)", name, count)
        return rows, volumes, seconds

    slice_rows: list[dict[str, Any]] = []
    volume_rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    timings = {(m, r): 0.0 for m in methods for r in accelerations}
    for path in files:
        try:
            rows, volumes, seconds = evaluate_file(path)
        except (MemoryError, torch.OutOfMemoryError):  # the machine's limits, not the file's fault: stop
            raise
        except Exception as e:  # this file only: report it and go on
            skipped.append(reject_input(path, root, e))
            continue
        slice_rows += rows
        volume_rows += volumes
        for key, t in seconds.items():
            timings[key] += t
    if output_dir is not None:
        write_json(Path(output_dir) / SKIPPED, skipped)
    if not volume_rows:
        where = Path(output_dir) / SKIPPED if output_dir is not None else "the log"
        raise NoUsableInput(f"evaluate: all {len(skipped)} test file(s) failed; the reasons are in {where}")
    summary = summarize(slice_rows, volume_rows, n_bootstrap=n_bootstrap, seed=seed)
    for row in summary:
        row["seconds_per_slice"] = timings.get((row["method"], row["acceleration"]), 0.0) / max(row["slices"], 1)
        row["skipped_files"] = len(skipped)
    if output_dir is not None:
        write_csv(slice_rows, Path(output_dir) / "slice_metrics.csv")
        write_csv(volume_rows, Path(output_dir) / "volume_metrics.csv")
        write_csv(summary, Path(output_dir) / "summary.csv")
    return {"slices": slice_rows, "volumes": volume_rows, "summary": summary, "skipped": skipped}
