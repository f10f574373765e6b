"""The paper's reproduction: the whole pipeline at the tiny scale, and the report's generated answers."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import trained_like_model

from tgdpet.paper.analyses import bn_input_statistics, bn_mismatch, flagged_fractions, reestimate_frozen_bn
from tgdpet.paper.report import duration
from tgdpet.paper.table import LABELS, table1_markdown, table1_rows
from tgdpet.paper.verdicts import answer_knowledge_kept, answer_online_learning, compare, task_verdict, verdicts
from tgdpet.paper.runner import main as reproduce_main
from tgdpet.checkpoint import load_model

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reproduce_paper.py"
MODELS = ("v1-net", "v2-net", "FT-net", "TGD-net", "EWC-net", "TGD2-net", "TGD-paper-net", "TGD-revive-net",
          "TGD2-revive-net", "TGD-net-BN", "TGD-N2N", "TGD2-N2N", "TGD-paper-N2N", "TGD-revive-N2N")
RESULT_FILES = ("table1.md", "fig4.md", "fig4.png", "fig5.png", "fig6.png", "results.json", "README.md")
CELL = re.compile(r"^(-?[\d,]+(?:\.\d+)?)(?: ± ([\d,]+(?:\.\d+)?))? \((\d+)\)$")


def _reproduce(out: Path, device, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPT), "--scale", "tiny", "--out", str(out), "--device", str(device), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def _markdown_tables(text: str) -> list[list[list[str]]]:
    """Every markdown table of a text, as rows of stripped cells (heading row first, separator left out)."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            if not line.startswith("|---"):
                current.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    return tables


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def _check_table1_against_evaluation(table: list[list[str]], results: dict) -> int:
    """Every Table 1 cell of a figure is the mean ± sd (n) of the raw scores in results.json, recomputed here."""
    headings = table[0]
    figures = {  # heading -> (study, figure)
        "low-BMI lesion bias %": ("low_bmi", "lesion_bias_pct"), "low-BMI liver CoV %": ("low_bmi", "liver_cov_pct"),
        "high-BMI lesion bias %": ("high_bmi", "lesion_bias_pct"), "high-BMI liver CoV %": ("high_bmi", "liver_cov_pct"),
        "OOD halluc. bladder %": ("ood", "hallucination_bladder_pct"), "OOD liver CoV %": ("ood", "liver_cov_pct"),
    }  # fmt: skip
    label_to_model = {LABELS[m]: m for m in ("input", *MODELS)}
    checked = 0
    for row in table[1:]:
        model = label_to_model[row[0]]
        keys = ["input"] if model == "input" else [k for k, v in results["instances"].items() if v["model"] == model]
        for heading, (study, figure) in figures.items():
            values = [r["rows"][k][figure] for r in results["evaluation"][study] for k in keys]
            values = [v for v in values if v is not None]
            match = CELL.match(row[headings.index(heading)])
            assert match, (model, heading, row[headings.index(heading)])
            mean, sd, n = match.groups()
            assert int(n) == len(values), (model, heading)
            assert _number(mean) == pytest.approx(np.mean(values), abs=0.006), (model, heading)
            if len(values) > 1:
                assert _number(sd) == pytest.approx(np.std(values, ddof=1), abs=0.006), (model, heading)
            else:
                assert sd is None
            checked += 1
    return checked


def _reduced_precision(device: torch.device) -> str:
    """The precision the hardware has units for, read from the hardware itself (the CPU's flags)."""
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").is_file() else set()
    return "bf16" if flags & {"avx512_bf16", "amx_bf16"} else "fp32"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, request) -> tuple[Path, Path]:
    """One uninterrupted tiny reproduction (seed 3, with a --docs copy): its results folder and docs file."""
    root = tmp_path_factory.mktemp("tiny")
    out, docs = root / "results", root / "docs" / "reproduction.md"
    docs.parent.mkdir()
    done = _reproduce(out, request.config.getoption("--device"), "--seed", "3", "--docs", str(docs))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out, docs


@pytest.mark.slow
def test_tiny_reproduction_writes_every_result(tiny_run, device):
    out, docs = tiny_run

    for name in RESULT_FILES:
        assert (out / name).is_file(), name
    for name in ("fig4.png", "fig5.png", "fig6.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    results = json.loads((out / "results.json").read_text())
    head = subprocess.run(["git", "-C", str(SCRIPT.parent), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert results["git"]["commit"] == head.stdout.strip() and isinstance(results["git"]["dirty"], bool)
    seeds = results["finetune_seeds"]
    assert seeds == [3, 4]  # the tiny scale fine-tunes with two seeds
    assert {k: len(v) for k, v in results["test_studies"].items()} == {"low_bmi": 2, "high_bmi": 2, "ood": 1}
    instances = results["instances"]
    assert sorted(k for k, v in instances.items() if v["model"] == "TGD-net") == ["TGD-net@3", "TGD-net@4"]
    assert instances["v1-net"]["seed"] is None
    training = results["training"]
    assert set(training) == {k for k, v in instances.items() if v["model"] != "TGD-net-BN"}
    # Trained and evaluated in the reduced precision the hardware has; the model files and commands say so.
    precision = _reduced_precision(device)
    assert results["precision"] == {"training": precision, "evaluation": precision}
    for name, record in training.items():
        assert record["patches_seen"] == record["epochs"] * record["patches_per_epoch"] > 0, name
        assert Path(record["model"]).is_file(), name
        assert record["precision"] == load_model(record["model"]).provenance["precision"] == precision, name
        assert ("--amp" if precision != "fp32" else "--no-amp") in record["command"].split(), name
    assert all(f"--precision {precision}" in results["commands"][f"evaluate {study} {ids[0]}"]
               for study, ids in results["test_studies"].items())
    # Compute scales with the data: the fine-tunes see fewer patches than training from scratch.
    assert training["TGD-net@3"]["patches_seen"] < training["v2-net"]["patches_seen"]
    assert training["TGD-net@3"]["method"]["method"] == "tgd" and training["TGD-net@3"]["method"]["phi"] == 0.3
    assert training["TGD-N2N@4"]["method"]["phi"] == 0.4 and training["TGD-N2N@4"]["base"] == "v2-net"
    assert training["TGD2-N2N@4"]["base"] == "TGD-net@4" and training["TGD2-net@3"]["base"] == "TGD-net@3"
    # tgdpet's TGD and the paper taken literally, side by side; v1-net and v2-net trained with the scale's penalty.
    how = ("tgd_mode", "conv1", "bn_stats", "read_kernels")
    for name in ("TGD-net@3", "TGD2-net@4", "TGD-N2N@3", "TGD2-N2N@4"):
        assert [training[name]["method"][k] for k in how] == ["parameter", "freeze", "stored", "retrain"], name
    for name in ("TGD-paper-net@3", "TGD-paper-N2N@4"):
        assert [training[name]["method"][k] for k in how] == ["activation", "retrain", "batch", "freeze"], name
    assert training["TGD-paper-net@4"]["base"] == "v1-net" and training["TGD-paper-N2N@3"]["base"] == "v2-net"
    penalty = results["scale"]["channel_penalty"]
    assert penalty > 0 and training["v1-net"]["method"]["channel_penalty"] == penalty
    assert f"--channel-penalty {penalty}" in training["v1-net"]["command"]
    for study in ("low_bmi", "high_bmi", "ood"):
        for result in results["evaluation"][study]:
            assert set(result["rows"]) == {"input", *instances}
            assert all(row["liver_cov_pct"] is not None for row in result["rows"].values()), study
    assert [p["phi"] for p in results["kernel_drop"]] == [0.3, 0.4, 0.5, 0.6]
    fractions = [p["fraction_dropped"] for p in results["kernel_drop"]]
    assert fractions == sorted(fractions) and 0 < fractions[-1] < 1  # a higher phi drops more kernels

    # KSE after every epoch of v1-net; the last point is the network the kernel-drop study scored.
    curve = results["kse_curve"]
    assert [c["epoch"] for c in curve] == list(range(1, results["scale"]["epochs"] + 1))
    assert curve[-1]["patches_seen"] == training["v1-net"]["patches_seen"]
    for phi, point in zip(("0.3", "0.4", "0.5", "0.6"), results["kernel_drop"]):
        assert curve[-1]["flagged_pct"][phi] == pytest.approx(100 * point["fraction_dropped"])

    # BatchNorm after TGD: both groups measured for every seed; the re-estimated networks were evaluated.
    bn = results["bn"]
    tgd = LABELS["TGD-net"]
    assert bn["patches"] > 0 and set(bn["mismatch"]) == {"v1-net", f"{tgd} (seed 3)", f"{tgd} (seed 4)"}
    assert bn["mismatch"][f"{tgd} (seed 3)"]["frozen"]["channels"] > 0
    assert len(bn["verdicts"]) == 4 and all(v["a"] == "TGD-net-BN" for v in bn["verdicts"])

    # Table 1 in table1.md, results.json and the README: every cell recomputed from the raw evaluation.
    table = _markdown_tables((out / "table1.md").read_text())[0]
    assert [r[0] for r in table[1:]] == [LABELS[m] for m in ("input", *MODELS)]
    assert _check_table1_against_evaluation(table, results) == 6 * (1 + len(MODELS))
    readme = (out / "README.md").read_text()
    assert _markdown_tables(readme)[1] == table  # the README's Table 1 is the same table

    # Verdicts: one per method pair, task and figure, and the README shows each one.
    assert len(results["verdicts"]) == 8 * 4  # eight method pairs, two figures of two tasks each
    assert {(v["a"], v["b"]) for v in results["verdicts"]} >= {
        ("TGD-net", "FT-net"), ("TGD-net", "TGD-paper-net"), ("TGD-revive-net", "FT-net"), ("TGD-revive-net", "TGD-net")
    }  # fmt: skip
    verdict_table = next(t for t in _markdown_tables(readme) if t[0][0] == "A vs B")
    assert len(verdict_table) - 1 == len(results["verdicts"])
    for row, v in zip(verdict_table[1:], results["verdicts"]):
        assert row[3].startswith(f"{v['diff']:+.2f}") and row[4] == f"{v['n']} (fine-tuning seeds)"
    assert len(results["answers"]) == 5  # the knowledge question asked of TGD-net and of TGD-net (revive)
    assert "**Does TGD-net (revive) keep v1 knowledge" in results["answers"][1]
    assert "## Answers, from the measured numbers" in readme
    assert "tgdpet tgd-finetune" in readme and "--seed 3" in readme
    assert f"; evaluation in {precision} (" in readme
    assert f"this run took {duration(results['total_s'])} in all on {results['versions']['device']}." in readme
    assert results["git"]["commit"] in readme
    # The docs copy links to the figures in the results folder.
    assert "(../results/fig5.png)" in docs.read_text()

    # --report-only rebuilds the same files from results.json alone.
    before = {name: (out / name).read_text() for name in ("table1.md", "fig4.md", "README.md", "results.json")}
    for name in ("table1.md", "README.md"):
        (out / name).unlink()
    rebuilt = subprocess.run([sys.executable, str(SCRIPT), "--report-only", "--out", str(out)], capture_output=True,
                             text=True, timeout=120)  # fmt: skip
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    assert {name: (out / name).read_text() for name in before} == before

    again = _reproduce(out, device)
    assert again.returncode == 2
    assert "--overwrite" in again.stderr and "Traceback" not in again.stderr


@pytest.mark.slow
def test_a_killed_reproduction_resumes_to_the_numbers_of_an_uninterrupted_one(tiny_run, tmp_path, device):
    """Killed (SIGKILL, as a lost session does) one epoch into a fine-tune, then --resume: the same results."""
    out = tmp_path / "results"
    command = [sys.executable, str(SCRIPT), "--scale", "tiny", "--out", str(out), "--device", str(device), "--seed", "3"]
    run = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in run.stdout:
            if "TGD-net@3: epoch 1/2" in line:  # mid-run: FT-net@3 done, TGD-net@3 half trained
                run.send_signal(signal.SIGKILL)
                break
    finally:
        run.kill()
        run.wait(timeout=60)
    assert not (out / "results.json").exists() and (out / "runs" / "TGD-net" / "seed3" / "training_state.pt").is_file()

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "simulate main (7 studies): reusing" in resumed.stdout and "FT-net@3: done by an earlier attempt" in resumed.stdout
    assert "v1-net ..." not in resumed.stdout  # nothing finished is trained again

    whole = json.loads((tiny_run[0] / "results.json").read_text())
    results = json.loads((out / "results.json").read_text())
    for key in ("evaluation", "kse_curve", "kernel_drop", "bn", "verdicts", "instances"):  # table1 has wall times
        assert json.dumps(results[key]).replace(str(out), "OUT") == json.dumps(whole[key]).replace(
            str(tiny_run[0]), "OUT"
        ), key
    for name, record in whole["training"].items():
        same = ("patches_seen", "steps", "epochs", "final_train_loss", "method")
        assert {k: results["training"][name][k] for k in same} == {k: record[k] for k in same}, name
    assert len(results["attempts"]) == 2 and results["git"] == results["attempts"][0]["git"]
    assert results["steps"]["TGD-net@3"]["continued"] is True and "continued" not in results["steps"]["FT-net@3"]
    readme = (out / "README.md").read_text()
    assert "Interrupted and resumed with `--resume` (2 attempts" in readme and "TGD-net@3 (*continued*" in readme


@pytest.mark.slow
def test_a_network_added_to_a_finished_run_is_evaluated_alone(tiny_run, tmp_path, device):
    """--resume after a network's evaluation rows are gone (as when a network joins the run): only it is scored,
    its rows come back as the uninterrupted run's, the other rows are the recorded ones."""
    out = tmp_path / "results"
    shutil.copytree(tiny_run[0], out)
    progress = json.loads((out / "progress.json").read_text())
    added = "TGD-revive-net@3"
    for step, result in progress["done"].items():
        if step.startswith("evaluate "):
            del result["rows"][added]
            result["rows"]["FT-net@3"]["marker"] = 1.0  # a recorded row must be kept, not scored again
    (out / "progress.json").write_text(json.dumps(progress))
    command = [sys.executable, str(SCRIPT), "--scale", "tiny", "--out", str(out), "--device", str(device), "--seed", "3"]
    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "TGD-revive-net@3: done by an earlier attempt" in resumed.stdout

    whole = json.loads((tiny_run[0] / "results.json").read_text())
    results = json.loads((out / "results.json").read_text())
    for study, entries in whole["evaluation"].items():
        for before, after in zip(entries, results["evaluation"][study], strict=True):
            assert after["rows"][added] == before["rows"][added]
            assert after["rows"]["FT-net@3"] == {**before["rows"]["FT-net@3"], "marker": 1.0}
            assert set(after["rows"]) == set(before["rows"])


def test_resume_refuses_a_folder_without_a_run_or_of_another_run(tmp_path, capsys):
    out = tmp_path / "results"
    assert reproduce_main(["--scale", "tiny", "--out", str(out), "--resume"]) == 2
    assert "no run to resume" in capsys.readouterr().err and not out.exists()
    assert reproduce_main(["--scale", "tiny", "--out", str(out), "--resume", "--overwrite"]) == 2
    assert "pass one of them" in capsys.readouterr().err and not out.exists()

    out.mkdir()
    progress = {"format": "tgdpet-reproduction-progress", "scale": "tiny", "seed": 3, "attempts": [], "steps": {},
                "done": {}}  # fmt: skip
    (out / "progress.json").write_text(json.dumps(progress))
    before = (out / "progress.json").read_bytes()
    assert reproduce_main(["--scale", "tiny", "--seed", "4", "--out", str(out), "--resume"]) == 2
    assert "--scale tiny --seed 3" in capsys.readouterr().err
    assert reproduce_main(["--scale", "small", "--seed", "3", "--out", str(out), "--resume"]) == 2
    assert "resume it with those options" in capsys.readouterr().err
    (out / "progress.json").write_text("{")
    assert reproduce_main(["--scale", "tiny", "--seed", "3", "--out", str(out), "--resume"]) == 2
    assert "not readable" in capsys.readouterr().err
    (out / "progress.json").write_bytes(before)
    assert sorted(p.name for p in out.iterdir()) == ["progress.json"]  # refused before anything was written


def test_report_only_refuses_a_missing_or_foreign_results_file(tmp_path, capsys):
    for content, words in ((None, "does not exist"), ("{", "not a readable"), ('{"format": "x"}', "not a results file")):
        if content is not None:
            (tmp_path / "results.json").write_text(content)
        assert reproduce_main(["--report-only", "--out", str(tmp_path)]) == 2
        assert words in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # nothing written


def _rows(**figures: dict[str, float | None]) -> dict[str, dict]:
    return {model: {"model": model, **values} for model, values in figures.items()}


def _evaluation(scores: dict[str, list[list[float]]], figure: str = "liver_cov_pct", study: str = "high_bmi"):
    """Evaluation results and instances for models scored per seed (outer list) and test study (inner list)."""
    n_studies = len(next(iter(scores.values()))[0])
    results = [{"rows": {}} for _ in range(n_studies)]
    instances = {}
    for model, per_seed in scores.items():
        for seed, per_study in enumerate(per_seed):
            key = f"{model}@{seed}"
            instances[key] = {"model": model, "seed": seed}
            for t, value in enumerate(per_study):
                results[t]["rows"][key] = {figure: value}
    return {study: results}, instances


def test_compare_decides_on_paired_differences_and_two_standard_errors():
    # Per seed, TGD - FT averaged over the two studies: -1.0, -2.0, -3.0 -> mean -2, sd 1, SE 1/sqrt(3) = 0.577;
    # |-2| > 2 x 0.577: TGD-net is better, although the studies differ far more than the methods.
    evaluation, instances = _evaluation({
        "TGD-net": [[10.0, 20.0], [10.0, 30.0], [10.0, 40.0]],
        "FT-net": [[11.0, 21.0], [12.0, 32.0], [13.0, 43.0]],
    })  # fmt: skip
    v = compare(evaluation, instances, "TGD-net", "FT-net", "high_bmi", "liver_cov_pct", "value")
    assert v["n"] == 3 and v["over"] == "fine-tuning seeds"
    assert v["diff"] == pytest.approx(-2.0) and v["se"] == pytest.approx(1 / 3**0.5)
    assert v["verdict"] == "TGD-net better"

    # Differences -1, +1, -3: mean -1, sd 2, SE 1.155: within two standard errors.
    evaluation, instances = _evaluation({"TGD-net": [[10.0], [10.0], [10.0]], "FT-net": [[11.0], [9.0], [13.0]]})
    v = compare(evaluation, instances, "TGD-net", "FT-net", "high_bmi", "liver_cov_pct", "value")
    assert v["diff"] == pytest.approx(-1.0) and v["se"] == pytest.approx(2 / 3**0.5)
    assert v["verdict"] == "no significant difference"

    # Lesion bias compares magnitudes: -5 is worse than +2 (|d| per seed: 3, 3.5, 2.5).
    evaluation, instances = _evaluation(
        {"TGD-net": [[-5.0], [-5.5], [-4.5]], "FT-net": [[2.0], [2.0], [2.0]]}, "lesion_bias_pct"
    )
    v = compare(evaluation, instances, "TGD-net", "FT-net", "high_bmi", "lesion_bias_pct", "abs")
    assert v["diff"] == pytest.approx(3.0) and v["verdict"] == "FT-net better"

    # One seed: the test studies are the units; one seed and one study decide nothing.
    evaluation, instances = _evaluation({"TGD-net": [[10.0, 10.0, 10.0]], "FT-net": [[12.0, 12.5, 11.5]]})
    v = compare(evaluation, instances, "TGD-net", "FT-net", "high_bmi", "liver_cov_pct", "value")
    assert v["n"] == 3 and v["over"] == "test studies" and v["verdict"] == "TGD-net better"
    evaluation, instances = _evaluation({"TGD-net": [[10.0]], "FT-net": [[12.0]]})
    v = compare(evaluation, instances, "TGD-net", "FT-net", "high_bmi", "liver_cov_pct", "value")
    assert v["n"] == 1 and v["verdict"] == "not decidable (n = 1)"


def test_task_verdict_needs_a_significant_gain_and_no_significant_loss():
    def item(figure: str, verdict: str) -> dict:
        return {"a": "TGD-net", "b": "FT-net", "task": "old", "figure": figure, "n": 3, "verdict": verdict}

    better, worse, same = "TGD-net better", "FT-net better", "no significant difference"
    assert task_verdict([item("a", better), item("b", same)], "TGD-net", "FT-net", "old") == "yes, TGD-net is better"
    assert task_verdict([item("a", same), item("b", worse)], "TGD-net", "FT-net", "old") == "no, FT-net is better"
    assert task_verdict([item("a", better), item("b", worse)], "TGD-net", "FT-net", "old").startswith("mixed")
    assert task_verdict([item("a", same), item("b", same)], "TGD-net", "FT-net", "old") == (
        "no significant difference at this scale"
    )


def test_knowledge_answer_follows_the_verdicts_not_the_raw_difference():
    # TGD-net's mean high-BMI CoV is lower, but by less than two standard errors: no verdict for TGD-net.
    scores = {"TGD-net": [[10.0], [12.0], [8.0]], "FT-net": [[10.5], [10.0], [10.5]], "EWC-net": [[14.0], [14.5], [15.0]]}
    evaluation, instances = _evaluation(scores)
    evaluation["low_bmi"] = evaluation["high_bmi"]
    for r in evaluation["high_bmi"]:
        for row in r["rows"].values():
            row["lesion_bias_pct"] = -5.0
    rows = {r["model"]: r for r in table1_rows({**evaluation, "ood": []}, instances, {}, list(scores))}
    text = answer_knowledge_kept(rows, verdicts(evaluation, instances))
    assert "against FT-net: no significant difference at this scale" in text
    assert f"against EWC-net: yes, {LABELS['TGD-net']} is better" in text
    assert f"{LABELS['TGD-net']} 10.00 ± 2.00 (3)" in text


def _ood(bladder: float, cov: float) -> dict[str, float | None]:
    return {"ood_hallucination_bladder_pct": bladder, "ood_hallucination_catheter_pct": None, "ood_liver_cov_pct": cov}


def test_online_learning_answer_states_each_verdict_from_the_numbers():
    rows = _rows(**{
        "v2-net": _ood(20.0, 10.0), "TGD-N2N": _ood(12.0, 10.5), "TGD-net": _ood(18.0, 8.0), "TGD2-N2N": _ood(19.0, 10.0),
    })  # fmt: skip
    text = answer_online_learning(rows)
    assert "bladder 20.00 -> 12.00 % (lower, -40 %)" in text
    assert "liver CoV 10.00 -> 10.50 % (kept, +5 %)" in text
    assert "bladder 18.00 -> 19.00 % (not lower, +6 %)" in text
    assert "liver CoV 8.00 -> 10.00 % (raised, +25 %)" in text
    assert text.count("catheter") == 1  # named once, in the study's description: no figure, no claim


def test_run_durations_read_as_hours_and_minutes():
    assert [duration(s) for s in (14984.1, 3600, 3629, 725, 29)] == [
        "4 h 10 min", "1 h 00 min", "1 h 00 min", "12 min", "under a minute"
    ]


def test_table1_cells_are_mean_sd_and_n_with_dashes_for_missing_figures():
    study = {"rows": {"input": {"lesion_bias_pct": -1.0, "liver_cov_pct": 5.0},
                      "v1-net": {"lesion_bias_pct": -2.0, "liver_cov_pct": 6.0}}}  # fmt: skip
    other = {"rows": {"input": {"lesion_bias_pct": -3.0, "liver_cov_pct": 5.0},
                      "v1-net": {"lesion_bias_pct": -4.0, "liver_cov_pct": 8.0}}}  # fmt: skip
    record = {"wall_s": 12.0, "patches_seen": 640, "method": {"retrained_fraction": 1.0}}
    instances = {"v1-net": {"model": "v1-net", "seed": None}}
    evaluation = {"low_bmi": [study, other], "high_bmi": [study], "ood": [study]}
    rows = table1_rows(evaluation, instances, {"v1-net": record}, ["v1-net"])
    text = table1_markdown(rows)
    # means and sds worked out by hand: (-1, -3) -> -2 ± 1.41; (-2, -4) -> -3 ± 1.41; (6, 8) -> 7 ± 1.41
    assert "| input (no denoising) | -2.00 ± 1.41 (2) | 5.00 ± 0.00 (2) | -1.00 (1) | 5.00 (1) | - | - | 5.00 (1) | - | - | - |" in text
    assert "| v1-net | -3.00 ± 1.41 (2) | 7.00 ± 1.41 (2) | -2.00 (1) | 6.00 (1) | - | - | 6.00 (1) | 12.0 (1) | 640 (1) | 100.0 (1) |" in text
    assert "| v1-net | -3.00 ± 1.41 (2) | -6.30 | 7.00 ± 1.41 (2) | 6.02 |" in text


def test_bn_statistics_are_those_of_the_bn_inputs_and_reestimation_touches_frozen_channels_only():
    from tgdpet.models import bn_after

    model = trained_like_model()
    batches = [torch.randn(4, model.config.in_slices, 12, 12) for _ in range(3)]
    seen: dict[int, list[torch.Tensor]] = {}
    hooks = [bn_after(model, i).register_forward_hook(lambda m, x, y, i=i: seen.setdefault(i, []).append(x[0]))
             for i in range(len(model.convs)) if bn_after(model, i) is not None]  # fmt: skip
    with torch.no_grad():
        for b in batches:
            model(b)
    for h in hooks:
        h.remove()
    stats = bn_input_statistics(model, batches)
    assert set(stats) == set(seen)
    for i, (mean, var) in stats.items():
        x = torch.cat(seen[i]).double().permute(1, 0, 2, 3).reshape(mean.numel(), -1)
        assert torch.allclose(mean, x.mean(dim=1)) and torch.allclose(var, x.var(dim=1, unbiased=True))

    # Running statistics equal to the data's: no mismatch. Then only the frozen channels move.
    masks = {i: torch.arange(c.out_channels) % 2 == 0 for i, c in enumerate(model.convs)}  # even channels retrained
    matched = reestimate_frozen_bn(model, {i: torch.zeros_like(m) for i, m in masks.items()}, stats)
    zero = bn_mismatch(matched, masks, stats)
    assert zero["frozen"]["mean_shift_sd"] == pytest.approx(0, abs=1e-6)
    assert zero["frozen"]["mean_abs_log_var_ratio"] == pytest.approx(0, abs=1e-5)
    assert zero["frozen"]["channels"] + zero["retrained"]["channels"] == sum(mean.numel() for mean, _ in stats.values())
    half = reestimate_frozen_bn(model, masks, stats)
    for i in stats:
        before, after = bn_after(model, i), bn_after(half, i)
        keep = masks[i]
        assert torch.equal(after.running_mean[keep], before.running_mean[keep])
        assert torch.equal(after.running_var[keep], before.running_var[keep])
        assert torch.allclose(after.running_mean[~keep].double(), stats[i][0][~keep])
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), half.parameters()))
    mismatch = bn_mismatch(half, masks, stats)
    assert mismatch["frozen"]["mean_shift_sd"] == pytest.approx(0, abs=1e-6)
    assert mismatch["retrained"]["mean_shift_sd"] > 0.1  # the random running statistics are far off


def test_flagged_fractions_match_the_kernel_drop_study_and_grow_with_phi():
    from tgdpet.drop import drop_kernels

    model = trained_like_model()
    fractions = flagged_fractions(model, (0.3, 0.4, 0.5, 0.6))
    assert list(fractions) == ["0.3", "0.4", "0.5", "0.6"]
    assert list(fractions.values()) == sorted(fractions.values())
    for phi, fraction in fractions.items():
        assert fraction == pytest.approx(drop_kernels(model, float(phi))[1])
