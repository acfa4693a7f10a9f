"""Complex-image diffusion priors (scripts/recon/prior.py, configs/train_prior.json): CPU, 32x32, tiny nets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import ROOT

from scripts.coils.simulation import birdcage
from scripts.core.fft import fft2c
from scripts.io.fastmri_h5 import write_fastmri

SIZE = 32
UNET = {"unet_channels": [8, 16], "unet_attention_levels": [False, False], "unet_num_head_channels": 8,
        "unet_num_res_blocks": 1, "unet_norm_num_groups": 8}


def phantom(rng: np.random.Generator, n: int = SIZE) -> np.ndarray:
    """An elliptical 'head' with an inner structure and a smooth random phase (complex64)."""
    y, x = np.mgrid[-1 : 1 : n * 1j, -1 : 1 : n * 1j]
    a, b = rng.uniform(0.6, 0.85, 2)
    head = ((x / a) ** 2 + (y / b) ** 2 < 1).astype(np.float32)
    inner = (x / (0.6 * a)) ** 2 + ((y - 0.1) / (0.5 * b)) ** 2 < 1
    mag = head * (0.6 + 0.4 * inner) * rng.uniform(0.8, 1.2)
    phase = rng.uniform(-np.pi, np.pi) + rng.normal(0, 1.5) * x + rng.normal(0, 1.5) * y + rng.normal(0, 1) * (x**2 + y**2)
    return (mag * np.exp(1j * phase)).astype(np.complex64)


def make_dataset(root: Path, splits=(("train", 2), ("val", 1)), slices: int = 2, coils: int = 4, noise: float = 0.0,
                 seed: int = 0, flat: bool = False, scale: float = 1.0) -> Path:
    """Tiny fastMRI-format files with ``kspace``, ``image_complex`` and ``coil_maps``."""
    rng = np.random.default_rng(seed)
    maps = birdcage(coils, (SIZE, SIZE), radius=1.5)
    for split, count in splits:
        for i in range(count):
            z = np.stack([phantom(rng) for _ in range(slices)]) * np.float32(scale)
            k = fft2c(maps[None] * z[:, None])
            if noise:
                k = k + noise * scale * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape)) / np.sqrt(2)
            path = root / f"{split}{i}_s0.h5" if flat else root / split / f"vol{i}.h5"
            write_fastmri(path, k.astype(np.complex64), extra={"image_complex": z,
                                                               "coil_maps": np.broadcast_to(maps, (slices, *maps.shape))})
    return root


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("prior_data"))


def train_prior(bundle_root: Path, dataset_dir: Path, prior_data: str, **extra) -> Path:
    from scripts.configs import ROOT, run_bundle

    settings = dict(bundle_root=str(bundle_root), dataset_dir=str(dataset_dir), prior_data=prior_data, image_size=SIZE,
                    max_epochs=1, batch_size=2, num_workers=0, progress_bar=False, val_interval=1, ckpt_interval=1,
                    simulate_if_missing=False, **UNET)
    run_bundle("configs/train_prior.json", cwd=ROOT, **{**settings, **extra})
    return bundle_root / "models" / f"prior_{prior_data}"


# ---------------------------------------------------------------------------------------------
def test_loader_normalises_and_builds_each_variant(tiny_data):
    from scripts.core.complex import channels_to_complex
    from scripts.recon.prior import LoadComplexSliced
    from scripts.phase.data import slice_datalist

    item = slice_datalist(tiny_data, "train")[0]
    z = channels_to_complex(LoadComplexSliced(prior_data="complex", spatial_size=SIZE)(item)["image"].numpy(), dim=0)
    assert np.percentile(np.abs(z), 99.5) == pytest.approx(1.0, rel=1e-5)
    assert np.abs(np.angle(z[np.abs(z) > 0.3])).std() > 0.1  # phase kept
    m = LoadComplexSliced(prior_data="magnitude", spatial_size=SIZE)(item)["image"].numpy()
    np.testing.assert_array_equal(m[1], 0)
    np.testing.assert_allclose(m[0], np.abs(z), atol=1e-6)
    a = LoadComplexSliced(prior_data="augmented", spatial_size=SIZE)(item)
    np.testing.assert_allclose(a["image"].numpy(), complex_to_channels_np(z), atol=1e-6)


def complex_to_channels_np(z):
    return np.stack([z.real, z.imag]).astype(np.float32)


def test_flat_folder_is_split_by_volume(tmp_path):
    from scripts.recon.prior import prior_datalist

    root = tmp_path / "aug"
    for key in ("a", "b", "c", "d"):
        for k in range(2):
            make_dataset(root, splits=(("x", 1),), slices=1, flat=True)
            os.replace(root / "x0_s0.h5", root / f"{key}_s{k}.h5")
    train = {Path(d["file"]).stem.split("_")[0] for d in prior_datalist(root, "train")}
    val = {Path(d["file"]).stem.split("_")[0] for d in prior_datalist(root, "val")}
    assert val and train and not (train & val) and train | val == {"a", "b", "c", "d"}
    assert prior_datalist(root, "test") == []


@pytest.mark.parametrize("prior_data", ["complex", "augmented", "magnitude"])
def test_prior_trains_and_checkpoints_load(prior_data, tiny_data, tmp_path):
    """2 iterations (4 training slices, batch 2) for each kind of prior data; weights load weights_only;
    the prior samples through its card (DDIM for the DDPM objective, RFlow for RFlow)."""
    data = tiny_data
    if prior_data == "augmented":  # a synthesiser-style flat folder of image_complex files
        data = make_dataset(tmp_path / "augmented", splits=(("train", 2), ("val", 1)), flat=True, seed=1)
    # the magnitude prior trains with the rectified-flow objective, so that path is covered too
    ckpt = train_prior(tmp_path / "bundle", data, prior_data, **({"scheduler_type": "rflow"} if prior_data == "magnitude" else {}))
    assert (ckpt / "model.pt").is_file() and (ckpt / "checkpoint_final.pt").is_file()
    full = torch.load(ckpt / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    assert full["trainer"]["iteration"] == 2
    state = torch.load(ckpt / "model.pt", map_location="cpu", weights_only=True)
    assert any(k.startswith("conv_in") for k in state)
    assert (tmp_path / "bundle" / "runs" / f"prior_{prior_data}").is_dir()  # TensorBoard

    from scripts.recon.prior import PriorSamplingInferer, load_prior, sampler_from_card

    net, card = load_prior(ckpt / "model.pt")
    assert card["prior_data"] == prior_data and card["network"]["in_channels"] == 2
    assert card["scheduler_type"] == ("rflow" if prior_data == "magnitude" else "ddpm")
    inf = PriorSamplingInferer(sampler_from_card(card), num_inference_steps=2, seed=0)
    x = inf.sample(net, 2, SIZE)
    assert x.shape == (2, 2, SIZE, SIZE) and torch.isfinite(x).all()
    torch.testing.assert_close(x, inf.sample(net, 2, SIZE))  # seeded

    if prior_data == "complex":  # resume: a second run continues from the latest checkpoint
        train_prior(tmp_path / "bundle", data, prior_data, max_epochs=2)
        full = torch.load(ckpt / "checkpoint_final.pt", map_location="cpu", weights_only=True)
        assert full["trainer"]["iteration"] == 4 and full["trainer"]["max_epochs"] == 2


def test_rflow_prepare_batch_targets_velocity():
    from monai.networks.schedulers import RFlowScheduler

    from scripts.recon.prior import PriorPrepareBatch

    batch = {"image": torch.randn(2, 2, 8, 8)}
    images, target, args, kwargs = PriorPrepareBatch(RFlowScheduler(1000, spatial_dim=2))(batch)
    assert set(kwargs) == {"noise", "timesteps"} and args == ()
    torch.testing.assert_close(target, images - kwargs["noise"])


def test_config_exposes_the_bundle_ids(monkeypatch):
    from monai.bundle import ConfigParser

    monkeypatch.chdir(ROOT)
    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "train_prior.json"))
    for key in ("network_def", "train#trainer", "validate#evaluator", "training", "run", "checkpoint_loader", "prior_data"):
        assert key in parser
    assert parser["run"] == "@training"
    # the training machinery is train.json's (macros): every top-level id it defines must exist here too,
    # or a reference inside a reused section would dangle
    train = ConfigParser()
    train.read_config(str(ROOT / "configs" / "train.json"))
    missing = sorted(k for k in train.get() if k not in parser.get())
    assert not missing, f"configs/train_prior.json lacks ids of configs/train.json: {missing}"


@pytest.mark.parametrize("profile", ["prior_study_cpu64.json", "prior_study_full.json"])
def test_prior_study_profiles_build(profile, monkeypatch):
    """The CPU and GPU prior-study profiles build: the study object, and the prior network with their UNet settings."""
    from monai.bundle import ConfigParser

    monkeypatch.chdir(ROOT)
    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / "prior_study.json"), str(ROOT / "configs" / profile)])
    study = parser.get_parsed_content("study_def", instantiate=True)
    assert study.size == parser["image_size"] and study.prior_iterations >= 1000
    prior = ConfigParser()
    prior.read_config(str(ROOT / "configs" / "train_prior.json"))
    prior.update({**study.unet, "image_size": study.size})
    net = prior.get_parsed_content("network_def")
    assert list(net.block_out_channels) == list(study.unet["unet_channels"])
    with torch.no_grad():
        out = net(torch.zeros(1, 2, 32, 32), timesteps=torch.tensor([10]))
    assert out.shape == (1, 2, 32, 32)
