"""Denoising finer voxels on the model's grid (tgdpet.resample), against weights worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_volume, trained_like_model

from tgdpet.denoise import denoise_volume
from tgdpet.domain import Domain
from tgdpet.infer import Denoiser
from tgdpet.io.orientation import canonical_voxel_mm, to_canonical
from tgdpet.resample import averaging_matrix, coarse_count, denoise_on_model_grid, resampled_axes, upsampling_matrix


def test_averaging_weights_are_the_overlaps_of_the_voxels():
    np.testing.assert_allclose(averaging_matrix(4, 2), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    # 3 fine voxels onto 2 coarse ones of 1.5 fine voxels each: the middle voxel is split in half.
    np.testing.assert_allclose(averaging_matrix(3, 2), [[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]], atol=1e-7)


@pytest.mark.parametrize("n_fine, n_coarse", [(8, 4), (120, 81), (13, 5), (2, 1)])
def test_upsampled_noise_averages_back_to_the_networks_estimate(n_fine, n_coarse):
    u = upsampling_matrix(n_fine, n_coarse, fwhm_fine=2.0 * n_fine / n_coarse)
    np.testing.assert_allclose(averaging_matrix(n_fine, n_coarse) @ u, np.eye(n_coarse), atol=1e-5)
    np.testing.assert_allclose(u.sum(axis=1), 1.0, atol=1e-5)  # a uniform field stays uniform, edges too
    np.testing.assert_allclose(u, u[::-1, ::-1], atol=1e-5)  # a mirrored grid gives mirrored weights


def test_kriging_recovers_correlated_noise_better_than_interpolating_the_means():
    """Fields with 6 mm FWHM grain on a 2.7 mm grid, known only as 4 mm means: kriging's error is the smallest."""
    rng = np.random.default_rng(0)
    n_fine, n_coarse = 150, 101  # 2.7 mm voxels onto ~4 mm ones
    sigma = (6.0 / 2.7) / 2.3548
    kernel = np.exp(-0.5 * (np.arange(-12, 13) / sigma) ** 2)
    fields = np.stack([np.convolve(rng.standard_normal(n_fine + 24), kernel, "valid") for _ in range(200)])
    means = fields @ averaging_matrix(n_fine, n_coarse).T
    kriged = means @ upsampling_matrix(n_fine, n_coarse, fwhm_fine=4.0 / 2.7).T
    # Independent alternatives: linear interpolation between coarse centres, and each fine voxel its coarse mean.
    fine_centres = (np.arange(n_fine) + 0.5) * n_coarse / n_fine - 0.5
    linear = np.stack([np.interp(fine_centres, np.arange(n_coarse), m) for m in means])
    nearest = means[:, np.minimum((fine_centres + 0.5).astype(int), n_coarse - 1)]
    inner = slice(5, -5)
    error = {name: np.mean((est - fields)[:, inner] ** 2) / np.mean(fields[:, inner] ** 2)
             for name, est in [("kriged", kriged), ("linear", linear), ("nearest", nearest)]}
    assert error["kriged"] < 0.3 * min(error["linear"], error["nearest"]), error


def test_coarse_grid_keeps_the_extent():
    assert coarse_count(256, 2.0, 4.0) == 128
    assert coarse_count(192, 2.6667, 4.0) == 128
    assert coarse_count(3, 2.0, 4.0) == 2 and coarse_count(1, 1.0, 4.0) == 1
    assert resampled_axes((2.0, 2.0, 2.0), (4.0, 4.0, 4.0)) == (True, True, True)
    assert resampled_axes((4.0, 3.6, 2.0), (4.0, 4.0, 4.0)) == (False, False, True)  # within 15 %: left alone


def test_subtracting_the_coarse_noise_estimate():
    rng = np.random.default_rng(0)
    x = rng.uniform(1.0, 2.0, (6, 8, 10)).astype(np.float32)
    voxel, model = (2.0, 2.0, 2.0), (4.0, 4.0, 4.0)
    shapes = []
    identity = denoise_on_model_grid(x, voxel, model, lambda a: shapes.append(a.shape) or a)
    np.testing.assert_array_equal(identity, x)  # a network that finds no noise changes nothing
    assert shapes == [(3, 4, 5)]  # and it ran on the 4 mm grid
    # a network that finds a uniform noise of 0.25 everywhere removes exactly that everywhere
    shifted = denoise_on_model_grid(x, voxel, model, lambda a: a - 0.25)
    np.testing.assert_allclose(shifted, x - 0.25, atol=1e-6)
    # what the coarse grid cannot hold stays: a network that removes everything leaves x minus its smooth part
    fine_only = denoise_on_model_grid(np.full_like(x, 3.0), voxel, model, lambda a: np.zeros_like(a))
    np.testing.assert_allclose(fine_only, 0.0, atol=1e-5)


def test_same_voxels_as_the_model_are_denoised_as_they_are():
    x = np.ones((4, 5, 6), np.float32)
    calls = []
    denoise_on_model_grid(x, (4.0, 4.0, 4.0), (4.0, 4.0, 4.0), lambda a: calls.append(a) or a)
    assert calls[0] is x


@pytest.mark.parametrize("spacing", [(2.0, 2.0, 2.0), (2.0, 2.0, 4.0)])
def test_denoiser_runs_the_network_on_the_models_grid(spacing):
    """A 2 mm volume meets a 4 mm model's network at 4 mm; without resampling, at 2 mm."""
    volume = make_volume(shape=(12, 24, 20), spacing=spacing)
    domain = Domain(voxel_min_mm=(4.0, 4.0, 4.0), voxel_max_mm=(4.0, 4.0, 4.0), units=("BQML",))
    denoiser = Denoiser(trained_like_model(), device="cpu", precision="fp32", domain=domain)
    seen = []
    full = denoiser._full
    denoiser._full = lambda a, progress: seen.append(a.shape) or full(a, progress)
    out = denoise_volume(denoiser, volume)
    z, y, x = canonical_voxel_mm(volume)
    assert (z, y, x) == (spacing[2], spacing[1], spacing[0])
    expected = tuple(n if v >= 3.4 else n // 2 for n, v in zip(to_canonical(volume).shape, (z, y, x)))
    assert seen == [expected] and out.shape == volume.shape and np.isfinite(out).all()
    denoiser.resample = False
    seen.clear()
    denoise_volume(denoiser, volume)
    assert seen == [to_canonical(volume).shape]
