"""VarNet training (each mask type), resume, checkpoints and the evaluator, on tiny fastMRI files."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
import sigpy
import sigpy.mri
import torch

from conftest import ROOT
from scripts.io.fastmri_h5 import write_fastmri
from scripts.core.masks import MaskSampler, make_mask, to_varnet_mask
from scripts.io.checkpoint import latest_checkpoint
from scripts.recon.varnet import (
    FastMRISliceDataset,
    augment_slice,
    list_h5,
    load_varnet,
    prepare_example,
    prepare_varnet_batch,
    train_varnet,
    varnet_profile,
)
from scripts.recon.varnet_model import build_varnet

SIZE, COILS = 48, 4
TINY = {"num_cascades": 1, "features": [4, 4, 8, 16, 32, 4], "sens_features": [2, 2, 4, 8, 16, 2]}
FAST = {"val_max_slices": 2, "checkpoint_interval": 1, "varnet_kwargs": TINY, "device": "cpu"}


def _write_tiny_dataset(root: Path, slices: int = 2, seed: int = 0) -> Path:
    """Elliptical phantoms with smooth phase, birdcage coils, a little noise: train 2 / val 1 / test 1 volumes."""
    rng = np.random.default_rng(seed)
    maps = sigpy.mri.birdcage_maps((COILS, SIZE, SIZE)).astype(np.complex64)
    y, x = np.mgrid[-1 : 1 : SIZE * 1j, -1 : 1 : SIZE * 1j]
    for split, count in (("train", 2), ("val", 1), ("test", 1)):
        for v in range(count):
            vol = []
            for _ in range(slices):
                a, b = rng.uniform(0.5, 0.8, 2)
                mag = ((x / a) ** 2 + (y / b) ** 2 < 1) * (1 + 0.5 * np.sin(rng.uniform(2, 6) * x + rng.uniform(0, 3)))
                img = mag * np.exp(1j * (rng.uniform(-1, 1) * x + rng.uniform(-1, 1) * y))
                k = sigpy.fft(maps * img, axes=(-2, -1), center=True, norm="ortho")
                vol.append(k + 1e-3 * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape)))
            write_fastmri(root / split / f"vol{v}.h5", np.stack(vol))
    return root


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    return _write_tiny_dataset(tmp_path_factory.mktemp("fastmri"))


@pytest.fixture(scope="module")
def trained(dataset_dir, tmp_path_factory) -> Path:
    """One equispaced model trained for 1 epoch of 2 iterations (shared by the resume and evaluator tests)."""
    out = tmp_path_factory.mktemp("varnet_equispaced")
    return train_varnet(dataset_dir, out, accelerations=[4, 8], mask_type="equispaced", epochs=1, epoch_length=2, **FAST)


# ---------------------------------------------------------------------------------------------------------------------
def test_profiles_come_from_the_config():
    full = build_varnet(**varnet_profile("full"))
    assert len(full.cascades) == 12
    assert varnet_profile("cpu")["num_cascades"] == 4
    with pytest.raises(ValueError, match="unknown VarNet profile"):
        varnet_profile("huge")


def _perturbed(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """The network with every weight moved (its residual branches start at zero: a batching bug could hide)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return net.eval()


def test_batched_varnet_equals_batch_one_with_each_mask():
    torch.manual_seed(0)
    net = _perturbed(build_varnet(**TINY))
    kspace = torch.randn(3, COILS, 32, 32, 2)
    masks = [to_varnet_mask(make_mask("equispaced", (32, 32), r, 0.1, seed=s)) for r, s in ((4, 0), (8, 1), (6, 2))]
    batch_mask = torch.cat(masks)  # (3, 1, 1, 32, 1): one mask per sample
    with torch.no_grad():
        batched = net(kspace * batch_mask, batch_mask)
        single = torch.cat([net(kspace[i : i + 1] * m, m) for i, m in enumerate(masks)])
    assert tuple(batched.shape) == (3, 32, 32)
    torch.testing.assert_close(batched, single, rtol=1e-4, atol=1e-5)
    mask2d = torch.cat([to_varnet_mask(make_mask("poisson", (32, 32), 4, 0.1, seed=s)) for s in (0, 1)])
    assert tuple(mask2d.shape) == (2, 1, 32, 32, 1)
    with torch.no_grad():
        out = net(kspace[:2] * mask2d, mask2d)
        one = net(kspace[1:2] * mask2d[1:], mask2d[1:])
    torch.testing.assert_close(out[1:], one, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="2 masks for a batch of 3"):
        net(kspace, mask2d)


def test_dataset_streams_slices_and_scales(dataset_dir):
    files = list_h5(dataset_dir, "train")
    ds = FastMRISliceDataset(files, MaskSampler("equispaced", [4], 0.08), crop_size=(40, 40), fixed_masks=True)
    assert len(ds) == 4
    item = ds[3]
    assert tuple(item["kspace"].shape) == (COILS, SIZE, SIZE, 2) and item["kspace"].dtype == torch.float32
    assert tuple(item["mask"].shape) == (1, 1, SIZE, 1) and item["mask"].dtype == torch.bool
    assert tuple(item["target"].shape) == (40, 40)
    assert float(item["zero_filled"].max()) == pytest.approx(float(item["scale"]), rel=1e-5)  # scale = zero-filled max
    again = FastMRISliceDataset(files, MaskSampler("equispaced", [4], 0.08), crop_size=(40, 40), fixed_masks=True)[3]
    assert torch.equal(item["mask"], again["mask"])
    assert ds.shapes == [(COILS, SIZE, SIZE)] * 4  # batches group items of one k-space shape, coil count included
    batch = torch.utils.data.default_collate([item, ds[0]])
    kspace, target, (mask,), kwargs = prepare_varnet_batch(batch, "cpu")
    assert tuple(mask.shape) == (2, 1, 1, SIZE, 1) and tuple(kspace.shape) == (2, COILS, SIZE, SIZE, 2) and kwargs == {}


def test_full_mask_reproduces_the_stored_rss(dataset_dir):
    from scripts.io.fastmri_h5 import read_slice

    data = read_slice(list_h5(dataset_dir, "val")[0], 1, keys=("kspace", "reconstruction_rss"))
    ex = prepare_example(data["kspace"], np.ones((1, SIZE), bool), data["reconstruction_rss"])
    np.testing.assert_allclose(ex["zero_filled"].numpy(), data["reconstruction_rss"], rtol=1e-4, atol=1e-6)
    # and VarNet's FFT convention is the file's: its inverse FFT of the input is the same RSS
    from monai.apps.reconstruction.complex_utils import complex_abs_t
    from monai.apps.reconstruction.mri_utils import root_sum_of_squares_t
    from monai.networks.blocks.fft_utils_t import ifftn_centered_t

    img = root_sum_of_squares_t(complex_abs_t(ifftn_centered_t(ex["kspace"], spatial_dims=2)), spatial_dim=0)
    np.testing.assert_allclose(img.numpy() * float(ex["scale"]), data["reconstruction_rss"], rtol=1e-4, atol=1e-6)


def _orientations(image: np.ndarray) -> list[np.ndarray]:
    flips = [image, image[:, ::-1], image[::-1], image[::-1, ::-1]]
    return flips + [f.T for f in flips]


def test_augmented_slices_keep_kspace_and_target_consistent(dataset_dir):
    """Each of the 8 orientations: the RSS of the augmented k-space is the augmented stored target (the same
    pixels), op 0 is the identity, and the 8 are distinct."""
    from scripts.io.fastmri_h5 import read_slice, rss

    data = read_slice(list_h5(dataset_dir, "val")[0], 0, keys=("kspace", "reconstruction_rss"))
    expected = _orientations(data["reconstruction_rss"])
    outs = []
    for op in range(8):
        kspace, target = augment_slice(data["kspace"], data["reconstruction_rss"], op)
        assert kspace.shape == data["kspace"].shape and kspace.dtype == np.complex64
        np.testing.assert_allclose(rss(kspace), target, rtol=1e-4, atol=1e-5 * target.max())
        outs.append(target)
    assert augment_slice(data["kspace"], None, 0)[0] is data["kspace"]
    for op, target in enumerate(outs):  # bit 0 flips columns, bit 1 rows, bit 2 transposes after the flips
        np.testing.assert_array_equal(target, expected[op])
    assert len({t.tobytes() for t in outs}) == 8


def test_augment_ops_keep_shapes_and_centred_crops():
    ops = FastMRISliceDataset.augment_ops
    assert ops((48, 48), None) == list(range(8))
    assert ops((640, 368), (320, 320)) == [0, 1, 2, 3]  # not square: no transposes
    assert ops((641, 368), (320, 320)) == [0, 1]  # odd row margin: flipping the rows would shift the crop


def test_only_training_items_are_augmented_and_reproducibly(dataset_dir):
    """augment=True: a training item's target is one orientation of the stored slice (scaled by its own
    zero-filled max), several orientations occur, the same torch seed gives the same items, and fixed-mask
    (validation) items are never augmented."""
    from scripts.io.fastmri_h5 import read_slice

    files = list_h5(dataset_dir, "train")
    sampler = MaskSampler("equispaced", [4], 0.08)
    seen = set()
    for seed in range(6):
        torch.manual_seed(seed)
        item = FastMRISliceDataset(files, sampler, augment=True)[1]
        torch.manual_seed(seed)
        assert torch.equal(item["kspace"], FastMRISliceDataset(files, sampler, augment=True)[1]["kspace"])
        stored = read_slice(files[0], 1, keys=("reconstruction_rss",))["reconstruction_rss"]
        target = item["target"].numpy() * float(item["scale"])
        match = [k for k, o in enumerate(_orientations(stored)) if np.allclose(target, o, rtol=1e-5, atol=1e-6)]
        assert len(match) == 1
        seen.add(match[0])
    assert len(seen) > 1
    plain = FastMRISliceDataset(files, sampler, fixed_masks=True)[1]
    fixed = FastMRISliceDataset(files, sampler, fixed_masks=True, augment=True)[1]
    assert torch.equal(plain["kspace"], fixed["kspace"]) and torch.equal(plain["target"], fixed["target"])


def test_config_augments_the_training_set_only(dataset_dir):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "train_varnet.json"))
    assert parser["augment"] is False  # the measured data as it is, unless asked (the study asks)
    parser.update({"bundle_root": str(ROOT), "dataset_dir": str(dataset_dir), "augment": True})
    assert parser.get_parsed_content("train#dataset").augment
    assert not parser.get_parsed_content("validate#dataset").augment


def test_validation_batches_slices_and_gives_the_batch_one_metric(dataset_dir, tmp_path):
    """Validation runs at the training batch size (one fixed mask per slice, every slice once, in order)
    and scores the same as one slice at a time: a GPU validates 320 slices in seconds, not a minute."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "train_varnet.json"))
    parser.update({"bundle_root": str(ROOT), "dataset_dir": str(dataset_dir), "batch_size": 2})
    loader = parser.get_parsed_content("validate#dataloader")
    batches = list(loader)
    dataset = parser.get_parsed_content("validate#dataset")
    assert [len(b["fname"]) for b in batches] == [2] == [len(dataset)]  # the tiny val split: one volume of 2 slices
    assert all(torch.equal(batches[0]["mask"][i], dataset[i]["mask"]) for i in range(2))
    best = {}
    for val_batch in (1, 2):
        out = tmp_path / f"b{val_batch}"
        train_varnet(dataset_dir, out, accelerations=[4, 8], epochs=1, epoch_length=1, val_batch_size=val_batch,
                     **{**FAST, "val_max_slices": None})
        best[val_batch] = json.loads((out / "best_metric.json").read_text())["best_metric"]
    assert best[1] == pytest.approx(best[2], abs=1e-6)


@pytest.mark.parametrize("mask_type", ["random", "poisson"])
def test_train_two_iterations_each_mask_type(dataset_dir, tmp_path, mask_type):
    best = train_varnet(dataset_dir, tmp_path, accelerations=[4], mask_type=mask_type, epochs=1, epoch_length=2,
                        augment=mask_type == "random", **FAST)
    assert best == tmp_path / "model.pt" and best.is_file()
    state = torch.load(best, weights_only=True)
    assert "cascades.0.dc_weight" in state
    resume = torch.load(latest_checkpoint(tmp_path), weights_only=True)
    assert set(resume) == {"model", "optimizer", "lr_scheduler", "trainer"} and resume["trainer"]["iteration"] == 2
    assert json.loads((tmp_path / "varnet.json").read_text()) == TINY
    assert list((tmp_path / "logs").glob("events.out.tfevents.*"))


def test_equispaced_training_and_checkpoints(trained):
    out = trained.parent
    assert trained.name == "model.pt"
    net = load_varnet(trained)  # weights_only=True inside
    assert len(net.cascades) == 1
    for p in out.glob("*.pt"):
        torch.load(p, weights_only=True)
    best = json.loads((out / "best_metric.json").read_text())
    assert 0.0 <= best["best_metric"] <= 1.0 and best["best_metric_epoch"] == 1


def test_resume_continues_from_the_saved_iteration(dataset_dir, trained, tmp_path):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained.parent, out)
    before = torch.load(out / "checkpoint_final_iteration=2.pt", weights_only=True)["model"]
    # same max_epochs: the restored trainer is already done, nothing trains again
    train_varnet(dataset_dir, out, accelerations=[4, 8], epochs=1, epoch_length=2, **FAST)
    assert latest_checkpoint(out).endswith("iteration=2.pt")
    after = torch.load(out / "checkpoint_final_iteration=2.pt", weights_only=True)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    # one more epoch: continues at iteration 3 and stops at 4
    train_varnet(dataset_dir, out, accelerations=[4, 8], epochs=2, epoch_length=2, **FAST)
    final = torch.load(latest_checkpoint(out), weights_only=True)
    assert final["trainer"]["iteration"] == 4 and final["trainer"]["max_epochs"] == 2
    assert any(not torch.equal(final["model"][k], before[k]) for k in before)
    assert json.loads((out / "best_metric.json").read_text())["best_metric_epoch"] in (1, 2)


def test_evaluator_writes_slice_and_volume_csvs(dataset_dir, trained, tmp_path):
    from scripts.recon.evaluate import evaluate_varnet

    out = tmp_path / "eval"
    res = evaluate_varnet(trained, dataset_dir, out, accelerations=[4, 8], center_fraction=0.1, label="gt", l1_max_iter=20)
    files = {p.name for p in out.glob("*.csv")}
    assert files == {"slice_metrics.csv", "volume_metrics.csv", "summary.csv"}
    with open(out / "slice_metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 3 * 2  # slices x methods x R
    assert {r["method"] for r in rows} == {"varnet", "zero_filled", "l1_wavelet"}
    assert {float(r["acceleration"]) for r in rows} == {4.0, 8.0}
    assert all(np.isfinite(float(r[m])) for r in rows for m in ("nmse", "psnr", "ssim"))
    with open(out / "volume_metrics.csv") as f:
        vols = list(csv.DictReader(f))
    assert len(vols) == 3 * 2 and all(v["label"] == "gt" for v in vols)
    assert {(s["method"], s["acceleration"]) for s in res["summary"]} == {(m, r) for m in ("varnet", "zero_filled", "l1_wavelet") for r in (4.0, 8.0)}
    l1 = {s["acceleration"]: s for s in res["summary"] if s["method"] == "l1_wavelet"}
    zf = {s["acceleration"]: s for s in res["summary"] if s["method"] == "zero_filled"}
    assert l1[4.0]["nmse"] < zf[4.0]["nmse"]  # CS beats zero filling on this easy phantom
    # fixed masks: a second run (references only) gives the same zero-filled numbers
    again = evaluate_varnet(None, dataset_dir, accelerations=[4, 8], center_fraction=0.1, methods=["zero_filled"])
    assert [r["nmse"] for r in again["slices"]] == [r["nmse"] for r in res["slices"] if r["method"] == "zero_filled"]


def test_evaluator_batches_across_slices_with_the_same_numbers(dataset_dir, trained):
    """(slice, R) items batched across slice boundaries (3 items: 1.5 slices at 2 R) give every method's per-slice
    metrics of the one-slice-at-a-time evaluation, in the same order."""
    from scripts.recon.evaluate import evaluate_varnet

    kwargs = {"accelerations": [4, 8], "center_fraction": 0.1, "l1_max_iter": 20, "n_bootstrap": 10}
    one = evaluate_varnet(trained, dataset_dir, batch_size=1, **kwargs)["slices"]
    three = evaluate_varnet(trained, dataset_dir, batch_size=3, **kwargs)["slices"]
    assert [(r["file"], r["method"], r["acceleration"], r["slice"]) for r in one] == \
        [(r["file"], r["method"], r["acceleration"], r["slice"]) for r in three]
    for a, b in zip(one, three):
        for m in ("psnr", "ssim", "nmse"):
            assert b[m] == pytest.approx(a[m], rel=1e-4, abs=1e-6), (a["method"], a["acceleration"], m)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate_varnet(trained, dataset_dir, batch_size=0, **kwargs)


def test_l1_images_batch_keeps_each_items_place_when_espirit_fails_for_one(dataset_dir, caplog):
    """One k-space per mask: the item whose ACS is one column gets a NaN image and a warning naming it, the
    others their own image (as computed alone); mismatched lists are refused."""
    from scripts.io.fastmri_h5 import read_slice
    from scripts.recon.evaluate import l1_wavelet_images

    kspaces = [read_slice(f, s, ("kspace",))["kspace"] for f in list_h5(dataset_dir, "train")[:1] for s in range(2)]
    good = np.zeros((1, SIZE), dtype=bool)
    good[:, ::2] = True
    good[:, SIZE // 2 - 4 : SIZE // 2 + 4] = True
    bad = np.zeros((1, SIZE), dtype=bool)
    bad[:, ::2] = True
    bad[:, SIZE // 2 - 1 : SIZE // 2 + 1] = False
    bad[:, SIZE // 2] = True  # a 1-column ACS: too small for ESPIRiT
    args = ((SIZE, SIZE), 0.003, 10)
    with caplog.at_level("WARNING"):
        images = l1_wavelet_images([kspaces[0]] + kspaces, [bad, good, good], [1.0, 2.0, 1.0], *args,
                                   where=["a R=4", "a R=2", "b R=2"])
    alone = l1_wavelet_images(kspaces[1:], [good], [1.0], *args)[0]
    assert np.isnan(images[0]).all() and np.isfinite(images[1]).all() and np.isfinite(images[2]).all()
    np.testing.assert_allclose(images[2], alone, rtol=1e-4, atol=1e-5 * float(alone.max()))
    assert "a R=4" in caplog.text and "R=2" not in caplog.text
    with pytest.raises(ValueError, match="one each per image"):
        l1_wavelet_images(kspaces, [good], [1.0], *args)


def test_summary_intervals_resample_volumes():
    """The summary CI treats a volume's slices as one unit; a single volume gets no interval."""
    from scripts.recon.evaluate import format_summary, summarize

    rng = np.random.default_rng(0)
    common = {"label": "x", "method": "varnet", "acceleration": 4.0}
    slices, volumes = [], []
    for v in range(6):
        level = rng.normal(0.8, 0.05)  # volumes differ, their slices barely do
        rows = [{**common, "file": f"f{v}", "slice": s, "nmse": 0.01, "psnr": 30.0, "ssim": level + 1e-3 * rng.standard_normal()}
                for s in range(8)]
        slices += rows
        volumes.append({**common, "file": f"f{v}", "nmse": 0.01, "psnr": 30.0, "ssim": np.mean([r["ssim"] for r in rows])})
    row = summarize(slices, volumes, n_bootstrap=2000)[0]
    width = row["ssim_ci_high"] - row["ssim_ci_low"]
    means = [v["ssim"] for v in volumes]
    expected = 2 * 1.96 * np.std(means) / np.sqrt(len(means))  # the spread of volume means, not of 48 slices
    assert row["volumes"] == 6 and row["slices"] == 48 and width == pytest.approx(expected, rel=0.35)
    one = summarize(slices[:8], volumes[:1])[0]
    assert one["ssim_ci_low"] == one["ssim_slice_mean"] == one["ssim_ci_high"]
    assert "- (1 volume)" in format_summary([one]) and "- (1 volume)" not in format_summary([row])


def test_evaluate_config_workflow(dataset_dir, trained, tmp_path):
    from monai.bundle import ConfigWorkflow

    wf = ConfigWorkflow(
        config_file=str(ROOT / "configs" / "evaluate.json"), logging_file=False, workflow_type=None, run_id="evaluate",
        bundle_root=str(ROOT), model=str(trained), test_dir=str(dataset_dir), output_dir=str(tmp_path),
        accelerations=[6], methods=["varnet", "zero_filled"], device="$torch.device('cpu')",
    )
    wf.initialize()
    wf.run()
    with open(tmp_path / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert {r["method"] for r in summary} == {"varnet", "zero_filled"}


def test_reference_rows_on_real_4coil_slice(real_dir, tmp_path, capsys):
    """Zero-filled and L1-wavelet on the real 4-coil GE slice (image-domain coil images -> k-space), R = 4."""
    import scipy.io

    from scripts.recon.evaluate import evaluate_varnet, format_summary

    coil_images = scipy.io.loadmat(real_dir / "brain_4coil" / "4h_GE.mat")["DATA"].transpose(2, 0, 1)
    kspace = sigpy.fft(coil_images, axes=(-2, -1), center=True, norm="ortho")
    write_fastmri(tmp_path / "test" / "4h_GE.h5", kspace[None])
    t0 = time.perf_counter()
    res = evaluate_varnet(None, tmp_path, accelerations=[4], n_bootstrap=10)
    with capsys.disabled():
        print(f"\nreal 4h_GE, equispaced cf 0.04 ({time.perf_counter() - t0:.1f} s)\n" + format_summary(res["summary"]))
    zf, l1 = (next(r for r in res["summary"] if r["method"] == m) for m in ("zero_filled", "l1_wavelet"))
    assert l1["nmse"] < zf["nmse"] and l1["psnr"] > zf["psnr"]


def test_multi_gpu_config_trains_batches_on_two_cpu_processes(dataset_dir, tmp_path):
    """``configs/multi_gpu_train_varnet.json`` under torchrun (gloo on CPU): each rank takes its share of the
    shape batches; one unwrapped checkpoint."""
    from conftest import torchrun

    out = tmp_path / "ddp"
    args = {"dataset_dir": str(dataset_dir), "output_dir": str(out), "accelerations": [4], "epochs": 1, "batch_size": 1,
            "val_max_slices": 1, "progress_bar": False, "varnet_kwargs": TINY, "center_fractions": 0.08}
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps(args))
    configs = "['configs/train_varnet.json','configs/multi_gpu_train_varnet.json']"
    proc = torchrun(["-m", "monai.bundle", "run", "training", "--config_file", configs, "--bundle_root", str(ROOT),
                     "--args_file", str(args_file)], clean=out)
    assert proc.returncode == 0, f"stdout:\n{proc.stdout[-2000:]}\nstderr:\n{proc.stderr[-3000:]}"
    ckpt = torch.load(latest_checkpoint(out), weights_only=True)
    assert ckpt["trainer"]["iteration"] == 2  # 4 training slices, batch 1, 2 ranks: 2 steps on each
    assert not any(k.startswith("module.") for k in ckpt["model"])
    assert (out / "model.pt").is_file()


@pytest.mark.parametrize("sens_features", [[4, 8, 16, 32, 64, 4], None], ids=["refined_maps", "acs_maps"])
def test_varnet_scripts_and_matches_eager(sens_features):
    """TorchScript (the model zoo's ckpt_export) gives the eager outputs; ``channel_dim`` only adds the channel axis."""
    from scripts.recon.varnet_model import build_varnet

    torch.manual_seed(0)
    net = build_varnet(2, [8, 16, 32, 64, 128, 8], sens_features).eval()
    for p in net.parameters():  # leave the zero initialisation, so the U-Nets matter
        p.data += 0.01 * torch.randn_like(p)
    with_channel = build_varnet(2, [8, 16, 32, 64, 128, 8], sens_features, channel_dim=True).eval()
    with_channel.load_state_dict(net.state_dict())
    scripted = torch.jit.script(with_channel)
    kspace = torch.randn(2, 4, 32, 24, 2)
    mask = torch.zeros(2, 1, 1, 24, 1, dtype=torch.bool)
    mask[:, :, :, 10:14] = True
    mask[0, :, :, ::4] = True
    mask[1, :, :, ::6] = True
    eager = net(kspace, mask)
    assert eager.shape == (2, 32, 24)
    assert torch.equal(scripted(kspace, mask)[:, 0], eager)
    assert (net.sensitivity.refine is None) == (sens_features is None)
