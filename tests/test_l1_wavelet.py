"""The torch L1-wavelet (:mod:`scripts.recon.l1`): sigpy's ``L1WaveletRecon`` to float tolerance, batched
slices equal to single ones, seeded (the same call gives the same bytes)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scripts.core.masks import make_mask, pattern_mask
from scripts.recon.l1 import l1_wavelet_batch, l1_wavelet_scaled, wavelet_soft_threshold
from tests.test_pinned_recon import coil_maps, kspace

N = 64


def _sigpy(k, w, maps, lamda, max_iter, alpha):
    from sigpy.mri.app import L1WaveletRecon

    return L1WaveletRecon(k * w, maps, lamda, weights=w, max_iter=max_iter, alpha=alpha, show_pbar=False).run()


@pytest.mark.parametrize("pattern, lamda, size", [("columns", 0.01, (64, 64)), ("poisson", 0.002, (64, 64)),
                                                  ("columns", 0.01, (63, 61))])
def test_l1_wavelet_is_sigpys_with_the_same_step(pattern, lamda, size):
    h, w = size
    k, maps = kspace()[:, :h, :w], coil_maps()[:, :h, :w]
    if pattern == "columns":
        mask = np.broadcast_to(make_mask("equispaced", (h, w), 4, 0.125, seed=2).reshape(1, w), (h, w)).astype(np.float32)
    else:
        mask = pattern_mask("poisson", (h, w), 4.0, 8, seed=0).astype(np.float32)
    want = _sigpy(k, mask, maps, lamda, 40, alpha=0.9)
    got = l1_wavelet_batch(torch.from_numpy(k * mask)[None], torch.from_numpy(mask)[None], torch.from_numpy(maps)[None],
                           lamda, 40, alpha=0.9)[0].numpy()
    assert got.dtype == np.complex64 and got.shape == (h, w)
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    # the default step (power iteration) is sigpy's to its own run-to-run spread
    np.random.seed(0)
    want = _sigpy(k, mask, maps, lamda, 40, alpha=None)
    got = l1_wavelet_batch(torch.from_numpy(k * mask)[None], torch.from_numpy(mask)[None], torch.from_numpy(maps)[None],
                           lamda, 40)[0].numpy()
    assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()


def test_a_batch_is_its_slices_and_a_seeded_call_repeats():
    k, maps = kspace(), coil_maps()
    masks = np.stack([pattern_mask("poisson", (N, N), r, 8, seed=0) for r in (3.0, 6.0)]).astype(np.float32)
    lamdas = torch.tensor([0.003, 0.02])
    kb = torch.from_numpy(k[None] * masks[:, None])
    sb = torch.from_numpy(np.stack([maps, 0.5 * maps]))
    batch = l1_wavelet_batch(kb, torch.from_numpy(masks), sb, lamdas, 30)
    for i in range(2):
        alone = l1_wavelet_batch(kb[i : i + 1], torch.from_numpy(masks[i : i + 1]), sb[i : i + 1], lamdas[i], 30)[0]
        torch.testing.assert_close(batch[i], alone, rtol=1e-5, atol=1e-6)
    assert torch.equal(batch, l1_wavelet_batch(kb, torch.from_numpy(masks), sb, lamdas, 30))
    chunked = l1_wavelet_batch(kb, torch.from_numpy(masks), sb, lamdas, 30, chunk=1)  # a slice at a time
    torch.testing.assert_close(chunked, batch, rtol=1e-5, atol=1e-6)
    # in units of a per-slice scale: scale * L1(k / scale), so lambda is relative to the scale
    scaled = l1_wavelet_scaled(k[None] * masks[:1, None] * 250.0, masks[0], maps[None], [250.0], 0.003, 30)
    np.testing.assert_allclose(scaled[0] / 250.0, batch[0].numpy(), rtol=1e-4, atol=1e-5)


def test_column_mask_shapes_agree():
    k, maps = kspace(), coil_maps()
    cols = make_mask("equispaced", (N, N), 4, 0.125, seed=2).reshape(N).astype(np.float32)
    got = [l1_wavelet_batch(torch.from_numpy(k)[None], torch.from_numpy(m), torch.from_numpy(maps)[None], 0.01, 5)
           for m in (cols, cols[None], np.broadcast_to(cols, (N, N)).copy(), cols[None, None])]
    for g in got[1:]:
        assert torch.equal(g, got[0])


def test_zero_threshold_is_perfect_reconstruction():
    x = torch.from_numpy(np.stack([kspace()[0], coil_maps()[1]]))  # any complex images
    for size in [(64, 64), (63, 61)]:
        xs = x[:, : size[0], : size[1]]
        torch.testing.assert_close(wavelet_soft_threshold(xs, torch.zeros(2)), xs, rtol=1e-5, atol=1e-5)
    big = wavelet_soft_threshold(x, torch.full((2,), 1e9))
    assert torch.count_nonzero(big) == 0
