"""VarNet training benchmark: throughput per batch size and the loss after N iterations, as ratios to batch 1.

Not a test: it prints figures measured in this run. Data: the SIMULATED paired dataset
(``scripts.simulate.dataset``, made in a temporary folder at ``--size`` / ``--coils``), ground-truth
k-space, equispaced masks at R in {4, 6, 8, 10} (the study's training mix). Rows:

- ``init out/target``: max of the untrained network's output over the target's max on one slice,
  for this project's VarNet and for MONAI's ``VariationalNetworkModel`` of the same size (the
  scale problem the residual initialisation fixes);
- per profile and batch size: seconds per training step, slices/s and its ratio to batch 1,
  and the mean training loss (``VarNetLoss``: L1 + SSIM) over the last 10 of ``--iterations``
  steps with the same number of SLICES seen per batch size (so loss ratios compare equal data);
- ``monai b1``: MONAI's model (batch 1 only, MONAI#5886) in the same loop;
- ``loader``: milliseconds to read and prepare one training slice (``FastMRISliceDataset``), plain and with
  the flip/transpose augmentation (two FFTs per slice), as a ratio to plain.

    python bench/bench_varnet.py                      # CPU profile, 64 px, 4 coils, batches 1/4/8
    python bench/bench_varnet.py --profiles cpu full --size 256 --coils 16 --device cuda --batches 1 8 16
"""

from __future__ import annotations

import argparse
import glob
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scripts.core.masks import MaskSampler  # noqa: E402
from scripts.io.fastmri_h5 import num_slices, read_slice  # noqa: E402
from scripts.recon.varnet import FastMRISliceDataset, VarNetLoss, prepare_example, varnet_profile  # noqa: E402
from scripts.recon.varnet_model import build_varnet  # noqa: E402
from scripts.simulate.dataset import simulate_dataset  # noqa: E402


def monai_varnet(num_cascades, features, sens_features):
    """MONAI's own VarNet of the same size (the model this project used before)."""
    from monai.apps.reconstruction.networks.nets.coil_sensitivity_model import CoilSensitivityModel
    from monai.apps.reconstruction.networks.nets.complex_unet import ComplexUnet
    from monai.apps.reconstruction.networks.nets.varnet import VariationalNetworkModel

    sens_features = sens_features or (4, 8, 16, 32, 64, 4)  # MONAI's model always refines the ACS maps with a U-Net
    return VariationalNetworkModel(CoilSensitivityModel(spatial_dims=2, features=tuple(sens_features)),
                                   ComplexUnet(spatial_dims=2, features=tuple(features)), num_cascades=num_cascades)


def train_sampler(size: int, seed: int = 0) -> MaskSampler:
    """The study's training masks: equispaced, R in {4, 6, 8, 10}, centre fraction by image size."""
    return MaskSampler("equispaced", [4, 6, 8, 10], 0.04 if size >= 128 else 0.08, seed=seed)


def load_examples(folder: str, size: int, seed: int = 0) -> list[dict]:
    sampler = train_sampler(size, seed)
    rng = np.random.default_rng(seed)
    out = []
    for path in sorted(glob.glob(f"{folder}/train/*.h5")):
        for s in range(num_slices(path)):
            kspace = read_slice(path, s, ("kspace",))["kspace"]
            mask, _ = sampler.random(kspace.shape[-2:], rng)
            out.append(prepare_example(kspace, mask))
    return out


def batches(examples: list[dict], batch_size: int, steps: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        pick = [examples[i] for i in rng.integers(0, len(examples), batch_size)]
        yield (torch.stack([e["kspace"] for e in pick]), torch.stack([e["mask"] for e in pick]),
               torch.stack([e["target"] for e in pick]))


def train_steps(batch_size: int, slices: int, warmup: int = 3) -> int:
    """Steps of one bench row: ``slices`` training slices, at least ``warmup`` + 10 steps (the loss is the mean of
    the last 10)."""
    return max(warmup + 10, slices // batch_size)


def train(net, examples, batch_size, slices, device, lr, warmup=3) -> tuple[float, float]:
    """(seconds per step after ``warmup`` steps, mean loss of the last 10 steps) for ``slices`` training slices."""
    net = net.to(device).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = VarNetLoss()
    steps = train_steps(batch_size, slices, warmup)
    losses, t0 = [], None
    for i, (k, m, t) in enumerate(batches(examples, batch_size, steps)):
        if i == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        k, m, t = k.to(device), m.to(device), t.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out = net(k, m)
        loss = loss_fn(out.float(), t)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / (steps - warmup), float(np.mean(losses[-10:]))


def loader_ms(folder: str, size: int, augment: bool, repeats: int = 3) -> float:
    """Milliseconds per training item of ``FastMRISliceDataset`` (read, mask, optional augmentation, scaling)."""
    ds = FastMRISliceDataset(sorted(glob.glob(f"{folder}/train/*.h5")), train_sampler(size), augment=augment)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(repeats):
        for i in range(len(ds)):
            _ = ds[i]
    return (time.perf_counter() - t0) / (repeats * len(ds)) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profiles", nargs="+", default=["cpu"])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--coils", type=int, default=4)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--slices", type=int, default=640, help="training slices seen per batch size (equal data)")
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--skip_monai", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        simulate_dataset(tmp, num_subjects=args.subjects, slices_per_subject=8, image_size=args.size,
                         num_coils=args.coils, seed=0, split_fractions=(1.0, 0.0, 0.0))
        examples = load_examples(tmp, args.size)
        print(f"data: SIMULATED, {len(examples)} slices {args.size}x{args.size}, {args.coils} coils "
              f"({time.perf_counter() - t0:.0f} s); device {device}, threads {torch.get_num_threads()}")
        plain, augmented = loader_ms(tmp, args.size, False), loader_ms(tmp, args.size, True)
        print(f"loader: {plain:.1f} ms/slice plain, {augmented:.1f} with augmentation ({augmented / plain:.2f}x)")
    ex = examples[0]
    for profile in args.profiles:
        sizes = varnet_profile(profile)
        torch.manual_seed(0)
        ours = build_varnet(**sizes).eval()
        with torch.no_grad():
            ratio = float(ours(ex["kspace"][None], ex["mask"][None]).max() / ex["target"].max())
            line = f"[{profile}] init out/target: this VarNet {ratio:.2f}"
            if not args.skip_monai:
                torch.manual_seed(0)
                theirs = monai_varnet(**sizes).eval()
                line += f", MONAI VariationalNetworkModel {float(theirs(ex['kspace'][None], ex['mask'][None]).max() / ex['target'].max()):.2f}"
        print(line)
        runs = [(f"b{bs}", bs, build_varnet) for bs in args.batches]
        runs += [] if args.skip_monai else [("monai b1", 1, monai_varnet)]
        print(f"{'':10} {'s/step':>8} {'slices/s':>9} {'x b1':>6} {'loss':>8} {'x b1':>6} {'slices':>7}")
        base = None
        for name, bs, build in runs:  # each row as it comes: a time limit keeps the rows already measured
            torch.manual_seed(0)
            step, loss = train(build(**sizes), examples, bs, args.slices, device, args.lr)
            speed = bs / step
            base = base or (speed, loss)
            seen = bs * train_steps(bs, args.slices)
            print(f"{name:10} {step:8.3f} {speed:9.1f} {speed / base[0]:6.2f} {loss:8.4f} {loss / base[1]:6.2f} {seen:7d}",
                  flush=True)


if __name__ == "__main__":
    main()
