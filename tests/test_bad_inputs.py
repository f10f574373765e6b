"""Every malformed input of tests/bad_input_cases.py, through the real CLI: exit 2, one line, nothing written."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch
from bad_input_cases import CASES, FAST, build_workspace, run_cli, snapshot
from helpers import make_volume
from test_data import make_dataset

from tgdpet.errors import TgdpetError
from tgdpet.infer import denoise_array
from tgdpet.io import Volume, read_volume, write_volume
from tgdpet.models import build_model


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return build_workspace(tmp_path_factory.mktemp("workspace"))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_with_one_line_and_nothing_written(case, workspace, tmp_path):
    root = tmp_path / "ws"
    shutil.copytree(workspace, root)
    args = case.setup(root)
    before = snapshot(root)
    result = run_cli(args, root)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert re.search(case.match, lines[0]), lines[0]
    assert result.exit_code == 2
    assert snapshot(root) == before


def test_the_table_is_large_and_covers_every_kind_of_input():
    kinds = {c.id.split("-")[0] for c in CASES}
    assert len(CASES) >= 25 and {"cli", "model", "nifti", "dicom", "manifest", "config"} <= kinds


# --------------------------------------------------------------------------- numerics: NaN/Inf never pass silently


def test_training_stops_with_one_line_when_the_loss_becomes_infinite(tmp_path):
    """A corrupt target voxel (3e38: finite in float32, but its square is not) makes the MSE infinite."""
    data = make_dataset(tmp_path / "data", n_train=1, n_val=0, shape=(4, 16, 16))
    target = data.parent / "s000" / "target.nii.gz"
    volume = read_volume(target)
    volume.data[:, 8, 8] = 3e38
    write_volume(Volume(volume.data, volume.affine), target, overwrite=True)
    result = run_cli(["train", "data", "-o", "run", "--preset", "tiny", *FAST], tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert re.fullmatch(r"Error: training diverged: the loss became inf at step 1; .*--lr.*", lines[0]), lines[0]
    assert not [p.name for p in (tmp_path / "run").glob("*") if p.suffix in (".safetensors", ".pt")]


def test_denoising_refuses_non_finite_voxels_however_they_arrive():
    torch.manual_seed(0)
    model = build_model("tiny").eval()
    for bad in (np.nan, np.inf, -np.inf):
        volume = make_volume().data
        volume[5, 2, 3] = bad
        with pytest.raises(TgdpetError, match="NaN or infinite voxels .first in slice 5."):
            denoise_array(model, volume, device="cpu")
