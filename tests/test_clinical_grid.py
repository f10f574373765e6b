"""scripts/clinical_grid.py end to end on a coarse grid: simulate, denoise on the model's grid, tabulate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import identity_model

from tgdpet.builtin import pretrained_model_path

ROOT = Path(__file__).resolve().parents[1]


def test_grid_simulates_scores_and_tabulates(tmp_path):
    identity = identity_model(tmp_path / "id.safetensors")
    models = ["--model", f"built-in={pretrained_model_path()}", "--model", f"identity={identity}"]
    args = [sys.executable, str(ROOT / "scripts" / "clinical_grid.py"), "--work", str(tmp_path / "w"),
            "--voxels", "16", "--protocols", "v1,smooth", "--seeds", "1", "--realisations", "2",
            "--device", "cpu", *models, "--json", str(tmp_path / "grid.json")]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "| 16 mm, v1 |" in done.stdout and "| 16 mm, smooth |" in done.stdout
    assert "tumour bias % +- SE" in done.stdout and " +-" in done.stdout.split("| 16 mm, v1 |")[1]
    grid = json.loads((tmp_path / "grid.json").read_text())
    assert [r["protocol"] for r in grid["results"]] == ["v1", "smooth"] and grid["resample"] is True
    for r in grid["results"]:
        assert set(r["cells"]) == {"low", "normal", "high"}
        for cell in r["cells"].values():
            model, same = cell["built-in"], cell["identity"]
            assert model["input_cov_pct"] > 0 and 0 < model["cov_ratio"] < 1.5
            # a network that changes nothing keeps the inputs' noise and their own tumour bias, and is
            # scored against the same inputs as the real one
            assert same["cov_ratio"] == pytest.approx(1.0, abs=1e-4)
            assert same["lesion_bias_pct"] == pytest.approx(same["input_lesion_bias_pct"], abs=1e-3)
            assert same["lesion_change_pct"] == pytest.approx(0.0, abs=1e-3)
            assert model["input_lesion_bias_pct"] == same["input_lesion_bias_pct"]
            # the bias's standard error is paired with the inputs: none for a network that changes nothing,
            # some for one that changes each noisy realisation its own way
            assert same["lesion_bias_se_pct"] == pytest.approx(0.0, abs=1e-4) and model["lesion_bias_se_pct"] > 0.01
            # the working grid of each realisation: a model file without a recorded domain runs on the input's
            # own grid, the built-in one (4 mm) on the input's 16 mm or the grid 1.25x finer
            assert same["working_grids_mm"] == {"16 mm": 2}
            grids = model["working_grids_mm"]
            assert sum(grids.values()) == 2 and set(grids) <= {"16 mm", "12.8 mm"}, grids
    # the test studies were simulated at 32 x 32 x 36 voxels of 16 mm and are reused by a second run
    manifest = json.loads((tmp_path / "w" / "data" / "16mm_seed1" / "v1" / "manifest.json").read_text())
    assert [s["split"] for s in manifest["studies"]] == ["test"] * 3
    again = subprocess.run(args[:-2], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "simulated" not in again.stderr
    # the realisations the folder holds are the ones asked for, or it says so
    other = subprocess.run([*args[:-2], "--realisations", "3"], capture_output=True, text=True, timeout=600)
    assert other.returncode == 2 and other.stderr.startswith("Error: ")
    assert "holds 2 realisations a study, not 3" in other.stderr


def test_noise_seed_rescans_the_same_patients_into_its_own_folder(tmp_path):
    """--noise-seed K: the phantoms of --seeds scanned again, kept apart from the first scan, and recorded."""
    identity = identity_model(tmp_path / "id.safetensors")
    base = [sys.executable, str(ROOT / "scripts" / "clinical_grid.py"), "--work", str(tmp_path / "w"),
            "--voxels", "16", "--protocols", "v1", "--seeds", "1", "--realisations", "2", "--device", "cpu",
            "--model", f"identity={identity}"]  # fmt: skip
    runs = {}
    for name, extra in (("first", []), ("rescan", ["--noise-seed", "3"])):
        done = subprocess.run([*base, *extra, "--json", str(tmp_path / f"{name}.json")], capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        assert done.returncode == 0, done.stderr
        runs[name] = json.loads((tmp_path / f"{name}.json").read_text())["results"][0]
    assert runs["first"]["noise_seed"] is None and runs["rescan"]["noise_seed"] == 3
    data = tmp_path / "w" / "data"
    assert sorted(p.name for p in data.iterdir()) == ["16mm_seed1", "16mm_seed1_noise3"]
    # the same patients: every phantom file equal byte for byte
    for truth in sorted((data / "16mm_seed1" / "truth").iterdir()):
        assert truth.read_bytes() == (data / "16mm_seed1_noise3" / "truth" / truth.name).read_bytes()
    # new noise: each study's input noise level differs from the first scan's, but stays of the same size
    for body in ("low", "normal", "high"):
        first, again = (runs[k]["cells"][body]["identity"]["input_cov_pct"] for k in ("first", "rescan"))
        assert first != again and 0.5 < again / first < 2.0, (body, first, again)
