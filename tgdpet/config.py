"""Training settings: one dataclass per workflow, filled from defaults < YAML file < command line.

A run folder's ``config.yaml`` is the resolved config of that run; passing it
back with ``--config`` repeats the run. The shipped setups live in
``tgdpet/configs/*.yaml`` and are named without a path: ``small`` and
``paper`` (train), ``tgd-finetune``, ``n2n-online`` (see :mod:`tgdpet.configs`).

An *epoch* is ``patches_per_epoch`` random patches (patches are drawn at
random, so there is no natural pass over the data); a *step* is one optimiser
update on ``batch_size`` patches. Both are global: under DDP the patches of a
step are split over the ranks, so a config means the same number of patches
and updates on 1 or N GPUs. BatchNorm is not synchronised: each rank normalises
its own ``batch_size / N`` patches, as plain DistributedDataParallel does, so
batch statistics get noisier as GPUs are added (keep ``batch_size / N`` >= 16).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import yaml

from .configs import find_config
from .errors import TgdpetError

METHODS = ("tgd", "all", "last3", "ewc")
CONV1_OPTIONS = ("retrain", "freeze")
TGD_MODES = ("parameter", "activation")
BN_STATS_OPTIONS = ("stored", "batch")
READ_KERNELS_OPTIONS = ("retrain", "freeze")
LR_SCHEDULES = ("constant", "cosine")

# Settings a resumed run may change: how long to train and where, not what is trained.
RESUME_MUTABLE = frozenset({"epochs", "iterations", "device", "workers", "val_every"})


def setting(default: Any, help: str, *, choices: tuple[str, ...] | None = None, flag: str | None = None,
            shown: str | None = None) -> Any:
    """A config field that the command line offers as an option, its help text written here once.

    ``flag`` names a switch (``--amp/--no-amp``); ``shown`` replaces the default in the help where the default
    is a rule rather than a value (``None``: decided per device). See :func:`tgdpet.cli.config_options`.
    """
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "flag": flag,
                                                        "shown": shown})  # fmt: skip


def redefault(cls: type, name: str, default: Any) -> Any:
    """Field ``name`` of ``cls`` with another default (its help kept), for a command whose default differs."""
    metadata = next(f for f in dataclasses.fields(cls) if f.name == name).metadata
    return dataclasses.field(default=default, metadata=metadata)


def _finite(cfg: Any) -> None:
    """Refuse NaN and infinite float settings: every range check below passes NaN, and an infinite or NaN
    weight would only surface epochs later as a divergence blamed on --lr."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise TgdpetError(
                f"{f.name.replace('_', '-')} must be a finite number, got {value}; pass a number such as its "
                f"default, {f.default}."
            )


def _positive(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise TgdpetError(f"{name.replace('_', '-')} must be positive, got {value}.")


@dataclass
class LoopConfig:
    """Settings of the training loop shared by ``train``, ``tgd-finetune`` and ``n2n-online``."""

    epochs: int = setting(20, "Epochs of --patches-per-epoch patches")
    iterations: int | None = setting(
        None, "Optimiser steps in total (overrides --epochs)", shown="none, --epochs decides"
    )
    patches_per_epoch: int = setting(4096, "Random patches per epoch")
    batch_size: int = setting(64, "Patches per step (all processes together)")
    patch_size: int = setting(32, "Patch height and width in pixels")
    lr: float = setting(1e-3, "Adam learning rate")
    lr_schedule: str = setting(
        "constant", "Constant learning rate (the paper), or cosine decay to 0 over the run",
        choices=LR_SCHEDULES,
    )  # fmt: skip
    seed: int = setting(0, "Seed of weights and patch sampling")
    flips: bool = True
    structure_fraction: float = setting(0.5, "Share of patches centred where the target has detail (lesions, edges)")
    detail_weight: float = setting(
        0.0, "Extra loss weight per unit of the target's local detail, which keeps lesions' uptake",
        shown="0, plain MSE",
    )  # fmt: skip
    noise_relative_loss: bool = setting(
        False, "Divide each patch's squared error by its input's own noise power, so clean and noisy inputs count "
        "by the share of their noise left", flag="--noise-relative-loss/--absolute-loss",
        shown="absolute",
    )  # fmt: skip
    bn_batches: int = setting(
        16, "Batches of training patches over which BatchNorm statistics are re-estimated at the end of every "
        "epoch, at that epoch's final weights (0: PyTorch's running averages)",
    )  # fmt: skip
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    amp: bool | None = setting(
        None, "Mixed precision (bf16/fp16)", flag="--amp/--no-amp",
        shown="on for CUDA, and on CPUs with bf16 units for wide networks such as the paper preset",
    )  # fmt: skip
    channels_last: bool = True
    workers: int | None = setting(None, "DataLoader worker processes", shown="0 on CPU, 4 on CUDA")
    val_every: int = setting(
        1, "Validate every N epochs and after the last (best.safetensors is the best validated epoch); on a "
        "large validation set validation can cost more than the training steps",
    )  # fmt: skip
    val_max_slices: int = 32  # slices per validation volume, evenly spaced; 0 = every slice

    def __post_init__(self) -> None:
        _finite(self)
        _positive(self, "epochs", "iterations", "patches_per_epoch", "batch_size", "patch_size", "lr", "val_every")
        if self.patches_per_epoch < self.batch_size:
            raise TgdpetError(
                f"patches-per-epoch ({self.patches_per_epoch}) is smaller than one batch ({self.batch_size}); "
                "raise it or lower --batch-size."
            )
        if self.lr_schedule not in LR_SCHEDULES:
            raise TgdpetError(f"unknown lr-schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}.")
        if self.seed < 0:
            raise TgdpetError(f"seed must be 0 or positive, got {self.seed}.")
        if self.workers is not None and self.workers < 0:
            raise TgdpetError(f"workers must be 0 or positive, got {self.workers}.")
        if not 0.0 <= self.structure_fraction <= 1.0:
            raise TgdpetError(f"structure-fraction must lie in [0, 1], got {self.structure_fraction}.")
        if self.detail_weight < 0:
            raise TgdpetError(f"detail-weight must be 0 or positive, got {self.detail_weight}.")
        if self.bn_batches < 0:
            raise TgdpetError(f"bn-batches must be 0 (keep the running averages) or positive, got {self.bn_batches}.")
        if self.val_max_slices < 0:
            raise TgdpetError(f"val_max_slices must be 0 (every slice) or positive, got {self.val_max_slices}.")

    @property
    def steps_per_epoch(self) -> int:
        return self.patches_per_epoch // self.batch_size

    @property
    def total_steps(self) -> int:
        return self.iterations if self.iterations is not None else self.epochs * self.steps_per_epoch

    @property
    def total_epochs(self) -> int:
        return -(-self.total_steps // self.steps_per_epoch)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TrainConfig(LoopConfig):
    """``tgdpet train``: a DnCNN from scratch."""

    preset: str = setting("small", "Network preset: paper, uniform64, deep64, small or tiny")
    in_slices: int = setting(
        3, "Adjacent axial slices the network sees, an odd number; more give it more 3D context"
    )
    channel_penalty: float = setting(
        0.0, "Group-lasso weight on each feature map's parameters, which leaves channels the task does not need "
        "empty for TGD to retrain later (docs/tgd.md; 0: no penalty)",
    )  # fmt: skip

    def __post_init__(self) -> None:
        from .models import PRESETS  # torch: loaded when a config is made, not when the CLI starts

        super().__post_init__()
        if self.channel_penalty < 0:
            raise TgdpetError(f"channel-penalty must be 0 or positive, got {self.channel_penalty}.")
        if self.preset not in PRESETS:
            raise TgdpetError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESETS)}.")
        if self.in_slices < 1 or self.in_slices % 2 == 0:
            raise TgdpetError(f"in-slices must be a positive odd number (3, 5, 7), got {self.in_slices}.")


@dataclass
class FinetuneConfig(LoopConfig):
    """``tgdpet tgd-finetune``: adapt a trained model to new data by TGD or a baseline."""

    epochs: int = redefault(LoopConfig, "epochs", 10)
    phi: float = setting(0.3, "KSE threshold: kernels whose maps score below it are retrained")
    method: str = setting(
        "tgd", "tgd, or a baseline: all layers, the last three conv blocks, EWC", choices=METHODS
    )
    conv1: str = setting(
        "freeze", "Freeze conv1 (no BatchNorm there, where KSE misranks channels), or retrain its meaningless "
        "kernels like every other layer's", choices=CONV1_OPTIONS,
    )  # fmt: skip
    tgd_mode: str = setting(
        "parameter", "Mask only parameter gradients, so retrained kernels get the true gradient, or also "
        "activation gradients (the paper's literal TGD layer; docs/tgd.md)", choices=TGD_MODES,
    )  # fmt: skip
    bn_stats: str = setting(
        "stored", "Normalise frozen channels with their stored BatchNorm statistics while training, as at test "
        "time, or with the batch's (the paper's)", choices=BN_STATS_OPTIONS,
    )  # fmt: skip
    read_kernels: str | None = setting(
        None, "Also retrain the kernels of frozen channels (and of the last layer) that read a retrained map, or "
        "freeze every kernel of a frozen channel (the paper's masks; needed with --tgd-mode activation)",
        choices=READ_KERNELS_OPTIONS, shown="retrain with --tgd-mode parameter, freeze with activation",
    )  # fmt: skip
    revive: bool = setting(
        True, "Re-initialise the retrained channels whose maps are exactly zero on the new data (they cannot "
        "learn otherwise; the output is unchanged at the start; docs/tgd.md has the measurement)",
        flag="--revive/--no-revive",
    )  # fmt: skip
    ewc_lambda: float = setting(1.0, "EWC penalty weight (Fisher scaled to mean 1)")
    ewc_patches: int = 1024  # patches of the new data the EWC Fisher is estimated on

    def __post_init__(self) -> None:
        from .kse import check_phi

        super().__post_init__()
        for name, value, choices in (
            ("method", self.method, METHODS),
            ("conv1", self.conv1, CONV1_OPTIONS),
            ("tgd-mode", self.tgd_mode, TGD_MODES),
            ("bn-stats", self.bn_stats, BN_STATS_OPTIONS),
            ("read-kernels", self.read_kernels or "retrain", READ_KERNELS_OPTIONS),
        ):
            if value not in choices:
                raise TgdpetError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}.")
        if self.method == "tgd" and self.tgd_mode == "activation" and self.read_kernels == "retrain":
            raise TgdpetError(
                "--tgd-mode activation stops the gradient of every frozen channel, so the kernels that read a "
                "retrained map cannot be retrained there; add --read-kernels freeze (the paper's masks)."
            )
        check_phi(self.phi)
        if self.ewc_lambda < 0:
            raise TgdpetError(f"ewc-lambda must be 0 or positive, got {self.ewc_lambda}.")
        _positive(self, "ewc_patches")


@dataclass
class N2NConfig(FinetuneConfig):
    """``tgdpet n2n-online``: TGD with Noise2Noise pairs on one study (paper: phi 0.4)."""

    patches_per_epoch: int = redefault(LoopConfig, "patches_per_epoch", 1024)
    phi: float = redefault(FinetuneConfig, "phi", 0.4)
    # Off for online learning: revived channels fitted the halves' noise (liver CoV +52 %, docs/tgd.md).
    revive: bool = redefault(FinetuneConfig, "revive", False)
    val_every: int = 1  # online learning has no validation studies: not a command-line option here
    # Not offered here: both losses read the target as the clean image (its detail; the input's noise as
    # input minus target), and a Noise2Noise target is the other noisy half. See __post_init__.
    detail_weight: float = 0.0
    noise_relative_loss: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.detail_weight != 0.0 or self.noise_relative_loss:
            raise TgdpetError(
                "n2n-online trains with plain MSE: detail_weight and noise_relative_loss read the target as the "
                "clean image, and here the target is the other noisy half (with both, the adapted model raised a "
                "study's liver mean by 12 %); remove them from the config."
            )


def command_settings(cls: type) -> list[dataclasses.Field]:
    """The settings of ``cls`` a command line offers (those with help), in declaration order."""
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


C = TypeVar("C", bound=LoopConfig)


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Convert a YAML or CLI value to the field's type, or say which field is wrong."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in args:
            return None
        raise TgdpetError(f"config key {name!r} cannot be empty.")
    base = next(a for a in args if a is not type(None))
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            raise ValueError
        if base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)  # YAML reads 1e-3 as a string
        return str(value)
    except (TypeError, ValueError):
        raise TgdpetError(f"config key {name!r} must be a {base.__name__}, got {value!r}.") from None


def read_yaml(path: str | os.PathLike) -> dict:
    """A config file's (or shipped config name's) mapping, or a clear error for a missing or malformed file."""
    p = find_config(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(e, "problem", None) or "unreadable"
        raise TgdpetError(
            f"config file {p} is not valid YAML ({problem}{at}); fix it or start from a shipped one "
            "(tgdpet/configs/small.yaml)."
        ) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise TgdpetError(f"config file {p} must hold a mapping of settings (key: value).")
    return raw


def _check_same_command(cls: type, path: str | os.PathLike, raw: dict, unknown: list[str]) -> None:
    """Say which command a config belongs to when it is another command's: a run folder's config.yaml read by
    ``--resume`` of the other command would otherwise be reported as a list of unknown keys."""
    commands = {TrainConfig: "train", FinetuneConfig: "tgd-finetune", N2NConfig: "n2n-online"}
    mine = commands.get(cls, cls.__name__)
    for other, command in commands.items():
        if other is not cls and set(raw) <= {f.name for f in dataclasses.fields(other)}:
            raise TgdpetError(
                f"config file {path} holds the settings of a tgdpet {command} run ({', '.join(unknown)}), not of a "
                f"{mine} run; use it (or --resume its run folder) with tgdpet {command}, or pass a {mine} config or "
                "run folder."
            )


def resolve_config(cls: type[C], path: str | os.PathLike | None = None, **overrides: Any) -> C:
    """Defaults of ``cls``, updated by the YAML file at ``path``, then by the non-None ``overrides``."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml(path)
        unknown = sorted(set(raw) - set(names))
        if unknown:
            _check_same_command(cls, path, raw, unknown)
            raise TgdpetError(
                f"config file {path} has unknown keys {', '.join(unknown)}; known keys: {', '.join(names)}."
            )
        values.update({k: _coerce(k, v, hints[k]) for k, v in raw.items()})
    for k, v in overrides.items():
        if k not in names:
            raise TypeError(f"{cls.__name__} has no setting {k!r}")
        if v is not None:
            values[k] = _coerce(k, v, hints[k])
    return cls(**values)


def check_resumable(stored: dict, cfg: LoopConfig, precision: Callable[[bool | None], object] | None = None) -> None:
    """Refuse to resume with settings that change what is trained (only :data:`RESUME_MUTABLE` may differ).

    A setting the stored config lacks was added by a later tgdpet; it counts as its default, which is what the
    version that started the run did. ``amp`` counts as unchanged when ``precision`` resolves both values to the
    same dtype (``amp=None``, auto, trains a narrow network in fp32 on a CPU, as ``amp=False`` does).
    """
    current = cfg.to_dict()
    defaults = {f.name: f.default for f in dataclasses.fields(cfg) if f.default is not dataclasses.MISSING}

    def same(k: str) -> bool:
        before = stored.get(k, defaults.get(k))
        if k == "amp" and precision is not None:
            return precision(before) == precision(current[k])
        return before == current[k]

    changed = sorted(k for k in current if k not in RESUME_MUTABLE and not same(k))
    if changed:
        detail = ", ".join(f"{k}: {stored.get(k, defaults.get(k))!r} -> {current[k]!r}" for k in changed)
        raise TgdpetError(
            f"cannot resume: the run was started with other settings ({detail}); resume with the same options "
            f"(only {', '.join(sorted(RESUME_MUTABLE))} may change) or start a new run in another --out folder."
        )


def to_yaml(cfg: LoopConfig, header: str = "") -> str:
    """The config as YAML, readable back by :func:`resolve_config`, with ``header`` as a comment."""
    body = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    comment = "".join(f"# {line}\n" for line in header.splitlines()) if header else ""
    return comment + body
