"""``tgdpet inspect`` and batch denoising of a study tree, checked against values worked out by hand."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from helpers import make_volume, trained_like_model, tree_snapshot, write_test_nifti, write_test_series

from tgdpet.checkpoint import save_model
from tgdpet.cli import main
from tgdpet.io import read_volume, write_volume

#: suv_meta(): 70 kg, 370 MBq, scan 3600 s after injection, F-18.
SUV_BY_HAND = 70_000.0 / (3.7e8 * 2 ** (-3600 / 6586.2))


@pytest.fixture
def study(tmp_path):
    """A study tree: a PET series, a CT series, a NIfTI scan, a dynamic PET series, a text file."""
    root = tmp_path / "study"
    root.mkdir()
    write_test_series(root / "PET")
    for f in write_test_series(root / "CT"):
        ds = pydicom.dcmread(f)
        ds.Modality = "CT"
        ds.save_as(f)
    (root / "nifti").mkdir()
    write_test_nifti(root / "nifti" / "scan.nii.gz", make_volume(shape=(6, 10, 12)))
    (root / "DYN").mkdir()
    for frame in range(2):
        for f in sorted((root / "PET").iterdir()):
            ds = pydicom.dcmread(f)
            ds.SOPInstanceUID = pydicom.uid.generate_uid()
            ds.SeriesInstanceUID = "1.2.3.4.5"
            ds.FrameReferenceTime = str(frame * 60000)
            ds.save_as(root / "DYN" / f"{frame}_{f.name}")
    (root / "notes.txt").write_text("report\n")
    return root


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_inspect_describes_every_series(study):
    result = run("inspect", study, "--json")
    assert result.exit_code == 0, result.output
    found = {info["path"].split("/")[-1]: info for info in json.loads(result.output)}
    assert set(found) == {"PET", "CT", "DYN", "scan.nii.gz"}

    pet = found["PET"]
    assert (pet["modality"], pet["units"], pet["shape_zyx"], pet["orientation"]) == ("PT", "BQML", [8, 16, 16], "RAS")
    assert pet["spacing_mm"] == pytest.approx([2.0, 2.5, 3.0])
    slopes = [float(pydicom.dcmread(f).RescaleSlope) for f in (study / "PET").iterdir()]
    assert pet["slope_range"] == pytest.approx([min(slopes), max(slopes)])
    assert pet["suv_factor"] == pytest.approx(SUV_BY_HAND, rel=1e-9)

    assert not found["CT"]["readable"] and "not PET" in found["CT"]["problem"]
    assert "dynamic series of 2 time frames of 8 slices" in found["DYN"]["problem"]
    nifti = found["scan.nii.gz"]
    assert nifti["shape_zyx"] == [6, 10, 12] and nifti["suv_factor"] is None
    assert "PatientWeight" in nifti["suv_problem"]  # NIfTI records no weight

    dyn = json.loads(run("inspect", study / "DYN", "--frame", "1", "--json").output)[0]
    assert dyn["readable"] and dyn["frames"] == 2

    text = run("inspect", study / "PET")
    assert text.exit_code == 0 and f"SUV factor {SUV_BY_HAND:.6g}" in text.output
    syntax = pydicom.dcmread(next((study / "PET").iterdir())).file_meta.TransferSyntaxUID.name
    assert f"; transfer syntax {syntax}\n" in text.output


def test_inspect_of_nothing_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run("inspect", tmp_path / "empty")
    assert result.exit_code == 2 and "no NIfTI, ECAT or DICOM image" in result.output


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("m") / "m.safetensors", trained_like_model(), preset="tiny")


def test_denoise_of_a_study_tree_denoises_pet_skips_the_rest_and_reports(study, model):
    before = tree_snapshot(study)
    result = run("denoise", study, "--model", model, "--device", "cpu", "--no-progress")
    assert result.exit_code == 3, result.output  # done, but CT and DYN were skipped
    assert tree_snapshot(study) == before  # inputs untouched
    out = study.parent / "study_denoised"
    report = json.loads((out / "tgdpet-report.json").read_text())
    entries = {e["input"].split("/")[-1]: e for e in report["inputs"]}
    assert {k: e["status"] for k, e in entries.items()} == {
        "PET": "denoised", "scan.nii.gz": "denoised", "CT": "skipped", "DYN": "skipped"
    }  # fmt: skip
    assert "not PET" in entries["CT"]["reason"] and "--frame" in entries["DYN"]["reason"]
    assert (report["denoised"], report["skipped"]) == (2, 2)

    pet = entries["PET"]
    assert pet["output"].endswith("study_denoised/PET") and pet["units"] == "BQML"
    assert pet["suv_factor"] == pytest.approx(SUV_BY_HAND, rel=1e-9)
    written = sorted((out / "PET").iterdir())
    assert len(written) == 8
    assert pet["storage_error_max"] == pytest.approx(max(float(pydicom.dcmread(f).RescaleSlope) for f in written) / 2)
    # body: voxels above 5 % of the input's 99.5th percentile
    x, y = read_volume(study / "PET").data, read_volume(out / "PET").data
    body = x > 0.05 * np.percentile(x, 99.5)
    change = 100 * (y[body].mean() - x[body].mean()) / x[body].mean()
    assert pet["body_mean_change_percent"] == pytest.approx(change, abs=1e-3)
    assert math.isfinite(change)
    assert entries["scan.nii.gz"]["storage_error_max"] == 0.0
    assert read_volume(out / "nifti" / "scan.nii.gz").shape == (6, 10, 12)

    again = run("denoise", study, "--model", model, "--device", "cpu", "--no-progress")
    assert again.exit_code == 2 and "already exists" in again.output


def test_study_tree_without_pet_is_refused_and_writes_nothing(tmp_path, model):
    root = tmp_path / "ct_only"
    root.mkdir()
    for f in write_test_series(root / "CT"):
        ds = pydicom.dcmread(f)
        ds.Modality = "CT"
        ds.save_as(f)
    shutil.copy(__file__, root / "notes.txt")
    result = run("denoise", root, "--model", model, "--device", "cpu", "--no-progress")
    assert result.exit_code == 2 and "holds no PET image tgdpet can denoise" in result.output
    assert not (tmp_path / "ct_only_denoised").exists()


def test_output_with_an_image_extension_is_refused_before_denoising(tmp_path, model):
    src = write_volume(make_volume(), tmp_path / "x.nii.gz")
    before = tree_snapshot(tmp_path)
    result = run("denoise", src, "-o", tmp_path / "out.png", "--model", model, "--device", "cpu")
    assert result.exit_code == 2
    assert result.output.strip() == (
        "Error: tgdpet cannot write out.png: outputs are NIfTI files (.nii, .nii.gz) or DICOM series folders "
        "(a name without a file extension)."
    )
    assert tree_snapshot(tmp_path) == before


def test_a_series_at_the_root_of_a_tree_goes_to_its_own_subfolder(tmp_path, model):
    """dcm2niix writes its NIfTI into the DICOM folder: the folder is then a tree whose root holds a series."""
    root = tmp_path / "study"
    files = write_test_series(root)
    write_test_nifti(root / "converted.nii.gz", make_volume(shape=(6, 10, 12)))
    result = run("denoise", root, "--model", model, "--device", "cpu", "--no-progress")
    assert result.exit_code == 0, result.output
    out = tmp_path / "study_denoised"
    uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    number = pydicom.dcmread(files[0]).get("SeriesNumber", "")
    series_out = out / f"series_{number}_{uid[-8:]}"
    assert sorted(p.name for p in out.iterdir()) == sorted(["converted.nii.gz", series_out.name, "tgdpet-report.json"])
    assert len(list(series_out.iterdir())) == len(files)
    assert read_volume(series_out).shape == read_volume(root).shape


@pytest.mark.parametrize("name", ["res.nii.gz", "res.png", "existing_file"])
def test_a_tree_is_written_to_a_folder_not_a_file_name(study, model, name):
    out = study.parent / name
    if name == "existing_file":
        out.write_text("mine\n")
    before = tree_snapshot(study.parent)
    result = run("denoise", study, "-o", out, "--overwrite", "--model", model, "--device", "cpu", "--no-progress")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert result.output.startswith("Error: ") and len(result.output.strip().splitlines()) == 1
    assert tree_snapshot(study.parent) == before  # nothing written, the file left as it was


def test_an_output_inside_the_input_series_folder_is_refused(tmp_path, model):
    series = tmp_path / "PET"
    write_test_series(series)
    before = tree_snapshot(tmp_path)
    for out in (series / "den", series / "a" / "b"):
        result = run("denoise", series, "-o", out, "--model", model, "--device", "cpu", "--no-progress")
        assert result.exit_code == 2 and "inside the folder of the input series" in result.output, result.output
    assert tree_snapshot(tmp_path) == before
