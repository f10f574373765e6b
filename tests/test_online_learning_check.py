"""scripts/online_learning_check.py end to end: pairs of realisations as halves, scored against their means."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import identity_model

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^(denoise|n2n-online): tumour bias ([-+0-9.]+) \+- ([0-9.]+) %, liver CoV ([0-9.]+)x", re.M)


def test_a_model_that_changes_nothing_scores_as_the_pair_means(tmp_path):
    """Pairing, adapting and scoring checked against what an identity must give: the pair means' own figures.

    The identity network (last conv zero) is adapted with a step too small to move it and no BatchNorm
    re-estimation, so ``n2n-online``'s output is its input, the mean of the two halves, as ``denoise``'s is.
    """
    sim = [sys.executable, "-m", "tgdpet.cli", "simulate", str(tmp_path / "sim"), "--studies", "1", "--size", "32",
           "--slices", "36", "--protocols", "v1", "--ood", "none", "--realisations", "4", "--seed", "3",
           "--device", "cpu", "--no-progress"]  # fmt: skip
    done = subprocess.run(sim, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    manifest = tmp_path / "sim" / "v1" / "manifest.json"
    study = next(s["id"] for s in json.loads(manifest.read_text())["studies"] if s["split"] == "test")
    config = tmp_path / "still.yaml"
    still = {"iterations": 1, "lr": 1e-12, "bn_batches": 0, "patch_size": 16, "batch_size": 4, "patches_per_epoch": 4}
    config.write_text("".join(f"{k}: {v}\n" for k, v in still.items()))
    identity = identity_model(tmp_path / "id.safetensors")
    args = [sys.executable, str(ROOT / "scripts" / "online_learning_check.py"), str(manifest), study,
            "--model", str(identity), "--pairs", "2", "--config", str(config), "--no-amp",
            "--work", str(tmp_path / "w")]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    header = re.search(r"their means: tumour bias ([-+0-9.]+) %", done.stdout)
    rows = {name: (float(bias), float(se), float(cov)) for name, bias, se, cov in ROW.findall(done.stdout)}
    assert header and set(rows) == {"denoise", "n2n-online"}, done.stdout
    for bias, se, cov in rows.values():
        assert bias == pytest.approx(float(header.group(1)), abs=0.051) and cov == pytest.approx(1.0, abs=0.0011)
        assert se == 0.0  # paired with the pair means, which an identity returns: nothing left to vary
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == [f"{study}_pair0.nii.gz", f"{study}_pair1.nii.gz"]
    # five pairs need ten realisations: a study with four is refused in one sentence
    short = subprocess.run([*args[:4], "--pairs", "5"], capture_output=True, text=True, timeout=600)
    assert short.returncode == 2 and short.stderr.startswith("Error: ") and "with 10 realisations" in short.stderr
