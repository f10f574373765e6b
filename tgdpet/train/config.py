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
import os
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import yaml

from ..configs import find_config
from ..errors import TgdpetError
from ..kse import check_phi
from ..models import PRESETS

METHODS = ("tgd", "all", "last3", "ewc")
CONV1_OPTIONS = ("retrain", "freeze")
TGD_MODES = ("parameter", "activation")
BN_STATS_OPTIONS = ("stored", "batch")
READ_KERNELS_OPTIONS = ("retrain", "freeze")
LR_SCHEDULES = ("constant", "cosine")

# Settings a resumed run may change: how long to train and where, not what is trained.
RESUME_MUTABLE = frozenset({"epochs", "iterations", "device", "workers"})


def _positive(cfg: Any, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and value <= 0:
            raise TgdpetError(f"{name.replace('_', '-')} must be positive, got {value}.")


@dataclass
class LoopConfig:
    """Settings of the training loop shared by ``train``, ``tgd-finetune`` and ``n2n-online``."""

    epochs: int = 20
    iterations: int | None = None  # total optimiser steps; overrides epochs when set
    patches_per_epoch: int = 4096
    batch_size: int = 64
    patch_size: int = 32
    lr: float = 1e-3
    lr_schedule: str = "constant"  # constant (the paper) or cosine; see loop.learning_rate
    seed: int = 0
    flips: bool = True
    structure_fraction: float = 0.5  # share of patch centres drawn where the target has detail (lesions, edges)
    detail_weight: float = 0.0  # extra loss weight where the target has detail; see loop.training_loss
    noise_relative_loss: bool = False  # each patch's error divided by its input's noise; see loop.noise_power
    bn_batches: int = 16  # batches that re-estimate BatchNorm statistics each epoch; 0 = running averages; see loop
    device: str = "auto"
    amp: bool | None = None  # None: on where it pays (CUDA; wide nets on CPUs with bf16 units), see loop.amp_dtype
    channels_last: bool = True
    workers: int | None = None  # DataLoader workers; None: 0 on CPU, 4 on CUDA
    val_max_slices: int = 32  # slices per validation volume, evenly spaced; 0 = every slice

    def __post_init__(self) -> None:
        _positive(self, "epochs", "iterations", "patches_per_epoch", "batch_size", "patch_size", "lr")
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

    preset: str = "small"
    in_slices: int = 3  # adjacent axial slices the network sees (2.5D); more slices, more 3D context
    channel_penalty: float = 0.0  # group-lasso weight that leaves spare channels for TGD; see methods.channel_penalty

    def __post_init__(self) -> None:
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

    epochs: int = 10
    method: str = "tgd"
    phi: float = 0.3
    conv1: str = "freeze"  # see tgd.build_masks
    tgd_mode: str = "parameter"  # see tgd.attach; docs/tgd.md has the measured comparison
    bn_stats: str = "stored"  # frozen channels' BatchNorm statistics while training; see tgd.attach
    read_kernels: str | None = None  # None: retrain in parameter mode, freeze in activation; tgd.trainable_entries
    revive: bool = False  # re-initialise retrained channels whose maps are silent on the new data; tgd.revive
    ewc_lambda: float = 1.0
    ewc_patches: int = 1024  # patches of the new data the EWC Fisher is estimated on

    def __post_init__(self) -> None:
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

    epochs: int = 10
    patches_per_epoch: int = 1024
    phi: float = 0.4


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


def resolve_config(cls: type[C], path: str | os.PathLike | None = None, **overrides: Any) -> C:
    """Defaults of ``cls``, updated by the YAML file at ``path``, then by the non-None ``overrides``."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    values: dict[str, Any] = {}
    if path is not None:
        raw = read_yaml(path)
        unknown = sorted(set(raw) - set(names))
        if unknown:
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
