"""Prove tgdpet's GPU paths in one command, in minutes of a lent GPU; the same path on the CPU in CI.

    python scripts/gpu_check.py --device cuda --out gpu-check        # on one GPU: at most about 8 minutes
    python scripts/gpu_check.py --device cpu --quick --out gpu-check  # the same steps shrunk: about a minute

Each step runs in a process of its own (a failure is recorded and the next step still runs), with a time
limit, in this order:

1. ``environment``: torch, CUDA and the device (name, memory, bf16 support).
2. ``device tests``: the tests that take the ``--device`` option (``pytest -m device --device DEVICE``).
3. ``benchmark``: ``scripts/bench.py --device DEVICE`` (denoising per preset and precision against the
   matrix-multiply peak, the TGD step overhead, training steps per precision, peak memory, end to end).
4. ``simulate``: a small dataset (v1 and v2, two training studies with Noise2Noise halves, a test study).
5. ``train``: ``tgdpet train`` with the paper preset (``--quick``: tiny) and ``--amp``.
6. ``tgd-finetune``: TGD from that model on the v2 images, ``--amp``.
7. ``n2n-online``: Noise2Noise with TGD on one study's halves, ``--amp``.
8. ``denoise``: the fine-tuned model on the test study.
9. ``torchrun``: ``train`` again under ``torchrun --nproc_per_node 1``, so the process group (NCCL on a
   GPU, Gloo on the CPU), DistributedDataParallel and the collective calls all run.

Output: ``OUT/gpu-check.json`` (``format``: ``tgdpet-gpu-check``, version 1) holds ``device``,
``quick``, ``started``, ``wall_s``, ``passed`` (every step passed) and ``steps``: per step ``name``,
``command``, ``returncode``, ``passed``, ``wall_s``, ``figures`` (what the step measured: tests passed and
failed, the benchmark's JSON, patches per second and final loss of a training run, the denoised image's
mean against the input's) and ``tail`` (the last lines of its output). ``OUT/gpu-check.md`` is the same as a
table. The exit status is 0 only when every step passed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from tgdpet.errors import TgdpetError
from tgdpet.runtime import resolve_device

REPO = Path(__file__).resolve().parents[1]
FORMAT = "tgdpet-gpu-check"
#: Seconds each step may take (full run, --quick run): 8 minutes in all on a GPU at most.
LIMITS = {
    "environment": (60, 60), "device tests": (150, 120), "benchmark": (150, 120), "simulate": (60, 60),
    "train": (60, 60), "tgd-finetune": (40, 40), "n2n-online": (40, 40), "denoise": (30, 30), "torchrun": (60, 60),
}  # fmt: skip
ENVIRONMENT = """
import json, torch
cuda = torch.cuda.is_available()
info = {"torch": torch.__version__, "cuda_available": cuda, "cuda": torch.version.cuda,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads()}
if cuda:
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), capability=f"{p.major}.{p.minor}",
                bf16=torch.cuda.is_bf16_supported(), cudnn=torch.backends.cudnn.version())
print(json.dumps(info))
"""
IMAGE_MEANS = """
import json, sys
from tgdpet.io import read_volume
print(json.dumps({"input_mean": float(read_volume(sys.argv[1]).data.mean()),
                  "output_mean": float(read_volume(sys.argv[2]).data.mean())}))
"""


def run_step(name: str, command: list[str], limit: int, env: dict) -> dict:
    """Run one step's command; its outcome, time and the last lines of its output."""
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit, env=env, cwd=REPO)
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        code, output = 124, f"{e.stdout or ''}{e.stderr or ''}\nstopped after {limit} s"
    wall = time.perf_counter() - start
    text = output if isinstance(output, str) else output.decode(errors="replace")
    return {"name": name, "command": shlex.join(command), "returncode": code, "passed": code == 0,
            "wall_s": round(wall, 1), "figures": {}, "tail": text.strip().splitlines()[-15:], "_out": text}  # fmt: skip


def last_json_line(text: str) -> dict:
    """The last line of a step's output that is a JSON object ({} if none)."""
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    return {}


def pytest_counts(text: str) -> dict:
    """pytest's summary line as numbers: passed, failed, errors, skipped."""
    words = {"passed": 0, "failed": 0, "error": 0, "errors": 0, "skipped": 0, "deselected": 0}
    for line in reversed(text.splitlines()):
        if " in " in line and any(w in line for w in ("passed", "failed", "error")):
            for part in line.strip("= ").split(" in ")[0].split(","):
                count, _, word = part.strip().partition(" ")
                if word in words and count.isdigit():
                    words[word] = int(count)
            break
    return {"passed": words["passed"], "failed": words["failed"], "errors": words["error"] + words["errors"]}


def training_figures(run: Path) -> dict:
    """What a training run's metrics.jsonl says about its last epoch."""
    lines = (run / "metrics.jsonl").read_text().strip().splitlines() if (run / "metrics.jsonl").is_file() else []
    if not lines:
        return {}
    last = json.loads(lines[-1])
    return {k: last.get(k) for k in ("epoch", "train_loss", "val_loss", "patches_per_s", "time_s")}


def steps(device: str, quick: bool, work: Path, out: Path) -> list[tuple[str, list[str]]]:
    """Every step's name and command, in order."""
    py, tgdpet = sys.executable, [sys.executable, "-m", "tgdpet.cli"]
    data = work / "data"
    size, slices = ("48", "48") if quick else ("128", "144")
    preset = "tiny" if quick else "paper"
    loop = ["--epochs", "1" if quick else "2", "--patches-per-epoch", "128" if quick else "2048", "--batch-size",
            "16" if quick else "64", "--patch-size", "16" if quick else "32", "--device", device, "--amp",
            "--no-progress"]  # fmt: skip
    bench = [py, "scripts/bench.py", "--device", device, "--json", str(out / "bench.json")] + (["--quick"] if quick else [])
    if quick:  # the CI check: the end-to-end section alone keeps it within a minute
        bench.append("--end-to-end")
    halves = [str(data / "v2" / "s000" / f"half{k}_060s.nii.gz") for k in (1, 2)]
    test_input = data / "v2" / "s002" / "real00_060s.nii.gz"
    return [
        ("environment", [py, "-c", ENVIRONMENT]),
        ("device tests", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "device and not slow",
                          "--device", device] + (["-x"] if quick else [])),  # fmt: skip
        ("benchmark", bench),
        ("simulate", tgdpet + ["simulate", str(data), "--studies", "2", "--size", size, "--slices", slices,
                               "--levels", "60,120", "--realisations", "2", "--bmi", "normal", "--ood", "none",
                               "--halves", "--seed", "11", "--device", device, "--no-progress"]),  # fmt: skip
        ("train", tgdpet + ["train", str(data / "v1"), "--out", str(work / "train"), "--preset", preset] + loop),
        ("tgd-finetune", tgdpet + ["tgd-finetune", str(work / "train" / "last.safetensors"), str(data / "v2"),
                                   "--out", str(work / "tgd")] + loop),  # fmt: skip
        ("n2n-online", tgdpet + ["n2n-online", str(work / "tgd" / "last.safetensors"), *halves, "-o",
                                 str(work / "n2n.nii.gz")] + loop),  # fmt: skip
        ("denoise", tgdpet + ["denoise", str(test_input), "--model", str(work / "tgd" / "last.safetensors"),
                              "-o", str(work / "denoised.nii.gz"), "--device", device, "--no-progress"]),
        ("torchrun", [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m",
                      "tgdpet.cli", "train", str(data / "v1"), "--out", str(work / "ddp"), "--preset", preset]
         + loop),  # fmt: skip
    ]


def figures(name: str, step: dict, work: Path, out: Path, env: dict) -> dict:
    """The numbers a step produced, read from its output or its files."""
    text = step["_out"]
    if name == "environment":
        return last_json_line(text)
    if name == "device tests":
        return pytest_counts(text)
    if name == "benchmark" and (out / "bench.json").is_file():
        bench = json.loads((out / "bench.json").read_text())
        summary = {f"{r['volume']}: end to end / network": round(r["ratio"], 2) for r in bench["end_to_end"]}
        summary.update({f"{r['preset']} {r['variant']}: GFLOP/s": round(r["gflops"]) for r in bench.get("denoise", [])})
        if "tgd_step" in bench:
            summary["TGD step / plain step"] = round(bench["tgd_step"]["ratio"], 3)
        return {**summary, "bench": bench}
    if name == "n2n-online" and (work / "n2n.nii.gz").is_file():
        return {"output": "n2n.nii.gz"}
    if name in ("train", "tgd-finetune", "torchrun"):
        return training_figures(work / {"train": "train", "tgd-finetune": "tgd", "torchrun": "ddp"}[name])
    if name == "denoise" and (work / "denoised.nii.gz").is_file():
        test_input = work / "data" / "v2" / "s002" / "real00_060s.nii.gz"
        done = subprocess.run([sys.executable, "-c", IMAGE_MEANS, str(test_input), str(work / "denoised.nii.gz")],
                              capture_output=True, text=True, env=env, cwd=REPO)  # fmt: skip
        return last_json_line(done.stdout)
    return {}


def markdown(report: dict) -> str:
    lines = [f"# tgdpet GPU check on {report['device']}{' (quick)' if report['quick'] else ''}", "",
             f"{report['started']}, {report['wall_s']:.0f} s in all; every step passed: {report['passed']}.", "",
             "| step | passed | seconds | figures |", "|---|---|---|---|"]  # fmt: skip
    for s in report["steps"]:
        shown = {k: v for k, v in s["figures"].items() if not isinstance(v, (dict, list))}
        lines.append(f"| {s['name']} | {'yes' if s['passed'] else 'NO'} | {s['wall_s']:.1f} | "
                     + ", ".join(f"{k} {v}" for k, v in shown.items()) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu [default: cuda]")
    parser.add_argument("--quick", action="store_true", help="shrink every step (the CPU check CI runs)")
    parser.add_argument("--out", default="gpu-check", help="folder for gpu-check.json/.md and the runs")
    args = parser.parse_args(argv)
    try:
        resolve_device(args.device)  # one that cannot run fails every step, after --out is made
    except TgdpetError as e:
        print(f"Error: {e}", file=sys.stderr)
        return e.exit_code
    out = Path(args.out).resolve()
    work = out / "work"
    if work.exists():
        raise SystemExit(f"{work} exists from an earlier check; remove it or choose another --out.")
    work.mkdir(parents=True)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "MPLBACKEND": "Agg"}
    started = time.perf_counter()
    report = {"format": FORMAT, "version": 1, "device": args.device, "quick": args.quick,
              "started": dt.datetime.now().isoformat(timespec="seconds"), "steps": []}  # fmt: skip
    for name, command in steps(args.device, args.quick, work, out):
        print(f"[{time.perf_counter() - started:6.1f} s] {name} ...", flush=True)
        step = run_step(name, command, LIMITS[name][args.quick], env)
        step["figures"] = figures(name, step, work, out, env)
        del step["_out"]
        report["steps"].append(step)
        print(f"[{time.perf_counter() - started:6.1f} s] {name}: {'passed' if step['passed'] else 'FAILED'} "
              f"in {step['wall_s']:.1f} s", flush=True)  # fmt: skip
        if not step["passed"]:
            print("\n".join("    " + line for line in step["tail"]), flush=True)
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["passed"] = all(s["passed"] for s in report["steps"])
    (out / "gpu-check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu-check.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
