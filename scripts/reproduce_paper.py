"""Reproduce Chen, Asma & Chan, "Targeted Gradient Descent" (MICCAI 2021) on simulated PET data.

    python scripts/reproduce_paper.py --scale medium --out results/ [--device auto] [--seed 0] [--overwrite]
                                      [--docs docs/reproduction/README.md]
    python scripts/reproduce_paper.py --resume --scale medium --out results/      # continue an interrupted run
    python scripts/reproduce_paper.py --report-only --out results/ [--docs ...]   # rebuild the markdown

One path from nothing to the paper's Table 1, Fig. 4 and Figs 5-6, through the
library API (the equivalent ``tgdpet`` commands are written to the report):

1. Simulate three datasets (all images of a study come from one scan, so v1
   and v2 differ only in reconstruction):
   - ``main``: N training studies alternating low and high BMI, reconstructed
     with v1 and v2; a low-BMI and a high-BMI test study, each a 600 s scan
     with a liver tumour cut into R x 60 s realisations, ``test_studies`` of
     each (the tests are on v2 images; the low-BMI ones also in v1, for
     Fig. 4); an out-of-distribution
     (OOD) study with a catheter and a very hot bladder (v2), with R x 60 s
     realisations and two 60 s halves of a 120 s scan for Noise2Noise.
   - ``finetune``: low-BMI studies reconstructed with v2 only, *separate* from
     the N training studies, as the paper's 7 low-BMI fine-tuning studies.
   - ``third``: high-BMI v2 studies, a third task for TGD² (TGD-net
     TGD-fine-tuned again with masks from its own weights).
2. Train v1-net (main/v1) and v2-net (main/v2) from scratch, once, scoring
   v1-net's kernels by KSE after every epoch (flagged fraction against
   training length); then, with each of ``seeds`` fine-tuning seeds,
   fine-tune v1-net on ``finetune``: FT-net (last three conv blocks),
   TGD-net (phi = 0.3), EWC-net, the paper-literal TGD and TGD with
   ``--revive``; TGD²-net = that seed's TGD-net fine-tuned by TGD on
   ``third`` (TGD²-net with ``--revive`` likewise from TGD-net with it).
3. Online learning on the OOD study (phi = 0.4), per seed: TGD-N2N from
   v2-net (tgdpet's default, paper-literal, with ``--revive``) and TGD²-N2N
   from that seed's TGD-net.
4. BatchNorm after TGD: on fine-tuning patches, how far each frozen
   channel's batch statistics are from the running statistics TGD kept,
   and TGD-net (BN re-est.) with them re-estimated.
5. The kernel-drop study of Fig. 4 on v1-net at phi = 0.3 ... 0.6.
6. Evaluate every network on every v2 test study (lesion bias, liver CoV,
   hallucination score on the ensemble mean), derive Table 1 (mean +- sd,
   n) and the verdicts (:mod:`tgdpet.reproduce`), and write table1.md,
   fig4.md/png, fig5.png, fig6.png, results.json (with the git commit) and
   README.md into ``--out``.

Compute. An epoch is one random patch per input slice of the dataset
(studies x count levels x slices), and every network trains the same number of
epochs (the paper: 500 for all, 150 for N2N). Fine-tuning on 7 studies then
costs 7/20 of training on 20: the paper's "64 % of the training time saved".
Scales fix patches, not wall-clock time, so a run is reproducible.

Interruptions. A medium run takes hours, so every finished step is recorded in
``OUT/progress.json`` and ``--resume`` continues a killed run: it reuses the
datasets (if their ``simulation.json`` matches), continues each training run
from its last complete epoch (``tgdpet train --resume``), and skips the
online-learning runs and evaluations already recorded (a network added to the
run since is evaluated alone and its rows join the recorded ones). A resumed run gives the
numbers of an uninterrupted one (tests/test_reproduce.py kills one to check).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import tgdpet
from tgdpet import reproduce as rp
from tgdpet.checkpoint import ModelRecord, load_model, save_model
from tgdpet.data import Manifest, StudyEntry, load_manifest, load_studies
from tgdpet.errors import TgdpetError
from tgdpet.evaluate import evaluate_models, truth_path
from tgdpet.files import atomic_file, check_can_write
from tgdpet.infer import denoise_array, load_denoiser
from tgdpet.io import read_volume
from tgdpet.runtime import autocast_dtype, resolve_device
from tgdpet.simulate import OOD_FEATURES, SimulationConfig, StudySpec, study_seed, write_dataset
from tgdpet.tgd import drop_kernels, relative_rms_change
from tgdpet.train import FinetuneConfig, LoopConfig, N2NConfig, TrainConfig, finetune, n2n_online, train
from tgdpet.train.ddp import DistEnv
from tgdpet.train.loop import FitResult, precision_name
from tgdpet.train.outputs import STATE
from tgdpet.train.workflows import patch_dataset

#: The paper's thresholds: TGD fine-tuning, online learning, and the kernel-drop study (Fig. 4).
PHI_FINETUNE = 0.3
PHI_N2N = 0.4
DROP_PHIS = (0.3, 0.4, 0.5, 0.6)
#: The paper's TGD taken literally, kept as its own rows beside tgdpet's default TGD: activation-gradient
#: masking, conv1's meaningless kernels retrained, frozen channels normalised by batch statistics while training.
PAPER_LITERAL = {"tgd_mode": "activation", "conv1": "retrain", "bn_stats": "batch", "read_kernels": "freeze"}
#: tgdpet's TGD with ``--revive``: retrained channels that are silent on the new data re-initialised (docs/tgd.md).
REVIVE = {"revive": True}
#: The fine-tuned networks of Table 1, then the online-learning ones, in table order.
FINETUNED = ("FT-net", "TGD-net", "EWC-net", "TGD2-net", "TGD-paper-net", "TGD-revive-net", "TGD2-revive-net")
ONLINE = ("TGD-N2N", "TGD2-N2N", "TGD-paper-N2N", "TGD-revive-N2N")
#: TGD-net with its frozen channels' BN running statistics re-estimated on the fine-tuning data.
BN_REESTIMATED = "TGD-net-BN"
MODELS = ("v1-net", "v2-net", *FINETUNED, BN_REESTIMATED, *ONLINE)
#: results.json's format version (2: several seeds and test studies, instances, verdicts).
FORMAT_VERSION = 2
#: Patches of the fine-tuning data the BatchNorm study measures (at most an epoch's worth).
BN_PATCHES = 2048
#: The epoch line of a training run's echo (tgdpet.train.loop): v1-net's weights are kept after each one.
EPOCH_LINE = re.compile(r"epoch (\d+)/\d+")
#: The run's finished steps and their results, what ``--resume`` reads (in ``--out``).
PROGRESS = "progress.json"


@dataclass(frozen=True)
class Scale:
    """How big the reproduction is; everything not set here is the paper's setting."""

    name: str
    summary: str
    size: int  # pixels per row over the 512 mm field of view
    slices: int  # slices over the 576 mm neck-to-pelvis extent
    levels_s: tuple[float, ...]  # count levels of the noisy training inputs (s of the 600 s scan)
    realisations: int  # 60 s realisations of each test study
    n_train: int  # v1 / v2 training studies (low and high BMI alternating)
    n_finetune: int  # separate low-BMI v2 studies for FT-net, TGD-net, EWC-net
    n_third: int  # high-BMI v2 studies for TGD²-net
    preset: str
    batch_size: int
    patch_size: int
    epochs: int  # for every network trained or fine-tuned
    n2n_epochs: int
    seeds: int  # fine-tuning seeds: every fine-tuned / online network is trained this many times
    test_studies: int  # low-BMI and high-BMI test studies each
    channel_penalty: float = 0.0  # v1-net's and v2-net's group-lasso weight (tgdpet train --channel-penalty)
    every_seed: tuple[str, ...] | None = None  # networks trained with every fine-tuning seed, the rest with the
    # first only (None: every network with every seed)

    def trains(self, name: str, seed: int, seeds: list[int]) -> bool:
        """Whether network ``name`` is fine-tuned (or adapted) with ``seed``."""
        return self.every_seed is None or name in self.every_seed or seed == seeds[0]


#: Epochs of the medium scale. Measured on 2 cores with bf16 units (2026-12-02, bf16 training and evaluation):
#: simulation 10 min, v1-net and v2-net 10 min each, one seed's four fine-tunes 13 min, online learning 3 min,
#: evaluation (25 networks x 7 studies) 31 min: 1 h 45 min in all (in fp32, 2026-12-01: 4 h 10 min).
MEDIUM_EPOCHS = 24
#: v1-net's and v2-net's channel penalty (``tgdpet train --channel-penalty``), chosen on the medium data's v1
#: training set before this run (``scripts/spare_capacity.py``, 5 epochs, docs/tgd.md): 1e-3 left 46 % of the
#: parameters droppable at phi 0.3 for a 0.01 % output change, at 0.7 dB of PSNR on a held-out study
#: (3e-4: 18 %, no PSNR cost; 0: 9 %, and dropping them changed the output by 14 %).
CHANNEL_PENALTY = 1e-3

SCALES = {
    "tiny": Scale(
        "tiny", "pipeline check for tests: a tiny grid and net, two epochs, two seeds (numbers are meaningless)",
        size=40, slices=45, levels_s=(60, 180), realisations=2, n_train=2, n_finetune=1, n_third=1,
        preset="tiny", batch_size=16, patch_size=16, epochs=2, n2n_epochs=1, seeds=2, test_studies=2,
        channel_penalty=CHANNEL_PENALTY,
    ),
    "small": Scale(
        "small", "2 CPU cores: the paper's 20 + 7 studies at 4 mm voxels, the 'small' net (7 x 32 channels), "
        "12 epochs (60 for N2N), one seed",
        size=128, slices=144, levels_s=(30, 45, 60, 90, 120, 180), realisations=10, n_train=20, n_finetune=7,
        n_third=4, preset="small", batch_size=64, patch_size=32, epochs=12, n2n_epochs=60, seeds=1, test_studies=1,
        channel_penalty=CHANNEL_PENALTY,
    ),
    "medium": Scale(
        "medium", f"2 CPU cores: the small scale's data and net, {MEDIUM_EPOCHS} epochs (60 for N2N), "
        "3 fine-tuning seeds (EWC-net and TGD² with the first only) and 3 test studies per BMI class, for error bars",
        size=128, slices=144, levels_s=(30, 45, 60, 90, 120, 180), realisations=10, n_train=20, n_finetune=7,
        n_third=4, preset="small", batch_size=64, patch_size=32, epochs=MEDIUM_EPOCHS, n2n_epochs=60, seeds=3,
        test_studies=3, channel_penalty=CHANNEL_PENALTY,
        every_seed=("FT-net", "TGD-net", "TGD-paper-net", "TGD-revive-net", "TGD-N2N", "TGD-paper-N2N",
                    "TGD-revive-N2N"),
    ),
    "paper": Scale(
        "paper", "a GPU: the paper's 20 + 7 studies, its network and 500 / 150 epochs, 2.7 mm voxels",
        size=192, slices=216, levels_s=(30, 45, 60, 90, 120, 180), realisations=10, n_train=20, n_finetune=7,
        n_third=7, preset="paper", batch_size=64, patch_size=32, epochs=500, n2n_epochs=150, seeds=3,
        test_studies=3, channel_penalty=CHANNEL_PENALTY,
    ),
}  # fmt: skip


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
        rp.write_text(self.out / PROGRESS, json.dumps(progress, indent=1, allow_nan=False) + "\n")

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


# --------------------------------------------------------------------------- 1. data


def simulation_configs(scale: Scale, seed: int, device: torch.device) -> dict[str, SimulationConfig]:
    """The three datasets of the run (see the module docstring), keyed by folder name."""
    bodies = ("low", "high")
    main = (
        [StudySpec("train", bodies[i % 2]) for i in range(scale.n_train)]
        + [StudySpec("test", "low", tumour=True)] * scale.test_studies  # v1 too: Fig. 4 runs v1-net on a v1 image
        + [StudySpec("test", "high", tumour=True, protocols=("v2",))] * scale.test_studies
        + [StudySpec("test", "normal", ood=OOD_FEATURES, halves=True, protocols=("v2",))]
    )
    common = {
        "size": scale.size,
        "slices": scale.slices,
        "levels_s": scale.levels_s,
        "realisations": scale.realisations,
        "device": str(device),
        "progress": False,
    }
    return {
        "main": SimulationConfig(studies=tuple(main), protocols=("v1", "v2"), seed=study_seed(seed, 0), **common),
        "finetune": SimulationConfig(
            studies=(StudySpec("train", "low"),) * scale.n_finetune, protocols=("v2",), seed=study_seed(seed, 1),
            **common,
        ),
        "third": SimulationConfig(
            studies=(StudySpec("train", "high"),) * scale.n_third, protocols=("v2",), seed=study_seed(seed, 2),
            **common,
        ),
    }  # fmt: skip


def describe(config: SimulationConfig) -> str:
    """One line per dataset for the report: how many studies of each kind, body size, features, protocols."""
    kinds: dict[str, int] = {}
    for s in config.studies:
        what = f"{s.kind} {s.body}-BMI" + (f" + {'/'.join(s.ood)}" if s.ood else "") + (" + tumour" if s.tumour else "")
        what += f" ({'+'.join(config.study_protocols(s))})"
        kinds[what] = kinds.get(what, 0) + 1
    return ", ".join(f"{n} x {what}" for what, n in kinds.items())


def simulate(run: Run) -> dict[str, SimulationConfig]:
    """Write the three datasets under ``OUT/data`` (a resumed run keeps each one simulated with the same config)."""
    configs = simulation_configs(run.scale, run.seed, run.device)
    run.data.mkdir(exist_ok=True)
    for name, config in configs.items():
        step = f"simulate {name} ({len(config.studies)} studies)"
        if run.resume and simulated_with(run.data / name, config):
            run.log(f"{step}: reusing {run.data / name}")
            continue
        run.log.timed(step, lambda: write_dataset(run.data / name, config, overwrite=run.overwrite or run.resume))
    return configs


def simulated_with(folder: Path, config: SimulationConfig) -> bool:
    """Whether ``folder`` holds a complete dataset simulated with ``config`` (its simulation.json says so)."""
    try:
        recorded = json.loads((folder / "simulation.json").read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return recorded == json.loads(json.dumps(asdict(config)))


def find_test_studies(manifest: Manifest, body: str, feature: str) -> list[StudyEntry]:
    """The test studies of a body size with a feature (``tumour``, ``catheter``), from their manifest ``meta``."""
    found = [s for s in manifest.split("test") if s.meta.get("body") == body and feature in s.meta.get("features", ())]
    if not found:
        raise TgdpetError(f"{manifest.path} has no {body}-BMI test study with a {feature}; simulate the data again.")
    return found


# --------------------------------------------------------------------------- 2. networks


def loop_settings(run: Run, n_studies: int, seed: int) -> dict:
    """Epochs of one patch per input slice of ``n_studies`` studies, the scale's batch and patch sizes, precision."""
    s = run.scale
    return {
        "epochs": s.epochs,
        "patches_per_epoch": epoch_patches(n_studies * len(s.levels_s) * s.slices, s.batch_size),
        "batch_size": s.batch_size,
        "patch_size": s.patch_size,
        "seed": seed,
        "device": run.device_arg,
        "amp": training_amp(run.device),
    }


def training_amp(device: torch.device) -> bool:
    """Mixed precision wherever the hardware has units for it (CUDA, CPUs with bf16 matrix units), as the
    built-in model trains: a small-preset step is ~3x faster in bf16 on such a CPU, and the weights and the
    optimiser stay fp32. tgdpet's default keeps narrow presets in fp32 on CPUs, so the run says so explicitly."""
    return autocast_dtype(device) is not None


def precisions(device: torch.device) -> dict[str, str]:
    """The precisions the run trains and evaluates in, for results.json and the report.

    The evaluation runs in the reduced precision the device has (bf16 on CPUs
    with bf16 units): measured on the 20 medium-scale networks of 2026-12-01
    against their fp32 figures, lesion bias moved by at most 0.13 points,
    liver CoV by 0.09, the hallucination score by 0.10 (means 0.01), against
    seed-to-seed spreads of 0.7-9 points; 3 networks on one study took
    49-53 s against 85-91 s in fp32 (loading and scoring the study included).
    The kernel-drop study and the figures stay fp32: the former measures
    output changes of a few tenths of a per cent, as large as bf16's rounding.
    """
    name = precision_name(autocast_dtype(device))
    return {"training": name, "evaluation": name}


def snapshot_echo(run: Run, name: str) -> Callable[[str], None]:
    """A training echo that also keeps a copy of the just-saved weights after every epoch (in ``run.snapshots``)."""
    say = run.log.echo(name)

    def echo(message: str) -> None:
        say(message)
        line = EPOCH_LINE.match(message)
        if line:
            run.snapshots.mkdir(exist_ok=True)
            with atomic_file(run.snapshots / f"epoch-{int(line[1]):04d}.safetensors") as tmp:
                shutil.copyfile(run.model(name), tmp)

    return echo


def kse_curve(snapshots: Path) -> list[dict]:
    """KSE's flagged fractions of each kept epoch's weights, with the patches the network had seen by then."""
    curve = []
    for path in sorted(snapshots.glob("epoch-*.safetensors")):
        record = load_model(path)
        fractions = rp.flagged_fractions(record.model, DROP_PHIS)
        curve.append({"epoch": record.provenance["epochs"], "patches_seen": record.provenance["patches_seen"],
                      "flagged_pct": {phi: 100 * f for phi, f in fractions.items()}})  # fmt: skip
    return curve


def fit(run: Run, key: str, folder: Path, start: Callable[[bool, bool], dict]) -> dict:
    """The record of training run ``key`` in ``folder``: trained, continued from its last complete epoch
    (resuming), or recorded by an earlier attempt.

    ``start(resume, overwrite)`` runs the library's train or finetune and
    returns the record; a folder without a training state (a run killed
    before its first epoch) is started again.
    """
    resume = run.resume and (folder / STATE).is_file()
    if not resume and key == "v1-net" and run.snapshots.exists():
        shutil.rmtree(run.snapshots)  # an earlier run's epochs are not this run's
    overwrite = run.overwrite or run.resume
    return run.once(key, lambda: start(resume, overwrite), **({"continued": True} if resume else {}))


def train_networks(run: Run) -> None:
    """v1-net and v2-net from scratch, then per seed FT-net, TGD-net, EWC-net from v1-net and TGD²-net from TGD-net."""
    s = run.scale
    (run.out / "runs").mkdir(exist_ok=True)
    for name, protocol in (("v1-net", "v1"), ("v2-net", "v2")):
        cfg = TrainConfig(preset=s.preset, channel_penalty=s.channel_penalty, **loop_settings(run, s.n_train, run.seed))
        data, folder = run.data / "main" / protocol, run.model(name).parent
        echo = snapshot_echo(run, name) if name == "v1-net" else run.log.echo(name)
        command = run.commands[name] = cli("train", data, out=folder, **loop_options(cfg))

        def start(resume: bool, overwrite: bool) -> dict:
            result = train(data, folder, cfg, resume=resume, overwrite=overwrite, progress_bar=False, echo=echo,
                           command=command)  # fmt: skip
            return fit_record(result, cfg, data=f"main/{protocol}", studies=s.n_train, command=command)

        run.training[run.add(name)] = fit(run, name, folder, start)

    finetunes = (
        ("FT-net", "v1-net", "finetune", s.n_finetune, {"method": "last3"}),
        ("TGD-net", "v1-net", "finetune", s.n_finetune, {"method": "tgd", "phi": PHI_FINETUNE}),
        ("EWC-net", "v1-net", "finetune", s.n_finetune, {"method": "ewc"}),
        ("TGD2-net", "TGD-net", "third", s.n_third, {"method": "tgd", "phi": PHI_FINETUNE}),
        ("TGD-paper-net", "v1-net", "finetune", s.n_finetune, {"method": "tgd", "phi": PHI_FINETUNE, **PAPER_LITERAL}),
        ("TGD-revive-net", "v1-net", "finetune", s.n_finetune, {"method": "tgd", "phi": PHI_FINETUNE, **REVIVE}),
        ("TGD2-revive-net", "TGD-revive-net", "third", s.n_third, {"method": "tgd", "phi": PHI_FINETUNE, **REVIVE}),
    )
    for seed in run.seeds:
        for name, base, dataset, n, method in finetunes:
            if not s.trains(name, seed, run.seeds):
                continue
            base_seed = seed if base in FINETUNED else None
            cfg = FinetuneConfig(**method, **loop_settings(run, n, seed))
            data, folder, key = run.data / dataset / "v2", run.model(name, seed).parent, instance_key(name, seed)
            base_file = run.model(base, base_seed)
            command = run.commands[key] = cli("tgd-finetune", base_file, data, out=folder, **loop_options(cfg))

            def start(resume: bool, overwrite: bool) -> dict:
                result = finetune(base_file, data, folder, cfg, resume=resume, overwrite=overwrite,
                                  progress_bar=False, echo=run.log.echo(key), command=command)  # fmt: skip
                return fit_record(result, cfg, data=f"{dataset}/v2", studies=n, base=instance_key(base, base_seed),
                                  command=command)  # fmt: skip

            run.training[run.add(name, seed)] = fit(run, key, folder, start)


# --------------------------------------------------------------------------- 3. online learning


def online_learning(run: Run, ood: StudyEntry) -> None:
    """Per seed, TGD-N2N (from v2-net), TGD²-N2N (from that seed's TGD-net) and the paper-literal TGD-N2N (from
    v2-net): Noise2Noise on the OOD halves."""
    s = run.scale
    (run.out / "n2n").mkdir(exist_ok=True)
    for seed in run.seeds:
        for name, base, base_seed, how in (
            ("TGD-N2N", "v2-net", None, {}),
            ("TGD2-N2N", "TGD-net", seed, {}),
            ("TGD-paper-N2N", "v2-net", None, PAPER_LITERAL),
            ("TGD-revive-N2N", "v2-net", None, REVIVE),
        ):
            if not s.trains(name, seed, run.seeds):
                continue
            cfg = N2NConfig(
                phi=PHI_N2N, epochs=s.n2n_epochs, patches_per_epoch=epoch_patches(2 * s.slices, s.batch_size),
                batch_size=s.batch_size, patch_size=s.patch_size, seed=seed, device=run.device_arg,
                amp=training_amp(run.device), **how,
            )  # fmt: skip
            key, model, base_file = instance_key(name, seed), run.model(name, seed), run.model(base, base_seed)
            denoised = model.with_name(f"{model.stem}_denoised.nii.gz")
            command = run.commands[key] = cli("n2n-online", base_file, *ood.halves, out=denoised, save_model=model,
                                              **loop_options(cfg))  # fmt: skip
            run.training[run.add(name, seed)] = run.once(key, lambda: fit_record(n2n_online(
                base_file, ood.halves[0], ood.halves[1], denoised, cfg, save_model_path=model,
                overwrite=run.overwrite or run.resume, progress_bar=False, command=command,
            ).fit, cfg, data=f"main/v2 {ood.id} halves", studies=1, base=instance_key(base, base_seed),
                command=command))  # fmt: skip


# --------------------------------------------------------------------------- 4. BatchNorm after TGD


def bn_batches(run: Run, model: ModelRecord, studies: list, seed: int) -> list[torch.Tensor]:
    """The first :data:`BN_PATCHES` patches (inputs only) of TGD-net's first fine-tuning epoch, in batches."""
    cfg = FinetuneConfig(method="tgd", phi=PHI_FINETUNE, **loop_settings(run, run.scale.n_finetune, seed))
    patches = patch_dataset(studies, model.model, cfg, DistEnv())
    patches.set_epoch(0)
    n = min(BN_PATCHES, len(patches))
    inputs = [patches[i][0] for i in range(n)]
    return [torch.stack(inputs[i : i + cfg.batch_size]) for i in range(0, n, cfg.batch_size)]


def bn_study(run: Run) -> dict:
    """BN mismatch of frozen vs retrained channels of every TGD-net (and of v1-net), and TGD-net (BN re-est.).

    Saves each re-estimated network beside TGD-net's run and registers it as
    an instance of :data:`BN_REESTIMATED`, so that it is evaluated like the others.
    """
    studies = load_studies(load_manifest(run.data / "finetune" / "v2"), "train")
    v1 = load_model(run.model("v1-net"), run.device)
    mismatch, n = {}, 0
    for seed in run.seeds:
        tgd = load_model(run.model("TGD-net", seed), run.device)
        batches = bn_batches(run, tgd, studies, seed)
        n = sum(len(b) for b in batches)
        if seed == run.seeds[0]:
            mismatch["v1-net"] = rp.bn_mismatch(v1.model, None, rp.bn_input_statistics(v1.model, batches))
        stats = rp.bn_input_statistics(tgd.model, batches)
        mismatch[rp.instance_label(instance_key("TGD-net", seed), run.instances)] = rp.bn_mismatch(
            tgd.model, tgd.masks, stats
        )
        dest = run.model(BN_REESTIMATED, seed)
        dest.parent.mkdir(parents=True, exist_ok=True)
        save_model(dest, rp.reestimate_frozen_bn(tgd.model, tgd.masks, stats), preset=tgd.preset, masks=tgd.masks,
                   masks_history=tgd.masks_history, normalization=tgd.normalization,
                   provenance={**tgd.provenance, "bn_reestimated": f"frozen channels' running statistics from {n} "
                               "fine-tuning patches"})  # fmt: skip
        run.add(BN_REESTIMATED, seed)
    return {"patches": n, "mismatch": mismatch}


# --------------------------------------------------------------------------- 5. kernel drop (Fig. 4)


def kernel_drop(
    model_path: Path, volume: np.ndarray, z: int, device: torch.device
) -> tuple[np.ndarray, list[rp.DropPoint]]:
    """v1-net's output on ``volume`` and, per threshold, its output with the meaningless kernels dropped.

    Returns v1-net's denoised slice ``z`` and one point per phi: fraction of
    parameters dropped, relative RMS change of the whole denoised volume, and slice ``z``.
    """
    model = load_model(model_path, device).model
    reference = denoise_array(model, volume, device=device, precision="fp32")
    points = []
    for phi in DROP_PHIS:
        dropped, fraction = drop_kernels(model, phi)
        out = denoise_array(dropped, volume, device=device, precision="fp32")
        points.append(rp.DropPoint(phi, fraction, relative_rms_change(reference, out), out[z]))
    return reference[z], points


def crop_margin(scale: Scale) -> int:
    """Pixels of context the figures keep around the structure they show (32 mm at 4 mm voxels)."""
    return max(2, scale.size // 16)


def fig4_rows(image: np.ndarray, v1: np.ndarray, points: list[rp.DropPoint], margin: int) -> list[rp.PanelRow]:
    """Fig. 4: input and v1-net's output, each threshold's output, and each one's difference to v1-net."""
    box = rp.crop_box(image > 0.05 * image.max(), margin)
    outputs = [("input 60 s (v1)", image[box]), ("v1-net (phi = 0)", v1[box])]
    outputs += [(f"phi {p.phi:.1f}: {100 * p.fraction_dropped:.1f} % dropped", p.image[box]) for p in points]
    changes = [(f"phi {p.phi:.1f}: change {100 * p.output_change:.2f} %", (p.image - v1)[box]) for p in points]
    return [
        rp.PanelRow("denoised", outputs, *rp.display_range(v1[box])),
        rp.PanelRow("minus v1-net", [None, None, *changes], *rp.difference_range([d for _, d in changes]),
                    cmap="RdBu_r"),
    ]  # fmt: skip


# --------------------------------------------------------------------------- 6. evaluation


def evaluate_all(run: Run, manifest: Manifest, studies: dict[str, list[StudyEntry]]) -> dict[str, list[dict]]:
    """Every network instance on every test study (v2 images), in the device's reduced precision
    (:func:`precisions`): lesion bias, liver CoV, hallucination score."""
    models = {key: Path(inst["path"]) for key, inst in run.instances.items()}
    precision = precisions(run.device)["evaluation"]
    results: dict[str, list[dict]] = {}
    for key, entries in studies.items():
        results[key] = []
        for study in entries:
            step = f"evaluate {key} ({study.id})"
            earlier = run.done.pop(step, None)  # a resumed run scores only the networks added since
            todo = {k: p for k, p in models.items() if earlier is None or k not in earlier["rows"]}
            result = run.once(step, lambda: evaluate_models(
                todo, study, label_codes=manifest.label_codes, truth=truth_path(manifest, study),
                device=run.device, precision=precision,
            ) if todo else earlier)  # fmt: skip
            if earlier is not None and result is not earlier:
                result["rows"] = {**earlier["rows"], **result["rows"]}
                run.save_progress()
            results[key].append(result)
            run.commands[f"evaluate {key} {study.id}"] = cli(
                "evaluate", manifest.path.parent, *[f"--model={n}={p}" for n, p in models.items()], study=study.id,
                device=run.device_arg, precision=precision,
            )  # fmt: skip
    return results


# --------------------------------------------------------------------------- 7. figures 5 and 6


def regions(study: StudyEntry, codes: dict) -> dict[str, np.ndarray]:
    """The study's label map split into the masks the figures use."""
    labels = np.rint(read_volume(study.labels).data).astype(np.int64)
    return {name: labels == int(codes[name]) for name in ("liver", "lesion", "bladder", "catheter") if name in codes}


def lesion_row(label: str, study: StudyEntry, codes: dict, denoisers: dict, margin: int) -> rp.PanelRow:
    """Fig. 5 row: the first 60 s realisation and every model's output, through the lesion, cropped to the liver."""
    masks = regions(study, codes)
    lesion = masks["lesion"] if masks["lesion"].any() else masks["liver"]
    z = rp.busiest_slice(lesion)
    box = rp.crop_box(masks["liver"][z] | lesion[z], margin)
    image = read_volume(study.realisations[0]).data
    reference = read_volume(study.target).data[z][box]
    panels = [("input 60 s", image[z][box])]
    panels += [(rp.LABELS[name], denoiser(image)[z][box]) for name, denoiser in denoisers.items()]
    panels.append(("reference 600 s", reference))
    return rp.PanelRow(label, panels, *rp.display_range(reference), marker=rp.centroid(lesion[z][box]))


def ood_rows(study: StudyEntry, codes: dict, denoisers: dict, margin: int) -> list[rp.PanelRow]:
    """Fig. 6: the OOD study's 120 s image (mean of the halves) and its denoised versions, and their errors."""
    masks = regions(study, codes)
    structure = masks["bladder"] | masks["catheter"]
    z = rp.busiest_slice(masks["bladder"].astype(int) + 10 * masks["catheter"] if structure.any() else masks["liver"])
    box = rp.crop_box(structure[z] if structure[z].any() else masks["liver"][z], margin)
    h1, h2 = (read_volume(p).data for p in study.halves)
    image = (h1 + h2) / np.float32(2)
    reference = read_volume(study.target).data[z][box]
    outputs = [("input 120 s", image[z][box])]
    outputs += [(rp.LABELS[name], denoiser(image)[z][box]) for name, denoiser in denoisers.items()]
    differences = [(name, img - reference) for name, img in outputs]
    return [
        rp.PanelRow("images", outputs + [("reference 600 s", reference)], *rp.display_range(reference)),
        rp.PanelRow("minus reference", differences, *rp.difference_range([d for _, d in differences]), cmap="RdBu_r"),
    ]


def write_figures(run: Run, fig4: list[rp.PanelRow], studies: dict[str, StudyEntry], codes: dict) -> None:
    """Fig. 4 (its rows made by the kernel-drop step), Fig. 5 (fine-tuned networks on the first low- and
    high-BMI test studies) and Fig. 6 (online learning on the OOD study); fine-tuned networks of the first seed."""
    rp.save_panels(run.out / "fig4.png", fig4, "Fig. 4: v1-net with its meaningless kernels (KSE < phi) dropped")
    margin = crop_margin(run.scale)
    first = run.seeds[0]
    fp32 = {
        name: load_denoiser(run.model(name, None if name in ("v1-net", "v2-net") else first), device=run.device,
                            precision="fp32")
        for name in MODELS if name != BN_REESTIMATED
    }  # fmt: skip
    fig5 = {name: fp32[name] for name in ("v1-net", "v2-net", *FINETUNED)}
    rp.save_panels(run.out / "fig5.png", [
        lesion_row("low BMI", studies["low_bmi"], codes, fig5, margin),
        lesion_row("high BMI", studies["high_bmi"], codes, fig5, margin),
    ], "Fig. 5: v2 test studies through the liver tumour (same grey scale per row)")  # fmt: skip
    fig6 = {name: fp32[name] for name in ("v2-net", "TGD-net", "TGD-N2N", "TGD2-N2N")}
    rp.save_panels(run.out / "fig6.png", ood_rows(studies["ood"], codes, fig6, margin),
                   "Fig. 6: out-of-distribution study (hot bladder, catheter), 120 s")  # fmt: skip


# --------------------------------------------------------------------------- the run


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


def derived(results: dict) -> dict:
    """What results.json holds that follows from its measured numbers: Table 1, the verdicts, the answers.

    Recomputed by ``--report-only``, so the markdown always follows the numbers.
    """
    evaluation, instances, training = results["evaluation"], results["instances"], results["training"]
    rows = rp.table1_rows(evaluation, instances, training, MODELS)
    items = rp.verdicts(evaluation, instances)
    first = {}
    for key, inst in instances.items():
        if key in training:
            first.setdefault(inst["model"], training[key])
    bn = dict(results.get("bn", {}))
    if bn:
        bn["verdicts"] = [{"task": task, **rp.compare(evaluation, instances, BN_REESTIMATED, "TGD-net", study, figure,
                                                      how)}
                          for task, figures in rp.VERDICT_FIGURES.items() for study, figure, how in figures]  # fmt: skip
    s = results["scale"]
    return {
        "table1": rows,
        "table1_markdown": rp.table1_markdown(rows),
        "verdicts": items,
        "task_verdicts": {f"{a} vs {b}, {task}": rp.task_verdict(items, a, b, task)
                          for a, b in rp.VERDICT_PAIRS for task in rp.TASKS},  # fmt: skip
        "bn": bn,
        "answers": rp.answers(rows, first, items, s["n_train"], s["n_finetune"]),
    }


def write_report(results: dict, out: Path, docs: Path | None) -> None:
    """table1.md, fig4.md, results.json and README.md in ``out`` (and the report at ``docs``), from ``results``."""
    drop = [rp.DropPoint(p["phi"], p["fraction_dropped"], p["output_change"], np.zeros(0)) for p in results["kernel_drop"]]
    rp.write_text(out / "table1.md", "# Table 1 (simulated data)\n\n" + results["table1_markdown"])
    rp.write_text(out / "fig4.md", rp.fig4_markdown(drop, "fig4.png"))
    rp.write_text(out / "results.json", json.dumps(results, indent=2, allow_nan=False) + "\n")
    rp.write_text(out / "README.md", rp.report_markdown(results, ""))
    if docs is not None:
        rp.write_text(docs, rp.report_markdown(results, os.path.relpath(out, docs.parent)))


def reproduce(args: argparse.Namespace) -> dict:
    """The whole reproduction (module docstring); returns what results.json holds."""
    if args.resume and args.overwrite:
        raise TgdpetError("--resume continues the run in --out and --overwrite replaces it; pass one of them.")
    docs = check_can_write(args.docs, args.overwrite or args.resume) if args.docs else None  # before the long run
    out = Path(args.out)
    prepare_out(out, args.overwrite, args.resume)
    scale = SCALES[args.scale]
    progress = read_progress(out, scale, args.seed) if args.resume else {}
    run = Run(scale, out, args.seed, args.device, resolve_device(args.device), args.overwrite, args.resume)
    run.done, run.log.steps = progress.get("done", {}), progress.get("steps", {})
    # The code each attempt starts from; a long run's checkout may move on before it ends.
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    run.attempts = [*progress.get("attempts", []), {"git": git_state(), "started": started}]
    if not run.resume:
        run.save_progress()  # so that a run killed in its first step can be resumed; a resume is saved by its steps
    run.log(f"{'resuming' if run.resume else 'reproducing'} the TGD paper at scale {run.scale.name} "
            f"({run.scale.summary}) on {run.device}, seed {run.seed}, into {out}")  # fmt: skip

    configs = simulate(run)
    main_v1, main_v2 = load_manifest(run.data / "main" / "v1"), load_manifest(run.data / "main" / "v2")
    studies = {
        "low_bmi": find_test_studies(main_v2, "low", "tumour"),
        "high_bmi": find_test_studies(main_v2, "high", "tumour"),
        "ood": find_test_studies(main_v2, "normal", "catheter")[:1],
    }
    train_networks(run)
    online_learning(run, studies["ood"][0])
    bn = run.log.timed("BatchNorm statistics after TGD", lambda: bn_study(run))

    low_v1 = next(s for s in main_v1.studies if s.id == studies["low_bmi"][0].id)  # held out, v1, 60 s
    image = read_volume(low_v1.realisations[0]).data
    z = rp.busiest_slice(regions(low_v1, main_v1.label_codes)["liver"])
    v1_slice, drop = run.log.timed("kernel-drop study", lambda: kernel_drop(run.model("v1-net"), image, z, run.device))
    run.commands["kernel drop (Fig. 4)"] = cli("score-kse", run.model("v1-net"), drop=True,
                                               phis=",".join(map(str, DROP_PHIS)), volume=low_v1.realisations[0])

    evaluation = evaluate_all(run, main_v2, studies)
    curve = run.log.timed("KSE of v1-net after each epoch", lambda: kse_curve(run.snapshots))
    fig4 = fig4_rows(image[z], v1_slice, drop, crop_margin(run.scale))
    first = {key: entries[0] for key, entries in studies.items()}
    run.log.timed("figures", lambda: write_figures(run, fig4, first, main_v2.label_codes))

    results = {
        "format": "tgdpet-reproduction",
        "format_version": FORMAT_VERSION,
        "git": run.attempts[0]["git"],
        "attempts": run.attempts,
        "scale": asdict(run.scale),
        "seed": run.seed,
        "finetune_seeds": run.seeds,
        "out": str(out),
        "device_arg": run.device_arg,
        "versions": versions(run.device),
        "precision": precisions(run.device),
        "datasets": {name: {"seed": c.seed, "summary": describe(c), "studies": [asdict(s) for s in c.studies]}
                     for name, c in configs.items()},  # fmt: skip
        "test_studies": {key: [study.id for study in entries] for key, entries in studies.items()},
        "instances": run.instances,
        "training": {name: {"model": run.instances[name]["path"], **record} for name, record in run.training.items()},
        "kse_curve": curve,
        "kernel_drop": [{"phi": p.phi, "fraction_dropped": p.fraction_dropped, "output_change": p.output_change,
                         "paper_dropped_pct": rp.PAPER_DROPPED_PCT[p.phi]} for p in drop],  # fmt: skip
        "bn": bn,
        "evaluation": evaluation,
        "paper": {"table1_low_bmi": rp.PAPER_TABLE1, "time_saved_pct": rp.PAPER_TIME_SAVED_PCT,
                  "dropped_pct": rp.PAPER_DROPPED_PCT},  # fmt: skip
        "commands": run.commands,
        "steps": run.log.steps,
        "total_s": round(sum(a.get("wall_s", 0) for a in run.attempts[:-1]) + time.perf_counter() - run.log.start, 1),
    }
    results.update(derived(results))
    write_report(results, out, docs)
    run.log(f"done in {results['total_s']:.0f} s: {out / 'README.md'}")
    return results


def report_only(args: argparse.Namespace) -> dict:
    """Rebuild Table 1, the verdicts, the answers and the markdown from ``--out``'s results.json (no training)."""
    out = Path(args.out)
    path = out / "results.json"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TgdpetError(f"{path} does not exist; run the reproduction into {out} first.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TgdpetError(f"{path} is not a readable results file ({e}); run the reproduction again.") from None
    if results.get("format") != "tgdpet-reproduction" or results.get("format_version") != FORMAT_VERSION:
        raise TgdpetError(
            f"{path} is not a results file of this script's format (tgdpet-reproduction version {FORMAT_VERSION}); "
            "run the reproduction again to get one."
        )
    docs = Path(args.docs) if args.docs else None
    results.update(derived(results))
    write_report(results, out, docs)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=SCALES, default="small",
                        help="small: 2 CPU cores, under an hour, one seed; medium: 2 CPU cores, about 2 h with bf16 "
                             "units (4 h in fp32), 3 seeds x 3 test studies for error bars; paper: a GPU; tiny: a "
                             "few-minute pipeline check")
    parser.add_argument("--out", default="results", help="folder for data, models, tables, figures [default: results]")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N [default: auto]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the weights and the patches")
    parser.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run in --out (same --scale and --seed): finished steps are "
                             "kept, training continues from its last complete epoch")
    parser.add_argument("--docs", help="also write the report here, e.g. docs/reproduction/README.md")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild table1.md, fig4.md, README.md (and --docs) from --out's results.json")
    return parser.parse_args(argv)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report_only(args) if args.report_only else reproduce(args)
    except TgdpetError as e:
        print(f"Error: {e}", file=sys.stderr)
        return TgdpetError.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
