"""The denoising fast path against a plain per-slice loop, and the `tgdpet denoise` command."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import make_volume, trained_like_model, tree_snapshot, write_test_nifti, write_test_series

from tgdpet.checkpoint import save_model
from tgdpet.cli import main
from tgdpet.data import intensity_scale
from tgdpet.errors import TgdpetError
from tgdpet.infer import BF16_TOLERANCE, Denoiser, default_output_path, denoise_array, fold_batchnorm
from tgdpet.io import read_volume

FP32_TOLERANCE = 1e-5


def pet_like_volume(shape=(9, 20, 17), seed: int = 0) -> np.ndarray:
    """Positive, skewed activity values in Bq/mL-like units (scale ~1000)."""
    return (np.random.default_rng(seed).gamma(2.0, 1.0, size=shape) * 1000).astype(np.float32)


def reference(model, volume: np.ndarray, normalize: bool = True) -> np.ndarray:
    """The definition: per slice, the centre of model(edge-replicated stack / s) * s, eager fp32."""
    s = intensity_scale(volume) if normalize else 1.0
    r = model.config.in_slices // 2
    padded = np.pad(volume, ((r, r), (0, 0), (0, 0)), mode="edge")
    out = np.empty_like(volume)
    with torch.no_grad():
        for k in range(volume.shape[0]):
            stack = torch.from_numpy(padded[k : k + 2 * r + 1] / s)[None]
            out[k] = model(stack)[0, r].numpy() * s
    return out


def rel_rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - b) ** 2) / np.mean(np.asarray(b, np.float64) ** 2)))


def test_fp32_fast_path_matches_eager_reference():
    model, volume = trained_like_model(), pet_like_volume()
    expected = reference(model, volume)
    assert rel_rms(volume, expected) > 0.05  # the network really changes the image
    out = denoise_array(model, volume, device="cpu", precision="fp32")
    assert out.dtype == np.float32 and out.shape == volume.shape
    assert rel_rms(out, expected) < FP32_TOLERANCE


def test_bf16_fast_path_is_within_the_documented_tolerance():
    model, volume = trained_like_model(), pet_like_volume()
    expected = reference(model, volume)
    out = denoise_array(model, volume, device="cpu", precision="bf16")
    error = rel_rms(out, expected)
    assert FP32_TOLERANCE < error < BF16_TOLERANCE  # bf16 really ran, and stays within bounds


def test_edge_slices_are_centres_of_replicated_stacks():
    model, volume = trained_like_model(in_slices=5), pet_like_volume(shape=(6, 12, 10))
    s = intensity_scale(volume)
    v = volume / s
    explicit = {
        0: [v[0], v[0], v[0], v[1], v[2]],
        1: [v[0], v[0], v[1], v[2], v[3]],
        5: [v[3], v[4], v[5], v[5], v[5]],
    }
    out = denoise_array(model, volume, device="cpu", precision="fp32", batch_slices=4)
    with torch.no_grad():
        for k, stack in explicit.items():
            expected = model(torch.from_numpy(np.stack(stack))[None])[0, 2].numpy() * s
            assert rel_rms(out[k], expected) < FP32_TOLERANCE


def test_five_slice_model_matches_reference():
    model, volume = trained_like_model(in_slices=5, seed=1), pet_like_volume(shape=(7, 16, 18), seed=1)
    out = denoise_array(model, volume, device="cpu", precision="fp32")
    assert rel_rms(out, reference(model, volume)) < FP32_TOLERANCE


def test_batchnorm_folding_is_exact_and_leaves_the_model_alone():
    model = trained_like_model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    x = torch.rand(4, 3, 16, 16) * 3
    with torch.no_grad():
        expected = model.eval()(x)
        got = folded(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert not any(p.requires_grad for p in folded.parameters())
    assert rel_rms(got.numpy(), expected.numpy()) < FP32_TOLERANCE
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_batch_size_and_slab_boundaries_do_not_change_results(precision):
    model, volume = trained_like_model(), pet_like_volume(shape=(11, 14, 13))
    runs = [denoise_array(model, volume, device="cpu", precision=precision, batch_slices=b) for b in (1, 3, 4, 11, 32)]
    for out in runs[1:]:
        assert rel_rms(out, runs[0]) < FP32_TOLERANCE


def test_intensity_normalisation_makes_the_output_scale_with_the_input():
    model, volume = trained_like_model(), pet_like_volume()
    out = denoise_array(model, volume, device="cpu", precision="fp32")
    scaled = denoise_array(model, volume * 1000, device="cpu", precision="fp32")
    assert rel_rms(scaled, out * 1000) < FP32_TOLERANCE
    # Without normalisation the network (biases, ReLU) is not scale-free: normalisation is what does it.
    raw = denoise_array(model, volume / 1000, device="cpu", precision="fp32", normalize=False)
    raw_scaled = denoise_array(model, volume, device="cpu", precision="fp32", normalize=False)
    assert rel_rms(raw_scaled, raw * 1000) > 1e-2


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_refused(bad):
    volume = pet_like_volume()
    volume[3, 5, 7] = bad
    with pytest.raises(TgdpetError, match="slice 3"):
        denoise_array(trained_like_model(), volume, device="cpu")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"precision": "fp16"}, "CUDA"),
        ({"precision": "fp64"}, "unknown precision"),
        ({"batch_slices": 0}, "at least 1"),
    ],
)
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(TgdpetError, match=match):
        Denoiser(trained_like_model(), device="cpu", **kwargs)


def test_a_two_dimensional_array_is_refused():
    with pytest.raises(TgdpetError, match="3-D"):
        denoise_array(trained_like_model(), pet_like_volume()[0], device="cpu")


def test_one_denoiser_serves_volumes_of_different_shapes(device):
    model = trained_like_model()
    denoiser = Denoiser(model, device=device, precision="fp32")
    for shape, seed in [((5, 12, 12), 2), ((8, 20, 9), 3), ((1, 6, 7), 4)]:
        volume = pet_like_volume(shape, seed)
        assert rel_rms(denoiser(volume), reference(model, volume)) < FP32_TOLERANCE


def test_automatic_precision_on_the_test_device(device):
    model, volume = trained_like_model(), pet_like_volume()
    out = denoise_array(model.to(device), volume, device=device)
    assert rel_rms(out, reference(model.cpu(), volume)) < BF16_TOLERANCE


def test_compiled_fast_path_matches_reference():
    model, volume = trained_like_model(), pet_like_volume(shape=(5, 16, 16))
    out = denoise_array(model, volume, device="cpu", precision="fp32", compile=True)
    assert rel_rms(out, reference(model, volume)) < FP32_TOLERANCE


def test_default_output_names(tmp_path):
    series = tmp_path / "pet_series"
    series.mkdir()
    (series / "slice1.dcm").touch()
    assert default_output_path(tmp_path / "study.nii.gz") == tmp_path / "study_denoised.nii.gz"
    assert default_output_path(tmp_path / "study.nii") == tmp_path / "study_denoised.nii.gz"
    assert default_output_path(tmp_path / "a.nii.gz", tmp_path / "out") == tmp_path / "out" / "a_denoised.nii.gz"
    assert default_output_path(series) == tmp_path / "pet_series_denoised"
    assert default_output_path(series / "slice1.dcm") == tmp_path / "pet_series_denoised"


# --------------------------------------------------------------------------- the tgdpet denoise command


@pytest.fixture
def model_file(tmp_path):
    return save_model(tmp_path / "tiny.safetensors", trained_like_model(), preset="tiny")


def test_cli_denoises_a_nifti_file_keeping_its_geometry(tmp_path, model_file):
    source = make_volume(shape=(6, 14, 12))
    path = write_test_nifti(tmp_path / "study.nii.gz", source)
    before = tree_snapshot(tmp_path)
    args = ["denoise", str(path), "--model", str(model_file), "--device", "cpu", "--precision", "fp32", "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    out = tmp_path / "study_denoised.nii.gz"
    assert str(out) in result.output
    written = read_volume(out)
    # make_volume is stored RAS (x to the right, y anterior); the network works in L, P, S: x and y flipped.
    stored = read_volume(path).data
    expected = reference(trained_like_model(), np.ascontiguousarray(stored[:, ::-1, ::-1]))[:, ::-1, ::-1]
    assert rel_rms(written.data, expected) < FP32_TOLERANCE
    np.testing.assert_allclose(written.affine, source.affine)
    assert nib.load(out).header.get_sform(coded=True)[1] == nib.load(path).header.get_sform(coded=True)[1]
    assert {k: v for k, v in tree_snapshot(tmp_path).items() if k in before} == before  # inputs untouched

    again = CliRunner().invoke(main, ["denoise", str(path), "--model", str(model_file), "--device", "cpu"])
    assert again.exit_code == 2 and "--overwrite" in again.output


def test_cli_writes_a_dicom_series_for_a_dicom_input(tmp_path, model_file):
    write_test_series(tmp_path / "series", make_volume(shape=(4, 10, 12)))
    out_dir = tmp_path / "results"
    out_dir.mkdir()
    result = CliRunner().invoke(
        main,
        ["denoise", str(tmp_path / "series"), "--model", str(model_file), "--out-dir", str(out_dir), "--no-progress"],
    )
    assert result.exit_code == 0, result.output
    written = read_volume(out_dir / "series_denoised")
    source = read_volume(tmp_path / "series")
    assert written.shape == source.shape
    np.testing.assert_allclose(written.affine, source.affine, atol=1e-4)


def test_cli_bad_input_fails_cleanly_without_output(tmp_path, model_file):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"not a nifti file")
    good = write_test_nifti(tmp_path / "good.nii.gz", make_volume(shape=(3, 8, 8)))
    before = tree_snapshot(tmp_path)
    runner = CliRunner()
    for args in (
        [str(bad)],
        [str(tmp_path / "missing.nii.gz")],
        [str(good), str(bad), "-o", str(tmp_path / "x.nii.gz")],
        [str(good), "--model", str(bad)],
    ):
        result = runner.invoke(main, ["denoise", *args, "--device", "cpu", "--no-progress"]
                               + ([] if "--model" in args else ["--model", str(model_file)]))  # fmt: skip
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output and "Error:" in result.output
    assert tree_snapshot(tmp_path) == before


def test_cli_creates_the_out_dir_only_once_the_work_is_accepted(tmp_path):
    model = save_model(tmp_path / "m.safetensors", trained_like_model(), preset="tiny")
    src = write_test_nifti(tmp_path / "study.nii.gz", make_volume(shape=(3, 8, 8)))
    out_dir = tmp_path / "out" / "denoised"
    base = ["denoise", str(src), "--device", "cpu", "--no-progress", "--out-dir", str(out_dir)]
    result = CliRunner().invoke(main, base + ["--model", str(tmp_path / "missing.safetensors")])
    assert result.exit_code == 2 and not (tmp_path / "out").exists()
    result = CliRunner().invoke(main, base + ["--model", str(model)])
    assert result.exit_code == 0, result.output
    assert read_volume(out_dir / "study_denoised.nii.gz").shape == (3, 8, 8)


def test_cli_refuses_a_model_trained_with_another_normalisation(tmp_path):
    model = save_model(tmp_path / "m.safetensors", trained_like_model(), normalization={"method": "max"})
    path = write_test_nifti(tmp_path / "study.nii.gz", make_volume(shape=(3, 8, 8)))
    result = CliRunner().invoke(main, ["denoise", str(path), "--model", str(model), "--device", "cpu"])
    assert result.exit_code == 2 and "normalisation" in result.output
    assert not (tmp_path / "study_denoised.nii.gz").exists()
