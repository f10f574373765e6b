"""Every malformed input of tests/bad_input_cases.py, through the real CLI: exit 2, one line, nothing written."""

from __future__ import annotations

import re
import shutil

import pytest
from bad_input_cases import CASES, build_workspace, run_cli, snapshot


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
    assert len(CASES) >= 25 and {"nifti", "dicom", "manifest", "config", "model"} <= kinds
