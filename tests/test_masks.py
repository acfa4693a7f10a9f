"""Under-sampling masks: acceleration and centre fraction honoured, deterministic, VarNet shapes."""

from __future__ import annotations

import numpy as np
import pytest

from scripts.core.masks import (
    MaskSampler,
    acs_bounds,
    acs_size,
    effective_acceleration,
    fixed_mask_seed,
    make_mask,
    poisson_mask,
    to_varnet_mask,
)


@pytest.mark.parametrize("accel", [4, 6, 8, 10])
def test_equispaced_acceleration_and_centre(accel):
    width = 368  # a fastMRI brain width
    mask = make_mask("equispaced", (640, width), accel, 0.04, seed=3)
    assert mask.shape == (1, width) and mask.dtype == bool
    assert abs(effective_acceleration(mask) / accel - 1) < 0.06
    n_low = round(width * 0.04)
    start = (width - n_low + 1) // 2
    assert mask[0, start : start + n_low].all()
    assert acs_size(mask)[1] >= n_low


def test_equispaced_spacing_is_regular_outside_the_centre():
    mask = make_mask("equispaced", (64, 256), 8, 0.04, seed=0)[0]
    _, _, left, right = acs_bounds(mask)
    for side in (np.flatnonzero(mask[: left - 1]), np.flatnonzero(mask[right + 1 :])):
        gaps = np.diff(side)
        assert gaps.max() - gaps.min() <= 1  # equally spaced up to rounding


@pytest.mark.parametrize("accel", [4, 8])
def test_random_mask_acceleration_in_expectation(accel):
    rates = [1 / effective_acceleration(make_mask("random", (32, 256), accel, 0.04, seed=s)) for s in range(40)]
    assert abs(1 / np.mean(rates) / accel - 1) < 0.1
    mask = make_mask("random", (32, 256), accel, 0.04, seed=0)
    n_low = round(256 * 0.04)
    start = (256 - n_low + 1) // 2
    assert mask[0, start : start + n_low].all()


@pytest.mark.parametrize("kind", ["equispaced", "random", "poisson"])
def test_masks_are_deterministic_for_a_seed(kind):
    a = make_mask(kind, (48, 64), 6, 0.04, seed=11)
    b = make_mask(kind, (48, 64), 6, 0.04, seed=11)
    np.testing.assert_array_equal(a, b)
    others = [make_mask(kind, (48, 64), 6, 0.04, seed=s) for s in range(12, 20)]
    assert any(not np.array_equal(a, o) for o in others)


@pytest.mark.parametrize("accel", [4, 8, 10])
def test_poisson_acceleration_and_calibration_box(accel):
    mask = make_mask("poisson", (64, 64), accel, 0.08, seed=1)
    assert mask.shape == (64, 64)
    assert abs(effective_acceleration(mask) / accel - 1) < 0.05
    box = round(64 * 0.08)
    start = (64 - box + 1) // 2
    assert mask[start : start + box, start : start + box].all()
    rows, cols = acs_size(mask)
    assert rows >= box and cols >= box


def test_poisson_small_image_high_r_terminates():
    # sigpy.mri.poisson loops forever on this one (1x1 calibration at 32x32, R = 10); ours stops.
    mask = poisson_mask((32, 32), 10, 0.04, seed=0)
    assert 8 < effective_acceleration(mask) < 12


def test_acs_bounds_ignores_a_lone_neighbour():
    m = np.zeros((9, 9), bool)
    m[3:6, 3:6] = True
    m[4, 6] = True  # sampled on the centre row next to the box, but the column is not full
    assert acs_bounds(m) == (3, 6, 3, 6)
    col = np.zeros(16, bool)
    col[7:10] = True
    col[11] = True
    assert acs_bounds(col) == (0, 1, 7, 10)


def test_varnet_mask_shapes():
    col = make_mask("equispaced", (32, 40), 4, 0.08, seed=0)
    assert tuple(to_varnet_mask(col).shape) == (1, 1, 1, 40, 1)
    assert tuple(to_varnet_mask(col[0]).shape) == (1, 1, 1, 40, 1)
    two_d = make_mask("poisson", (32, 40), 4, 0.08, seed=0)
    t = to_varnet_mask(two_d)
    assert tuple(t.shape) == (1, 1, 32, 40, 1) and t.dtype.is_floating_point is False


def test_sampler_fixed_masks_do_not_depend_on_call_order():
    s1 = MaskSampler("equispaced", [4, 8], 0.04, seed=5)
    s2 = MaskSampler("equispaced", [4, 8], 0.04, seed=5)
    keys = [("a.h5", i) for i in range(6)]
    forward = [s1.fixed((32, 64), k, 8)[0] for k in keys]
    backward = [s2.fixed((32, 64), k, 8)[0] for k in reversed(keys)][::-1]
    for a, b in zip(forward, backward):
        np.testing.assert_array_equal(a, b)
    # mixed-R validation: a fixed R per slice, from the list
    picks = {s1.fixed((32, 64), k)[1] for k in keys * 3}
    assert picks <= {4.0, 8.0}
    assert fixed_mask_seed(0, "a", 1) == fixed_mask_seed(0, "a", 1) != fixed_mask_seed(1, "a", 1)


def test_sampler_random_draws_every_acceleration():
    sampler = MaskSampler("random", [4, 6, 8, 10], 0.04)
    rng = np.random.default_rng(0)
    seen = {sampler.random((32, 64), rng)[1] for _ in range(60)}
    assert seen == {4.0, 6.0, 8.0, 10.0}
    with pytest.raises(ValueError):
        MaskSampler("radial", [4])
    with pytest.raises(ValueError):
        MaskSampler("equispaced", [4, 8], [0.04, 0.08, 0.1])
