"""Parallel-imaging reconstruction regularised by a complex diffusion prior (and its baselines).

Entry point (``configs/reconstruct.json``)::

    python -m monai.bundle run reconstruct --config_file configs/reconstruct.json \\
        --kspace FILE --prior models/prior_augmented/model.pt --mask {equispaced1d,poisson} [--acceleration 5]

Forward model (per slice, centred orthonormal FFT ``F`` as everywhere in the bundle)::

    y = M F S x + n        y: (C, H, W) k-space, M: sampling mask (H, W), S: (C, H, W) coil maps

Sampling patterns (:func:`scripts.core.masks.pattern_mask`): the published 1-D equispaced R = 5
with 30 calibration lines of 256 and 2-D Poisson-disc R ~ 8, the calibration scaled to the image
size (:func:`scripts.core.masks.default_calib_lines`: 8 lines at 64 px, 4 at 32 px), a
``calib x calib`` fully sampled centre for Poisson.

Coil maps (:mod:`scripts.recon.cases`): ESPIRiT on the fully sampled calibration (ACS)
region of the *undersampled* data, ``crop=0`` (maps cover the whole FOV, background
included), kernel ``min(6, calib // 2)`` (at 64 px with 8 calibration lines a 6-wide kernel
leaves too few calibration rows; 4 matches the fully sampled combination to 0.3 %). ESPIRiT
aligns the maps' phase to coil 0, so a reconstructed image carries coil 0's receive phase,
as an ESPIRiT combination of real data does. :func:`scripts.recon.cases.espirit_dataset` writes training copies
of a dataset in exactly this convention (same calibration, same maps), so that a complex
prior sees at training time the phase it meets at reconstruction time.

Reconstruction scheme (:class:`PriorPosteriorSampler`): decomposed diffusion sampling (DDS,
Chung et al. 2023), i.e. DDIM (or rectified-flow) sampling in which the denoised estimate
``x0`` of every step is pulled towards the data before re-noising:

    x0_hat  = Tweedie/DDIM estimate from the network at step t
    x0_dc   = argmin_x  dc_weight * ||M F S x - y||^2 + ||x - x0_hat||^2     (``cg_iters`` CG steps)
    x_{t-1} = sqrt(a_{t-1}) x0_dc + sqrt(1 - a_{t-1} - sigma^2) eps_hat + sigma z      (DDIM, eta)

(for RFlow: ``x_next = a x0_dc + (1 - a) noise_hat``, ``a = 1 - t_next / T``), then one last
data-consistency solve with ``final_dc_weight`` / ``final_cg_iters``. ``num_samples`` posterior
samples are averaged (an estimate of the posterior mean; on the SIMULATED 64 px validation split
of the prior study, 8 samples from a half-way warm start gave +1.2 to +4.8 dB over one sample
from noise, for every prior and both patterns). ``num_steps`` and
``dc_weight`` are configurable. The weight is a noise trade-off, not a nuisance: with an
*oracle* prior (a denoiser that knows the true image) on the simulated 64 px set at 1-D R=5,
``dc_weight`` 1 gives ~52 dB and 10 gives ~40 dB, because a hard fit of the noisy samples
through an ill-conditioned ``A`` amplifies noise (g-factor). So the study tunes ``dc_weight``
on the validation split (:func:`tune_dc_weight`), exactly like the L1-wavelet lambda. With a
large weight and enough CG iterations the sampled k-space of the output matches the
measurement to the noise level (tested).

Scale: the prior works on ``x / s`` with ``s`` the 99.5th percentile of ``|x|`` (its training
normalisation, :mod:`scripts.core.intensity`). ``s`` is unknown before reconstructing, so it is
estimated from the undersampled data (:func:`scripts.core.sense.estimate_scale`): by default the 99.5th
percentile of a 20-iteration unregularised CG-SENSE solve started from zero (``scale_method="sense"``;
measured on 12 simulated 64 px slices, estimate / true = 0.95 +- 0.11 at 1-D R = 5.3 and
0.89 +- 0.06 at Poisson R = 8; 8 iterations under-estimate by 15 %, 50 over-estimate through
noise amplification, the zero-filled image under-estimates by 20 %), or of the
zero-filled SENSE combination ``|S^H F^H y|`` (``"zero_filled"``) or of the ACS-only
low-resolution image (``"acs"``). k-space is divided by ``s``, reconstructed in prior units,
and the output multiplied back by ``s``: every method (prior, L1-wavelet, zero-filled) returns
images in the units of the k-space, and the L1-wavelet lambda is relative to the unit
tissue level, so one lambda fits any scanner scale.

Baselines: zero-filled (``S^H F^H y``) and ``sigpy.mri.app.L1WaveletRecon`` (same maps, same
scale; :mod:`scripts.recon.l1`), its lambda chosen on the validation split over a small grid
(:func:`scripts.recon.l1.tune_l1_lambda`). The SENSE operator and CG are :mod:`scripts.core.sense`.

Metrics (fastMRI definitions, :func:`scripts.core.metrics.slice_metrics`): on magnitudes, reference = the fully
sampled k-space combined with the same maps (equal to the RSS image within 0.3 % inside the
head at 64 px), NMSE, PSNR and SSIM (7x7, skimage) with ``data_range`` = the reference
volume's maximum.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scripts.core.masks import default_calib_lines, pattern_mask
from scripts.core.metrics import slice_metrics
from scripts.core.sense import SenseOp, data_consistency, estimate_scale, sense_init, zero_filled
from scripts.recon.cases import make_case, read_kspace
from scripts.recon.l1 import l1_wavelet_scaled
from scripts.core.complex import channels_to_complex, complex_to_channels
from scripts.recon.prior import load_prior, sampler_from_card
from scripts.synthesis.synthesize import NoUsableInput, failure_reason

__all__ = ["PriorPosteriorSampler", "reconstruct_file", "tune_dc_weight"]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# the prior-regularised reconstruction
# --------------------------------------------------------------------------------------
class PriorPosteriorSampler:
    """DDS-style posterior sampling with a complex diffusion prior; see the module docstring.

    Args:
        network: the prior (``DiffusionModelUNet``, 2 channels real/imag), eval mode.
        scheduler: the sampler: a DDIM scheduler (for DDPM/DDIM-trained priors) or an RFlow scheduler.
        num_steps: sampling steps.
        dc_weight: data-consistency weight of every step (``0``: pure prior sampling).
        cg_iters: CG iterations per data-consistency step.
        final_dc_weight, final_cg_iters: the last data-consistency solve (weight default: ``dc_weight``).
        eta: DDIM stochasticity (default 1: with briefly trained priors deterministic DDIM, eta 0, leaves
            the samples noisy while eta 1 gives clean images; RFlow ignores it).
        clip: clamp the ``x0`` estimates to ``[-clip, clip]`` (prior units; ``None``: no clamp).
        scale_method: :func:`scripts.core.sense.estimate_scale` method.
        seed: noise seed (one generator per call).
        batch_size: images through the network at once (``None``: all).
        start_fraction: 1 starts from pure noise (DDS); below 1 the sampler starts at that fraction of
            the schedule from the CG-SENSE image diffused to that step (warm start, as in
            "come-closer-diffuse-faster"), which needs a less perfect prior and fewer steps.
        num_samples: posterior samples averaged (complex mean: an estimate of the posterior mean, which
            trades the samples' texture for a lower error; 1 returns one posterior sample).
    """

    def __init__(self, network: torch.nn.Module, scheduler, num_steps: int = 50, dc_weight: float = 3.0,
                 cg_iters: int = 5, final_dc_weight: float | None = None, final_cg_iters: int = 5, eta: float = 1.0,
                 clip: float | None = 2.0, scale_method: str = "sense", seed: int = 0, batch_size: int | None = None,
                 start_fraction: float = 1.0, num_samples: int = 1) -> None:
        from monai.networks.schedulers import RFlowScheduler

        self.network, self.scheduler = network, scheduler
        self.rflow = isinstance(scheduler, RFlowScheduler)
        self.num_steps, self.dc_weight, self.cg_iters = int(num_steps), float(dc_weight), int(cg_iters)
        self.final_dc_weight = float(dc_weight if final_dc_weight is None else final_dc_weight)
        self.final_cg_iters = int(final_cg_iters)
        self.eta, self.clip, self.scale_method = float(eta), clip, scale_method
        self.seed, self.batch_size = int(seed), batch_size
        if not 0.0 < float(start_fraction) <= 1.0:
            raise ValueError(f"start_fraction must be in (0, 1], got {start_fraction}")
        self.start_fraction = float(start_fraction)
        if int(num_samples) < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_samples = int(num_samples)

    def _x0_clamp(self, x0: torch.Tensor) -> torch.Tensor:
        return x0.clamp(-self.clip, self.clip) if self.clip else x0

    @torch.no_grad()
    def _sample(self, y: torch.Tensor, op: SenseOp, gen: torch.Generator) -> torch.Tensor:
        net, sched = self.network, self.scheduler
        device = next(net.parameters()).device
        b, _, h, w = y.shape
        x = torch.randn((b, 2, h, w), generator=gen, dtype=torch.float32).to(device)
        T = int(sched.num_train_timesteps)
        if self.rflow:
            sched.set_timesteps(self.num_steps, device=device, input_img_size_numel=h * w)
        else:
            sched.set_timesteps(self.num_steps, device=device)
        ts = sched.timesteps
        first = 0
        if self.start_fraction < 1.0:  # warm start: diffuse the CG-SENSE image to an intermediate step
            first = min(len(ts) - 1, int(round((1.0 - self.start_fraction) * len(ts))))
            init = complex_to_channels(sense_init(y, op), dim=1)
            t0 = float(ts[first])
            if self.rflow:
                a = 1.0 - t0 / T
                x = a * init + (1.0 - a) * x
            else:
                a = float(sched.alphas_cumprod[int(t0)])
                x = math.sqrt(a) * init + math.sqrt(1.0 - a) * x
        x0c = None
        for i, t in enumerate(ts):
            if i < first:
                continue
            if self.rflow:
                t_next = ts[i + 1] if i + 1 < len(ts) else torch.zeros_like(t)
                v = net(x, timesteps=t.float().expand(b).to(device))
                x0 = self._x0_clamp(x + v * (float(t) / T))
                noise_hat = x0 - v
            else:
                t = int(t)
                a_t = sched.alphas_cumprod[t].item()
                t_prev = t - T // self.num_steps
                a_prev = sched.alphas_cumprod[t_prev].item() if t_prev >= 0 else float(sched.final_alpha_cumprod)
                eps = net(x, timesteps=torch.full((b,), t, device=device, dtype=torch.long))
                x0 = self._x0_clamp((x - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t))
            x0c = data_consistency(channels_to_complex(x0, dim=1), op, y, self.dc_weight, self.cg_iters)
            x0 = complex_to_channels(x0c, dim=1)
            if self.rflow:
                a_next = 1.0 - float(t_next) / T
                x = a_next * x0 + (1.0 - a_next) * noise_hat
            else:
                sigma = self.eta * math.sqrt(max(0.0, (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)))
                x = math.sqrt(a_prev) * x0 + math.sqrt(max(0.0, 1 - a_prev - sigma**2)) * eps
                if sigma > 0:
                    x = x + sigma * torch.randn(x.shape, generator=gen, dtype=x.dtype).to(device)
        return data_consistency(x0c, op, y, self.final_dc_weight, self.final_cg_iters)

    def __call__(self, kspace, mask, maps, seed: int | None = None) -> dict[str, torch.Tensor]:
        """Reconstruct ``kspace`` ``(B, C, H, W)`` (undersampled, zeros where not sampled) with ``mask``
        ``(B or 1, H, W)`` and ``maps`` ``(B, C, H, W)``; returns ``{"image": (B, H, W) complex64 in
        k-space units, "scale": (B,)}``."""
        device = next(self.network.parameters()).device  # the SENSE operator and CG run beside the network
        y = torch.as_tensor(np.asarray(kspace) if not isinstance(kspace, torch.Tensor) else kspace).to(device, torch.complex64)
        maps = torch.as_tensor(maps).to(device, torch.complex64)
        mask = torch.as_tensor(mask, dtype=torch.float32).to(device)
        if mask.ndim == 2:
            mask = mask[None]
        gen = torch.Generator().manual_seed(self.seed if seed is None else int(seed))
        out, scales = [], []
        chunk = self.batch_size or y.shape[0]
        for s in range(0, y.shape[0], chunk):
            m = mask if mask.shape[0] == 1 else mask[s : s + chunk]
            op = SenseOp(maps[s : s + chunk], m)
            yb = y[s : s + chunk] * op.mask
            scale = estimate_scale(yb, op, self.scale_method)
            yn = yb / scale[:, None, None, None]
            x = sum(self._sample(yn, op, gen) for _ in range(self.num_samples)) / self.num_samples
            out.append(x * scale[:, None, None])
            scales.append(scale)
        return {"image": torch.cat(out).cpu(), "scale": torch.cat(scales).cpu()}


# --------------------------------------------------------------------------------------
# dc-weight tuning
# --------------------------------------------------------------------------------------
def tune_dc_weight(network: torch.nn.Module, scheduler, cases: Sequence[Mapping], grid: Sequence[float],
                   metric: str = "psnr", **sampler_kwargs: Any) -> dict:
    """Choose the prior's ``dc_weight`` maximising the mean ``metric`` over ``cases`` (validation split).

    All cases must share one mask. Returns ``{"dc_weight", "grid", "scores", "metric", "num_cases"}``.
    """
    y = np.stack([c.kspace for c in cases])
    maps = np.stack([c.maps for c in cases])
    scores = []
    for w in grid:
        smp = PriorPosteriorSampler(network, scheduler, dc_weight=float(w), **sampler_kwargs)
        x = smp(y, cases[0].mask, maps)["image"].numpy()
        scores.append(float(np.mean([slice_metrics(c.reference, r, c.data_range)[metric] for r, c in zip(x, cases)])))
    best = int(np.argmax(scores)) if metric != "nmse" else int(np.argmin(scores))
    return {"dc_weight": float(grid[best]), "grid": [float(g) for g in grid], "scores": scores, "metric": metric,
            "num_cases": len(cases)}


# --------------------------------------------------------------------------------------
# the bundle entry point
# --------------------------------------------------------------------------------------
def _png(path: Path, images: Sequence[np.ndarray], titles: Sequence[str], vmaxes: Sequence[float | None]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(images), figsize=(2.6 * len(images), 2.8), squeeze=False)
    for ax, im, t, vmax in zip(axes[0], images, titles, vmaxes):
        ax.imshow(im, cmap="gray", vmin=0, vmax=vmax if vmax else (float(np.max(im)) or 1.0))
        ax.set_title(t, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reconstruct_file(kspace: str, prior: str, output_dir: str, mask: str = "equispaced1d", acceleration: float | None = None,
                     calib_lines: int | None = None, mask_seed: int = 0, slices: Sequence[int] | None = None,
                     num_steps: int = 50, dc_weight: float = 30.0, cg_iters: int = 5, final_dc_weight: float | None = None,
                     final_cg_iters: int = 5, eta: float = 1.0, scale_method: str = "sense", seed: int = 0,
                     start_fraction: float = 0.5, num_samples: int = 8, remove_oversampling: bool = False,
                     l1_lambda: float | None = None, l1_max_iter: int = 100, device: Any = "cpu",
                     network: torch.nn.Module | None = None) -> dict:
    """Reconstruct every (or the chosen) slice of ``kspace`` with the prior at ``prior``.

    Fully sampled input is undersampled retrospectively with ``mask`` (then the reference is
    known and metrics are written); input with a stored ``mask`` dataset is used as measured.
    k-space larger than the prior's image size is centre-cropped in k-space (same FOV, lower
    resolution); ``remove_oversampling`` first drops 2x readout oversampling (fastMRI raw files). The defaults (``dc_weight`` 30, 8 posterior samples averaged, warm start half-way)
    are the settings the 64 px prior study chose on its validation split
    (``configs/prior_study_cpu64.json``); tune them for other data. Writes
    ``<output_dir>/<name>_<mask>.h5`` (``reconstruction`` complex,
    ``zero_filled``, ``l1_wavelet`` when ``l1_lambda`` is given, ``mask``, ``coil_maps``,
    ``reference`` when known), a PNG per slice and ``metrics.json``. A missing file, or one that cannot be read
    or undersampled (not HDF5/``.mat``, no complex ``kspace``, a mask that does not fit), ends the run with
    :class:`scripts.synthesis.synthesize.NoUsableInput`: one line naming the file and the cause, exit status 1.
    """
    import h5py

    if not kspace or not os.path.isfile(kspace):
        raise NoUsableInput(f"reconstruct: kspace file {kspace} does not exist" if kspace else "reconstruct: pass --kspace FILE")
    t0 = time.perf_counter()
    net, card = load_prior(prior, network)
    net = net.to(device)
    size = int(card["image_size"]) if card.get("image_size") else None
    try:  # reading and undersampling the file: what it raises ends the run with one line naming it and the cause
        full, info = read_kspace(kspace, size, slices, remove_oversampling)
        h, w = full.shape[-2:]
        if h != w or (size and (h, w) != (size, size)):
            logger.warning("%s: k-space is %dx%d after cropping, the prior was trained at %s px%s", Path(kspace).name, h, w,
                           size, " (fastMRI raw data: set remove_oversampling)" if h > w else "")
        calib = default_calib_lines(min(h, w)) if calib_lines is None else int(calib_lines)
        measured = info.get("mask") is not None
        if measured:
            m = info["mask"]
        else:
            m = pattern_mask(mask, (h, w), acceleration, calib, mask_seed)
        cases = [make_case(s, m, calib) for s in full]
    except MemoryError:
        raise
    except Exception as e:
        reason = failure_reason(e, kspace, os.path.dirname(os.path.abspath(kspace)))
        raise NoUsableInput(f"reconstruct: cannot reconstruct {kspace}: {reason}") from None
    sampler = PriorPosteriorSampler(net, sampler_from_card(card) if card else sampler_from_card({}), num_steps, dc_weight,
                                    cg_iters, final_dc_weight, final_cg_iters, eta, card.get("clip", 2.0), scale_method, seed,
                                    start_fraction=start_fraction, num_samples=num_samples)
    res = sampler(np.stack([c.kspace for c in cases]), m, np.stack([c.maps for c in cases]))
    recon = res["image"].numpy()
    op = SenseOp(torch.from_numpy(np.stack([c.maps for c in cases])), torch.from_numpy(m)[None])
    zf = zero_filled(torch.from_numpy(np.stack([c.kspace for c in cases])), op).numpy()
    l1 = None
    if l1_lambda is not None:  # in the prior's units (k-space / its scale), so lambda is relative to the tissue level
        l1 = l1_wavelet_scaled(np.stack([c.kspace for c in cases]), m, np.stack([c.maps for c in cases]),
                               res["scale"].numpy(), l1_lambda, l1_max_iter, device)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{Path(kspace).stem}_{'measured' if measured else mask}"
    metrics: dict[str, Any] = {"input": {k: v for k, v in info.items() if k != "mask"}, "mask": "measured" if measured else mask, "acceleration": float(m.size / m.sum()),
                               "calib_lines": calib, "prior": card, "scale": res["scale"].tolist(),
                               "settings": {"num_steps": num_steps, "dc_weight": dc_weight, "cg_iters": cg_iters,
                                            "final_dc_weight": final_dc_weight, "final_cg_iters": final_cg_iters,
                                            "eta": eta, "scale_method": scale_method, "seed": seed,
                                            "start_fraction": start_fraction, "num_samples": num_samples,
                                            "remove_oversampling": remove_oversampling,
                                            "l1_lambda": l1_lambda}}
    if not measured:
        ref = np.stack([c.reference for c in cases])
        dr = float(np.abs(ref).max())
        per = {"prior": [slice_metrics(c, r, dr) for r, c in zip(recon, ref)],
               "zero_filled": [slice_metrics(c, r, dr) for r, c in zip(zf, ref)]}
        if l1 is not None:
            per["l1_wavelet"] = [slice_metrics(c, r, dr) for r, c in zip(l1, ref)]
        metrics["per_slice"] = per
        metrics["mean"] = {k: {q: float(np.mean([d[q] for d in v])) for q in ("nmse", "psnr", "ssim")} for k, v in per.items()}
    with h5py.File(out / f"{stem}.h5", "w") as f:
        f.create_dataset("reconstruction", data=recon.astype(np.complex64))
        f.create_dataset("zero_filled", data=zf.astype(np.complex64))
        if l1 is not None:
            f.create_dataset("l1_wavelet", data=l1)
        f.create_dataset("mask", data=m)
        f.create_dataset("coil_maps", data=np.stack([c.maps for c in cases]))
        if not measured:
            f.create_dataset("reference", data=np.stack([c.reference for c in cases]))
        f.attrs["metrics"] = json.dumps(metrics, default=str)
    for i in range(len(cases)):
        vmax = float(np.abs(cases[i].reference).max()) if not measured else float(np.abs(recon[i]).max())
        ims, titles, vmaxes = [m, np.abs(zf[i]), np.abs(recon[i])], ["mask", "zero-filled", "prior"], [1.0, vmax, vmax]
        if l1 is not None:
            ims.append(np.abs(l1[i])), titles.append("L1-wavelet"), vmaxes.append(vmax)
        if not measured:
            ims.append(np.abs(cases[i].reference)), titles.append("reference"), vmaxes.append(vmax)
            ims.append(np.abs(np.abs(recon[i]) - np.abs(cases[i].reference)))
            titles.append("|error| prior (x5)"), vmaxes.append(vmax / 5)
        _png(out / f"{stem}_slice{i:03d}.png", ims, titles, vmaxes)
    metrics["seconds"] = round(time.perf_counter() - t0, 2)
    (out / f"{stem}_metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n", encoding="utf-8")
    logger.info("reconstructed %d slice(s) of %s in %.1f s -> %s", len(cases), Path(kspace).name, metrics["seconds"], out)
    print(json.dumps(metrics.get("mean", {}), indent=1))
    return metrics
