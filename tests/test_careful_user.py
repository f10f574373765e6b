"""What a careful user hits beyond a bad file: full disks, interrupts, earlier results, reports, leftovers.

The refusals of malformed inputs are in ``tests/bad_input_cases.py``; these
cases need more than one command or a machine that misbehaves (a full disk is
simulated by making the write itself fail with ENOSPC, as the kernel would).
"""

from __future__ import annotations

from pathlib import Path

import errno
import hashlib
import json
import os
import subprocess
import sys

import pydicom
import pytest
from bad_input_cases import run_cli, snapshot
from helpers import make_volume, trained_like_model, write_test_nifti, write_test_series

from tgdpet.checkpoint import save_model
from tgdpet.io import read_volume

DENOISE = ["denoise", "--device", "cpu", "--precision", "fp32", "--no-progress"]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("m") / "m.safetensors", trained_like_model(), preset="tiny")


def _one_error_line(result) -> str:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("kind", ["nifti", "dicom"])
def test_a_full_disk_is_one_sentence_and_leaves_nothing(tmp_path, model, monkeypatch, kind):
    if kind == "nifti":
        write_test_nifti(tmp_path / "scan.nii.gz")
        monkeypatch.setattr("tgdpet.io.nifti.array_to_file", _disk_full)
        args = [*DENOISE, "--model", str(model), "scan.nii.gz"]
    else:
        write_test_series(tmp_path / "series")
        monkeypatch.setattr("tgdpet.io.dicom_write.pydicom.dcmwrite", _disk_full)
        args = [*DENOISE, "--model", str(model), "series"]
    before = snapshot(tmp_path)
    result = run_cli(args, tmp_path)
    line = _one_error_line(result)
    assert result.exit_code == 2
    assert "the disk is full" in line and "nothing was written" in line, line
    assert snapshot(tmp_path) == before  # no output, no temporary left


def test_interrupting_denoise_does_not_suggest_resume(tmp_path, model, monkeypatch):
    write_test_nifti(tmp_path / "scan.nii.gz")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("tgdpet.denoise.denoise_volume", interrupted)
    result = run_cli([*DENOISE, "--model", str(model), "scan.nii.gz"], tmp_path)
    assert result.exit_code == 130
    assert "Interrupted" in result.stderr and "--resume" not in result.stderr, result.stderr
    assert not (tmp_path / "scan_denoised.nii.gz").exists()


def test_overwrite_still_replaces_a_series_tgdpet_wrote(tmp_path, model):
    write_test_series(tmp_path / "series")
    first = run_cli([*DENOISE, "--model", str(model), "series", "-o", "out"], tmp_path)
    assert first.exit_code == 0, first.stderr
    old_uid = pydicom.dcmread(next((tmp_path / "out").iterdir())).SeriesInstanceUID
    again = run_cli([*DENOISE, "--model", str(model), "series", "-o", "out", "--overwrite"], tmp_path)
    assert again.exit_code == 0, again.stderr
    files = sorted((tmp_path / "out").iterdir())
    assert len(files) == 8 and pydicom.dcmread(files[0]).SeriesInstanceUID != old_uid


def test_a_tree_holding_earlier_results_does_not_denoise_them_again(tmp_path, model):
    study = tmp_path / "study"
    study.mkdir()
    write_test_series(study / "PET")
    write_test_nifti(study / "scan.nii.gz", make_volume(shape=(6, 10, 12)))
    for single in ("PET", "scan.nii.gz"):  # results written beside their inputs, as the default puts them
        assert run_cli([*DENOISE, "--model", str(model), f"study/{single}"], tmp_path).exit_code == 0
    assert {p.name for p in study.iterdir()} == {"PET", "PET_denoised", "scan.nii.gz", "scan_denoised.nii.gz"}

    result = run_cli([*DENOISE, "--model", str(model), "study"], tmp_path)
    assert result.exit_code == 3, result.stderr  # done, but something was skipped
    report = json.loads((tmp_path / "study_denoised" / "tgdpet-report.json").read_text())
    status = {os.path.basename(e["input"]): (e["status"], e.get("reason", "")) for e in report["inputs"]}
    assert status["PET"][0] == status["scan.nii.gz"][0] == "denoised"
    for earlier in ("PET_denoised", "scan_denoised.nii.gz"):
        assert status[earlier][0] == "skipped" and "tgdpet result already" in status[earlier][1], status
    written = sorted(p.name for p in (tmp_path / "study_denoised").iterdir())
    assert written == ["PET", "scan.nii.gz", "tgdpet-report.json"]


def test_the_report_says_what_denoised_with_which_model_and_absolute_paths(tmp_path, model):
    (tmp_path / "study").mkdir()
    write_test_nifti(tmp_path / "study" / "a.nii.gz")
    write_test_series(tmp_path / "study" / "PET")
    result = run_cli([*DENOISE, "--model", str(model), "study"], tmp_path)  # run from the parent: relative input
    assert result.exit_code == 0, result.stderr  # nothing skipped
    report = json.loads((tmp_path / "study_denoised" / "tgdpet-report.json").read_text())
    assert report["root"] == str(tmp_path / "study")
    assert report["model"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert report["model"]["name"] == "m" and report["model"]["path"] == str(model)
    assert (report["device"], report["precision"]) == ("cpu", "fp32")
    entries = {os.path.basename(e["input"]): e for e in report["inputs"]}
    assert all(os.path.isabs(e["input"]) and os.path.isabs(e["output"]) for e in entries.values())
    assert entries["PET"]["storage_error_units"] == entries["a.nii.gz"]["storage_error_units"] == "BQML"


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_leftovers_of_a_killed_write_are_removed_by_the_next_one(tmp_path, model):
    write_test_nifti(tmp_path / "scan.nii.gz")
    host = os.uname().nodename
    stale = tmp_path / f".tmp-scan_denoised.nii.gz-{host}.{_dead_pid()}-abc.nii.gz"
    live = tmp_path / f".tmp-scan_denoised.nii.gz-{host}.{os.getpid()}-def.nii.gz"  # a writer still running
    other = tmp_path / f".tmp-other.nii.gz-{host}.{_dead_pid()}-ghi.nii.gz"  # another output's: not ours to judge
    for leftover in (stale, live, other):
        leftover.write_bytes(b"half an image")
    result = run_cli([*DENOISE, "--model", str(model), "scan.nii.gz"], tmp_path)
    assert result.exit_code == 0, result.stderr
    assert not stale.exists() and live.exists() and other.exists()
    assert read_volume(tmp_path / "scan_denoised.nii.gz").shape == (8, 16, 16)


def test_inspect_speaks_nifti_for_nifti_and_gives_the_suv_factor_a_unit(tmp_path):
    write_test_nifti(tmp_path / "scan.nii.gz")
    write_test_series(tmp_path / "PET")
    result = run_cli(["inspect", "scan.nii.gz", "PET"], tmp_path)
    assert result.exit_code == 0, result.stderr
    nifti, dicom = result.stdout.split("PET [dicom]")
    assert "RescaleSlope" not in nifti and "scl_slope 1" in nifti
    assert "RescaleSlope" in dicom and "(SUV per Bq/mL" in dicom


def test_inspect_says_when_a_nifti_records_no_units(tmp_path):
    """NIfTI has no field for activity units: tgdpet's own files note them, others are read as Bq/mL by assumption."""
    import nibabel as nib
    import numpy as np

    nib.Nifti1Image(np.ones((8, 8, 4), np.float32), np.eye(4)).to_filename(tmp_path / "plain.nii.gz")
    write_test_nifti(tmp_path / "ours.nii.gz")
    result = run_cli(["inspect", "plain.nii.gz", "ours.nii.gz", "--json"], tmp_path)
    found = {Path(info["path"]).name: info for info in json.loads(result.stdout)}
    assert (found["plain.nii.gz"]["units_recorded"], found["ours.nii.gz"]["units_recorded"]) == (False, True)
    text = run_cli(["inspect", "plain.nii.gz"], tmp_path).stdout
    assert "units BQML (assumed: the file records none)" in text


def test_inspect_of_a_folder_holding_only_a_leftover_says_so(tmp_path):
    (tmp_path / "left").mkdir()
    (tmp_path / "left" / ".tmp-scan.nii.gz-host.1-abc.nii.gz").write_bytes(b"half an image")
    result = run_cli(["inspect", "left"], tmp_path)
    line = _one_error_line(result)
    assert result.exit_code == 2 and "only hidden entries" in line and ".tmp-" in line, line
