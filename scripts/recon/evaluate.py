"""Evaluate reconstructions on ONE fixed test set: VarNet, zero-filled and L1-wavelet, per R.

Every method sees the same masks: the mask of a slice is a pure function of
``(seed, mask type, file name, slice index, R)`` (:meth:`scripts.core.masks.MaskSampler.fixed`),
so models trained on different data are compared on identical measurements. Metrics use
the fastMRI definitions (:mod:`scripts.core.metrics`): per slice NMSE / PSNR / SSIM with the
volume max as data range, per volume NMSE and PSNR over the volume and SSIM averaged over
its slices, all on the RSS magnitude centre-cropped to ``crop_size`` (or to the stored
``reconstruction_rss`` shape).

Methods:

- ``varnet``: the trained network (:func:`scripts.recon.varnet.load_varnet`);
- ``zero_filled``: RSS of the inverse FFT of the masked k-space;
- ``l1_wavelet`` (NaN rows, with a warning, where the ACS is too small for ESPIRiT, e.g.
  one column at 32 px and centre fraction 0.04): :class:`sigpy.mri.app.L1WaveletRecon` (Daubechies-4 wavelets, ``lamda`` from
  the config) with ESPIRiT maps from :class:`sigpy.mri.app.EspiritCalib` on the fully
  sampled centre (ACS) of the same masked k-space; its image is shown as the RSS of the
  coil images ``S_c x`` so it is comparable with the RSS ground truth. The k-space is
  divided by the same per-slice factor as the VarNet input (max of the zero-filled RSS),
  so ``lamda`` is relative to an image of peak ~1.

Outputs (``output_dir``): ``slice_metrics.csv``, ``volume_metrics.csv``, ``summary.csv``
(per method and R: mean of the volume metrics, the mean over slices and its 95% CI from a
bootstrap over volumes), written by :func:`evaluate_varnet`.
"""

from __future__ import annotations

import csv
import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scripts.io.fastmri_h5 import num_slices, read_slice
from scripts.core.masks import DEFAULT_ACCELERATIONS, DEFAULT_CENTER_FRACTION, MaskSampler, acs_bounds, effective_acceleration
from scripts.core.metrics import METRICS, bootstrap_ci, center_crop, slice_metrics, volume_metrics
from scripts.recon.varnet import list_h5, load_varnet, prepare_example, varnet_reconstruct

__all__ = [
    "DEFAULT_METHODS",
    "ACSEspiritCalib",
    "espirit_maps",
    "evaluate_varnet",
    "format_summary",
    "l1_wavelet_recon",
    "summarize",
    "write_csv",
]

logger = logging.getLogger(__name__)

DEFAULT_METHODS = ("varnet", "zero_filled", "l1_wavelet")


class ACSEspiritCalib:
    """Factory for :class:`sigpy.mri.app.EspiritCalib` calibrated on a rectangular ACS box.

    sigpy's ``EspiritCalib`` takes the calibration data from a centred SQUARE of
    ``calib_width``. A column mask's fully sampled region is all rows x a few centre columns
    (10 columns at 256 and centre fraction 0.04): the square would be 10x10 and ESPIRiT then
    finds no eigenvalue above its crop threshold (all-zero maps, NaN reconstructions; seen on
    the real 4-coil slices). :func:`make` builds the app exactly as sigpy does (same SVD,
    kernels, power iteration and eigenvalue crop in ``EspiritCalib._output``) but from the
    ``(rows, columns)`` box of :func:`scripts.core.masks.acs_bounds`, with a kernel of at most half
    the box side in each direction.
    """

    @staticmethod
    def make(ksp, box, kernel_width=6, thresh=0.02, crop=0.95, max_iter=100, show_pbar=False):
        import sigpy as sp
        import sigpy.mri

        top, bottom, left, right = box
        app = sigpy.mri.app.EspiritCalib.__new__(sigpy.mri.app.EspiritCalib)
        app.device = sp.Device(sp.cpu_device)
        app.output_eigenvalue = False
        app.crop = crop
        xp = np
        img_ndim = ksp.ndim - 1
        num_coils = len(ksp)
        calib = ksp[:, top:bottom, left:right]
        kw = [int(max(2, min(kernel_width, n // 2))) for n in calib.shape[1:]]
        mat = sp.array_to_blocks(calib, kw, [1] * img_ndim)
        mat = mat.reshape([num_coils, -1, kw[0] * kw[1]]).transpose([1, 0, 2]).reshape([-1, num_coils * kw[0] * kw[1]])
        _, sv, vh = xp.linalg.svd(mat, full_matrices=False)
        vh = vh[sv > thresh * sv.max(), :]
        kernels = vh.reshape([len(vh), num_coils] + kw)
        img_shape = ksp.shape[1:]
        aha = xp.zeros(img_shape[::-1] + (num_coils, num_coils), dtype=ksp.dtype)
        for kernel in kernels:
            img_kernel = sp.ifft(sp.resize(kernel, ksp.shape), axes=range(-img_ndim, 0))
            a_h = xp.expand_dims(img_kernel.T, axis=-1)
            aha += a_h @ xp.conj(a_h.swapaxes(-1, -2))
        aha *= sp.prod(img_shape) / (kw[0] * kw[1])
        app.mps = xp.ones(ksp.shape[::-1] + (1,), dtype=ksp.dtype)
        alg = sp.alg.PowerMethod(
            lambda x: aha @ x,
            app.mps,
            norm_func=lambda x: xp.sum(xp.abs(x) ** 2, axis=-2, keepdims=True) ** 0.5,
            max_iter=max_iter,
        )
        sp.app.App.__init__(app, alg, show_pbar=show_pbar)
        return app


def espirit_maps(
    masked_kspace: np.ndarray,
    mask: np.ndarray,
    kernel_width: int = 6,
    thresh: float = 0.02,
    crop: float = 0.95,
    max_iter: int = 100,
) -> np.ndarray:
    """ESPIRiT maps ``(C, H, W)`` from the fully sampled centre of ``masked_kspace`` (sigpy ``EspiritCalib``).

    The calibration region is the ACS box of :func:`scripts.core.masks.acs_bounds` (all rows x the
    centre columns for a column mask, the centre box for a 2-D mask); see :class:`ACSEspiritCalib`.
    The kernel is ``kernel_width`` clipped to half the box side: on the real 4-coil MPRAGE
    slice at R = 4 (10 ACS columns) a 6-wide kernel gave maps that made L1-wavelet diverge
    (NMSE 0.68), 5 or 4 gave NMSE 0.017 / 0.013.
    """
    masked_kspace = np.asarray(masked_kspace, dtype=np.complex64)
    m = np.asarray(mask, dtype=bool)
    top, bottom, left, right = acs_bounds(m)
    if m.reshape(-1, m.shape[-1]).shape[0] == 1:  # column mask: every row is sampled
        top, bottom = 0, masked_kspace.shape[-2]
    if min(bottom - top, right - left) < 2:
        raise ValueError(f"ACS box {bottom - top}x{right - left} is too small for ESPIRiT")
    app = ACSEspiritCalib.make(masked_kspace, (top, bottom, left, right), kernel_width, thresh, crop, max_iter)
    return np.asarray(app.run())


def l1_wavelet_recon(
    masked_kspace: np.ndarray,
    mask: np.ndarray,
    lamda: float = 0.005,
    max_iter: int = 100,
    maps: np.ndarray | None = None,
    espirit: Mapping[str, Any] | None = None,
) -> np.ndarray:
    """L1-wavelet compressed sensing of one slice; returns the RSS of ``S_c x`` ``(H, W)`` (same units as the input)."""
    import sigpy.mri

    masked_kspace = np.asarray(masked_kspace, dtype=np.complex64)
    if maps is None:
        maps = espirit_maps(masked_kspace, mask, **dict(espirit or {}))
    weights = np.broadcast_to(np.asarray(mask, dtype=np.float32), masked_kspace.shape[-2:]).copy()
    image = sigpy.mri.app.L1WaveletRecon(
        masked_kspace, maps, lamda=lamda, weights=weights, max_iter=max_iter, show_pbar=False
    ).run()
    coil_images = maps * np.asarray(image)[None]
    return np.sqrt(np.sum(np.abs(coil_images) ** 2, axis=0)).astype(np.float32)


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> Path:
    """Rows (dicts) to CSV; the columns are the union of the keys in first-seen order."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields: list[str] = []
    for row in rows:
        fields.extend(k for k in row if k not in fields)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def summarize(
    slice_rows: Sequence[Mapping[str, Any]],
    volume_rows: Sequence[Mapping[str, Any]],
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Per (label, method, R): mean of the volume metrics (the fastMRI headline numbers), and the
    mean over slices with a 95% CI that resamples volumes (``<metric>_slice_mean``, ``_ci_low``,
    ``_ci_high``): slices of one volume are correlated, so a slice bootstrap would be too narrow;
    with one volume the interval collapses to the mean (no interval)."""
    keys: list[tuple] = []
    for r in volume_rows:
        k = (r.get("label", ""), r["method"], r["acceleration"])
        if k not in keys:
            keys.append(k)
    out = []
    for label, method, accel in keys:
        vols = [r for r in volume_rows if (r.get("label", ""), r["method"], r["acceleration"]) == (label, method, accel)]
        slices = [r for r in slice_rows if (r.get("label", ""), r["method"], r["acceleration"]) == (label, method, accel)]
        row: dict[str, Any] = {"label": label, "method": method, "acceleration": accel, "volumes": len(vols), "slices": len(slices)}
        for m in METRICS:
            row[m] = float(np.mean([v[m] for v in vols]))
            mean, low, high = bootstrap_ci([s[m] for s in slices], n=n_bootstrap, seed=seed, groups=[s["file"] for s in slices])
            row.update({f"{m}_slice_mean": mean, f"{m}_ci_low": low, f"{m}_ci_high": high})
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
    return "\n".join(lines)


def _test_files(test_dir: str | os.PathLike | Iterable[str | os.PathLike]) -> list[str]:
    if isinstance(test_dir, (str, os.PathLike)):
        files = list_h5(test_dir, "test")
    else:
        files = sorted(str(f) for f in test_dir)
    if not files:
        raise FileNotFoundError(f"no .h5 test files in {test_dir}")
    return files


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
            :func:`espirit_maps` kwargs.
        max_slices_per_volume: evaluate only the first N slices of each volume.
    Returns:
        ``{"slices": [...], "volumes": [...], "summary": [...]}``: lists of plain dict rows with
        ``label, method, acceleration, mask_type, center_fraction, file, [slice], nmse, psnr, ssim``.
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
    sampler = MaskSampler(mask_type, accelerations, center_fraction, seed=seed)
    files = _test_files(test_dir)
    slice_rows: list[dict[str, Any]] = []
    volume_rows: list[dict[str, Any]] = []
    timings = {(m, r): 0.0 for m in methods for r in accelerations}
    for path in files:
        name = Path(path).name
        count = num_slices(path)
        if max_slices_per_volume:
            count = min(count, int(max_slices_per_volume))
        gt_slices: list[np.ndarray] = []
        preds: dict[tuple[str, float], list[np.ndarray]] = {(m, r): [] for m in methods for r in accelerations}
        accels: dict[tuple[float, int], float] = {}
        for s in range(count):
            data = read_slice(path, s, keys=("kspace", "reconstruction_rss"))
            kspace = data["kspace"] if data["kspace"].ndim == 3 else data["kspace"][None]
            target = data.get("reconstruction_rss")
            gt = None
            for r in accelerations:
                mask, _ = sampler.fixed(kspace.shape[-2:], (name, s), r)
                accels[(r, s)] = effective_acceleration(mask)
                example = prepare_example(kspace, mask, target, crop_size)
                if gt is None:
                    gt = (example["target"] * example["scale"]).numpy()
                    gt_slices.append(gt)
                if "varnet" in methods:
                    t0 = time.perf_counter()
                    preds[("varnet", r)].append(varnet_reconstruct(network, example, device))
                    timings[("varnet", r)] += time.perf_counter() - t0
                if "zero_filled" in methods:
                    preds[("zero_filled", r)].append(example["zero_filled"].numpy())
                if "l1_wavelet" in methods:
                    t0 = time.perf_counter()
                    scale = float(example["scale"])
                    masked = (kspace * mask).astype(np.complex64) / np.float32(scale)
                    try:
                        image = center_crop(l1_wavelet_recon(masked, mask, lamda=l1_lambda, max_iter=l1_max_iter, espirit=espirit), gt.shape) * scale
                    except ValueError as e:  # an ACS too small for ESPIRiT: NaN metrics, not a failed study
                        logger.warning("l1_wavelet skipped for %s slice %d at R=%g: %s", name, s, r, e)
                        image = np.full(gt.shape, np.nan, dtype=np.float32)
                    preds[("l1_wavelet", r)].append(image)
                    timings[("l1_wavelet", r)] += time.perf_counter() - t0
        gt_volume = np.stack(gt_slices)
        for (method, r), images in preds.items():
            pred_volume = np.stack(images)
            common = {"label": label, "method": method, "acceleration": r, "mask_type": mask_type, "center_fraction": center_fraction, "file": name}
            for s, values in enumerate(slice_metrics(gt_volume, pred_volume)):
                slice_rows.append({**common, "slice": s, "effective_acceleration": accels[(r, s)], **values})
            volume_rows.append({**common, "slices": count, **volume_metrics(gt_volume, pred_volume)})
        logger.info("evaluated %s (%d slices)", name, count)
    summary = summarize(slice_rows, volume_rows, n_bootstrap=n_bootstrap, seed=seed)
    for row in summary:
        row["seconds_per_slice"] = timings.get((row["method"], row["acceleration"]), 0.0) / max(row["slices"], 1)
    if output_dir is not None:
        write_csv(slice_rows, Path(output_dir) / "slice_metrics.csv")
        write_csv(volume_rows, Path(output_dir) / "volume_metrics.csv")
        write_csv(summary, Path(output_dir) / "summary.csv")
    return {"slices": slice_rows, "volumes": volume_rows, "summary": summary}
