"""Series tgdpet writes pass the standard's validator and read the same in an independent converter.

``dciodvfy`` (Debian package dicom3tools) checks every file against the PET
Image IOD; ``dcm2niix`` (Debian package dcm2niix) converts tgdpet's series
to NIfTI, which must hold the same values at the same world positions as
tgdpet's own NIfTI output. In CI (``CI=true``) a missing tool is a failure,
never a skip: ``.ci/run`` installs both.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from helpers import make_volume, trained_like_model, write_dynamic_series, write_test_series

from tgdpet.checkpoint import save_model
from tgdpet.cli import main
from tgdpet.io import read_volume, write_volume


def tool(name: str) -> str:
    """The path of a command-line tool; its absence fails the test in CI and skips it elsewhere."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install dicom3tools dcm2niix)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def validator_errors(folder: Path) -> set[str]:
    """Every distinct ``Error`` line dciodvfy prints for the files of a series (values stripped)."""
    dciodvfy = tool("dciodvfy")
    errors = set()
    for f in sorted(folder.iterdir()):
        result = subprocess.run([dciodvfy, str(f)], capture_output=True, text=True, timeout=60)
        for line in (result.stdout + result.stderr).splitlines():
            if line.startswith("Error"):
                errors.add(re.sub(r"<[^>]*[0-9][^>]*>", "<value>", line))  # the same defect in every slice
    return errors


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("model") / "m.safetensors", trained_like_model(), preset="tiny")


def denoise(model: Path, src: Path, out: Path) -> Path:
    result = CliRunner().invoke(
        main, ["denoise", str(src), "-o", str(out), "--model", str(model), "--device", "cpu", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    return out


def test_series_from_scratch_and_its_denoised_series_pass_the_validator(tmp_path, model):
    write_test_series(tmp_path / "scratch")  # a NIfTI-like volume written as a new series
    assert validator_errors(tmp_path / "scratch") == set()
    denoise(model, tmp_path / "scratch", tmp_path / "denoised")
    assert validator_errors(tmp_path / "denoised") == set()
    nifti = write_volume(make_volume(), tmp_path / "scan.nii.gz")
    # A volume read from NIfTI written as a new DICOM series (what simulate --dicom does; denoise keeps a NIfTI
    # input's format and refuses an output name without an extension for it).
    write_volume(read_volume(nifti), tmp_path / "from_nifti")
    assert validator_errors(tmp_path / "from_nifti") == set()


def test_simulated_series_pass_the_validator(tmp_path):
    result = CliRunner().invoke(
        main,
        ["simulate", str(tmp_path / "sim"), "--studies", "1", "--size", "32", "--slices", "6", "--protocols", "v1",
         "--levels", "30", "--no-test-study", "--ood", "none", "--dicom", "--device", "cpu", "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    series = sorted(p for p in (tmp_path / "sim" / "v1" / "s000").iterdir() if p.is_dir())
    assert len(series) == 2
    for folder in series:
        assert validator_errors(folder) == set(), folder.name


def test_derived_series_adds_no_error_to_a_flawed_source(tmp_path, model):
    """A source missing Type 2 attributes keeps its own errors in the derived series, and gets no new one."""
    files = write_test_series(tmp_path / "source")
    for f in files:
        ds = pydicom.dcmread(f)
        del ds.PatientOrientationCodeSequence, ds.PatientSex, ds.Laterality  # what sloppy exporters drop
        ds.save_as(f)
    source_errors = validator_errors(tmp_path / "source")
    assert source_errors  # the flaws are real
    denoise(model, tmp_path / "source", tmp_path / "derived")
    assert validator_errors(tmp_path / "derived") <= source_errors


AFFINES = {
    "axial": np.array([[2.0, 0, 0, -15], [0, 2.5, 0, -20], [0, 0, 3.0, -10], [0, 0, 0, 1]]),
    # oblique: 20 degrees about z, then 10 about x, with non-square pixels
    "oblique": None,
}


def _oblique() -> np.ndarray:
    a, b = np.radians(20), np.radians(10)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([2.0, 2.5, 3.0])
    affine[:3, 3] = (12.0, -30.0, 45.0)
    return affine


@pytest.mark.parametrize("name", ["axial", "oblique"])
def test_dcm2niix_reads_tgdpet_series_like_tgdpet_nifti(tmp_path, name):
    dcm2niix = tool("dcm2niix")
    affine = AFFINES[name] if AFFINES[name] is not None else _oblique()
    write_test_series(tmp_path / "series", make_volume(shape=(8, 16, 20), affine=affine))
    ours = nib.load(write_volume(read_volume(tmp_path / "series"), tmp_path / "tgdpet.nii.gz"))
    (tmp_path / "conv").mkdir()
    run = subprocess.run(
        [dcm2niix, "-z", "n", "-f", "conv", "-o", str(tmp_path / "conv"), str(tmp_path / "series")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    theirs = nib.load(tmp_path / "conv" / "conv.nii")
    assert theirs.shape == ours.shape

    # each of dcm2niix's voxel centres, mapped through both affines, lands on one of our voxels
    theirs_data = np.asarray(theirs.get_fdata())  # scl_slope / scl_inter applied
    ijk = np.indices(theirs.shape).reshape(3, -1).T
    world = ijk @ theirs.affine[:3, :3].T + theirs.affine[:3, 3]
    inverse = np.linalg.inv(ours.affine)
    ours_ijk = world @ inverse[:3, :3].T + inverse[:3, 3]
    np.testing.assert_allclose(ours_ijk, np.rint(ours_ijk), atol=1e-3)
    i, j, k = np.rint(ours_ijk).astype(int).T
    ours_data = np.asarray(ours.get_fdata())
    np.testing.assert_allclose(theirs_data[tuple(ijk.T)], ours_data[i, j, k], rtol=1e-5, atol=1e-2)


def test_a_dynamic_series_denoised_whole_adds_no_error(tmp_path, model):
    """A dynamic series (two frames told apart by FrameReferenceTime) denoised without --frame: one derived
    series holding both frames, with no validator error its source does not have."""
    files = write_test_series(tmp_path / "static")

    def number(ds: pydicom.Dataset, f: int, k: int) -> None:
        ds.InstanceNumber = ds.ImageIndex = f * len(files) + k + 1

    write_dynamic_series(files, tmp_path / "dyn", number)
    source_errors = validator_errors(tmp_path / "dyn")
    denoise(model, tmp_path / "dyn", tmp_path / "denoised")
    assert len(list((tmp_path / "denoised").iterdir())) == 2 * len(files)
    assert validator_errors(tmp_path / "denoised") <= source_errors
