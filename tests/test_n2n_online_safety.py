"""n2n-online never writes over its inputs and refuses what it cannot use, all before training (which takes long).

Training is replaced by a stub that fails the test if reached: every refusal here must come first. Each case
runs the real command line and checks the contract of tests/bad_input_cases.py: exit 2, one ``Error:`` line, and
nothing under the folder changed (inputs included, even with --overwrite).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from bad_input_cases import FAST, run_cli, snapshot
from helpers import make_volume, write_test_nifti, write_test_series

from tgdpet.checkpoint import save_model
from tgdpet.io import Volume, read_volume
from tgdpet.models import build_model

COMMAND = ["n2n-online", "model.safetensors", "half1.nii.gz", "half2.nii.gz"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """A tiny model, two halves of one scan (1 % apart, as counting noise makes them), their full image, and the
    halves again as DICOM series."""
    root = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    save_model(root / "model.safetensors", build_model("tiny"), preset="tiny")
    one = make_volume()
    halves = [one, one.with_data(one.data * np.float32(1.01))]
    for k, half in enumerate(halves, start=1):
        write_test_nifti(root / f"half{k}.nii.gz", half)
        write_test_series(root / f"half{k}_series", half)
    write_test_nifti(root / "full.nii.gz", one.with_data(one.data * np.float32(1.005)))
    return root


@pytest.fixture
def ws(inputs, tmp_path, monkeypatch) -> Path:
    """A fresh copy of the inputs, with training stubbed out to fail the test if it starts."""

    def no_training(*args, **kwargs):
        raise AssertionError("training started before the refusal")

    monkeypatch.setattr("tgdpet.train.n2n.fit", no_training)
    root = tmp_path / "ws"
    shutil.copytree(inputs, root)
    return root


def _refused(root: Path, args: list[str], message: str) -> None:
    """``tgdpet ARGS`` in ``root`` exits 2 with one line matching ``message`` and changes nothing there."""
    before = snapshot(root)
    result = run_cli([*args, *FAST], root)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert message in lines[0], lines[0]
    assert snapshot(root) == before


@pytest.mark.parametrize(
    ("out", "named"),
    [("half1.nii.gz", "HALF1 (half1.nii.gz)"), ("half2.nii.gz", "HALF2 (half2.nii.gz)"),
     ("full.nii.gz", "--full (full.nii.gz)"), ("link.nii.gz", "HALF2 (half2.nii.gz)")],
)  # fmt: skip
def test_an_output_that_is_an_input_is_refused_even_with_overwrite(ws, out, named):
    (ws / "link.nii.gz").symlink_to(ws / "half2.nii.gz")  # a symbolic link is the file it points to
    args = [*COMMAND, "--full", "full.nii.gz", "-o", out, "--overwrite"]
    _refused(ws, args, f"-o {out} is the input {named}, and inputs are never changed, even with --overwrite")


def test_an_output_inside_a_dicom_half_is_refused(ws):
    args = ["n2n-online", "model.safetensors", "half1_series", "half2_series", "-o", "half2_series/result"]
    _refused(ws, args, "-o half2_series/result lies inside the folder of the input HALF2 (half2_series)")


@pytest.mark.parametrize(
    ("saved", "named"),
    [("model.safetensors", "the input MODEL (model.safetensors)"),
     ("link.safetensors", "the input HALF2 (half2_series)"),
     ("result/adapted.safetensors", "lies inside the folder of the -o output result")],
)  # fmt: skip
def test_save_model_over_an_input_or_into_the_output_is_refused(ws, saved, named):
    (ws / "link.safetensors").symlink_to(sorted((ws / "half2_series").iterdir())[0])
    write_test_series(ws / "result", make_volume(), description="tgdpet denoised")  # an earlier result: replaceable
    args = ["n2n-online", "model.safetensors", "half1_series", "half2_series", "-o", "result", "--overwrite"]
    _refused(ws, [*args, "--save-model", saved], named)


def test_save_model_must_be_named_safetensors(ws):
    args = [*COMMAND, "-o", "out.nii.gz", "--save-model", "adapted.pt"]
    _refused(ws, args, "--save-model adapted.pt does not end in .safetensors")


@pytest.mark.parametrize("half2", ["half1.nii.gz", "copy.nii.gz"])
def test_one_image_as_both_halves_is_refused(ws, half2):
    shutil.copy(ws / "half1.nii.gz", ws / "copy.nii.gz")
    args = ["n2n-online", "model.safetensors", "half1.nii.gz", half2, "-o", "out.nii.gz", "--skip-halves-check"]
    _refused(ws, args, "the two halves are the same image; pass two disjoint half-count images of one scan")


@pytest.mark.parametrize(
    ("full", "message"),
    [(make_volume(shape=(12, 24, 24), spacing=(3.0, 3.0, 4.0)), "--full is on another grid than the halves "
      "((12, 24, 24) and (8, 16, 16), z y x)"),
     (make_volume(origin=(-15.0, -20.0, 30.0)), "--full has the halves' size but another position or voxel size")],
)  # fmt: skip
def test_a_full_image_off_the_halves_grid_is_refused(ws, full: Volume, message):
    write_test_nifti(ws / "other.nii.gz", full)
    _refused(ws, [*COMMAND, "--full", "other.nii.gz", "-o", "out.nii.gz"], message)


def test_a_good_run_still_writes_its_result_and_model_and_leaves_the_inputs(inputs, tmp_path):
    """The checks refuse only what they should: halves, their full image, new output names."""
    root = tmp_path / "ws"
    shutil.copytree(inputs, root)
    before = snapshot(root)
    args = [*COMMAND, "--full", "full.nii.gz", "-o", "out.nii.gz", "--save-model", "adapted.safetensors"]
    result = run_cli([*args, *FAST], root)
    assert result.exit_code == 0, result.stderr
    assert read_volume(root / "out.nii.gz").shape == (8, 16, 16) and (root / "adapted.safetensors").is_file()
    assert {k: v for k, v in snapshot(root).items() if k in before} == before


def test_a_dicom_result_of_two_halves_references_the_slices_of_both(inputs, tmp_path):
    """Without --full the result is the mean of the halves: each slice names its source slice in each half."""
    import pydicom

    root = tmp_path / "ws"
    shutil.copytree(inputs, root)
    args = ["n2n-online", "model.safetensors", "half1_series", "half2_series", "-o", "result", *FAST]
    result = run_cli(args, root)
    assert result.exit_code == 0, result.stderr

    def uid_at(folder: Path) -> dict[float, str]:
        found = {}
        for f in folder.iterdir():
            ds = pydicom.dcmread(f)
            found[round(float(ds.ImagePositionPatient[2]), 3)] = ds.SOPInstanceUID
        return found

    half1, half2 = uid_at(root / "half1_series"), uid_at(root / "half2_series")
    for f in (root / "result").iterdir():
        ds = pydicom.dcmread(f)
        z = round(float(ds.ImagePositionPatient[2]), 3)
        named = {item.ReferencedSOPInstanceUID for item in ds.SourceImageSequence}
        assert named == {half1[z], half2[z]}
