"""Reconstruction metrics (fastMRI definitions) against hand-computed values and skimage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from scripts.core.metrics import bootstrap_ci, center_crop, group_means, nmse, psnr, slice_metrics, ssim, volume_metrics


@pytest.fixture()
def volume():
    rng = np.random.default_rng(0)
    gt = rng.random((3, 32, 32)) * np.array([1.0, 2.0, 0.5])[:, None, None]
    pred = gt + 0.05 * rng.standard_normal(gt.shape)
    return gt, pred


def test_nmse_hand_values():
    x = np.arange(1.0, 7.0).reshape(2, 3)
    assert nmse(x, np.zeros_like(x)) == pytest.approx(1.0)
    assert nmse(x, x) == 0.0
    assert nmse(x, 2 * x) == pytest.approx(1.0)
    assert nmse(x, x + 1) == pytest.approx(6 / np.sum(x**2))


def test_psnr_of_known_mse():
    gt = np.zeros((8, 8))
    gt[0, 0] = 2.0
    pred = gt + 0.1  # MSE = 0.01, data range = max = 2
    assert psnr(gt, pred) == pytest.approx(10 * math.log10(4 / 0.01))
    assert psnr(gt, pred, data_range=1.0) == pytest.approx(10 * math.log10(1 / 0.01))
    assert psnr(gt, gt) == math.inf


def test_ssim_identical_is_one_and_matches_skimage(volume):
    gt, pred = volume
    assert ssim(gt[0], gt[0]) == pytest.approx(1.0)
    expected = structural_similarity(gt[1], pred[1], data_range=gt[1].max())
    assert ssim(gt[1], pred[1]) == pytest.approx(expected)
    # 7x7 uniform window: the skimage default
    assert ssim(gt[1], pred[1]) == pytest.approx(structural_similarity(gt[1], pred[1], data_range=gt[1].max(), win_size=7))
    # a volume: mean of slice SSIMs, all with the VOLUME max as data range
    vmax = gt.max()
    per_slice = [structural_similarity(g, p, data_range=vmax) for g, p in zip(gt, pred)]
    assert ssim(gt, pred) == pytest.approx(np.mean(per_slice))


def test_slice_and_volume_metrics_use_the_volume_max(volume):
    gt, pred = volume
    rows = [slice_metrics(g, p, gt.max()) for g, p in zip(gt, pred)]  # as the evaluation calls it
    assert len(rows) == 3
    vmax = gt.max()
    mse2 = np.mean((gt[2] - pred[2]) ** 2)
    assert rows[2]["psnr"] == pytest.approx(10 * np.log10(vmax**2 / mse2))
    assert rows[2]["psnr"] != pytest.approx(psnr(gt[2], pred[2]))  # not the slice max
    assert rows[0]["nmse"] == pytest.approx(np.sum((gt[0] - pred[0]) ** 2) / np.sum(gt[0] ** 2))
    vol = volume_metrics(gt, pred)
    assert vol["nmse"] == pytest.approx(np.sum((gt - pred) ** 2) / np.sum(gt**2))
    assert vol["psnr"] == pytest.approx(10 * np.log10(vmax**2 / np.mean((gt - pred) ** 2)))
    assert vol["ssim"] == pytest.approx(np.mean([r["ssim"] for r in rows]))


def test_slice_metrics_ground_truth_first_and_complex_as_magnitude(volume):
    gt, pred = volume
    m = slice_metrics(gt[1], pred[1])  # default data range: this slice's ground-truth max
    assert m["psnr"] == pytest.approx(psnr(gt[1], pred[1], gt[1].max()))
    assert m["nmse"] == pytest.approx(nmse(gt[1], pred[1])) and m["nmse"] != pytest.approx(nmse(pred[1], gt[1]))
    phase = np.exp(1j * np.linspace(0, 3, gt[1].size)).reshape(gt[1].shape)
    assert slice_metrics(gt[1] * phase, np.abs(pred[1]) * phase) == pytest.approx(slice_metrics(gt[1], np.abs(pred[1])))


def test_metrics_reject_shape_mismatch_and_nan():
    with pytest.raises(ValueError):
        nmse(np.ones((4, 4)), np.ones((4, 5)))
    bad = np.full((8, 8), np.nan)
    assert math.isnan(psnr(np.ones((8, 8)), bad)) and math.isnan(ssim(np.ones((8, 8)), bad))


def test_center_crop():
    x = np.arange(36).reshape(6, 6)
    np.testing.assert_array_equal(center_crop(x, (2, 4)), x[2:4, 1:5])
    assert center_crop(x, None) is x
    assert center_crop(x, (10, 10)).shape == (6, 6)


def test_bootstrap_ci():
    assert bootstrap_ci([2.0] * 10) == (2.0, 2.0, 2.0)
    assert bootstrap_ci([3.0]) == (3.0, 3.0, 3.0)
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    values = np.random.default_rng(1).normal(10, 1, 200)
    mean, low, high = bootstrap_ci(values, n=1000, seed=0)
    assert low < mean < high and mean == pytest.approx(values.mean())
    assert high - low == pytest.approx(2 * 1.96 * values.std() / np.sqrt(200), rel=0.25)
    assert bootstrap_ci(values, seed=4) == bootstrap_ci(values, seed=4)
    narrow = bootstrap_ci(np.tile(values, 10), seed=0)
    assert narrow[2] - narrow[1] < high - low
    assert bootstrap_ci([1.0, 2.0, math.inf])[0] == pytest.approx(1.5)  # a perfect slice's inf PSNR is dropped
    med = bootstrap_ci(values, statistic=np.median, n=200)
    assert med[1] <= med[0] <= med[2]


def test_cluster_bootstrap_resamples_subjects():
    """Slices of one subject are not independent: the subject-level interval is as wide as one over subject means."""
    rng = np.random.default_rng(2)
    subjects = np.repeat(np.arange(8), 12)
    values = rng.normal(0, 1, 8)[subjects] + 0.05 * rng.standard_normal(subjects.size)  # subject effect dominates
    point, low, high = bootstrap_ci(values, groups=subjects, n=2000)
    _, s_low, s_high = bootstrap_ci(values, n=2000)
    _, m_low, m_high = bootstrap_ci([values[subjects == k].mean() for k in range(8)], n=2000)
    assert point == pytest.approx(values.mean())
    assert high - low > 2.5 * (s_high - s_low)  # the slice bootstrap is far too narrow here
    assert high - low == pytest.approx(m_high - m_low, rel=0.15)  # equal-sized groups: a bootstrap of subject means
    assert bootstrap_ci(values, groups=np.zeros(subjects.size)) == (point, point, point)  # one subject: no interval
    assert bootstrap_ci(values, groups=np.arange(subjects.size), seed=3)[1:] != (point, point)
    assert bootstrap_ci([1.0, 2.0, math.inf], groups=["a", "b", "b"])[0] == pytest.approx(1.5)
    med = bootstrap_ci(values, groups=subjects, statistic=np.median, n=100)
    assert med[1] <= med[0] <= med[2]
    with pytest.raises(ValueError, match="3 labels for 2 values"):
        bootstrap_ci([1.0, 2.0], groups=[0, 1, 2])


def test_group_means():
    assert group_means([1.0, 3.0, 10.0, -2.0], ["b", "b", "a", "c"]) == {"a": 10.0, "b": 2.0, "c": -2.0}
    assert list(group_means([1.0, 2.0, 3.0], [2, 1, 2])) == [1, 2]
