"""The README's first command, and denoising with the model shipped inside the package."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from tgdpet.checkpoint import load_model
from tgdpet.cli import main
from tgdpet.demo import _body_box, _edge_labels
from tgdpet.builtin import pretrained_model_path
from tgdpet.io import read_volume
from tgdpet.simulate.grid import Grid


def test_builtin_model_is_a_trained_tgdpet_model():
    record = load_model(pretrained_model_path())
    assert record.preset == "uniform64"
    # It names the recipe that made it, and that recipe, in this repository, writes this very file.
    recipe = Path(__file__).parents[1] / record.provenance["recipe"].split()[0]
    assert recipe.is_file() and f"tgdpet/pretrained/{pretrained_model_path().name}" in recipe.read_text()
    assert record.provenance["selected_by"] == "val_loss" and record.provenance["patches_seen"] > 10_000


def test_the_figure_labels_patient_directions_from_the_affine():
    # The simulator's grid: columns run to the patient's left, rows to the back, slices up (RAS+ affine
    # with -x, -y, +z steps), so an axial panel has R on its left edge and A at its top, like a radiology viewer.
    assert _edge_labels(Grid().affine()) == (("R", "L"), ("A", "P"), ("I", "S"))
    assert _edge_labels(np.diag([2.0, 2.0, -3.0, 1.0])) == (("L", "R"), ("P", "A"), ("S", "I"))


def test_the_figure_is_cropped_to_the_body_with_a_margin():
    image = np.zeros((4, 40, 50), np.float32)
    image[1:3, 10:20, 5:45] = 100.0
    assert _body_box(image, margin=3) == (slice(7, 23), slice(2, 48))
    assert _body_box(np.zeros((2, 8, 8), np.float32)) == (slice(None), slice(None))


@pytest.mark.slow
def test_demo_writes_its_images_and_denoises_the_liver(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(main, ["demo", "-o", str(out), "--no-progress", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "demo.png", "denoised_060s.nii.gz", "input_060s.nii.gz", "reference_600s.nii.gz"]
    noisy, denoised, reference = (read_volume(out / f).data for f in
                                  ("input_060s.nii.gz", "denoised_060s.nii.gz", "reference_600s.nii.gz"))
    body = reference > 0.1 * reference.max()
    err_in = np.sqrt(np.mean((noisy - reference)[body] ** 2))
    err_out = np.sqrt(np.mean((denoised - reference)[body] ** 2))
    assert err_out < 0.7 * err_in  # the built-in model removes most of the 60 s noise
    descriptions = {f: nib.load(out / f).header["descrip"].tobytes().decode().split(";")[0] for f in
                    ("input_060s.nii.gz", "denoised_060s.nii.gz", "reference_600s.nii.gz")}
    assert descriptions == {"input_060s.nii.gz": "tgdpet demo: simulated 60 s input",
                            "denoised_060s.nii.gz": "tgdpet denoised",
                            "reference_600s.nii.gz": "tgdpet demo: simulated 600 s reference"}

    # `tgdpet denoise study.nii` with no --model uses the same built-in model.
    again = tmp_path / "again.nii.gz"
    result = CliRunner().invoke(main, ["denoise", str(out / "input_060s.nii.gz"), "-o", str(again),
                                       "--no-progress", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(read_volume(again).data, denoised, rtol=0, atol=1e-3 * float(reference.max()))


@pytest.mark.slow
def test_the_builtin_model_keeps_a_high_bmi_tumour_and_at_least_halves_the_liver_noise(tmp_path):
    # A fresh high-BMI study (seed 3001, never used to train or choose the model), 10 realisations of 60 s:
    # the hardest case of the README's table. tgdpet 0.2's built-in model lost 18 % of this tumour's uptake, the
    # 4-10-lesion file 8.7 %, the small-preset file 3.5 %; the present file keeps it within 0.4 % at 0.4997x the
    # liver noise (docs/builtin-model.md: its predecessor candidate left 0.526x and failed here). The bounds are the
    # project's targets.
    data = tmp_path / "hb"
    args = ["simulate", str(data), "--studies", "1", "--bmi", "high", "--protocols", "v1", "--levels", "60"]
    args += ["--ood", "none", "--realisations", "10", "--seed", "3001", "--no-progress", "--device", "cpu"]
    runner = CliRunner()
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    report = tmp_path / "scores.json"
    args = ["evaluate", str(data / "v1"), "--model", f"builtin={pretrained_model_path()}", "--json", str(report)]
    result = runner.invoke(main, args + ["--no-progress", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    (study,) = json.loads(report.read_text())["studies"]
    rows = study["rows"]
    assert abs(rows["input"]["lesion_bias_pct"]) < 2  # the 600 s reference and the 60 s inputs agree
    assert abs(rows["builtin"]["lesion_bias_pct"]) < 5
    assert rows["builtin"]["liver_cov_pct"] <= 0.5 * rows["input"]["liver_cov_pct"]
    assert abs(rows["builtin"]["liver_bias_pct"]) < 5
