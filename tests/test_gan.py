"""The pix2pix baseline: networks, loss, conditional engine, bundle training, checkpoints, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Events

from scripts.io.fastmri_h5 import write_fastmri
from scripts.phase.gan import (
    PhaseCoherence,
    Pix2PixGenerator,
    Pix2PixLoss,
    Pix2PixTrainer,
    linear_decay,
    load_generator,
    patch_discriminator,
    pix2pix_depth,
)

N = 32


@pytest.mark.parametrize("size, depth", [(256, 8), (512, 8), (128, 7), (64, 6), (32, 5), (320, 6), ((640, 320), 6), (100, 2)])
def test_depth_rule(size, depth):
    assert pix2pix_depth(size) == depth


def test_generator_is_the_pix2pix_unet():
    net = Pix2PixGenerator(depth=8)  # 256x256: C64-C128-C256-C512-C512-C512-C512-C512
    assert [m[-2 if i and i < 7 else -1].out_channels for i, m in enumerate(net.down)] == [64, 128, 256, 512, 512, 512, 512, 512]
    assert abs(sum(p.numel() for p in net.parameters()) / 1e6 - 54.41) < 0.01  # pix2pix's 54.4 M
    dropouts = [i for i, m in enumerate(net.up) if any(isinstance(x, torch.nn.Dropout) for x in m)]
    assert dropouts == [4, 5, 6]  # CD512-CD512-CD512 next to the innermost level
    small = Pix2PixGenerator(depth=pix2pix_depth(N), ngf=8)
    for shape in [(2, 1, N, N), (1, 1, 36, 40)]:  # other sizes are padded and cropped back
        out = small(torch.randn(shape))
        assert out.shape == (shape[0], 2) + shape[2:] and out.abs().max() <= 1


def test_discriminator_is_the_70x70_patchgan():
    d = patch_discriminator(in_channels=3)
    assert d(torch.randn(1, 3, 256, 256))[-1].shape == (1, 1, 30, 30)


def test_loss_is_bce_with_logits_plus_100_l1():
    loss = Pix2PixLoss()
    zero = torch.zeros(1, 1, 4, 4)
    total, adv, l1 = loss.generator([zero], torch.ones(1, 2, 4, 4), torch.zeros(1, 2, 4, 4))
    assert adv.item() == pytest.approx(np.log(2)) and l1.item() == pytest.approx(1.0)
    assert total.item() == pytest.approx(np.log(2) + 100)
    assert loss.discriminator([zero], [zero]).item() == pytest.approx(np.log(2))
    assert Pix2PixLoss(gan_mode="lsgan").discriminator([zero], [zero]).item() == pytest.approx(0.5)


def test_linear_decay_schedule():
    assert [linear_decay(e, 2, 2) for e in range(5)] == pytest.approx([1, 1, 2 / 3, 1 / 3, 0])


def test_phase_coherence_metric():
    metric = PhaseCoherence()
    phi = torch.rand(2, N, N) * 6
    phasor = torch.stack((torch.cos(phi), torch.sin(phi)), 1)
    shifted = torch.stack((torch.cos(phi + 1), torch.sin(phi + 1)), 1)
    metric.update((shifted, phasor, torch.rand(2, 1, N, N)))
    assert metric.compute() == pytest.approx(1.0)


def test_trainer_step_updates_both_networks():
    g, d = Pix2PixGenerator(depth=5, ngf=8), patch_discriminator(channels=8)
    batch = {"magnitude": torch.rand(1, 1, N, N), "image": torch.nn.functional.normalize(torch.randn(1, 2, N, N), dim=1)}
    before = [p.detach().clone() for p in (next(g.parameters()), next(d.parameters()))]
    trainer = Pix2PixTrainer(
        "cpu", 1, torch.utils.data.DataLoader([batch] * 2, batch_size=None), g,
        torch.optim.Adam(g.parameters(), 2e-4, betas=(0.5, 0.999)), d, torch.optim.Adam(d.parameters(), 2e-4, betas=(0.5, 0.999)),
        decollate=False,
    )
    trainer.run()
    out = trainer.state.output
    assert trainer.state.iteration == 2 and np.isfinite(out["g_loss"]) and np.isfinite(out["d_loss"])
    assert out["g_loss"] == pytest.approx(out["adv_loss"] + 100 * out["l1_loss"], rel=1e-5)
    for b, p in zip(before, (next(g.parameters()), next(d.parameters()))):
        assert not torch.equal(b, p)


# ------------------------------------------------------------------ bundle training
def _tiny_dataset(root):
    """2 train files + 1 val file, 2 slices each, 32x32, with ``image_complex``."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:N, :N] / (N - 1) * 2 - 1
    for split, files in (("train", 2), ("val", 1)):
        for f in range(files):
            mag = np.stack([((y / 0.8) ** 2 + (x / 0.6) ** 2 < 1) * rng.uniform(0.5, 1) for _ in range(2)])
            phase = np.stack([rng.uniform(-2, 2) * x + rng.uniform(-2, 2) * y for _ in range(2)])
            image = (mag * np.exp(1j * phase)).astype(np.complex64)
            kspace = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image[:, None], axes=(-2, -1))), axes=(-2, -1))
            write_fastmri(root / split / f"s{f}.h5", kspace.astype(np.complex64), extra={"image_complex": image})
    return root


def _workflow(repo_root, data, bundle, max_epochs):
    from monai.bundle import create_workflow

    return create_workflow(
        config_file=str(repo_root / "configs" / "train_gan.json"), run_id="training",
        dataset_dir=str(data), bundle_root=str(bundle), image_size=N, gan_ngf=8, gan_ndf=8,
        max_epochs=max_epochs, num_workers=0, progress_bar=False, simulate_if_missing=False,
    )


@pytest.mark.filterwarnings("ignore:parsing config_file")
def test_bundle_training_checkpoints_and_resume(tmp_path, repo_root, monkeypatch):
    monkeypatch.chdir(repo_root)  # the configs' %configs/... macros are relative to the bundle root
    data, bundle = _tiny_dataset(tmp_path / "data"), tmp_path / "bundle"
    ckpt_dir = bundle / "models" / "gan"

    wf = _workflow(repo_root, data, bundle, max_epochs=1)
    wf.run()
    trainer = wf.parser.get_parsed_content("train#trainer")
    per_epoch = trainer.state.epoch_length
    assert per_epoch == 4 and trainer.state.iteration == per_epoch  # 4 slices, batch size 1
    wf.finalize()
    assert sorted(p.name for p in ckpt_dir.glob("*.pt")) == ["checkpoint_epoch=1.pt", "checkpoint_final.pt", "generator.pt"]
    ckpt = torch.load(ckpt_dir / "checkpoint_epoch=1.pt", map_location="cpu", weights_only=True)
    assert set(ckpt) == {"generator", "discriminator", "g_optimizer", "d_optimizer", "trainer"}
    assert ckpt["trainer"]["iteration"] == per_epoch
    best = torch.load(ckpt_dir / "generator.pt", map_location="cpu", weights_only=True)
    assert "down.0.0.weight" in best
    assert load_generator(str(ckpt_dir / "generator.pt")).depth == pix2pix_depth(N)
    assert (bundle / "runs" / "phase_gan").is_dir() and any((bundle / "runs" / "phase_gan").iterdir())

    # resume: a second run with max_epochs=2 restores the checkpoint and runs only epoch 2
    wf = _workflow(repo_root, data, bundle, max_epochs=2)
    trainer = wf.parser.get_parsed_content("train#trainer")
    seen = []
    trainer.add_event_handler(Events.ITERATION_STARTED, lambda e: seen.append(e.state.iteration))
    wf.run()
    wf.finalize()
    assert seen == list(range(per_epoch + 1, 2 * per_epoch + 1))
    final = torch.load(ckpt_dir / "checkpoint_final.pt", map_location="cpu", weights_only=True)
    assert final["trainer"]["iteration"] == 2 * per_epoch and final["g_optimizer"]["param_groups"][0]["lr"] > 0

    from scripts.phase.sources import get_phase_source

    mag = np.abs(np.random.default_rng(0).normal(size=(2, N, N))).astype(np.float32)
    phase = get_phase_source("gan", checkpoint=str(ckpt_dir / "generator.pt"))(mag, seed=0)
    assert phase.shape == (2, N, N) and phase.dtype == np.float32
