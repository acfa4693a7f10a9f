"""Classifier two-sample test for complex images: the real-vs-synthetic AUROC.

A small CNN is trained to tell real complex images from synthetic ones; its AUROC on images it
did not train on measures how distinguishable the two sets are: 0.5 = indistinguishable,
1.0 = perfectly separable (the published joint magnitude+phase generator reaches 0.50-0.66).

Protocol (:func:`classifier_two_sample_test`): both sets are normalised like every model in
the bundle (complex image / 99.5th percentile of its magnitude, :mod:`scripts.core.intensity`) and
given as real/imaginary channels; a seeded stratified ``folds``-fold split (default 2) trains
one classifier per fold on the other folds and scores the held-out fold; the AUROC
(``sklearn.metrics.roc_auc_score``) is taken over the pooled out-of-fold scores, so every
image is scored exactly once by a classifier that never saw it. Everything (split, weights,
batch order) derives from ``seed``: the same inputs and seed give the same AUROC on CPU.

"On the same magnitudes" (phase-only realism) is the caller's choice: pass real images and
synthetic images built on the same magnitudes (e.g. phase samples of the conditional model);
for unconditional priors the two sets differ in magnitude too and the test scores the whole
complex image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["TwoSampleCNN", "classifier_two_sample_test", "complex_batch"]


def complex_batch(images: Sequence[np.ndarray] | np.ndarray) -> torch.Tensor:
    """``(N, 2, H, W)`` float32 real/imag of complex images, each divided by its 99.5th-percentile magnitude."""
    from scripts.core.intensity import magnitude_reference

    out = []
    for z in images:
        z = np.asarray(z)
        try:
            ref = magnitude_reference(np.abs(z))
        except ValueError:
            ref = 1.0
        z = z / ref
        out.append(np.stack([z.real, z.imag]).astype(np.float32))
    return torch.from_numpy(np.stack(out))


class TwoSampleCNN(nn.Module):
    """Conv-ReLU-pool blocks, global average pooling, one logit."""

    def __init__(self, in_channels: int = 2, channels: Sequence[int] = (16, 32, 32)) -> None:
        super().__init__()
        layers, c = [], in_channels
        for k in channels:
            layers += [nn.Conv2d(c, k, 3, padding=1), nn.GroupNorm(min(8, k), k), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = k
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(-2, -1)))[:, 0]


def _train_and_score(x_tr, y_tr, x_te, seed, epochs, batch_size, lr, channels, device) -> np.ndarray:
    gen = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):  # seeded initial weights, global RNG left untouched
        torch.manual_seed(int(seed))
        net = TwoSampleCNN(x_tr.shape[1], channels).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    pos = float(y_tr.sum())
    pos_weight = torch.tensor((len(y_tr) - pos) / max(pos, 1.0), device=device)  # balance the classes
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    net.train()
    for _ in range(int(epochs)):
        order = torch.randperm(len(x_tr), generator=gen)
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            xb = x_tr[idx].to(device)
            flip = torch.rand(len(idx), generator=gen) < 0.5  # left-right flips: the anatomy is symmetric
            xb[flip.to(device)] = xb[flip.to(device)].flip(-1)
            loss = loss_fn(net(xb), y_tr[idx].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with torch.no_grad():
        return torch.cat([net(x_te[s : s + 256].to(device)).cpu() for s in range(0, len(x_te), 256)]).numpy()


def classifier_two_sample_test(real: Sequence[np.ndarray] | np.ndarray, synth: Sequence[np.ndarray] | np.ndarray,
                               seed: int = 0, folds: int = 2, epochs: int = 30, batch_size: int = 32,
                               lr: float = 1e-3, channels: Sequence[int] = (16, 32, 32), device="cpu") -> dict:
    """Held-out AUROC of a CNN separating ``real`` from ``synth`` complex images (2-D arrays); see the module docstring.

    Returns ``{"auroc", "n_real", "n_synth", "folds", "epochs", "seed"}``.
    """
    from sklearn.metrics import roc_auc_score

    xr, xs = complex_batch(real), complex_batch(synth)
    if xr.shape[1:] != xs.shape[1:]:
        raise ValueError(f"real {tuple(xr.shape[1:])} and synthetic {tuple(xs.shape[1:])} images differ in shape")
    n_r, n_s = len(xr), len(xs)
    if min(n_r, n_s) < folds:
        raise ValueError(f"need at least {folds} images per set, got {n_r} real and {n_s} synthetic")
    x = torch.cat([xr, xs])
    y = torch.cat([torch.zeros(n_r), torch.ones(n_s)])
    rng = np.random.default_rng(seed)
    fold = np.empty(n_r + n_s, dtype=np.int64)
    for lo, hi in ((0, n_r), (n_r, n_r + n_s)):  # stratified
        fold[lo:hi] = rng.permutation(np.arange(hi - lo) % folds)
    scores = np.empty(n_r + n_s, dtype=np.float64)
    for k in range(folds):
        tr, te = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
        scores[te] = _train_and_score(x[tr], y[tr], x[te], seed * 1000 + k, epochs, batch_size, lr, channels, device)
    return {"auroc": float(roc_auc_score(y.numpy(), scores)), "n_real": n_r, "n_synth": n_s, "folds": folds,
            "epochs": int(epochs), "seed": int(seed)}
