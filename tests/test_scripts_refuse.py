"""The scripts README.md and docs/ tell users to run refuse bad input as ``tgdpet`` does: one sentence on stderr
(``Error: ...``), exit status 2, no traceback, nothing left on disk, and before any of the long work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_test_nifti

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
NO_MODEL = "'nope.safetensors' is neither a file nor a built-in model's name"
NO_DEVICE = "unknown device 'tpu'"

CASES = [
    # silent_channels.py MODEL IMAGE: image.nii.gz holds 8 slices
    ("silent_channels.py", ["nope.safetensors", "image.nii.gz"], NO_MODEL),
    ("silent_channels.py", ["dncnn-fdg-uniform64", "missing.nii.gz"], "missing.nii.gz does not exist"),
    ("silent_channels.py", ["dncnn-fdg-uniform64", "image.nii.gz", "--slices", "abc"], "'abc' is not start:stop"),
    ("silent_channels.py", ["dncnn-fdg-uniform64", "image.nii.gz", "--slices", "100:200:1"],
     "--slices 100:200:1 holds none of the 8 slices"),
    # clinical_grid.py: every argument checked before the first study is simulated into W
    ("clinical_grid.py", ["--work", "W", "--voxels", "abc"], "'abc' is not a positive number"),
    ("clinical_grid.py", ["--work", "W", "--voxels", "-2"], "'-2' is not a positive number"),
    ("clinical_grid.py", ["--work", "W", "--protocols", "v9"], "unknown protocol 'v9'"),
    ("clinical_grid.py", ["--work", "W", "--realisations", "0"], "'0' is not a positive whole number"),
    ("clinical_grid.py", ["--work", "W", "--model", "nope.safetensors"], "must be NAME=FILE"),
    ("clinical_grid.py", ["--work", "W", "--model", "a=nope.safetensors"], NO_MODEL),
    ("clinical_grid.py", ["--work", "W", "--device", "tpu"], NO_DEVICE),
    ("clinical_grid.py", ["--work", "W", "--json", "nowhere/grid.json"], "the output folder nowhere does not exist"),
    # lesion_phantom.py: the same, before the phantom is scanned
    ("lesion_phantom.py", ["--realisations", "0"], "'0' is not a positive whole number"),
    ("lesion_phantom.py", ["--voxel-mm", "0"], "'0' is not a voxel size from 1 to 10 mm"),
    ("lesion_phantom.py", ["--background", "-5"], "'-5' is not a positive number"),
    ("lesion_phantom.py", ["--model", "nope.safetensors"], NO_MODEL),
    ("lesion_phantom.py", ["--device", "tpu"], NO_DEVICE),
    ("lesion_phantom.py", ["--json", "nowhere/x.json", "--realisations", "2", "--voxel-mm", "8", "--device", "cpu"],
     "the output folder nowhere does not exist"),
    # gaussian_baseline.py DATA: data/ holds one test study, s001
    ("gaussian_baseline.py", ["data", "--study", "nope"], "data has no study nope with realisations"),
    # online_learning_check.py MANIFEST STUDY
    ("online_learning_check.py", ["data", "s001", "--model", "nope.safetensors"], NO_MODEL),
    ("online_learning_check.py", ["data", "s001", "--pairs", "1"], "'1' is not a number of pairs, 2 or more"),
    ("online_learning_check.py", ["data", "nope"], "data has no study 'nope' with 10 realisations"),
    # dynamic_tacs.py and spare_capacity.py: before the simulation, the training, or --out
    ("dynamic_tacs.py", ["--work", "W", "--model", "nope.safetensors"], NO_MODEL),
    ("dynamic_tacs.py", ["--work", "W", "--device", "tpu"], NO_DEVICE),
    ("dynamic_tacs.py", ["--work", "W", "--json", "nowhere/x.json"], "the output folder nowhere does not exist"),
    ("spare_capacity.py", ["data", "--volume", "missing.nii.gz", "--out", "out"], "missing.nii.gz does not exist"),
    ("spare_capacity.py", ["data", "--volume", "image.nii.gz", "--out", "out", "--penalties", "0,x"],
     "'x' is not a channel-penalty weight"),
    # the benchmarks and the GPU check
    ("bench.py", ["--device", "tpu"], NO_DEVICE),
    ("bench.py", ["--json", "nowhere/x.json"], "the output folder nowhere does not exist"),
    ("bench_tgd_step.py", ["--device", "tpu"], NO_DEVICE),
    ("bench_tgd_step.py", ["--batch", "0"], "'0' is not a positive whole number"),
    ("gpu_check.py", ["--device", "tpu", "--out", "check"], NO_DEVICE),
    ("bad_inputs_table.py", ["--write", "image.nii.gz"], "cannot read image.nii.gz"),
    ("measure_halves.py", ["--fast"], "unrecognized arguments: --fast"),
]  # fmt: skip


def workspace(root: Path) -> None:
    """An 8-slice image, and a dataset whose one test study has two realisations (files need only exist)."""
    write_test_nifti(root / "image.nii.gz")
    study = {"id": "s001", "split": "test", "target": "t.nii.gz", "inputs": ["r0.nii.gz", "r1.nii.gz"],
             "realisations": ["r0.nii.gz", "r1.nii.gz"]}  # fmt: skip
    (root / "data").mkdir()
    for name in ("t.nii.gz", "r0.nii.gz", "r1.nii.gz"):
        (root / "data" / name).write_bytes(b"")
    manifest = {"format": "tgdpet-manifest", "version": 1, "label_codes": {"body": 1}, "studies": [study]}
    (root / "data" / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(("script", "args", "message"), CASES, ids=[f"{c[0]}:{' '.join(c[1])}" for c in CASES])
def test_bad_input_is_one_sentence_exit_2_and_leaves_nothing(tmp_path, script, args, message):
    workspace(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    done = subprocess.run([sys.executable, str(SCRIPTS / script), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("Error: ") and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr and done.stdout == ""
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, not even an empty folder


def test_measure_halves_help_prints_usage_and_measures_nothing():
    done = subprocess.run([sys.executable, str(SCRIPTS / "measure_halves.py"), "--help"], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0 and done.stdout.startswith("usage: measure_halves.py")
    assert "| halves |" not in done.stdout
