"""tgdpet.denoise and the `tgdpet denoise` command: files in, files out, bad inputs refused before any output."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from helpers import make_volume, reference_denoise, rel_rms, trained_like_model, tree_snapshot
from helpers import write_test_nifti, write_test_series

from tgdpet.checkpoint import save_model
from tgdpet.cli import main
from tgdpet.denoise import default_output_path
from tgdpet.io import read_volume

FP32_TOLERANCE = 1e-5


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
    expected = reference_denoise(trained_like_model(), np.ascontiguousarray(stored[:, ::-1, ::-1]))[:, ::-1, ::-1]
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


@pytest.mark.parametrize("bad", ["nan", "zeros", "damaged"])
def test_one_bad_input_among_several_leaves_no_output(tmp_path, model_file, bad):
    good = write_test_nifti(tmp_path / "a.nii.gz", make_volume(shape=(4, 10, 12)))
    data = make_volume(shape=(4, 10, 12)).data.copy()
    if bad == "nan":
        data[2, 5, 5] = np.nan
    elif bad == "zeros":
        data[:] = 0.0
    path = tmp_path / "b.nii.gz"
    nib.Nifti1Image(data.transpose(2, 1, 0), np.eye(4)).to_filename(path)
    if bad == "damaged":
        path.write_bytes(path.read_bytes()[:200])
    before = tree_snapshot(tmp_path)
    args = ["denoise", str(good), str(path), "--model", str(model_file), "--device", "cpu", "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "b.nii.gz" in result.output, result.output
    assert tree_snapshot(tmp_path) == before  # a.nii.gz's result is not written either


def test_an_empty_frame_of_a_dynamic_image_is_kept_and_the_others_denoised(tmp_path, model_file):
    """A frame before injection holds no activity: nothing to denoise, nor to normalise by."""
    frame = make_volume(shape=(4, 10, 12))
    xyz = frame.data.transpose(2, 1, 0)
    path = tmp_path / "dyn.nii.gz"
    nib.Nifti1Image(np.stack([0 * xyz, xyz], axis=-1), frame.affine).to_filename(path)
    args = ["denoise", str(path), "--model", str(model_file), "--device", "cpu", "--no-progress", "--precision", "fp32"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "frame 0 holds no activity" in result.output
    out = np.asarray(nib.load(tmp_path / "dyn_denoised.nii.gz").dataobj)
    assert out.shape == (12, 10, 4, 2) and not out[..., 0].any()
    one = CliRunner().invoke(main, ["denoise", str(path), "--frame", "1", "-o", str(tmp_path / "f1.nii.gz"),
                                    "--model", str(model_file), "--device", "cpu", "--precision", "fp32"])  # fmt: skip
    assert one.exit_code == 0, one.output
    np.testing.assert_array_equal(out[..., 1], np.asarray(nib.load(tmp_path / "f1.nii.gz").dataobj))
