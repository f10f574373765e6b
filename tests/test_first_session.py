"""The README's first session runs as written, in an empty folder, up to the big simulation.

The commands are read from README.md itself (the first ``bash`` block under
"## A first session"), so the README cannot drift from what works. Each runs
as its own process, like a user's shell would run it.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tgdpet.io import read_volume

README = Path(__file__).resolve().parent.parent / "README.md"


def first_session_commands() -> list[list[str]]:
    """The command lines of the first ``bash`` block of the README's "A first session" section."""
    section = README.read_text(encoding="utf-8").split("## A first session", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line]


def test_the_first_block_is_tgdpet_commands_only():
    commands = first_session_commands()
    assert commands and all(c[0] == "tgdpet" for c in commands)
    assert [c[1] for c in commands][:2] == ["demo", "denoise"]
    assert any(c[1] == "simulate" and "--dicom" in c for c in commands)


@pytest.mark.slow
def test_the_first_session_runs_as_written_in_an_empty_folder(tmp_path):
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "MPLBACKEND": "Agg"}
    for command in first_session_commands():
        done = subprocess.run([sys.executable, "-m", "tgdpet.cli", *command[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{shlex.join(command)}:\n{done.stderr[-2000:]}"
    # What the README says the commands write.
    demo = tmp_path / "tgdpet-demo"
    assert {p.name for p in demo.iterdir()} >= {"demo.png", "input_060s.nii.gz", "input_060s_denoised.nii.gz"}
    again, shown = read_volume(demo / "input_060s_denoised.nii.gz"), read_volume(demo / "denoised_060s.nii.gz")
    assert abs(float(again.data.mean()) / float(shown.data.mean()) - 1) < 0.01  # the same built-in model
    series = tmp_path / "out" / "noisy_060s_denoised"
    assert series.is_dir() and len(list(series.iterdir())) == read_volume(series).shape[0]
    assert read_volume(series).shape == read_volume(tmp_path / "dicom-example/v1/s000/noisy_060s").shape
