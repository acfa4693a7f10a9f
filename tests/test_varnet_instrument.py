"""The reconstruction instrument: VarNet on the target's scale at initialisation (both profiles), training that
moves from the first iterations, batching by shape, bf16 autocast, and the study's sanity gate."""

from __future__ import annotations

import numpy as np
import pytest
import sigpy
import sigpy.mri
import torch

from scripts.core.masks import MaskSampler, make_mask, to_varnet_mask
from scripts.recon.varnet import ShapeBatchSampler, VarNetLoss, clip_gradients, prepare_example, varnet_profile
from scripts.recon.varnet_model import build_varnet
from scripts.studies.varnet_report import instrument_check, instrument_gaps


def phantom_kspace(size: int, coils: int, seed: int = 0) -> np.ndarray:
    """Fully sampled multi-coil k-space ``(C, size, size)`` of an elliptical head-like phantom with smooth phase."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[-1 : 1 : size * 1j, -1 : 1 : size * 1j]
    mag = ((x / 0.75) ** 2 + (y / 0.9) ** 2 < 1) * (1 + 0.4 * np.sin(rng.uniform(3, 7) * x) * np.cos(4 * y))
    mag = mag + 0.6 * ((x / 0.3) ** 2 + ((y - 0.2) / 0.2) ** 2 < 1)
    img = mag * np.exp(1j * (0.8 * x + 0.5 * y**2))
    maps = sigpy.mri.birdcage_maps((coils, size, size)).astype(np.complex64)
    return sigpy.fft(maps * img, axes=(-2, -1), center=True, norm="ortho").astype(np.complex64)


def _example(size: int, coils: int, acceleration: float = 4, seed: int = 0) -> dict:
    kspace = phantom_kspace(size, coils, seed)
    mask, _ = MaskSampler("equispaced", [acceleration], 0.04 if size >= 128 else 0.08).fixed(kspace.shape[-2:], ("p", seed))
    return prepare_example(kspace, mask)


@pytest.mark.parametrize("profile, size, coils", [("cpu", 64, 4), ("cpu_deep", 64, 4), ("full", 64, 4), ("full", 256, 16)])
def test_output_on_the_target_scale_at_initialisation(profile, size, coils):
    """MONAI's VariationalNetworkModel started at 1.9x / 10x / 127x the target here; each cascade now starts as pure
    data consistency, so the untrained network returns the zero-filled image."""
    torch.manual_seed(0)
    net = build_varnet(**varnet_profile(profile)).eval()
    ex = _example(size, coils)
    with torch.no_grad():
        out = net(ex["kspace"][None], ex["mask"][None])[0]
    ratio = float(out.max() / ex["target"].max())
    assert 0.5 <= ratio <= 2.0, ratio
    zero_filled = ex["zero_filled"] / ex["scale"]
    torch.testing.assert_close(out, zero_filled, rtol=1e-4, atol=1e-5)


def test_ten_iterations_of_the_full_profile_at_256_px_lower_the_loss():
    torch.manual_seed(0)
    net = build_varnet(**varnet_profile("full"))
    optimizer = clip_gradients(torch.optim.Adam(net.parameters(), lr=1e-3), 1.0)
    loss_fn = VarNetLoss()
    ex = _example(256, 4)
    kspace, mask, target = ex["kspace"][None], ex["mask"][None], ex["target"][None]
    losses = []
    for _ in range(10):
        loss = loss_fn(net(kspace, mask), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.9 * losses[0], losses


def test_both_loss_terms_have_a_gradient_at_initialisation():
    torch.manual_seed(0)
    net = build_varnet(num_cascades=2, features=[4, 4, 8, 16, 32, 4], sens_features=[2, 2, 4, 8, 16, 2])
    ex = _example(32, 2)
    out = net(ex["kspace"][None], ex["mask"][None])
    for weights in ((1.0, 0.0), (0.0, 1.0)):
        net.zero_grad()
        VarNetLoss(*weights)(out, ex["target"][None]).backward(retain_graph=True)
        last = net.cascades[-1].model.unet.final_conv.weight.grad
        assert last is not None and float(last.abs().sum()) > 0, weights


def test_forward_under_bf16_autocast_stays_float32_and_close():
    """On CUDA the trainer autocasts to bf16; the FFTs and data consistency stay float32 (checked on CPU autocast)."""
    torch.manual_seed(0)
    net = build_varnet(num_cascades=2, features=[4, 4, 8, 16, 32, 4], sens_features=[2, 2, 4, 8, 16, 2]).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ex = _example(32, 2)
    with torch.no_grad():
        ref = net(ex["kspace"][None], ex["mask"][None])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = net(ex["kspace"][None], ex["mask"][None])
    assert out.dtype == torch.float32
    assert float((out - ref).abs().max() / ref.abs().max()) < 0.05


def test_shape_batch_sampler_groups_shapes_and_shards_ranks():
    shapes = [(8, 8)] * 5 + [(8, 6)] * 3 + [(4, 4)]
    torch.manual_seed(0)
    batches = list(ShapeBatchSampler(shapes, batch_size=2))
    assert sorted(i for b in batches for i in b) == list(range(9))
    assert all(len({shapes[i] for i in b}) == 1 and len(b) <= 2 for b in batches)
    assert len(batches) == len(ShapeBatchSampler(shapes, batch_size=2)) == 6
    torch.manual_seed(0)
    again = list(ShapeBatchSampler(shapes, batch_size=2))
    assert again == batches  # seeded by torch's RNG (set_determinism)
    ranks = [list(ShapeBatchSampler(shapes, 2, num_replicas=4, rank=r)) for r in range(4)]
    assert {len(b) for b in ranks} == {2} and all(len(ShapeBatchSampler(shapes, 2, num_replicas=4, rank=r)) == 2 for r in range(4))


def _rows(varnet, zero_filled):
    return [{"method": m, "acceleration": 4.0, "psnr_slice_mean": p, "ssim_slice_mean": s}
            for m, (p, s) in (("varnet", varnet), ("zero_filled", zero_filled))]


def test_sanity_gate_verdicts():
    ok, line = instrument_check(_rows((25.0, 0.80), (21.0, 0.60)))
    assert ok and line.startswith("Instrument check passed")
    ok, line = instrument_check(_rows((25.0, 0.55), (21.0, 0.60)))  # better PSNR is not enough
    assert not ok and line.startswith("**INSTRUMENT FAILED") and "means nothing" in line


def _gap_rows(subjects: int, varnet_offset) -> list[dict]:
    """Evaluator-shaped slice rows: ``subjects`` x 2 slices; VarNet = zero-filled + ``varnet_offset(subject)`` dB,
    L1-wavelet = zero-filled + 4 dB."""
    slices = []
    for label, method, offset in [("ground_truth", "varnet", varnet_offset), ("reference", "zero_filled", lambda f: 0.0),
                                  ("reference", "l1_wavelet", lambda f: 4.0)]:
        slices += [{"label": label, "method": method, "acceleration": 4.0, "file": f"s{f}.h5", "slice": float(s),
                    "psnr": 15.0 + 2 * f + 0.1 * s + offset(f), "ssim": 0.4 + 0.1 * (method == "varnet"), "nmse": 0.1}
                   for f in range(subjects) for s in range(2)]
    return slices


def test_instrument_gaps_on_known_rows():
    """Paired gaps and the >= 2 dB bar: 5 subjects x 2 slices, VarNet = zero-filled + 3 dB."""
    from scripts.core.metrics import interval_table

    slices = _gap_rows(5, lambda f: 3.0)
    summary = interval_table(slices, ("label", "method", "acceleration"), group="file")
    (line,) = instrument_gaps(summary, slices)
    assert line.startswith("- R=4: ground_truth VarNet 22.05")
    assert "zero_filled 19.05" in line and "+3.00 dB (paired [+3.00, +3.00]" in line and "intervals overlap" in line
    assert "bar (>= 2 dB, apart, higher SSIM) NOT met" in line  # 3 dB, but the subject intervals overlap
    assert "l1_wavelet 23.05" in line and "-1.00 dB" in line


def test_instrument_gaps_from_too_few_volumes_give_each_volume_and_no_verdict():
    """2 volumes (the real slices): a bootstrap interval is their range, so the line gives the gap per volume
    and how many the VarNet is ahead in, and no bar verdict."""
    from scripts.core.metrics import MIN_VERDICT_VOLUMES, interval_table

    slices = _gap_rows(2, lambda f: 1.0 if f == 0 else -2.0)
    summary = interval_table(slices, ("label", "method", "acceleration"), group="file")
    (line,) = instrument_gaps(summary, slices)
    assert "-0.50 dB (paired [-2.00, +1.00]" in line
    assert "per volume s0 +1.00, s1 -2.00 dB (ahead in 1 of 2)" in line
    assert f"too few volumes for the bar (n=2 < {MIN_VERDICT_VOLUMES}" in line and "met" not in line


def test_sanity_gate_fires_on_a_broken_varnet(tmp_path):
    """A VarNet with scrambled weights, evaluated as the study's gate does (evaluator rows on the validation files)."""
    from scripts.io.fastmri_h5 import write_fastmri
    from scripts.recon.evaluate import evaluate_varnet
    from scripts.recon.varnet import write_network_spec

    for v in range(2):
        write_fastmri(tmp_path / "val" / f"vol{v}.h5", np.stack([phantom_kspace(32, 2, seed=10 * v + s) for s in range(2)]))
    tiny = {"num_cascades": 1, "features": [4, 4, 8, 16, 32, 4], "sens_features": [2, 2, 4, 8, 16, 2]}
    torch.manual_seed(0)
    net = build_varnet(**tiny)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    model = tmp_path / "broken" / "model.pt"
    model.parent.mkdir()
    torch.save(net.state_dict(), model)
    write_network_spec(model.parent, tiny)
    result = evaluate_varnet(str(model), str(tmp_path / "val"), tmp_path / "eval", accelerations=[4], center_fraction=0.08,
                             methods=["varnet", "zero_filled"], n_bootstrap=10)
    ok, line = instrument_check(result["summary"])
    assert not ok and "INSTRUMENT FAILED" in line


def test_masks_of_one_batch_may_differ_in_acceleration():
    masks = torch.cat([to_varnet_mask(make_mask("equispaced", (32, 32), r, 0.08, seed=0)) for r in (4, 8)])
    assert masks.shape == (2, 1, 1, 32, 1) and int(masks[0].sum()) > int(masks[1].sum())
