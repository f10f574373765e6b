"""tgdpet.inputs: the intensity scale and body mask every network input is normalised by, and 2.5D slice stacks."""

from __future__ import annotations

import numpy as np
import pytest

from tgdpet.errors import TgdpetError
from tgdpet.inputs import body_mask, intensity_scale, object_threshold, stack_indices


def test_stack_indices_replicate_edges():
    np.testing.assert_array_equal(stack_indices(np.array([0, 3, 5]), 6, 3), [[0, 0, 1], [2, 3, 4], [4, 5, 5]])
    np.testing.assert_array_equal(stack_indices(0, 2, 5), [0, 0, 0, 1, 1])


def _cube_with_hot_spot() -> np.ndarray:
    """A 10^3 cube of 990 voxels of 1.0 and 10 of 10.0, in a 12^3 field of zeros.

    Worked by hand: the 90th percentile of the positive voxels (numpy's
    linear rule: position 0.9 * 999 = 899.1 of the sorted values) is 1.0; the
    voxels above 5 % of it are the same 1000, so 1.0 is the fixed point, the
    threshold 0.05, and the object the whole cube, of mean 1090 / 1000.
    """
    x = np.zeros((12, 12, 12), np.float32)
    x[1:11, 1:11, 1:11] = 1.0
    x[5, 5, 1:11] = 10.0
    return x


CUBE_SCALE = 1.09


def test_object_scale_worked_by_hand():
    x = _cube_with_hot_spot()
    assert object_threshold(x) == pytest.approx(0.05)
    assert intensity_scale(x) == pytest.approx(CUBE_SCALE, rel=1e-6)
    assert body_mask(x).sum() == 1000


@pytest.mark.parametrize("pad", [0, 5, 60])
def test_scale_and_body_ignore_empty_field_of_view(pad):
    """A small object in a huge empty field (a head in a whole-body FOV): 0.1's percentile rule gave 1.0 here."""
    x = np.pad(_cube_with_hot_spot(), pad)
    assert intensity_scale(x) == pytest.approx(CUBE_SCALE, rel=1e-6)
    assert body_mask(x).sum() == 1000


def test_scale_ignores_air_noise_and_negatives_below_the_object():
    rng = np.random.default_rng(0)
    x = np.pad(_cube_with_hot_spot(), 5)  # 9648 voxels of air around 1000 of object
    air = x == 0
    x[air] = rng.uniform(-0.04, 0.04, size=int(air.sum())).astype(np.float32)  # below 0.05: never the object
    assert intensity_scale(x) == pytest.approx(CUBE_SCALE, rel=1e-6)
    assert body_mask(x).sum() == 1000


def test_a_hot_organ_does_not_become_the_object():
    """A bladder-like hot spot of 1 % of the voxels (29 % of the activity) leaves the threshold on the tissue."""
    x = _cube_with_hot_spot()
    x[5, 5, 1:11] = 40.0  # 400 of 1390 units of activity
    assert object_threshold(x) == pytest.approx(0.05)
    assert intensity_scale(x) == pytest.approx(1390 / 1000, rel=1e-6)


def test_cold_tissue_above_the_threshold_is_object():
    x = _cube_with_hot_spot()
    x[1:3] = np.where(x[1:3] > 0, np.float32(0.15), 0)  # lung-like: 15 % of the tissue uptake
    x[10] = np.where(x[10] > 0, np.float32(0.03), 0)  # 3 %: below the threshold
    mask = body_mask(x)
    assert mask[1:3].sum() == 200 and mask[10].sum() == 0


@pytest.mark.parametrize("value", [0.0, -3.0])
def test_image_without_positive_voxels_is_refused(value):
    with pytest.raises(TgdpetError, match="no positive voxels"):
        intensity_scale(np.full((2, 4, 4), value, np.float32))
    with pytest.raises(TgdpetError, match="no positive voxels"):
        body_mask(np.full((2, 4, 4), value, np.float32))


def test_scale_of_nonfinite_voxels_ignores_them():
    x = _cube_with_hot_spot()
    x[0, 0, 0] = np.nan
    assert intensity_scale(x) == pytest.approx(CUBE_SCALE, rel=1e-6)
