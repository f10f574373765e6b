"""`tgdpet evaluate` and tgdpet.evaluate on a tiny synthetic test study written as NIfTI + manifest."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import in_plane_mean, reference_denoise, trained_like_model, tree_snapshot

from tgdpet import metrics
from tgdpet.checkpoint import load_model, save_model
from tgdpet.cli import main
from tgdpet.data import load_manifest
from tgdpet.inputs import intensity_scale
from tgdpet.errors import TgdpetError
from tgdpet.evaluate import COLUMNS, evaluate_manifest, evaluate_models
from tgdpet.io import Volume, read_volume, write_volume
from tgdpet.models import build_model

SHAPE = (6, 16, 16)
CODES = {"body": 1, "liver": 2, "lesion": 3, "bladder": 4, "catheter": 5}
SHIFT = 0.1  # the constant noise estimate of the "shift" model, in normalised units


def _labels() -> np.ndarray:
    lab = np.zeros(SHAPE, np.int16)
    lab[:, 2:14, 2:14] = CODES["body"]
    lab[1:5, 3:10, 3:11] = CODES["liver"]
    lab[2:4, 5:7, 5:7] = CODES["lesion"]
    lab[:, 11:13, 12] = CODES["catheter"]
    return lab


def _target(lab: np.ndarray) -> np.ndarray:
    uptake = {0: 1.0, 1: 50.0, 2: 100.0, 3: 400.0, 5: 800.0}
    return np.vectorize(uptake.get)(lab).astype(np.float32)


def _write(path: Path, data: np.ndarray) -> str:
    write_volume(Volume(data=data.astype(np.float32), affine=np.diag([3.0, 3.0, 2.0, 1.0])), path, overwrite=True)
    return path.name


def _study(tmp_path: Path, *, realisations=None, halves=None, truth=True, split="test", sid="s000") -> Path:
    """Write one study and its manifest; realisations default to 3 noisy copies of the target."""
    lab = _labels()
    target = _target(lab)
    rng = np.random.default_rng(0)
    if realisations is None and halves is None:
        realisations = [target * rng.normal(1.0, 0.2, SHAPE) for _ in range(3)]
    study = {
        "id": sid,
        "split": split,
        "target": _write(tmp_path / "target.nii.gz", target),
        "inputs": [_write(tmp_path / "input.nii.gz", target * rng.normal(1.0, 0.2, SHAPE))],
        "labels": _write(tmp_path / "labels.nii.gz", lab),
        "meta": {},
    }
    if realisations is not None:
        study["realisations"] = [_write(tmp_path / f"real{r}.nii.gz", x) for r, x in enumerate(realisations)]
    if halves is not None:
        study["halves"] = [_write(tmp_path / f"half{k}.nii.gz", x) for k, x in enumerate(halves)]
    if truth:
        study["meta"]["truth"] = _write(tmp_path / "truth.nii.gz", target * 1.25)
    manifest = {"format": "tgdpet-manifest", "version": 1, "label_codes": CODES, "studies": [study]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path / "manifest.json"


def _shift_model(path: Path) -> Path:
    """A DnCNN whose noise estimate is the constant SHIFT: it returns ``x - SHIFT * scale(x)`` exactly."""
    model = build_model("tiny")
    with torch.no_grad():
        model.convs[-1].weight.zero_()
        model.convs[-1].bias.fill_(SHIFT)
    return save_model(path, model.eval(), preset="tiny")


def _mean_in(x, mask) -> float:
    return float(x[mask].astype(np.float64).mean())


def _liver_bias_by_hand(images, target, lab) -> float:
    """Mean over the images of (liver mean - target's liver mean) / target's liver mean, in %."""
    liver = lab == CODES["liver"]
    reference = _mean_in(target, liver)
    return float(np.mean([(_mean_in(x, liver) - reference) / reference for x in images]) * 100)


def _paired_standard_error_by_hand(images, made_from, target, lab) -> float | None:
    """The spread (ddof=1) of each image's lesion mean minus its input's, in % of the target's, over sqrt(R)."""
    if made_from is None:
        return None
    lesion = lab == CODES["lesion"]
    reference = _mean_in(target, lesion)
    changes = [(_mean_in(x, lesion) - _mean_in(x0, lesion)) / reference * 100 for x, x0 in zip(images, made_from)]
    return statistics.stdev(changes) / math.sqrt(len(changes))


def _expected_row(images, target, lab, truth=None, made_from=None) -> dict:
    """Every figure computed straight from tgdpet.metrics on the arrays."""
    stack = np.stack(images)
    row = {
        "lesion_bias_pct": metrics.lesion_ensemble_bias(stack, target, lab == CODES["lesion"]),
        "lesion_bias_se_pct": _paired_standard_error_by_hand(images, made_from, target, lab),
        "liver_cov_pct": metrics.liver_cov(stack, lab == CODES["liver"]) if len(images) > 1 else None,
        "liver_bias_pct": _liver_bias_by_hand(images, target, lab),
        "lesion_bias_truth_pct": None if truth is None else metrics.bias_vs_truth(stack, truth, lab == CODES["lesion"]),
        "psnr_db": float(np.mean([metrics.psnr(x, target) for x in images])),
        "ssim": float(np.mean([metrics.ssim(x, target) for x in images])),
        "hallucination_bladder_pct": None,
        "hallucination_catheter_pct": metrics.hallucination_score(stack.mean(axis=0), target, lab == CODES["catheter"]),
    }
    return row


def _assert_rows_equal(got: dict, expected: dict, rel: float = 1e-5) -> None:
    assert set(got) == set(COLUMNS) == set(expected)
    for key, value in expected.items():
        if value is None:
            assert got[key] is None, key
        else:
            # the standard error is a spread of small differences of means: float32 rounding reaches 1e-4 of it
            tolerance = 1e-6 if key != "lesion_bias_se_pct" else 1e-5
            assert got[key] == pytest.approx(value, rel=rel, abs=tolerance), key


def _read_reals(manifest: Path) -> list[np.ndarray]:
    return [read_volume(p).data for p in load_manifest(manifest).studies[0].realisations]


def test_every_row_is_scored_on_what_the_model_returned(tmp_path):
    manifest = _study(tmp_path)
    model_path = _shift_model(tmp_path / "shift.safetensors")
    result = evaluate_manifest(manifest, {"shift": model_path}, device="cpu")
    (study,) = result["studies"]
    assert study["study"] == "s000" and study["images"] == "realisations" and study["n_images"] == 3
    assert study["truth"] is True and study["region_voxels"]["lesion"] == 8

    lab, target = _labels(), _target(_labels())
    reals = _read_reals(manifest)
    _assert_rows_equal(study["rows"]["input"], _expected_row(reals, target, lab, target * 1.25))
    shifted = [x - np.float32(SHIFT * intensity_scale(x)) for x in reals]
    _assert_rows_equal(study["rows"]["shift"], _expected_row(shifted, target, lab, target * 1.25, made_from=reals))
    assert study["rows"]["shift"]["lesion_bias_se_pct"] > 0.01  # each realisation's shift is its own
    # The shift lowers every lesion mean: the model's row really differs from the input's.
    assert study["rows"]["shift"]["lesion_bias_pct"] < study["rows"]["input"]["lesion_bias_pct"] - 1.0


def test_tta_scores_the_mean_over_the_eight_in_plane_flips(tmp_path):
    manifest = _study(tmp_path)
    model = trained_like_model(seed=3)  # not flip-equivariant: the mean over flips is not its plain output
    path = save_model(tmp_path / "m.safetensors", model, preset="tiny")
    rows = {tta: evaluate_manifest(manifest, {"m": path}, device="cpu", tta=tta)["studies"][0]["rows"]["m"]
            for tta in (False, True)}  # fmt: skip
    lab, target, reals = _labels(), _target(_labels()), _read_reals(manifest)
    # The mean over the group is the same whatever in-plane orientation the file is stored in.
    averaged = [in_plane_mean(lambda v: reference_denoise(model, v), x) for x in reals]
    _assert_rows_equal(rows[True], _expected_row(averaged, target, lab, target * 1.25, made_from=reals), rel=1e-4)
    assert abs(rows[True]["psnr_db"] - rows[False]["psnr_db"]) > 1e-3  # the flag reached the denoiser

    out = tmp_path / "tta.json"
    args = ["evaluate", str(manifest), "--model", f"m={path}", "--tta", "--json", str(out), "--device", "cpu"]
    assert CliRunner().invoke(main, args + ["--no-progress"]).exit_code == 0
    saved = json.loads(out.read_text())
    assert saved["tta"] is True  # the results say how they were made
    expected = _expected_row(averaged, target, lab, target * 1.25, made_from=reals)
    _assert_rows_equal(saved["studies"][0]["rows"]["m"], expected, rel=1e-4)


def test_identity_realisations_score_no_bias_no_noise_and_perfect_similarity(tmp_path):
    target = _target(_labels())
    manifest = _study(tmp_path, realisations=[target, target])
    identity = build_model("tiny")
    with torch.no_grad():
        identity.convs[-1].weight.zero_()
    model_path = save_model(tmp_path / "identity.safetensors", identity.eval())
    record = load_model(model_path)
    entry = load_manifest(manifest).studies[0]
    study = evaluate_models({"identity": record}, entry, label_codes=CODES, device="cpu")
    for name in ("input", "identity"):
        row = study["rows"][name]
        assert row["lesion_bias_pct"] == pytest.approx(0.0, abs=1e-4)
        assert row["liver_cov_pct"] == pytest.approx(0.0, abs=1e-4)
        assert row["liver_bias_pct"] == pytest.approx(0.0, abs=1e-4)
        assert row["ssim"] == pytest.approx(1.0, abs=1e-6)
        assert row["hallucination_catheter_pct"] == pytest.approx(0.0, abs=1e-4)
    assert study["rows"]["input"]["psnr_db"] is None  # identical images: infinite PSNR
    assert study["rows"]["input"]["lesion_bias_truth_pct"] is None  # no truth passed


def test_hallucination_score_counts_a_planted_bias_not_zero_mean_noise(tmp_path):
    """Noise that averages out over the realisations scores ~0; a bias present in every one scores its size.

    The catheter region dilated by 2 voxels holds target values worked out by
    hand below; a bias of +B Bq/mL on every voxel of it gives an RMS error of
    B, so the score is B / mean(target there) * 100.
    """
    lab, target = _labels(), _target(_labels())
    rng = np.random.default_rng(5)
    n = 64
    noise = rng.normal(0.0, 0.3, (n, *SHAPE))
    noise -= noise.mean(axis=0)  # exactly zero-mean over the realisations: the ensemble mean is the target
    noisy = [target * (1 + e) for e in noise.astype(np.float32)]
    (tmp_path / "noise").mkdir()
    entry = load_manifest(_study(tmp_path / "noise", realisations=noisy, truth=False)).studies[0]
    row = evaluate_models({}, entry, label_codes=CODES, device="cpu")["rows"]["input"]
    single = metrics.hallucination_score(noisy[0], target, lab == CODES["catheter"])
    assert single > 10.0  # one realisation alone is far off: the old per-realisation score counted this noise
    assert row["hallucination_catheter_pct"] == pytest.approx(0.0, abs=1e-3)

    region = np.zeros(SHAPE, bool)
    region[:, 9:15, 10:15] = True  # the catheter (y 11-12, x 12) grown by 2 voxels, clipped to the image
    bias = 20.0
    expected = bias / target[region].mean() * 100
    biased = [x + np.float32(bias) * region for x in noisy]
    (tmp_path / "bias").mkdir()
    entry = load_manifest(_study(tmp_path / "bias", realisations=biased, truth=False)).studies[0]
    row = evaluate_models({}, entry, label_codes=CODES, device="cpu")["rows"]["input"]
    assert row["hallucination_catheter_pct"] == pytest.approx(expected, rel=1e-4)


def test_study_without_realisations_scores_its_full_input_not_its_halves(tmp_path):
    target = _target(_labels())
    rng = np.random.default_rng(3)
    halves = [target * rng.normal(1.0, 0.3, SHAPE) for _ in range(2)]
    manifest = _study(tmp_path, halves=halves, truth=False)
    (study,) = evaluate_manifest(manifest, {}, device="cpu")["studies"]
    assert study["images"] == "inputs" and study["n_images"] == 1
    (full,) = (read_volume(p).data for p in load_manifest(manifest).studies[0].inputs)
    _assert_rows_equal(study["rows"]["input"], _expected_row([full], target, _labels()))


def test_label_map_on_another_grid_is_refused(tmp_path):
    manifest = _study(tmp_path)
    _write(tmp_path / "labels.nii.gz", np.zeros((6, 16, 15)))
    with pytest.raises(TgdpetError, match="label map .* shape"):
        evaluate_manifest(manifest, {}, device="cpu")


def test_cli_prints_the_table_and_writes_json_once(tmp_path):
    _study(tmp_path)  # the study folder the command reads
    model_path = _shift_model(tmp_path / "shift.safetensors")
    out = tmp_path / "eval.json"
    args = ["evaluate", str(tmp_path), "--model", f"v1-net={model_path}", "--json", str(out), "--device", "cpu"]
    result = CliRunner().invoke(main, args + ["--no-progress"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(line for line in lines if line.startswith("model"))
    headings = ("lesion bias %", "lesion bias SE", "liver CoV %", "bias vs truth %", "PSNR dB", "SSIM",
                "halluc. catheter %")
    for heading in headings:
        assert heading in header
    assert "halluc. bladder" not in header  # no bladder in this study
    assert any(line.startswith("input ") for line in lines) and any(line.startswith("v1-net ") for line in lines)

    def no_nan(token):
        raise AssertionError(f"non-standard JSON constant {token}")

    saved = json.loads(out.read_text(), parse_constant=no_nan)
    assert saved["format"] == "tgdpet-evaluation" and saved["models"] == {"v1-net": str(model_path)}
    assert set(saved["studies"][0]["rows"]) == {"input", "v1-net"}

    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "already exists" in again.output
    assert CliRunner().invoke(main, args + ["--overwrite", "--no-progress"]).exit_code == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--model", "no-equals-sign"], "NAME=PATH"),
        (["--model", "a=missing.safetensors"], "a: model 'missing.safetensors' is neither a file nor a built-in"),
        (["--model", "a=runs/missing.safetensors"], "a: model file runs/missing.safetensors does not exist"),
        (["--model", "a=."], "a: model file . is a folder"),
        (["--model", "input={model}"], "may not be named 'input'"),
        (["--model", "a={model}", "--model", "a={model}"], "twice"),
        (["--study", "nope"], "no study 'nope'"),
    ],
)
def test_cli_bad_input_exits_2_with_one_sentence(tmp_path, extra, message):
    manifest = _study(tmp_path)
    model_path = _shift_model(tmp_path / "m.safetensors")
    args = ["evaluate", str(manifest), "--device", "cpu", "--no-progress"]
    result = CliRunner().invoke(main, args + [a.format(model=model_path) for a in extra])
    assert result.exit_code == 2 and message in result.output
    assert "Traceback" not in result.output


def test_cli_refuses_a_manifest_without_test_studies(tmp_path):
    _study(tmp_path, split="train")
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path), "--no-progress"])
    assert result.exit_code == 2 and "--study" in result.output
    named = CliRunner().invoke(main, ["evaluate", str(tmp_path), "--study", "s000", "--no-progress", "--device", "cpu"])
    assert named.exit_code == 0 and "study s000" in named.output
    rows = [line.split()[0] for line in named.output.splitlines()[3:] if line.strip()]
    assert rows == ["input", "dncnn-fdg-uniform64"]  # without --model: the built-in model, as denoise uses


@pytest.mark.parametrize("name", ["manifest.json", "target.nii.gz", "real1.nii.gz", "labels.nii.gz"])
def test_cli_json_never_replaces_an_input_even_with_overwrite(tmp_path, name):
    manifest = _study(tmp_path)
    before = tree_snapshot(tmp_path)
    args = ["evaluate", str(manifest), "--json", str(tmp_path / name), "--overwrite", "--device", "cpu", "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "is an input of the evaluation" in result.output, result.output
    assert tree_snapshot(tmp_path) == before


@pytest.mark.parametrize("change", ["shifted", "voxel size", "units"])
def test_an_image_of_the_targets_shape_but_not_its_grid_or_units_is_not_scored(tmp_path, change):
    """Scoring compares voxel by voxel: an image 40 mm away, on 6 mm voxels, or in SUV would score nonsense."""
    manifest = _study(tmp_path)
    real = read_volume(tmp_path / "real1.nii.gz")
    affine = real.affine.copy()
    if change == "shifted":
        affine[:3, 3] += (40.0, 0.0, 0.0)
    elif change == "voxel size":
        affine[:3, :3] *= 2.0
    units = "SUV" if change == "units" else real.units
    write_volume(Volume(real.data, affine, units=units), tmp_path / "real1.nii.gz", overwrite=True)
    with pytest.raises(TgdpetError, match="study 's000': realisation #2") as err:
        evaluate_manifest(manifest, {}, device="cpu", progress=False)
    assert ("in SUV" if change == "units" else "not its grid") in str(err.value)
