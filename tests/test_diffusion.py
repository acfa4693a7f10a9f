"""Conditional phase diffusion: representation, training workflow (resume, schedulers, DDP), inference.

Everything runs on CPU on tiny data made in a temp folder (32x32, UNet channels (8, 16),
attention at the lowest level only, 2-4 iterations).
"""

from __future__ import annotations

import json
import math
import os
import sys

import nibabel as nib
import numpy as np
import pytest
import sigpy
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

from conftest import ROOT, torchrun
from scripts.core.complex import apply_phase, circular_variance, complex_to_phasor, phasor_to_phase, wrap_phase
from scripts.io.checkpoint import latest_checkpoint, load_weights
from scripts.phase.diffusion import PhasePrepareBatch, PhaseSamplingInferer
from scripts.io.fastmri_h5 import write_fastmri
from archive_helpers import TINY_NET
from scripts.phase.data import LoadPhaseSliced, complex_slice, prepare_dataset, slice_datalist

TINY_TRAIN = {
    **TINY_NET,
    "max_epochs": 1,
    "batch_size": 2,
    "num_workers": 0,
    "val_interval": 1,
    "ckpt_interval": 1,
    "progress_bar": False,
    "simulate_if_missing": False,
}


# ------------------------------------------------------------------------------ data
def _phantom(rng, h=32, w=32, noise=0.02):
    yy, xx = np.mgrid[-1 : 1 : h * 1j, -1 : 1 : w * 1j]
    head = ((xx / 0.8) ** 2 + (yy / 0.9) ** 2 < 1).astype(float)
    mag = head * (1 + 0.3 * np.sin(5 * xx + rng.uniform(0, 3)))
    phase = 2 * xx * rng.uniform(-1, 1) + 1.5 * yy**2 + rng.uniform(-np.pi, np.pi)
    z = mag * np.exp(1j * phase) + noise * (rng.standard_normal((h, w)) + 1j * rng.standard_normal((h, w)))
    return z.astype(np.complex64), head.astype(bool)


def _coil_maps(num_coils, h=32, w=32):
    yy, xx = np.mgrid[-1 : 1 : h * 1j, -1 : 1 : w * 1j]
    maps = np.stack([np.exp(1j * c * xx) * (1 + 0.3 * c * yy) for c in range(num_coils)])
    return maps / np.sqrt(np.sum(np.abs(maps) ** 2, axis=0, keepdims=True))


def make_dataset(root, files=(2, 1, 1), slices=2, coils=2, with_complex=True, seed=0):
    """fastMRI-format files: kspace of S_c * z plus (optionally) image_complex = z."""
    rng = np.random.default_rng(seed)
    maps = _coil_maps(coils)
    for split, n in zip(("train", "val", "test"), files):
        for f in range(n):
            z = np.stack([_phantom(rng)[0] for _ in range(slices)])
            kspace = sigpy.fft(z[:, None] * maps[None], axes=(-2, -1), center=True, norm="ortho")
            extra = {"image_complex": z} if with_complex else {}
            write_fastmri(os.path.join(root, split, f"s{f}.h5"), kspace, extra=extra)
    return str(root)


def make_inputs(folder):
    """A NIfTI volume (30x28x3, not UNet-sized, first slice all zero), a PNG and a broken file."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(1)
    vol = np.abs(np.stack([_phantom(rng, 30, 28)[0] for _ in range(3)], axis=-1)).astype(np.float32) * 700
    vol[..., 0] = 0
    nib.save(nib.Nifti1Image(vol, np.diag([1.5, 1.5, 3.0, 1.0])), os.path.join(folder, "patient_smith.nii.gz"))
    png = np.abs(_phantom(rng)[0])
    Image.fromarray((255 * png / png.max()).astype(np.uint8)).save(os.path.join(folder, "scan.png"))
    with open(os.path.join(folder, "broken.png"), "wb") as f:
        f.write(b"not an image")
    return vol


def _workflow(config, workflow_type, **override):
    wf = ConfigWorkflow(
        config_file=config if isinstance(config, list) else str(ROOT / "configs" / config),
        workflow_type=workflow_type,
        meta_file=None,
        logging_file=False,
        run_id="run",
        **override,
    )
    wf.initialize()
    return wf


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    """A DDPM model trained for 2 iterations on tiny data; returns (bundle_root, dataset_dir)."""
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        base = tmp_path_factory.mktemp("phase")
        data = make_dataset(base / "data")
        wf = _workflow("train.json", "train", bundle_root=str(base / "bundle"), dataset_dir=data, **TINY_TRAIN)
        assert wf.check_properties() == []
        wf.run()
        wf.finalize()
    finally:
        os.chdir(cwd)
    return base / "bundle", data


@pytest.fixture
def in_root(monkeypatch):
    monkeypatch.chdir(ROOT)


def tiny_network():
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "common.json"))
    parser.update(TINY_NET)
    return parser.get_parsed_content("network_def"), parser


# ------------------------------------------------------------------------------ representation
def test_phasor_roundtrip_and_wrapping():
    rng = np.random.default_rng(0)
    phi = rng.uniform(-np.pi, np.pi, (16, 16))
    z = 3.0 * np.exp(1j * phi)
    p = complex_to_phasor(z)
    assert p.shape == (2, 16, 16) and p.dtype == np.float32
    np.testing.assert_allclose(phasor_to_phase(p, dim=0), phi, atol=1e-6)
    # any vector length; -pi (atan2 of a -0.0 sine) is mapped to +pi: range (-pi, pi]
    edge = torch.tensor([[-1.0, -2.0], [-0.0, 0.0]])  # rows: cos, sin
    out = phasor_to_phase(edge, dim=0)
    assert torch.all(out > -math.pi) and torch.all(out <= math.pi) and torch.allclose(out, torch.full((2,), math.pi))
    assert wrap_phase(np.array([-np.pi]))[0] == np.pi
    tz = torch.as_tensor(z)
    assert torch.allclose(complex_to_phasor(tz), torch.as_tensor(p), atol=1e-6)


def test_apply_phase_keeps_magnitude_exactly():
    rng = np.random.default_rng(0)
    mag = (rng.random((3, 40, 40)) * 8e5).astype(np.float32)  # scanner units (4h_GE peaks near 8e5)
    mag[0, :5] = 0
    phase = rng.uniform(-np.pi, np.pi, (4, 3, 40, 40))
    for z in (apply_phase(mag, phase), apply_phase(torch.as_tensor(mag), torch.as_tensor(phase)).numpy()):
        assert z.dtype == np.complex64
        rel = np.abs(np.abs(z) - mag) / np.maximum(mag, np.finfo(np.float32).tiny)
        assert rel.max() < 1e-6
        assert np.all(np.abs(z[:, 0, :5]) == 0)


def test_circular_variance():
    same = np.full((5, 4, 4), 2.0)
    assert np.allclose(circular_variance(same), 0, atol=1e-7)
    opposite = np.stack([np.zeros((4, 4)), np.full((4, 4), np.pi)])
    assert np.allclose(circular_variance(opposite), 1)
    uniform = np.linspace(-np.pi, np.pi, 8, endpoint=False)[:, None, None] * np.ones((1, 3, 3))
    assert np.allclose(circular_variance(torch.as_tensor(uniform)).numpy(), 1, atol=1e-6)
    # wrap-aware: phases straddling +-pi agree
    straddle = np.stack([np.full((2, 2), np.pi - 0.01), np.full((2, 2), -np.pi + 0.01)])
    assert circular_variance(straddle).max() < 1e-3


# ------------------------------------------------------------------------------ training batches
@pytest.mark.parametrize("kind", ["ddpm", "ddim", "rflow"])
def test_prepare_batch_targets(kind):
    _, parser = tiny_network()
    parser["scheduler_type"] = kind
    scheduler = parser.get_parsed_content("scheduler")
    batch = {"image": torch.randn(3, 2, 8, 8), "magnitude": torch.rand(3, 1, 8, 8)}
    images, target, args, kwargs = PhasePrepareBatch(scheduler)(batch)
    assert kwargs["mode"] == "concat" and torch.equal(kwargs["condition"], batch["magnitude"])
    if kind == "rflow":
        assert torch.allclose(target, images - kwargs["noise"])
        assert kwargs["timesteps"].dtype.is_floating_point
    else:
        assert torch.equal(target, kwargs["noise"])
    # deterministic mode (validation): same batch -> same noise and timesteps, global RNG untouched
    det = PhasePrepareBatch(scheduler, deterministic=True, seed=3)
    state = torch.get_rng_state()
    a, b = det(batch), det(batch)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a[3]["noise"], b[3]["noise"]) and torch.equal(a[3]["timesteps"], b[3]["timesteps"])


# ------------------------------------------------------------------------------ data
def test_slice_dataset_streams_from_h5(tmp_path):
    data = make_dataset(tmp_path / "d", files=(1, 1, 0), slices=3)
    items = slice_datalist(data, "train")
    assert items == [{"file": str(tmp_path / "d" / "train" / "s0.h5"), "slice": i} for i in range(3)]
    out = LoadPhaseSliced(spatial_size=(24, 40))(items[1])
    assert out["image"].shape == (2, 24, 40) and out["magnitude"].shape == (1, 24, 40)
    assert torch.allclose(out["image"].norm(dim=0), torch.ones(24, 40), atol=1e-5)
    # the background of the training target is noise: its phase is spread round the circle
    z, head = _phantom(np.random.default_rng(5), noise=0.02)
    ph = np.angle(z)[~head]
    assert abs(np.mean(np.exp(1j * ph))) < 0.15


def test_default_dataset_is_simulated_on_first_use(tmp_path, monkeypatch, in_root):
    import scripts.simulate.dataset

    calls = []

    def fake_simulate(output_dir, num_subjects, slices_per_subject, image_size, num_coils, seed, **kwargs):
        calls.append((num_subjects, slices_per_subject, image_size, num_coils, seed))
        make_dataset(output_dir, files=(1, 1, 0), slices=1)

    monkeypatch.setattr(scripts.simulate.dataset, "simulate_dataset", fake_simulate)
    with pytest.raises(FileNotFoundError, match="no fastMRI-format training data"):
        prepare_dataset(tmp_path / "absent", simulate=False)
    # train.json's default: <bundle_root>/data/simulated, made with common.json's size and coils
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "train.json"))
    parser["bundle_root"] = str(tmp_path)
    made = parser.get_parsed_content("prepared_dataset_dir")
    assert made == os.path.join(str(tmp_path), "data", "simulated") and len(slice_datalist(made, "train")) == 1
    common = json.loads((ROOT / "configs" / "common.json").read_text())
    sizes = parser.get_parsed_content("sim_subjects"), parser.get_parsed_content("sim_slices_per_subject")
    assert calls == [(*sizes, common["image_size"], common["num_coils"], common["seed"])]
    prepare_dataset(made)  # present: not simulated again
    assert len(calls) == 1


def test_espirit_fallback_for_real_multicoil_files(tmp_path):
    """No image_complex (real fastMRI): ESPIRiT coil combination recovers the complex image; cached."""
    data = make_dataset(tmp_path / "d", files=(1, 0, 0), slices=1, coils=4, with_complex=False, seed=2)
    path = os.path.join(data, "train", "s0.h5")
    rng = np.random.default_rng(2)
    truth, head = _phantom(rng)
    cache = tmp_path / "cache"
    z = complex_slice(path, 0, cache_dir=cache)
    assert z.shape == (32, 32) and z.dtype == np.complex64
    # maps are phase-referenced to coil 0, which has zero phase here: phase matches the truth
    w = np.abs(truth) * head
    coherence = np.abs(np.sum(w * np.exp(1j * (np.angle(z) - np.angle(truth))))) / np.sum(w)
    assert coherence > 0.98
    # crop=0: the background keeps its noise (random phase), not exact zeros
    assert np.all(np.abs(z[~head]) > 0)
    files = list(cache.glob("*.npy"))
    assert len(files) == 1
    np.testing.assert_array_equal(complex_slice(path, 0, cache_dir=cache), z)
    with pytest.raises(Exception, match="image_complex"):
        complex_slice(path, 0, complex_source="image_complex")


# ------------------------------------------------------------------------------ training workflow
def test_train_writes_weights_loadable_weights_only(trained):
    bundle, _ = trained
    net, _ = tiny_network()
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    net.load_state_dict(state)
    assert net.conv_in.conv.in_channels == 3  # 2 phasor channels + the magnitude (concat conditioning)
    assert latest_checkpoint(bundle / "models") is not None
    assert any((bundle / "runs").rglob("events.out.tfevents*"))  # TensorBoard by default


def test_resume_continues_from_checkpoint(tmp_path, in_root):
    data = make_dataset(tmp_path / "data")  # 4 train slices, batch 2: 2 iterations per epoch
    models = os.path.join(str(tmp_path / "bundle"), "models")
    # no validation (its data loader draws from the global RNG) and no flips: runs are reproducible
    settings = {**TINY_TRAIN, "val_interval": 100, "rand_flip_prob": 0.0}

    def run(bundle, max_epochs, hook=None):
        wf = _workflow("train.json", "train", bundle_root=str(bundle), dataset_dir=data, **{**settings, "max_epochs": max_epochs})
        trainer = wf.parser.get_parsed_content("train#trainer")
        seen = []
        trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append(e.state.iteration))
        if hook:
            trainer.add_event_handler(Events.ITERATION_STARTED, hook)
        wf.run()
        return seen, trainer

    def final_weights(bundle):
        return torch.load(os.path.join(str(bundle), "models", "checkpoint_final.pt"), weights_only=True)["model"]

    assert run(tmp_path / "straight", 2)[0] == [1, 2, 3, 4]
    assert run(tmp_path / "bundle", 1)[0] == [1, 2]
    assert torch.load(latest_checkpoint(models), weights_only=True)["trainer"]["iteration"] == 2
    seen, trainer = run(tmp_path / "bundle", 2)  # resumes at iteration 2, not 0
    assert seen == [3, 4] and trainer.state.epoch == 2
    # model, optimizer, trainer and RNG state restored: the same weights as the uninterrupted run
    straight, resumed = final_weights(tmp_path / "straight"), final_weights(tmp_path / "bundle")
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)

    # "killed" mid-epoch 3 after iteration 5 was checkpointed: only iteration 6 remains of max_epochs=3
    def kill(engine):
        if engine.state.iteration == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "bundle", 3, kill)
    os.remove(os.path.join(models, "checkpoint_final.pt"))  # a SIGKILL leaves no final checkpoint
    assert torch.load(latest_checkpoint(models), weights_only=True)["trainer"]["iteration"] == 5
    seen, trainer = run(tmp_path / "bundle", 3)
    assert seen == [6] and trainer.state.epoch == 3
    # a partial (corrupt) newest file is skipped in favour of the previous checkpoint
    with open(os.path.join(models, "checkpoint_iteration=99.pt"), "wb") as f:
        f.write(b"truncated")
    assert torch.load(latest_checkpoint(models), weights_only=True)["trainer"]["iteration"] == 6


@pytest.mark.parametrize("kind", ["ddim", "rflow"])
def test_each_scheduler_trains_and_samples(kind, tmp_path, in_root, trained):
    _, data = trained
    bundle = tmp_path / "bundle"
    wf = _workflow("train.json", "train", bundle_root=str(bundle), dataset_dir=data, scheduler_type=kind, **TINY_TRAIN)
    wf.run()
    loss = wf.parser.get_parsed_content("train#trainer").state.output[0]["loss"]
    assert np.isfinite(float(loss))
    net, parser = tiny_network()
    parser["scheduler_type"] = kind
    load_weights(net, bundle / "models" / "model.pt")
    inferer = PhaseSamplingInferer(parser.get_parsed_content("sampler"), num_inference_steps=4, num_samples=2, seed=0)
    out = inferer(torch.rand(1, 1, 32, 32), net.eval())
    assert out.shape == (1, 2, 32, 32) and inferer.last_nfe == 4
    assert torch.all(out > -math.pi) and torch.all(out <= math.pi)


def test_ddpm_samples(trained):
    bundle, _ = trained
    net, parser = tiny_network()
    load_weights(net, bundle / "models" / "model.pt")
    sched = parser.get_parsed_content("schedulers#ddpm")
    inferer = PhaseSamplingInferer(sched, num_inference_steps=5, num_samples=1, seed=0, output="phasor")
    out = inferer(torch.rand(2, 1, 32, 32), net.eval())
    assert out.shape == (2, 1, 2, 32, 32) and torch.allclose(out.norm(dim=2), torch.ones(2, 1, 32, 32), atol=1e-5)


# ------------------------------------------------------------------------------ sampling
def test_inferer_seeded_padded_and_conditioned(trained):
    net, parser = tiny_network()  # a fresh DiffusionModelUNet outputs exactly 0 (zero-initialised last conv)
    load_weights(net, trained[0] / "models" / "model.pt").eval()
    inferer = PhaseSamplingInferer(parser.get_parsed_content("schedulers#ddim"), num_inference_steps=3, num_samples=3, seed=7)
    rng = np.random.default_rng(0)
    mag = torch.as_tensor(np.abs(_phantom(rng, 30, 28)[0]))[None, None]
    a, b = inferer(mag, net), inferer(mag, net)
    assert a.shape == (1, 3, 30, 28)  # 30x28 is not divisible by 2: padded and cropped back
    assert a.numpy().tobytes() == b.numpy().tobytes()  # same seed, same bytes
    assert not torch.equal(a[0, 0], a[0, 1])  # the samples differ
    assert not torch.equal(a, PhaseSamplingInferer(inferer.scheduler, 3, 3, seed=8)(mag, net))
    # concat conditioning is used: same noise (explicit seed), different magnitude -> different phase.
    # (RFlow: no x0 clipping, which saturates a barely trained network's DDIM output to +-1 phasors)
    flow = PhaseSamplingInferer(parser.get_parsed_content("schedulers#rflow"), num_inference_steps=3, num_samples=1)
    other = torch.as_tensor(np.abs(_phantom(rng, 30, 28)[0]))[None, None]
    x1, x2 = flow(mag, net, seed=123), flow(other, net, seed=123)
    assert torch.equal(x1, flow(mag, net, seed=123))
    assert (x1 - x2).abs().max() > 1e-4


@pytest.mark.parametrize("kind", ["ddim", "rflow", "ddpm"])
def test_inferer_runs_under_bf16_autocast(trained, kind):
    """Mixed-precision sampling (bf16 autocast, as on a GPU; checked with CPU autocast): the network runs in low
    precision, the scheduler in float32; the phase stays float32 and close to the float32 result."""
    net, parser = tiny_network()
    load_weights(net, trained[0] / "models" / "model.pt").eval()
    inferer = PhaseSamplingInferer(parser.get_parsed_content(f"schedulers#{kind}"), num_inference_steps=3, num_samples=1)
    mag = torch.as_tensor(np.abs(_phantom(np.random.default_rng(0))[0]))[None, None]
    ref = inferer(mag, net, seed=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = inferer(mag, net, seed=1)
    assert out.dtype == torch.float32 and out.shape == ref.shape and torch.isfinite(out).all()
    assert float(torch.angle(torch.exp(1j * (out - ref))).abs().mean()) < 0.5


# ------------------------------------------------------------------------------ inference workflow
def test_inference_workflow(trained, tmp_path, in_root):
    bundle, _ = trained
    vol = make_inputs(tmp_path / "in")
    out = tmp_path / "out"
    wf = _workflow("inference.json", "infer", bundle_root=str(bundle), input_dir=str(tmp_path / "in"),
                   ckpt_path=str(bundle / "models" / "model.pt"), output_dir=str(out), num_inference_steps=3, num_samples=2, **TINY_NET)
    assert wf.check_properties() == []
    wf.run()
    first = {p.name: np.asarray(nib.load(p).dataobj) for p in out.glob("*.nii.gz")}
    wf.run()  # the same seed again: the same bytes
    wf.finalize()
    report = json.loads((out / "report.json").read_text())
    assert [s["reason"] for s in report["skipped"]] == ["not a readable PNG image file (UnidentifiedImageError)"]
    assert sorted(w["kind"] for w in report["written"]) == ["nifti", "png"]
    names = sorted(os.listdir(out))
    assert not any("smith" in n or "scan" in n for n in names)  # ids, never input names
    nifti = next(w for w in report["written"] if w["kind"] == "nifti")
    vid = nifti["id"]
    ref = nib.load(tmp_path / "in" / "patient_smith.nii.gz")
    for k in range(2):
        img = nib.load(out / f"{vid}_sample{k}.nii.gz")
        z = np.asarray(img.dataobj)
        assert z.dtype == np.complex64 and z.shape == vol.shape
        np.testing.assert_allclose(img.affine, ref.affine)
        rel = np.abs(np.abs(z) - vol) / np.maximum(vol, np.finfo(np.float32).tiny)
        assert rel.max() < 1e-6  # exactly the input magnitude
        assert np.all(z[..., 0] == 0)  # the all-zero slice stays zero
        phase = np.angle(z)  # float32: (-pi, pi] in float32, and in float64 too
        assert phase.min() > np.float32(-np.pi) and phase.max() <= np.float32(np.pi)
        assert np.angle(z.astype(np.complex128)).min() > -np.pi
        assert z.tobytes() == first[f"{vid}_sample{k}.nii.gz"].tobytes()
    spread = np.asarray(nib.load(out / f"{vid}_phase_spread.nii.gz").dataobj)
    assert spread.shape == vol.shape and spread.min() >= 0 and spread.max() <= 1
    for name in (f"{vid}_magnitude.png", f"{vid}_sample0_phase.png", f"{vid}_phase_spread.png"):
        assert Image.open(out / name).size == (vol.shape[1], vol.shape[0])


# ------------------------------------------------------------------------------ multi-GPU config (2 CPU processes)
def test_multi_gpu_config_ddp_two_cpu_processes(trained, tmp_path):
    _, data = trained
    bundle = tmp_path / "bundle"
    configs = "['configs/train.json','configs/multi_gpu_train.json']"
    args = ["-m", "monai.bundle", "run", "training", "--config_file", configs, "--bundle_root", str(bundle),
            "--dataset_dir", data, "--max_epochs", "2", "--batch_size", "1"]
    for k, v in TINY_TRAIN.items():
        if k not in ("max_epochs", "batch_size"):
            args += [f"--{k}", repr(v)]
    proc = torchrun(args, clean=bundle)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-3000:]}"
    ckpt = torch.load(latest_checkpoint(bundle / "models"), weights_only=True)
    # 4 training slices over 2 ranks with batch 1: 2 iterations per epoch on each rank
    assert ckpt["trainer"]["iteration"] == 4 and ckpt["trainer"]["epoch_length"] == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])  # saved unwrapped from DDP
    assert (bundle / "models" / "model.pt").exists()
