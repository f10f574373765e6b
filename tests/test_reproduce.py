"""The paper's reproduction: the whole pipeline at the tiny scale, and the report's generated answers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tgdpet import reproduce as rp

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reproduce_paper.py"
MODELS = ("v1-net", "v2-net", "FT-net", "TGD-net", "EWC-net", "TGD2-net", "TGD-N2N", "TGD2-N2N")
RESULT_FILES = ("table1.md", "fig4.md", "fig4.png", "fig5.png", "fig6.png", "results.json", "README.md")


def _reproduce(out: Path, device, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), "--scale", "tiny", "--out", str(out), "--device", str(device), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_tiny_reproduction_writes_every_result(tmp_path, device):
    out = tmp_path / "results"
    docs = tmp_path / "docs" / "reproduction.md"
    docs.parent.mkdir()
    done = _reproduce(out, device, "--seed", "3", "--docs", str(docs))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    for name in RESULT_FILES:
        assert (out / name).is_file(), name
    for name in ("fig4.png", "fig5.png", "fig6.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "table1.md").read_text()
    for name in ("input", *MODELS):
        assert f"| {rp.LABELS[name]} |" in table, name

    results = json.loads((out / "results.json").read_text())
    training = results["training"]
    assert set(training) == set(MODELS)
    for name, record in training.items():
        assert record["patches_seen"] == record["epochs"] * record["patches_per_epoch"] > 0, name
        assert Path(record["model"]).is_file(), name
    # Compute scales with the data: the fine-tunes see fewer patches than training from scratch.
    assert training["TGD-net"]["patches_seen"] < training["v2-net"]["patches_seen"]
    assert training["TGD-net"]["method"]["method"] == "tgd" and training["TGD-net"]["method"]["phi"] == 0.3
    assert training["TGD-N2N"]["method"]["phi"] == 0.4 and training["TGD-N2N"]["base"] == "v2-net"
    for study in ("low_bmi", "high_bmi", "ood"):
        rows = results["evaluation"][study]["rows"]
        assert set(rows) == {"input", *MODELS}
        assert all(row["liver_cov_pct"] is not None for row in rows.values()), study
    assert [p["phi"] for p in results["kernel_drop"]] == [0.3, 0.4, 0.5, 0.6]
    fractions = [p["fraction_dropped"] for p in results["kernel_drop"]]
    assert fractions == sorted(fractions) and 0 < fractions[-1] < 1  # a higher phi drops more kernels
    assert len(results["answers"]) == 4

    readme = (out / "README.md").read_text()
    assert "## Answers, from the measured numbers" in readme
    assert "tgdpet tgd-finetune" in readme and "--seed 3" in readme
    # The docs copy links to the figures in the results folder.
    assert "(../results/fig5.png)" in docs.read_text()

    again = _reproduce(out, device)
    assert again.returncode == 2
    assert "--overwrite" in again.stderr and "Traceback" not in again.stderr


def _rows(**figures: dict[str, float | None]) -> dict[str, dict]:
    return {model: {"model": model, **values} for model, values in figures.items()}


def test_knowledge_answer_follows_the_high_bmi_liver_cov():
    base = {"v1-net": {"high_bmi_liver_cov_pct": 9.0}, "v2-net": {"high_bmi_liver_cov_pct": 14.0}}
    kept = rp.answer_knowledge_kept(_rows(**base, **{"TGD-net": {"high_bmi_liver_cov_pct": 10.0},
                                                      "FT-net": {"high_bmi_liver_cov_pct": 12.5}}))
    lost = rp.answer_knowledge_kept(_rows(**base, **{"TGD-net": {"high_bmi_liver_cov_pct": 13.0},
                                                      "FT-net": {"high_bmi_liver_cov_pct": 12.5}}))
    assert "Yes" in kept and "2.50 points lower" in kept
    assert "No" in lost and "0.50 points higher" in lost


def _ood(bladder: float, cov: float) -> dict[str, float | None]:
    return {"ood_hallucination_bladder_pct": bladder, "ood_hallucination_catheter_pct": None, "ood_liver_cov_pct": cov}


def test_online_learning_answer_states_each_verdict_from_the_numbers():
    rows = _rows(**{
        "v2-net": _ood(20.0, 10.0), "TGD-N2N": _ood(12.0, 10.5), "TGD-net": _ood(18.0, 8.0), "TGD2-N2N": _ood(19.0, 10.0),
    })  # fmt: skip
    text = rp.answer_online_learning(rows)
    assert "bladder 20.00 -> 12.00 % (lower, -40 %)" in text
    assert "liver CoV 10.00 -> 10.50 % (kept, +5 %)" in text
    assert "bladder 18.00 -> 19.00 % (not lower, +6 %)" in text
    assert "liver CoV 8.00 -> 10.00 % (raised, +25 %)" in text
    assert text.count("catheter") == 1  # named once, in the study's description: no figure, no claim


def test_table1_shows_missing_figures_as_dashes_and_the_paper_beside_ours():
    study = {"rows": {name: {"lesion_bias_pct": -1.0, "liver_cov_pct": 5.0} for name in ("input", "v1-net")}}
    record = {"wall_s": 12.0, "patches_seen": 640, "method": {"retrained_fraction": 1.0}}
    rows = rp.table1_rows({"low_bmi": study, "high_bmi": study, "ood": study}, {"v1-net": record}, ["v1-net"])
    text = rp.table1_markdown(rows)
    assert "| input (no denoising) | -1.00 | 5.00 | -1.00 | 5.00 | - | - | 5.00 | - | - | - |" in text
    assert "| v1-net | -1.00 | -6.30 | 5.00 | 6.02 |" in text
