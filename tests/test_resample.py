"""Denoising on working grids other than the input's (tgdpet.resample), against values worked out by hand."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from helpers import make_volume, suv_meta, trained_like_model, write_test_nifti, write_test_series

import tgdpet
from tgdpet import __version__
from tgdpet.batch import Written
from tgdpet.cli import main
from tgdpet.denoise import denoise_volume, load_denoiser
from tgdpet.domain import Domain
from tgdpet.infer import Denoiser
from tgdpet.io import Volume, read_volume
from tgdpet.io.orientation import canonical_voxel_mm, to_canonical
from tgdpet.resample import (
    averaging_matrix,
    denoise_on_best_grid,
    denoise_on_grid,
    grid_count,
    resampled_axes,
    upsampling_matrix,
    working_spacings,
)


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
    assert grid_count(256, 2.0, 4.0) == 128
    assert grid_count(192, 2.6667, 4.0) == 128
    assert grid_count(3, 2.0, 4.0) == 2 and grid_count(1, 1.0, 4.0) == 1
    assert resampled_axes((2.0, 2.0, 2.0), (4.0, 4.0, 4.0)) == (True, True, True)
    assert resampled_axes((4.0, 3.6, 2.0), (4.0, 4.0, 4.0)) == (False, False, True)  # within 15 %: left alone


def test_subtracting_the_coarse_noise_estimate():
    rng = np.random.default_rng(0)
    x = rng.uniform(1.0, 2.0, (6, 8, 10)).astype(np.float32)
    voxel, model = (2.0, 2.0, 2.0), (4.0, 4.0, 4.0)
    shapes = []
    identity = denoise_on_grid(x, voxel, model, lambda a: shapes.append(a.shape) or a)
    np.testing.assert_array_equal(identity, x)  # a network that finds no noise changes nothing
    assert shapes == [(3, 4, 5)]  # and it ran on the 4 mm grid
    # a network that finds a uniform noise of 0.25 everywhere removes exactly that everywhere
    shifted = denoise_on_grid(x, voxel, model, lambda a: a - 0.25)
    np.testing.assert_allclose(shifted, x - 0.25, atol=1e-6)
    # what the coarse grid cannot hold stays: a network that removes everything leaves x minus its smooth part
    fine_only = denoise_on_grid(np.full_like(x, 3.0), voxel, model, lambda a: np.zeros_like(a))
    np.testing.assert_allclose(fine_only, 0.0, atol=1e-5)


def test_a_finer_working_grid_hands_back_exactly_what_the_network_removed():
    """4 mm voxels on a 3.2 mm grid: (8, 12, 16) voxels become (10, 15, 20), and the way back is exact."""
    rng = np.random.default_rng(0)
    x = rng.uniform(1.0, 2.0, (8, 12, 16)).astype(np.float32)
    voxel, grid = (4.0, 4.0, 4.0), (3.2, 3.2, 3.2)
    shapes = []
    identity = denoise_on_grid(x, voxel, grid, lambda a: shapes.append(a.shape) or a)
    assert shapes == [(10, 15, 20)]
    np.testing.assert_allclose(identity, x, atol=1e-6)  # a network that finds no noise changes nothing
    np.testing.assert_allclose(denoise_on_grid(x, voxel, grid, lambda a: a - 0.25), x - 0.25, atol=1e-5)
    # a network that removes everything removes the whole input: the fine image averages back to exactly x
    np.testing.assert_allclose(denoise_on_grid(x, voxel, grid, lambda a: np.zeros_like(a)), 0.0, atol=1e-5)
    # an axis within 15 % of the working grid's spacing stays as it is
    shapes.clear()
    denoise_on_grid(x, (4.0, 3.6, 4.0), grid, lambda a: shapes.append(a.shape) or a)
    assert shapes == [(10, 12, 20)]


def test_same_voxels_as_the_model_are_denoised_as_they_are():
    x = np.ones((4, 5, 6), np.float32)
    calls = []
    denoise_on_grid(x, (4.0, 4.0, 4.0), (4.0, 4.0, 4.0), lambda a: calls.append(a) or a)
    assert calls[0] is x


# The grids a (12, 24, 20)-voxel canonical volume is denoised on: 2 mm axes step to 4 mm by 2 ** (1/4)
# (2.38, 2.83, 3.36, 4.0 mm: 24 voxels -> 20, 17, 14, 12), a 4 mm axis stays.
GRIDS_2MM = [(12, 24, 20), (10, 20, 17), (8, 17, 14), (7, 14, 12), (6, 12, 10)]
GRIDS_2MM_4MM_SLICES = [(12, 24, 20), (12, 20, 17), (12, 17, 14), (12, 14, 12), (12, 12, 10)]
# At the model's 4 mm: its own grid and 3.2 mm (12 * 4 / 3.2 = 15, 24 -> 30, 20 -> 25).
GRIDS_4MM = [(12, 24, 20), (15, 30, 25)]


@pytest.mark.parametrize(
    "spacing, grids",
    [((2.0, 2.0, 2.0), GRIDS_2MM), ((2.0, 2.0, 4.0), GRIDS_2MM_4MM_SLICES), ((4.0, 4.0, 4.0), GRIDS_4MM)],
)
def test_denoiser_runs_the_network_on_the_grids_up_to_the_models(spacing, grids):
    """A 2 mm volume meets a 4 mm model's network on its own grid, three between and the model's, a 4 mm one on
    its own and a step finer; without resampling, on its own only."""
    volume = make_volume(shape=(12, 24, 20), spacing=spacing)
    domain = Domain(voxel_min_mm=(4.0, 4.0, 4.0), voxel_max_mm=(4.0, 4.0, 4.0), units=("BQML",))
    denoiser = Denoiser(trained_like_model(), device="cpu", precision="fp32", domain=domain)
    seen = []
    full = denoiser._full
    denoiser._full = lambda a, progress: seen.append(a.shape) or full(a, progress)
    out, grid = denoise_volume(denoiser, volume)
    z, y, x = canonical_voxel_mm(volume)
    assert (z, y, x) == (spacing[2], spacing[1], spacing[0])
    assert to_canonical(volume).shape == (12, 24, 20)
    assert seen == grids and out.shape == volume.shape and np.isfinite(out).all()
    assert grid[::-1] in working_spacings((z, y, x), (4.0, 4.0, 4.0))
    denoiser.resample = False
    seen.clear()
    assert denoise_volume(denoiser, volume)[1] == (x, y, z)
    assert seen == [(12, 24, 20)]


def test_working_grids_step_geometrically_from_the_inputs_voxels_to_the_models():
    model = (4.0, 4.0, 4.0)
    halfway = (2.7 * 4.0) ** 0.5  # the geometric mean: 3.29 mm
    np.testing.assert_allclose(working_spacings((2.7, 2.7, 2.7), model), [(2.7,) * 3, (halfway,) * 3, (4.0,) * 3])
    np.testing.assert_allclose(working_spacings((2.0, 2.0, 2.0), model), [(2.0 * 2 ** (k / 4),) * 3 for k in range(5)])
    # At the model's voxels, or near them: the input's own grid and one 1.25x finer.
    assert working_spacings((4.0, 4.0, 4.0), model) == [(4.0, 4.0, 4.0), (3.2, 3.2, 3.2)]
    np.testing.assert_allclose(working_spacings((3.6, 4.0, 4.0), model), [(3.6, 4.0, 4.0), (2.88, 3.2, 3.2)])
    assert working_spacings((3.0, 3.0, 3.0), model) == [(3.0,) * 3, (4.0,) * 3]  # 3.46 mm is too close to resample 3 mm
    # An axis as coarse as the model's keeps its voxels; an axis nearly so moves only at the last step.
    assert [w[0] for w in working_spacings((4.0, 2.0, 2.0), model)] == [4.0] * 5
    assert [w[0] for w in working_spacings((3.3, 2.0, 2.0), model)] == [3.3] * 4 + [4.0]


def test_the_grid_kept_is_the_one_where_the_network_removes_most():
    """A network that finds noise only on one grid's shape: that grid's result is returned, whichever it is."""
    rng = np.random.default_rng(1)
    x = rng.uniform(1.0, 2.0, (8, 12, 16)).astype(np.float32)
    voxel, model = (2.0, 2.0, 2.0), (4.0, 4.0, 4.0)
    for spacing in working_spacings(voxel, model):
        shape = tuple(grid_count(n, v, w) for n, v, w in zip(x.shape, voxel, spacing))
        seen = []

        def network(a):
            seen.append(a.shape)
            return 0.5 * a if a.shape == shape else a

        best, grid = denoise_on_best_grid(x, voxel, model, network)
        assert len(seen) == 5 and shape in seen and grid == spacing
        np.testing.assert_array_equal(best, denoise_on_grid(x, voxel, spacing, lambda a: 0.5 * a))


@pytest.mark.parametrize(
    "finer_removes, kept",
    [
        (0.499, 3.2),  # change (0.499 / 0.5)^2 = 0.996 of the most: the finer grid
        (0.49, 3.2),  # change (0.49 / 0.5)^2 = 0.960 of the most, within 5 %: the finer grid
        (0.48, 4.0),  # (0.48 / 0.5)^2 = 0.922 of the most: the grid that removed the most
        (0.6, 3.2),  # the finer grid removes the most
    ],
)
def test_of_grids_that_remove_about_the_most_the_finest_is_kept(finer_removes, kept):
    """A uniform image goes to either grid and back unchanged, so a network that scales it by ``1 -+ f``
    changes it by exactly ``(f c)^2``: on the 4 mm grid it adds half (a change of ``(c / 2)^2``), on the
    3.2 mm one it removes ``finer_removes``; the sign tells which grid's result came back."""
    c, voxel = 3.0, (4.0, 4.0, 4.0)
    x = np.full((10, 12, 16), c, np.float32)
    fine_shape = (12, 15, 20)

    def network(a):
        return (1.0 - finer_removes) * a if a.shape == fine_shape else 1.5 * a

    out, grid = denoise_on_best_grid(x, voxel, voxel, network)
    np.testing.assert_allclose(out, c * (1.0 - finer_removes) if kept == 3.2 else 1.5 * c, rtol=1e-5)
    np.testing.assert_allclose(grid, (kept,) * 3)


def _noisy_cylinder(grain_fwhm_mm: float, voxel_mm: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A uniform cylinder (1.0) with 25 % Gaussian-correlated noise of the given grain, and its inner mask."""
    rng = np.random.default_rng(seed)
    shape = (32, 96, 96)
    noise = rng.standard_normal(shape)
    sigma = grain_fwhm_mm / voxel_mm / (2 * np.sqrt(2 * np.log(2)))
    taps = np.arange(-int(4 * sigma) - 1, int(4 * sigma) + 2)
    kernel = np.exp(-0.5 * (taps / sigma) ** 2)
    kernel /= kernel.sum()
    for axis in range(3):
        noise = np.apply_along_axis(lambda v: np.convolve(v, kernel, "same"), axis, noise)
    z, y, x = np.indices(shape)
    body = (y - 48) ** 2 + (x - 48) ** 2 < 40**2
    inner = body & (z >= 4) & (z < 28) & ((y - 48) ** 2 + (x - 48) ** 2 < 34**2)
    noise *= 0.25 / noise[inner].std()
    return np.where(body, 1.0 + noise, 0.0).astype(np.float32), inner


def _noise_left(denoiser: Denoiser, grain_mm: float, voxel_mm: float) -> tuple[dict[float, float], float]:
    """Share of a noisy cylinder's noise left on each candidate grid, and by the denoiser's own choice."""
    voxel, model = (voxel_mm,) * 3, denoiser.domain.voxel_min_mm
    image, inner = _noisy_cylinder(grain_mm, voxel_mm)
    input_noise = np.std(image[inner] - 1.0)
    left = {}
    for spacing in working_spacings(voxel, model):
        out = denoise_on_grid(image, voxel, spacing, lambda a: denoiser._full(a, False))
        left[round(spacing[0], 2)] = np.std(out[inner] - 1.0) / input_noise
    return left, np.std(denoiser(image, voxel_mm=voxel)[inner] - 1.0) / input_noise


@pytest.fixture(scope="module")
def builtin_denoiser() -> Denoiser:
    return load_denoiser(None, device="cpu", precision="fp32")


def test_the_builtin_model_on_a_fine_grain_at_27mm_uses_a_finer_grid_than_its_own(builtin_denoiser):
    """Noise of 4 mm grain at 2.7 mm voxels: on the 4 mm grid it looks smoother than anything the model learned.

    The truth is the cylinder's 1.0, so the noise left is measured directly. Worked out with the
    built-in model: on the 4 mm grid alone it leaves about 0.77 of this noise, on the input's
    own grid 0.54; with a 10 mm grain the 4 mm grid is the best (0.48, native 0.71).
    """
    for grain, best_left in ((4.0, 0.6), (10.0, 0.5)):
        left, chosen_left = _noise_left(builtin_denoiser, grain, 2.7)
        assert chosen_left == pytest.approx(min(left.values()), abs=0.005), (grain, left)
        assert chosen_left < best_left, (grain, left)
    assert left[4.0] == min(left.values())  # the coarse grain: the model's own grid


def test_the_builtin_model_at_its_own_4mm_meets_a_fine_grain_on_a_finer_grid(builtin_denoiser):
    """4 mm voxels whose noise grain is finer than the model's training noise: a 3.2 mm grid removes more.

    Worked out with the built-in model: a 4 mm grain keeps 0.77 of its noise on the 4 mm grid and
    0.64 on the 3.2 mm one; a 10 mm grain 0.41 on the 4 mm grid and 0.52 on the finer one.
    """
    left, chosen_left = _noise_left(builtin_denoiser, 4.0, 4.0)
    assert set(left) == {4.0, 3.2} and left[3.2] < 0.68 < 0.74 < left[4.0], left
    assert chosen_left == pytest.approx(left[3.2], abs=0.005), left
    left, chosen_left = _noise_left(builtin_denoiser, 10.0, 4.0)
    assert left[4.0] < 0.45 < 0.48 < left[3.2], left
    assert chosen_left == pytest.approx(left[4.0], abs=0.005), left


def test_denoise_names_the_grid_each_image_was_denoised_on(tmp_path):
    """``tgdpet denoise`` tells which working grid each image got, on the command line and in a tree's report.

    The two 4 mm cylinders of the test above: by the noise left against their truth, a 4 mm grain is best
    denoised on the 3.2 mm grid and a 10 mm grain on the model's own 4 mm grid.
    """
    tree = tmp_path / "study"
    tree.mkdir()
    for grain in (4.0, 10.0):
        image, _ = _noisy_cylinder(grain, 4.0)
        volume = Volume(data=image, affine=np.diag([4.0, 4.0, 4.0, 1.0]), units="BQML", meta=suv_meta())
        write_test_nifti(tree / f"grain{grain:g}.nii.gz", volume)
    single = CliRunner().invoke(main, ["denoise", str(tree / "grain4.nii.gz"), "-o", str(tmp_path / "one.nii.gz"),
                                       "--device", "cpu", "--no-progress"])  # fmt: skip
    assert single.exit_code == 0, single.output
    assert "(working grid 3.2 x 3.2 x 3.2 mm; the image's voxels are 4 x 4 x 4 mm)." in single.output
    # A DICOM result carries it in every slice's DerivationDescription, where a PACS reader meets it, after the
    # model that made it (the built-in file, and the start of its SHA-256, hashed here).
    weights = Path(tgdpet.__file__).parent / "pretrained" / "dncnn-fdg-uniform64.safetensors"
    sha = hashlib.sha256(weights.read_bytes()).hexdigest()[:12]
    write_test_series(tmp_path / "grain4_series", read_volume(tree / "grain4.nii.gz"))
    series = CliRunner().invoke(main, ["denoise", str(tmp_path / "grain4_series"), "-o", str(tmp_path / "one_series"),
                                       "--device", "cpu", "--no-progress"])  # fmt: skip
    assert series.exit_code == 0, series.output
    derivations = {pydicom.dcmread(f, stop_before_pixels=True).DerivationDescription
                   for f in (tmp_path / "one_series").iterdir()}  # fmt: skip
    assert derivations == {
        f"tgdpet denoised (tgdpet {__version__}): model dncnn-fdg-uniform64 (SHA-256 {sha}); "
        "working grid 3.2 x 3.2 x 3.2 mm; the image's voxels are 4 x 4 x 4 mm"
    }
    batch = CliRunner().invoke(main, ["denoise", str(tree), "--device", "cpu", "--no-progress"])
    assert batch.exit_code == 0, batch.output
    report = json.loads((tmp_path / "study_denoised" / "tgdpet-report.json").read_text())
    grids = {Path(e["input"]).name: e["working_grids_mm"] for e in report["inputs"]}
    assert grids == {"grain4.nii.gz": [[3.2, 3.2, 3.2]], "grain10.nii.gz": [[4.0, 4.0, 4.0]]}
    assert all(e["voxel_mm"] == [4.0, 4.0, 4.0] for e in report["inputs"])
    assert "grain10.nii.gz (working grid 4 x 4 x 4 mm; the image's voxels are 4 x 4 x 4 mm)" in batch.output


def test_a_dynamic_image_whose_frames_got_different_grids_names_each_with_its_frames(tmp_path):
    fine, own = (3.2, 3.2, 3.2), (4.0, 4.0, 4.0)
    written = Written(tmp_path / "out.nii.gz", own, (fine, own, fine))
    assert written.note() == (
        "working grids 3.2 x 3.2 x 3.2 mm (2 frames), 4 x 4 x 4 mm (1 frame); the image's voxels are 4 x 4 x 4 mm"
    )
    assert written.record()["working_grids_mm"] == [[3.2, 3.2, 3.2], [4.0, 4.0, 4.0], [3.2, 3.2, 3.2]]
