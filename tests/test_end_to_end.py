"""Every subcommand, in the order a user runs them, on a tiny simulated dataset.

simulate -> train -> score-kse -> tgd-finetune -> tgd-finetune again (TGD^2)
-> n2n-online -> denoise (NIfTI and DICOM) -> evaluate, all through the real
CLI, checking what each step promises: the loss went down, frozen kernels are
bit-identical, outputs keep the input's geometry, and denoised images are less
noisy than their inputs in the liver.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from tgdpet.checkpoint import load_model
from tgdpet.cli import main
from tgdpet.io import read_volume
from tgdpet.models import bn_after

pytestmark = pytest.mark.slow

LIVER = 2
TUNE = ["--patch-size", "32", "--batch-size", "32", "--no-progress", "--device", "cpu"]
TRAIN = ["--preset", "small", *TUNE]


def run(*args: str) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def liver_noise(image: np.ndarray, reference: np.ndarray, labels: np.ndarray) -> float:
    """Standard deviation of the error against the 600 s reference inside the liver."""
    return float((image - reference)[labels == LIVER].std())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("e2e")
    run("simulate", root / "data", "--studies", 3, "--bmi", "low,high", "--size", 64, "--slices", 32,
        "--levels", "30,60,120", "--realisations", 3, "--seed", 3, "--no-progress", "--device", "cpu")
    return root


@pytest.fixture(scope="module")
def trained(workspace) -> Path:
    run("train", workspace / "data" / "v1", "--out", workspace / "v1", *TRAIN,
        "--epochs", 10, "--patches-per-epoch", 512, "--seed", 0)
    return workspace / "v1" / "best.safetensors"


def test_train_learns_and_writes_its_run(workspace, trained):
    metrics = [json.loads(line) for line in (workspace / "v1" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 10
    assert metrics[-1]["train_loss"] < 0.9 * metrics[0]["train_loss"]
    for name in ("best.safetensors", "last.safetensors", "config.yaml", "loss.png"):
        assert (workspace / "v1" / name).is_file()


def test_score_kse_then_tgd_twice_keeps_frozen_kernels(workspace, trained):
    table = json.loads(run("score-kse", trained, "--phi", 0.3, "--json"))
    base = load_model(trained)
    assert table["total"]["parameters"] == sum(p.numel() for p in base.model.parameters())

    run("tgd-finetune", trained, workspace / "data" / "v2", "--phi", 0.3, "--out", workspace / "tgd", *TUNE,
        "--epochs", 2, "--patches-per-epoch", 256)
    tgd = load_model(workspace / "tgd" / "last.safetensors")
    assert tgd.masks is not None and len(tgd.masks_history) == 1
    retrained_any = False
    for i, (conv0, conv1) in enumerate(zip(base.model.convs, tgd.model.convs)):
        mask, reads = tgd.masks[i], _reads_retrained(tgd.masks, i, conv0.in_channels)
        kept = (slice(None), ~reads)  # frozen kernels, less those reading a retrained map (read_kernels retrain)
        assert torch.equal(conv0.weight[~mask][kept], conv1.weight[~mask][kept]), f"frozen kernels of conv{i + 1} moved"
        assert torch.equal(conv0.bias[~mask], conv1.bias[~mask])
        retrained_any |= bool(mask.any()) and not torch.equal(conv0.weight[mask], conv1.weight[mask])
    assert retrained_any
    assert torch.equal(base.model.convs[-1].bias, tgd.model.convs[-1].bias)  # the noise classifier is frozen

    run("tgd-finetune", workspace / "tgd" / "last.safetensors", workspace / "data" / "v2", "--phi", 0.3,
        "--out", workspace / "tgd2", *TUNE, "--epochs", 1, "--patches-per-epoch", 128)
    tgd2 = load_model(workspace / "tgd2" / "last.safetensors")
    first, second = tgd2.masks_history
    assert all(torch.equal(first[i], tgd.masks[i]) for i in tgd.masks)  # round 1's masks, carried over
    # Round 2's masks come from TGD-net's own weights; what each round froze is bit-identical in the output:
    # round 2 against its input, and what both rounds froze against the original network.
    assert _frozen_channels_unchanged(tgd.model, tgd2.model, second) > 0
    both = {i: first[i] | second[i] for i in second}  # retrained in either round
    assert _frozen_channels_unchanged(base.model, tgd2.model, both) > 0
    moved = [i for i, keep in second.items() if keep.any()
             and not torch.equal(tgd.model.convs[i].weight[keep], tgd2.model.convs[i].weight[keep])]  # fmt: skip
    assert moved, "round 2 retrained nothing"


def _reads_retrained(masks: dict, i: int, in_channels: int) -> torch.Tensor:
    """Which input maps of conv i are retrained maps of conv i-1 (none for conv1, which reads the image)."""
    return masks[i - 1] if i > 0 else torch.zeros(in_channels, dtype=torch.bool)


def _frozen_channels_unchanged(before: torch.nn.Module, after: torch.nn.Module, masks: dict) -> int:
    """Assert every frozen channel's kernel (less the kernels reading a retrained map), bias, BN gamma/beta and
    running statistics are bit-identical.

    Returns how many frozen channels were checked (so a caller can tell that some were).
    """
    checked = 0
    for i, keep in masks.items():
        frozen = ~keep
        reads = _reads_retrained(masks, i, before.convs[i].in_channels)
        tensors = [("weight", lambda m: m.convs[i].weight[:, ~reads]), ("bias", lambda m: m.convs[i].bias)]
        if bn_after(before, i) is not None:
            tensors += [(f"bn {name}", lambda m, name=name: getattr(bn_after(m, i), name))
                        for name in ("weight", "bias", "running_mean", "running_var")]  # fmt: skip
        for what, get in tensors:
            assert torch.equal(get(before).detach()[frozen], get(after).detach()[frozen]), f"conv{i + 1} {what} moved"
        checked += int(frozen.sum())
    return checked


def test_n2n_online_denoises_the_study_with_its_geometry(workspace, trained):
    manifest = json.loads((workspace / "data" / "v2" / "manifest.json").read_text())
    ood = next(s for s in manifest["studies"] if s.get("halves"))
    half1, half2 = (workspace / "data" / "v2" / h for h in ood["halves"])
    out = workspace / "n2n.nii.gz"
    run("n2n-online", trained, half1, half2, "--phi", 0.4, "-o", out, "--epochs", 1, "--patches-per-epoch", 128,
        "--patch-size", 16, "--batch-size", 16, "--no-progress", "--device", "cpu",
        "--save-model", workspace / "n2n.safetensors")
    source, result = read_volume(half1), read_volume(out)
    assert result.shape == source.shape
    np.testing.assert_allclose(result.affine, source.affine)
    adapted, base = load_model(workspace / "n2n.safetensors"), load_model(trained)
    assert adapted.masks is not None
    assert _frozen_channels_unchanged(base.model, adapted.model, adapted.masks) > 0


def _test_study(data: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A test study's first 60 s realisation, its 600 s reference and its label map."""
    manifest = json.loads((data / "manifest.json").read_text())
    study = next(s for s in manifest["studies"] if s.get("realisations"))
    reference = read_volume(data / study["target"]).data
    labels = read_volume(data / study["labels"]).data
    return data / study["realisations"][0], reference, labels


def test_denoise_nifti_is_less_noisy_in_the_liver(workspace, trained):
    noisy, reference, labels = _test_study(workspace / "data" / "v1")
    out = workspace / "denoised.nii.gz"
    run("denoise", noisy, "--model", trained, "-o", out, "--no-progress", "--device", "cpu")
    source, result = read_volume(noisy), read_volume(out)
    np.testing.assert_allclose(result.affine, source.affine)
    assert liver_noise(result.data, reference, labels) < 0.9 * liver_noise(source.data, reference, labels)


def test_denoise_dicom_series_keeps_geometry_and_is_less_noisy(workspace, trained):
    run("simulate", workspace / "dicom", "--studies", 1, "--bmi", "normal", "--size", 64, "--slices", 32,
        "--levels", "60", "--realisations", 2, "--ood", "none", "--protocols", "v1", "--seed", 4, "--dicom",
        "--no-progress", "--device", "cpu")
    series, reference, labels = _test_study(workspace / "dicom" / "v1")
    assert series.is_dir()
    out = workspace / "denoised_series"
    run("denoise", series, "--model", trained, "-o", out, "--no-progress", "--device", "cpu")
    source, result = read_volume(series), read_volume(out)
    assert result.source_format == "dicom" and result.shape == source.shape
    np.testing.assert_allclose(result.affine, source.affine, atol=1e-4)
    new_uids = {ds.SeriesInstanceUID for ds in result.dicom_headers}
    assert new_uids.isdisjoint({ds.SeriesInstanceUID for ds in source.dicom_headers})
    assert result.dicom_headers[0].PatientID == source.dicom_headers[0].PatientID
    assert liver_noise(result.data, reference, labels) < 0.9 * liver_noise(source.data, reference, labels)


def test_evaluate_scores_the_trained_model(workspace, trained):
    out = workspace / "eval.json"
    run("evaluate", workspace / "data" / "v1", "--model", f"v1={trained}", "--json", out, "--no-progress",
        "--device", "cpu")
    results = json.loads(out.read_text())
    assert [s["study"] for s in results["studies"]]  # every test study of the manifest was scored
    tumour_studies = [s for s in results["studies"] if s["images"] == "realisations"]
    assert len(tumour_studies) == 2  # the low- and the high-BMI study with the inserted liver tumour
    for study in results["studies"]:
        assert set(study["rows"]) == {"input", "v1"}
    for study in tumour_studies:
        rows = study["rows"]
        assert all(np.isfinite(rows[r]["lesion_bias_pct"]) for r in rows)
        assert rows["v1"]["liver_cov_pct"] < rows["input"]["liver_cov_pct"]  # the denoiser lowers the noise
