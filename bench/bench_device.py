"""Benchmark of the device-generic stages (not a test): each figure beside its baseline from the same run.

    nice python bench/bench_device.py                                   # CPU, 64 px, 4 coils (minutes)
    python bench/bench_device.py --device cuda --size 256 --coils 16 --unet 64 128 256 256 \\
        --attention 0 0 1 1 --batch 16 --sample-batch 64                 # on a GPU machine

1. ``recon``: ESPIRiT (:func:`scripts.core.espirit.espirit_calib`) and L1-wavelet
   (:func:`scripts.recon.l1.l1_wavelet_batch`, one slice and ``--batch`` slices at once) in torch on
   ``--device``, against sigpy's ``EspiritCalib`` / ``L1WaveletRecon`` on the CPU (the baseline), on a
   simulated ``--size`` px, ``--coils``-coil slice; prints s/slice and the speed-up.
2. ``simulator``: :func:`scripts.simulate.dataset.simulate_dataset` slices/s with one process and with
   ``--workers`` processes (same bytes), at ``--size`` / ``--coils``.
3. ``phase_model``: the diffusion UNet (``--unet`` channels, ``--attention`` levels) on ``--device``:
   training images/s (forward, backward, Adam step, batch ``--batch``) and rectified-flow sampling
   s/slice (10 steps, batch ``--sample-batch``, :class:`scripts.phase.diffusion.PhaseSamplingInferer`), fp32
   without flash attention as the baseline, then flash attention, then flash attention + bf16 autocast
   (on the CPU bf16 autocast is usually slower: the figure says so); peak CUDA memory on a GPU.

Results print as JSON (``--out`` also writes them).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int = 3) -> float:
    """Best of ``repeats`` wall times of ``fn()`` (after one warm-up call), synchronised on CUDA."""
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def recon(args, device: torch.device) -> dict:
    from sigpy.mri.app import EspiritCalib, L1WaveletRecon

    from scripts.core.espirit import calib_box, espirit_calib
    from scripts.core.masks import make_mask
    from scripts.recon.l1 import l1_wavelet_batch
    from scripts.simulate.dataset import simulate_subject

    n, c = args.size, args.coils
    sim = simulate_subject(args.seed, 0, 1, n, c)
    k = np.ascontiguousarray(sim["kspace"][0])
    mask = np.broadcast_to(make_mask("equispaced", (n, n), 4, 0.08, seed=0).reshape(1, n), (n, n)).astype(np.float32)
    calib = min(24, n // 2)
    out: dict = {"data": f"SIMULATED slice, {n} px, {c} coils, R=4 columns, {args.l1_iter} FISTA iterations"}
    sig = timed(lambda: EspiritCalib(k, calib_width=calib, kernel_width=6, show_pbar=False).run(), torch.device("cpu"), 1)
    kd = torch.from_numpy(k).to(device)
    ours = timed(lambda: espirit_calib(kd, calib_box(k.shape, calib), 6), device)
    out["espirit"] = {"sigpy_cpu_s": round(sig, 4), "torch_s": round(ours, 4), "speedup": round(sig / ours, 2)}
    maps = espirit_calib(k, calib_box(k.shape, calib), 6, crop=0.0)
    sig = timed(lambda: L1WaveletRecon(k * mask, maps, 0.001, weights=mask, max_iter=args.l1_iter, show_pbar=False).run(),
                torch.device("cpu"), 1)
    kb, mb, sb = (torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in (k * mask, mask, maps))
    one = timed(lambda: l1_wavelet_batch(kb[None], mb[None], sb[None], 0.001, args.l1_iter), device)
    b = args.batch
    many = timed(lambda: l1_wavelet_batch(kb[None].expand(b, -1, -1, -1), mb[None], sb[None].expand(b, -1, -1, -1), 0.001,
                                          args.l1_iter), device) / b
    out["l1_wavelet"] = {"sigpy_cpu_s_per_slice": round(sig, 4), "torch_s_per_slice": round(one, 4),
                         f"torch_batch{b}_s_per_slice": round(many, 4), "speedup": round(sig / one, 2),
                         f"speedup_batch{b}": round(sig / many, 2)}
    return out


def simulator(args) -> dict:
    from scripts.simulate.dataset import simulate_dataset

    out = {"subjects": args.sim_subjects, "slices_per_subject": args.sim_slices, "size": args.size, "coils": args.coils}
    base = None
    for workers in (0, args.workers):
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            simulate_dataset(tmp, num_subjects=args.sim_subjects, slices_per_subject=args.sim_slices, image_size=args.size,
                             num_coils=args.coils, seed=args.seed, num_workers=workers)
            dt = time.perf_counter() - t
        rate = args.sim_subjects * args.sim_slices / dt
        base = base or rate
        out[f"workers_{max(workers, 1)}"] = {"seconds": round(dt, 2), "slices_per_s": round(rate, 2), "ratio": round(rate / base, 2)}
    return out


def phase_model(args, device: torch.device) -> dict:
    from monai.networks.nets import DiffusionModelUNet

    from scripts.configs import parsed
    from scripts.phase.diffusion import PhaseSamplingInferer

    n, b = args.size, args.batch
    scheduler = parsed("common.json", "schedulers#rflow")
    out: dict = {"unet": args.unet, "attention": args.attention, "size": n, "batch": b, "sample_batch": args.sample_batch}
    base_train = base_sample = None
    for name, flash, amp in (("fp32", False, False), ("flash", True, False), ("flash_bf16", True, True)):
        torch.manual_seed(args.seed)
        net = DiffusionModelUNet(spatial_dims=2, in_channels=3, out_channels=2, channels=args.unet,
                                 attention_levels=[bool(a) for a in args.attention], num_res_blocks=1,
                                 num_head_channels=args.head_channels, norm_num_groups=min(32, args.unet[0]),
                                 use_flash_attention=flash).to(device)
        opt = torch.optim.Adam(net.parameters(), 1e-4)
        x = torch.randn(b, 3, n, n, device=device)
        t = torch.randint(0, 1000, (b,), device=device)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = net(x, timesteps=t).float().square().mean()
            loss.backward()
            opt.step()

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        train_s = timed(step, device)
        row = {"train_images_per_s": round(b / train_s, 2)}
        if device.type == "cuda":
            row["train_peak_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        inferer = PhaseSamplingInferer(scheduler, num_inference_steps=10, num_samples=1, seed=0,
                                       sample_batch_size=args.sample_batch)
        mag = torch.rand(args.sample_batch, 1, n, n, device=device)
        net.eval()

        def sample():
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                inferer(mag, net)

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sample_s = timed(sample, device, 2) / args.sample_batch
        row["sample_s_per_slice"] = round(sample_s, 5)
        if device.type == "cuda":
            row["sample_peak_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        base_train, base_sample = base_train or row["train_images_per_s"], base_sample or sample_s
        row["train_ratio"] = round(row["train_images_per_s"] / base_train, 2)
        row["sample_speedup"] = round(base_sample / sample_s, 2)
        out[name] = row
        del net, opt
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--coils", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8, help="L1 slices at once; phase-model training batch")
    ap.add_argument("--sample-batch", type=int, default=16)
    ap.add_argument("--l1-iter", type=int, default=60)
    ap.add_argument("--unet", type=int, nargs="+", default=[16, 32, 32])
    ap.add_argument("--attention", type=int, nargs="+", default=[0, 0, 1])
    ap.add_argument("--head-channels", type=int, default=8)
    ap.add_argument("--workers", type=int, default=max(2, (os.cpu_count() or 2) - 1))
    ap.add_argument("--sim-subjects", type=int, default=4)
    ap.add_argument("--sim-slices", type=int, default=8)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip", nargs="*", default=[], choices=["recon", "simulator", "phase_model"])
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    report = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    for name, fn in (("phase_model", lambda: phase_model(args, device)), ("recon", lambda: recon(args, device)),
                     ("simulator", lambda: simulator(args))):  # the GPU figures first, the CPU-bound simulator last
        if name not in args.skip:
            report[name] = fn()
            print(json.dumps({name: report[name]}), flush=True)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
