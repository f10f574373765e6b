"""Figures of merit on tiny arrays whose answers can be worked out by hand."""

import math

import numpy as np
import pytest

from tgdpet import metrics


def _box_mask(shape, z, y, x):
    m = np.zeros(shape, bool)
    m[z, y, x] = True
    return m


def test_lesion_bias_is_the_mean_of_per_realisation_relative_errors():
    ref = np.full((2, 3, 3), 10.0)
    lesion = _box_mask(ref.shape, slice(0, 1), slice(0, 2), slice(0, 2))
    real = np.full((2, 2, 3, 3), 10.0)
    real[0][lesion] = 9.0  # -10 %
    real[1][lesion] = 10.5  # +5 %
    real[1, 1] = 1000.0  # outside the lesion: must not count
    assert metrics.lesion_ensemble_bias(real, ref, lesion) == pytest.approx(-2.5)


def test_paired_bias_standard_error_is_the_spread_of_what_the_denoiser_changed_over_sqrt_r():
    ref = np.full((1, 2, 2), 10.0)
    lesion = _box_mask(ref.shape, slice(None), slice(0, 1), slice(None))
    # Inputs at -20 % and +20 % (their own noise, which cancels in their mean); the denoiser takes 1.0 and 0.5
    # from their lesion means: changes of -10 % and -5 % of the reference's 10, std (ddof=1) 5 / sqrt(2), over
    # sqrt(2): 2.5 points, not the 7.5 the realisations' own -30 % and +15 % would give unpaired.
    inputs = np.stack([np.full((1, 2, 2), 8.0), np.full((1, 2, 2), 12.0)])
    denoised = inputs - np.array([1.0, 0.5])[:, None, None, None]
    denoised[1, 0, 1] = 500.0  # outside the lesion: must not count
    assert metrics.paired_bias_standard_error(denoised, inputs, ref, lesion) == pytest.approx(2.5)
    # Four changes of -4, -2, 0, +2 %: std (ddof=1) sqrt(20/3), standard error sqrt(20/3) / 2.
    four_in = np.stack([np.full((1, 2, 2), v) for v in (9.0, 11.0, 10.0, 10.5)])
    four = four_in + np.array([-0.4, -0.2, 0.0, 0.2])[:, None, None, None]
    assert metrics.paired_bias_standard_error(four, four_in, ref, lesion) == pytest.approx(math.sqrt(20 / 3) / 2)
    # a denoiser that moves every realisation alike leaves no doubt about its bias, whatever the inputs' noise
    assert metrics.paired_bias_standard_error(four_in - 1.0, four_in, ref, lesion) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="at least 2 realisations"):
        metrics.paired_bias_standard_error(denoised[:1], inputs[:1], ref, lesion)
    with pytest.raises(ValueError, match="the inputs have shape"):
        metrics.paired_bias_standard_error(four, inputs, ref, lesion)  # not the images these were made from


def test_lesion_bias_uses_region_means_not_voxelwise_ratios():
    # Voxel-wise relative errors would average to (+100 % - 50 %)/2 = +25 %;
    # the region means are 4 vs 4, a bias of 0.
    ref = np.array([[[2.0, 6.0]]])
    real = np.array([[[4.0, 4.0]]])[None].repeat(2, axis=0)
    assert metrics.lesion_ensemble_bias(real, ref, np.ones_like(ref, bool)) == pytest.approx(0.0)


def test_bias_vs_truth_uses_the_truth_as_reference():
    truth = np.full((1, 2, 2), 4.0)
    real = np.stack([np.full((1, 2, 2), 3.0), np.full((1, 2, 2), 3.0)])
    assert metrics.bias_vs_truth(real, truth, np.ones_like(truth, bool)) == pytest.approx(-25.0)


def test_liver_cov_is_zero_for_identical_realisations():
    real = np.stack([np.arange(8.0).reshape(2, 2, 2) + 1] * 3)
    assert metrics.liver_cov(real, np.ones((2, 2, 2), bool)) == 0.0


def test_liver_cov_known_std_with_ddof_1():
    # Two voxels; realisations (1, 3) and (2, 6): std (ddof=1) sqrt(2) and 2 sqrt(2),
    # ensemble means 2 and 4, liver mean 3 -> CoV = mean(sqrt2, 2 sqrt2) / 3 * 100.
    real = np.array([[[[1.0, 2.0]]], [[[3.0, 6.0]]]])
    cov = metrics.liver_cov(real, np.ones((1, 1, 2), bool))
    assert cov == pytest.approx(1.5 * math.sqrt(2) / 3 * 100)


def test_liver_cov_ignores_voxels_outside_the_liver():
    rng = np.random.default_rng(0)
    real = rng.normal(10, 1, size=(5, 2, 4, 4))
    liver = _box_mask((2, 4, 4), slice(None), slice(0, 2), slice(None))
    noisy_outside = real.copy()
    noisy_outside[:, :, 2:] = rng.normal(0, 100, size=(5, 2, 2, 4))
    assert metrics.liver_cov(noisy_outside, liver) == pytest.approx(metrics.liver_cov(real, liver))


def test_metrics_refuse_empty_masks_and_mismatched_shapes():
    real = np.ones((2, 2, 2, 2))
    with pytest.raises(ValueError, match="empty"):
        metrics.lesion_ensemble_bias(real, np.ones((2, 2, 2)), np.zeros((2, 2, 2), bool))
    with pytest.raises(ValueError, match="shape"):
        metrics.liver_cov(real, np.ones((2, 2, 3), bool))
    with pytest.raises(ValueError, match="at least 2"):
        metrics.liver_cov(real[:1], np.ones((2, 2, 2), bool))


def test_psnr_of_a_known_mse():
    ref = np.zeros((2, 4, 4))
    ref[0, 0, 0] = 10.0  # data range 10
    img = ref + 0.5  # MSE 0.25
    assert metrics.psnr(img, ref) == pytest.approx(10 * math.log10(100 / 0.25))
    assert metrics.psnr(img, ref, data_range=1.0) == pytest.approx(10 * math.log10(1 / 0.25))
    assert metrics.psnr(ref, ref) == math.inf


def _ssim_by_hand(x, y, L):
    """Wang et al. 2004 SSIM written the slow way: one explicit window per pixel."""
    g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g)
    w /= w.sum()
    c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
    values = []
    for i in range(x.shape[0] - 10):
        for j in range(x.shape[1] - 10):
            a, b = x[i : i + 11, j : j + 11], y[i : i + 11, j : j + 11]
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum()
            cab = (w * (a - ma) * (b - mb)).sum()
            values.append(((2 * ma * mb + c1) * (2 * cab + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_matches_a_straightforward_implementation():
    rng = np.random.default_rng(1)
    ref = rng.gamma(2.0, 1.0, size=(2, 15, 17))
    img = ref + rng.normal(0, 0.7, size=ref.shape)
    L = float(ref.max() - ref.min())
    expected = np.mean([_ssim_by_hand(img[k], ref[k], L) for k in range(2)])
    assert metrics.ssim(img, ref) == pytest.approx(expected, rel=1e-10)


def test_ssim_is_one_for_identical_images_and_falls_with_noise():
    rng = np.random.default_rng(2)
    ref = rng.gamma(2.0, 1.0, size=(12, 16, 16))
    assert metrics.ssim(ref, ref) == pytest.approx(1.0)
    assert metrics.ssim(ref, ref, dims=3) == pytest.approx(1.0)
    scores = [metrics.ssim(ref + rng.normal(0, s, ref.shape), ref) for s in (0.1, 0.5, 2.0)]
    assert 1.0 > scores[0] > scores[1] > scores[2]


def test_ssim_refuses_images_smaller_than_the_window():
    with pytest.raises(ValueError, match="at least 11"):
        metrics.ssim(np.ones((3, 8, 8)), np.ones((3, 8, 8)), data_range=1.0)


def test_dilate_grows_a_voxel_into_a_cube():
    m = _box_mask((7, 7, 7), 3, 3, 3)
    d = metrics.dilate(m, 2)
    assert d.sum() == 125 and d[1:6, 1:6, 1:6].all()


def test_hallucination_score_zero_for_perfect_and_linear_in_the_error():
    ref = np.full((5, 9, 9), 4.0)
    ood = _box_mask(ref.shape, 2, 4, 4)
    region = metrics.dilate(ood, 1)
    assert metrics.hallucination_score(ref, ref, ood, dilation=1) == 0.0
    err = np.zeros_like(ref)
    err[region] = 1.0
    err[0, 0, 0] = 50.0  # outside the dilated region: must not count
    assert metrics.hallucination_score(ref + err, ref, ood, dilation=1) == pytest.approx(25.0)
    assert metrics.hallucination_score(ref + 3 * err, ref, ood, dilation=1) == pytest.approx(75.0)
