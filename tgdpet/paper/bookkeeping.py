"""A run's bookkeeping: its log, its folder, its finished steps (what --resume reads), the equivalent tgdpet
commands, versions and git state.
"""

from __future__ import annotations

import json
import platform
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import tgdpet

from ..config import LoopConfig
from ..errors import TgdpetError
from ..train.loop import FitResult
from .report import write_text
from .scales import BN_REESTIMATED, ONLINE, PROGRESS, Scale

# --------------------------------------------------------------------------- bookkeeping


class Log:
    """Prints what the run is doing, with the time since the start, and keeps each step's wall and CPU time.

    The CPU time (this process, all threads) is what a step cost; a wall time
    well above CPU time / threads means other processes shared the cores.
    """

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.steps: dict[str, dict[str, float]] = {}

    def __call__(self, message: str) -> None:
        minutes, seconds = divmod(time.perf_counter() - self.start, 60)
        print(f"[{int(minutes):3d}:{seconds:04.1f}] {message}", flush=True)

    def timed(self, name: str, action: Callable[[], object], **facts: object) -> object:
        """Run ``action``, record its wall and CPU time (and ``facts``) under ``name``, return its result."""
        self(f"{name} ...")
        wall, cpu = time.perf_counter(), time.process_time()
        result = action()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        self.steps[name] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), **facts}
        self(f"{name}: done in {wall:.1f} s ({cpu:.1f} CPU s)")
        return result

    def echo(self, name: str) -> Callable[[str], None]:
        """A training run's ``echo``: its epoch lines, prefixed with the network's name."""
        return lambda message: self(f"{name}: {message}")


@dataclass
class Run:
    """One reproduction: its settings, where it writes, and what it has recorded so far."""

    scale: Scale
    out: Path
    seed: int
    device_arg: str  # as the user gave it, for the equivalent commands
    device: torch.device
    overwrite: bool
    resume: bool = False
    log: Log = field(default_factory=Log)
    commands: dict[str, str] = field(default_factory=dict)  # step -> equivalent tgdpet command
    training: dict[str, dict] = field(default_factory=dict)  # instance -> fit_record
    instances: dict[str, dict] = field(default_factory=dict)  # instance -> {"model", "seed", "path"}
    done: dict[str, object] = field(default_factory=dict)  # finished step -> its result (progress.json)
    attempts: list[dict] = field(default_factory=list)  # each start of this run: its git state, time, duration

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def snapshots(self) -> Path:
        """v1-net's weights after each epoch, which the KSE-against-training-length curve scores."""
        return self.out / "runs" / "v1-net" / "epochs"

    @property
    def seeds(self) -> list[int]:
        """The fine-tuning seeds: the run's seed and the next ones."""
        return [self.seed + k for k in range(self.scale.seeds)]

    def model(self, name: str, seed: int | None = None) -> Path:
        """Where network ``name`` (fine-tuned with ``seed``; None: trained once) is (or will be) saved."""
        if name in ONLINE:
            return self.out / "n2n" / f"{name}-seed{seed}.safetensors"
        if name == BN_REESTIMATED:
            return self.out / "runs" / name / f"seed{seed}.safetensors"
        return self.out / "runs" / name / ("last.safetensors" if seed is None else f"seed{seed}/last.safetensors")

    def once(self, name: str, action: Callable[[], object], **facts: object) -> object:
        """Step ``name``'s result: recorded by an earlier attempt of a resumed run, or run (timed) and recorded."""
        if name in self.done:
            self.log(f"{name}: done by an earlier attempt")
            return self.done[name]
        self.done[name] = self.log.timed(name, action, **facts)
        self.save_progress()
        return self.done[name]

    def save_progress(self) -> None:
        """Write what ``--resume`` needs to ``OUT/progress.json`` (atomically: a kill leaves the previous one)."""
        self.attempts[-1]["wall_s"] = round(time.perf_counter() - self.log.start, 1)
        progress = {"format": "tgdpet-reproduction-progress", "scale": self.scale.name, "seed": self.seed,
                    "attempts": self.attempts, "steps": self.log.steps, "done": self.done}  # fmt: skip
        write_text(self.out / PROGRESS, json.dumps(progress, indent=1, allow_nan=False) + "\n")

    def add(self, name: str, seed: int | None = None) -> str:
        """Register an instance of network ``name``; returns its key (the name of its evaluation rows)."""
        key = instance_key(name, seed)
        self.instances[key] = {"model": name, "seed": seed, "path": str(self.model(name, seed))}
        return key


def instance_key(name: str, seed: int | None) -> str:
    """``v1-net`` for a network trained once, ``TGD-net@1`` for TGD-net fine-tuned with seed 1."""
    return name if seed is None else f"{name}@{seed}"


def cli(*words: object, **options: object) -> str:
    """A ``tgdpet`` command line: positional words, then ``--option value`` (True: a bare flag; None: left out)."""
    parts = ["tgdpet", *(str(w) for w in words)]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif value is not None and value is not False:
            parts += [flag, str(value)]
    return shlex.join(parts)


def loop_options(cfg: LoopConfig) -> dict:
    """The command-line options that set ``cfg`` (the others are the commands' defaults)."""
    keys = ("preset", "channel_penalty", "method", "phi", "conv1", "tgd_mode", "bn_stats", "read_kernels", "epochs",
            "patches_per_epoch", "batch_size", "patch_size", "lr", "seed", "device")  # fmt: skip
    options = {k: getattr(cfg, k) for k in keys if hasattr(cfg, k)}
    method = getattr(cfg, "method", None)
    if method in ("all", "last3", "ewc"):
        for k in ("phi", "conv1", "tgd_mode", "bn_stats", "read_kernels"):
            options.pop(k)
    if method == "ewc":
        options["ewc_lambda"] = cfg.ewc_lambda
    if method == "tgd":  # named either way: the default changed (docs/tgd.md)
        options["revive" if cfg.revive else "no_revive"] = True
    if cfg.amp is not None:
        options["amp" if cfg.amp else "no_amp"] = True
    return options


def fit_record(result: FitResult, cfg: LoopConfig, **facts: object) -> dict:
    """What Table 1 and the report need from a training run (its step in ``steps`` adds loading the data)."""
    p = result.progress
    return {
        "wall_s": round(p.elapsed_s, 1),  # the training loop alone, summed over the attempts of a resumed run
        "patches_seen": p.patches_seen,
        "patches_per_epoch": cfg.patches_per_epoch,
        "steps": p.step,
        "epochs": p.history[-1]["epoch"] if p.history else 0,
        "final_train_loss": p.history[-1]["train_loss"] if p.history else None,
        "method": result.method,
        "precision": result.precision,
        **facts,
    }


def epoch_patches(input_slices: int, batch_size: int) -> int:
    """An epoch: one patch per input slice, in whole batches (at least one)."""
    return max(batch_size, input_slices // batch_size * batch_size)


def versions(device: torch.device) -> dict:
    """Software and hardware the numbers were measured with."""
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    return {
        "tgdpet": tgdpet.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": f"{device} ({hardware})",
    }


def git_state() -> dict:
    """The commit the code ran from and whether the working tree had uncommitted changes (None outside git)."""
    root = Path(__file__).resolve().parents[1]

    def git(*words: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(root), *words], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def prepare_out(out: Path, overwrite: bool, resume: bool) -> None:
    """Create ``out``; refuse to mix this run with an earlier one unless ``overwrite`` (or ``resume`` it)."""
    if out.exists() and not out.is_dir():
        raise TgdpetError(f"{out} exists and is not a folder; choose another --out.")
    if resume and not (out / PROGRESS).is_file():
        raise TgdpetError(f"there is no run to resume in {out} (no {PROGRESS}); drop --resume to start one.")
    if out.exists() and any(out.iterdir()) and not (overwrite or resume):
        raise TgdpetError(
            f"{out} already holds files; pass --resume to continue that run, --overwrite to replace it, or choose "
            "another --out."
        )
    out.mkdir(parents=True, exist_ok=True)


def read_progress(out: Path, scale: Scale, seed: int) -> dict:
    """An interrupted run's progress.json, refused if it is unreadable or the run had another scale or seed."""
    path = out / PROGRESS
    try:
        progress = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TgdpetError(f"{path} is not readable ({e}); start the run again with --overwrite.") from None
    if not isinstance(progress, dict) or progress.get("format") != "tgdpet-reproduction-progress":
        raise TgdpetError(f"{path} is not a reproduction's progress file; start the run again with --overwrite.")
    if (progress.get("scale"), progress.get("seed")) != (scale.name, seed):
        raise TgdpetError(
            f"{out} holds a run started with --scale {progress.get('scale')} --seed {progress.get('seed')}; "
            "resume it with those options."
        )
    return progress
