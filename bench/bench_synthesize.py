"""Benchmark of archive synthesis (not a test): throughput vs the FFT floor, memory vs archive size, ESPIRiT bank.

    nice python bench/bench_synthesize.py                      # 256x256, 16 coils, phase "zero"
    nice python bench/bench_synthesize.py --size 64 --coils 4 --slices 40 --mem 40 400 --bank-files 2   # quick

1. Throughput: a NIfTI archive of ``--slices`` magnitude slices (volumes of ``--per-volume``)
   goes through the whole pipeline (read -> phase -> coils -> FFT -> write) in this process;
   the per-stage times are the synthesizer's own. The FFT floor is the bare forward FFT
   (:func:`scripts.core.fft.fft2c`, the pipeline's own) of arrays of the same (slices, coils,
   H, W) shape, timed in the same run; numpy/sigpy's FFT and ``scripts.io.fastmri_h5.rss``
   (the inverse FFT ``write_fastmri`` does to store ``reconstruction_rss``) are timed too.
2. Memory: a fresh subprocess per archive size (``--mem``, in slices) runs the synthesizer
   and reports its peak RSS (``ru_maxrss``); outputs are deleted afterwards.
3. ESPIRiT bank: ``--bank-files`` reference fastMRI files (3 slices each, ``--coils`` coils,
   ``--size``) are made and :func:`scripts.coils.simulation.build_espirit_bank` is timed (a cold build,
   then the warm check that reuses it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import sigpy  # noqa: E402
import torch  # noqa: E402

from scripts.coils import simulation as coils  # noqa: E402

from scripts.io import fastmri_h5  # noqa: E402
from scripts.synthesis.synthesize import Synthesizer  # noqa: E402


def make_archive(root: Path, slices: int, per_volume: int, size: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    phantom = np.abs(sigpy.shepp_logan((size, size))).astype(np.float32)
    rng = np.random.default_rng(0)
    for v in range(0, slices, per_volume):
        n = min(per_volume, slices - v)
        vol = np.stack([phantom * (900 + 10 * s) + 20 * rng.random((size, size), dtype=np.float32) for s in range(n)], -1)
        nib.save(nib.Nifti1Image(vol, np.eye(4)), root / f"vol{v // per_volume:05d}.nii.gz")


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


VARIANTS = {
    "default": {},                                              # config defaults: noise, maps drawn per slice
    "no_noise": {"noise_std": 0.0},
    "no_noise_maps_per_volume": {"noise_std": 0.0, "maps_per_slice": False},
    # what-if (not the shipped code): write_fastmri's reconstruction_rss through torch's FFT (scripts.core.fft.ifft2c)
    "no_noise_maps_per_volume_torch_rss": {"noise_std": 0.0, "maps_per_slice": False},
}


def torch_rss(kspace, coil_axis=-3):
    return np.sqrt(np.sum(np.abs(coils.ifft2c(kspace)) ** 2, axis=coil_axis)).astype(np.float32)


def throughput(args, work: Path) -> dict:
    numpy_rss = fastmri_h5.rss
    make_archive(work / "in", args.slices, args.per_volume, args.size)
    shape = (args.per_volume, args.coils, args.size, args.size)
    x = (torch.randn(shape, dtype=torch.complex64)).numpy()
    volumes = args.slices / args.per_volume
    floors = {"fft_floor_s": best_of(lambda: coils.fft2c(x)) * volumes,
              "numpy_sigpy_fft_s": best_of(lambda: sigpy.fft(x, axes=(-2, -1), center=True, norm="ortho")) * volumes,
              "write_fastmri_rss_s": best_of(lambda: numpy_rss(x)) * volumes,
              "torch_rss_s": best_of(lambda: torch_rss(x)) * volumes}
    if args.device != "cpu":  # the bare FFT on the device (synchronised), the floor of the device's synthesis
        xd = torch.from_numpy(x).to(args.device)

        def device_fft():
            coils.fft2c(xd)
            torch.cuda.synchronize() if xd.is_cuda else None

        device_fft()
        floors["fft_floor_device_s"] = best_of(device_fft) * volumes
    report = {k: round(v, 3) for k, v in floors.items()}
    report["device"] = args.device
    print(json.dumps({"floors": report}), flush=True)  # each figure as it comes: a stage timeout keeps what was measured
    for name, kw in VARIANTS.items():
        settings = {"phase_source": "zero", "num_coils": args.coils, "image_size": args.size, "noise_std": args.noise_std,
                    "device": args.device, **kw}
        fastmri_h5.rss = torch_rss if name.endswith("torch_rss") else numpy_rss
        Synthesizer(work / "in", work / "out", **settings).run()  # warm-up (imports, caches)
        shutil.rmtree(work / "out")
        synth = Synthesizer(work / "in", work / "out", **settings)
        t = time.perf_counter()
        summary = synth.run()
        total = time.perf_counter() - t
        shutil.rmtree(work / "out")
        report[name] = {"slices": summary["slices"], "seconds": round(total, 3), "slices_per_s": round(summary["slices"] / total, 1),
                        "ratio_to_fft_floor": round(total / floors["fft_floor_s"], 2),
                        "ratio_to_numpy_fft": round(total / floors["numpy_sigpy_fft_s"], 2),
                        **({"ratio_to_device_fft_floor": round(total / floors["fft_floor_device_s"], 2)}
                           if "fft_floor_device_s" in floors else {}),
                        "stages_s": {k: round(v, 3) for k, v in sorted(synth.timings.items())},
                        "other_s": round(total - sum(synth.timings.values()), 3)}
        print(json.dumps({name: report[name]}), flush=True)
    fastmri_h5.rss = numpy_rss
    return report


def _child(args) -> None:
    """Subprocess body: synthesize one archive, print peak RSS."""
    synth = Synthesizer(args.child_in, args.child_out, phase_source="zero", num_coils=args.coils, image_size=args.size,
                        noise_std=args.noise_std)
    summary = synth.run()
    print(json.dumps({"slices": summary["slices"], "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def memory(args, work: Path) -> dict:
    out = {}
    for slices in args.mem:
        make_archive(work / f"mem{slices}", slices, args.per_volume, args.size)
        cmd = [sys.executable, __file__, "--child-in", str(work / f"mem{slices}"), "--child-out", str(work / f"memout{slices}"),
               "--size", str(args.size), "--coils", str(args.coils), "--noise-std", str(args.noise_std),
               "--threads", str(args.threads)]
        t = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(f"memory run of {slices} slices failed:\n{res.stderr[-3000:]}")
        result = json.loads(res.stdout.strip().splitlines()[-1])
        result["seconds"] = round(time.perf_counter() - t, 1)
        out[slices] = result
        shutil.rmtree(work / f"memout{slices}")
        shutil.rmtree(work / f"mem{slices}")
    peaks = [out[s]["maxrss_mb"] for s in args.mem]
    return {"runs": out, "ratio_largest_to_smallest_peak": round(peaks[-1] / peaks[0], 3)}


def bank(args, work: Path) -> dict:
    ref = work / "ref"
    phantom = sigpy.shepp_logan((args.size, args.size)).astype(np.complex64)
    for f in range(args.bank_files):
        maps = coils.birdcage(args.coils, (args.size, args.size), 1.4, rotation=f)
        fastmri_h5.write_fastmri(ref / f"ref{f}.h5", np.stack([coils.fft2c(maps * phantom * (1 + 0.1 * s)) for s in range(3)]))
    t = time.perf_counter()
    coils.build_espirit_bank(ref, work / "bank.npz", size=args.bank_size)
    cold = time.perf_counter() - t
    t = time.perf_counter()
    coils.build_espirit_bank(ref, work / "bank.npz", size=args.bank_size)
    warm = time.perf_counter() - t
    entries = 3 * args.bank_files
    return {"entries": entries, "bank_size": args.bank_size, "build_s": round(cold, 2), "per_entry_s": round(cold / entries, 3),
            "reuse_check_s": round(warm, 3), "bank_mb": round(os.path.getsize(work / "bank.npz") / 2**20, 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--coils", type=int, default=16)
    p.add_argument("--slices", type=int, default=100)
    p.add_argument("--per-volume", type=int, default=10)
    p.add_argument("--noise-std", type=float, default=0.01)
    p.add_argument("--mem", type=int, nargs="*", default=[100, 1000])
    p.add_argument("--bank-files", type=int, default=4)
    p.add_argument("--bank-size", type=int, default=64)
    p.add_argument("--device", default="cpu", help="where the synthesizer's coils/FFT run (cuda on a GPU machine)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the shared 2-core machine; more contend)")
    p.add_argument("--skip", nargs="*", default=[], choices=["throughput", "memory", "bank"])
    p.add_argument("--child-in", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child_in:
        return _child(args)
    work = Path(tempfile.mkdtemp(prefix="bench_synth_"))
    report = {"machine": f"{os.cpu_count()} CPU cores visible, torch threads {torch.get_num_threads()}",
              "size": args.size, "coils": args.coils, "noise_std": args.noise_std, "phase_source": "zero"}
    try:
        if "throughput" not in args.skip:
            report["throughput"] = throughput(args, work)
            print(json.dumps({"throughput": report["throughput"]}, indent=1), flush=True)
        if "memory" not in args.skip and args.mem:
            report["memory"] = memory(args, work)
            print(json.dumps({"memory": report["memory"]}, indent=1), flush=True)
        if "bank" not in args.skip:
            report["espirit_bank"] = bank(args, work)
            print(json.dumps({"espirit_bank": report["espirit_bank"]}, indent=1), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(report, sort_keys=True))


if __name__ == "__main__":
    main()
