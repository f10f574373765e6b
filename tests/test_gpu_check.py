"""scripts/gpu_check.py: the GPU check runs its whole path on the CPU (as CI does), and says when a step fails."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
STEPS = ["environment", "device tests", "benchmark", "simulate", "train", "tgd-finetune", "n2n-online", "denoise",
         "torchrun"]  # fmt: skip


def _module(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_quick_check_runs_every_step_on_the_cpu(tmp_path):
    out = tmp_path / "check"
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    report = json.loads((out / "gpu-check.json").read_text())
    assert report["format"] == "tgdpet-gpu-check" and report["version"] == 1 and report["passed"] is True
    assert [s["name"] for s in report["steps"]] == STEPS and all(s["passed"] for s in report["steps"])
    figures = {s["name"]: s["figures"] for s in report["steps"]}
    assert figures["environment"]["torch"].startswith("2.")
    assert figures["device tests"]["passed"] >= 5 and figures["device tests"]["failed"] == 0
    assert figures["benchmark"]["bench"]["end_to_end"][0]["network"] > 0
    for run in ("train", "tgd-finetune", "torchrun"):
        assert figures[run]["epoch"] == 1 and figures[run]["train_loss"] > 0
    # One process under torchrun goes through the process group and DDP, and learns what the plain run learns.
    torchrun = next(s for s in report["steps"] if s["name"] == "torchrun")
    assert any("x 1 processes" in line for line in torchrun["tail"])
    assert figures["torchrun"]["train_loss"] == pytest.approx(figures["train"]["train_loss"], rel=1e-5)
    means = figures["denoise"]
    assert abs(means["output_mean"] / means["input_mean"] - 1) < 0.05  # denoising keeps the mean activity
    table = (out / "gpu-check.md").read_text()
    assert all(f"| {name} | yes |" in table for name in STEPS)


def test_a_failing_step_is_recorded_and_the_next_one_still_runs(tmp_path, monkeypatch):
    check = _module(monkeypatch)
    py = sys.executable
    monkeypatch.setattr(check, "steps", lambda *args: [
        ("train", [py, "-c", "import sys; print('diverged'); sys.exit(3)"]),
        ("environment", [py, "-c", "print('{\"torch\": \"x\"}')"]),
    ])  # fmt: skip
    assert check.main(["--device", "cpu", "--out", str(tmp_path / "c")]) == 1
    report = json.loads((tmp_path / "c" / "gpu-check.json").read_text())
    train, env = report["steps"]
    assert (train["passed"], train["returncode"], train["tail"]) == (False, 3, ["diverged"])
    assert env["passed"] and env["figures"] == {"torch": "x"} and report["passed"] is False
    assert "| train | NO |" in (tmp_path / "c" / "gpu-check.md").read_text()
    with pytest.raises(SystemExit, match="exists from an earlier check"):  # never mixes two checks' runs
        check.main(["--device", "cpu", "--out", str(tmp_path / "c")])


def test_pytest_summaries_are_read_as_numbers(monkeypatch):
    check = _module(monkeypatch)
    assert check.pytest_counts("..F\n=== 1 failed, 9 passed, 2 deselected in 3.2s ===") == {
        "passed": 9, "failed": 1, "errors": 0}  # fmt: skip
    assert check.pytest_counts("10 passed in 1.0s") == {"passed": 10, "failed": 0, "errors": 0}
