"""Benchmark (not a test): peak memory of synthesising one large NIfTI volume vs a small one.

    nice python bench/bench_memory.py                                  # 256^2 x 500 vs 1024^2 x 500 at 64 x 64
    nice python bench/bench_memory.py --sizes 256 2048 --slices 100 --image-size 128

Each size is a ``.nii.gz`` volume (a disk phantom, written slice by slice, so this process never
holds it) synthesised by :class:`scripts.synthesis.synthesize.Synthesizer` (phase ``zero``, 2 coils)
in a fresh process; the peak RSS is that process's own (``VmHWM``: Linux's ``ru_maxrss`` would
report the parent's peak, which it keeps across ``exec``). The last line is the ratio largest /
smallest: a reader that streams slices keeps it near 1 whatever the volume size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def peak_bytes() -> int:
    """This process's peak RSS in bytes."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) * 1024
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def child(folder: str, image_size: int) -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    from scripts.synthesis.synthesize import Synthesizer

    torch.set_num_threads(1)
    t = time.perf_counter()
    Synthesizer(Path(folder) / "in", Path(folder) / "out", phase_source="zero", num_coils=2, image_size=image_size).run()
    print(json.dumps({"seconds": round(time.perf_counter() - t, 1), "peak_mb": round(peak_bytes() / 1e6)}))


def write_volume(path: Path, size: int, slices: int) -> None:
    """A ``size^2 x slices`` float32 disk phantom; nibabel writes the broadcast view one slice at a time."""
    import nibabel as nib
    import numpy as np

    y, x = np.mgrid[:size, :size] / size
    disk = ((((x - 0.5) ** 2 + (y - 0.5) ** 2) < 0.16) * (1 + x)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.broadcast_to(disk[..., None], (size, size, slices)), np.eye(4)), path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--slices", type=int, default=500)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.image_size)
    peaks = {}
    with tempfile.TemporaryDirectory() as work:
        for size in args.sizes:
            folder = Path(work) / str(size)
            write_volume(folder / "in" / "v.nii.gz", size, args.slices)
            unpacked = size * size * args.slices * 4 / 1e6
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            cmd = [sys.executable, __file__, "--child", str(folder), "--image-size", str(args.image_size)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode:
                sys.exit(out.stderr[-3000:])
            result = json.loads(out.stdout.strip().splitlines()[-1])
            peaks[size] = result["peak_mb"]
            print(f"{size}x{size}x{args.slices} float32 ({unpacked:.0f} MB unpacked) -> {args.image_size}^2: "
                  f"peak RSS {result['peak_mb']} MB, {result['seconds']} s")
    print(f"peak RSS ratio {max(args.sizes)}^2 / {min(args.sizes)}^2: {peaks[max(args.sizes)] / peaks[min(args.sizes)]:.2f}")


if __name__ == "__main__":
    main()
