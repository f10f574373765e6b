"""Multi-process training with DistributedDataParallel, started by ``torchrun``.

``torchrun --nproc_per_node N -m tgdpet.cli train ...`` sets ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` for every process; without them training
runs in one process as usual. Each rank uses ``cuda:LOCAL_RANK`` (NCCL) when
the device is CUDA, or the CPU (Gloo). Every rank draws its own patches
(the rank is part of the patch seed), gradients are averaged by DDP, and
rank 0 alone validates, logs and writes files. TGD hooks and masks live on
the inner module, and every rank restores its frozen entries after each
step, so all ranks keep identical weights.

Every rank loads the whole dataset into its own memory, and with
``--resume`` every rank reads the training state from ``--out``: on several
machines, ``--out`` must be on a filesystem they all see.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from ..errors import TgdpetError
from ..runtime import resolve_device

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    """Where this process stands in a (possibly one-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun (even as one process): the process group and DDP are used

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        """A process group joins the ranks: several processes, or one that torchrun started (so that a
        one-GPU torchrun run exercises the same collective calls as a multi-GPU one)."""
        return self.world_size > 1 or self.launched


def env_from_environ() -> DistEnv:
    """Read torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; one process when they are absent."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise TgdpetError(
            "RANK, WORLD_SIZE and LOCAL_RANK must be integers; start multi-GPU runs with torchrun."
        ) from None
    return DistEnv(rank=rank, world_size=max(world, 1), local_rank=local, launched="WORLD_SIZE" in os.environ)


def _rank_device(spec: str, env: DistEnv) -> torch.device:
    """The user's device; under torchrun on CUDA, this rank's own GPU (``cuda:LOCAL_RANK``).

    A one-process torchrun run may name its GPU (``--device cuda:1``); with several processes each takes
    its own, so naming one is refused.
    """
    device = resolve_device(spec)
    if not env.is_distributed or device.type != "cuda":
        return device
    named = spec.strip().lower() not in ("auto", "cuda")
    if named and env.world_size > 1:
        raise TgdpetError(
            f"--device {spec} names one GPU, but torchrun started {env.world_size} processes; pass --device cuda "
            "(each process takes cuda:LOCAL_RANK) and choose GPUs with CUDA_VISIBLE_DEVICES."
        )
    index = device.index if named else env.local_rank
    if index >= torch.cuda.device_count():
        raise TgdpetError(
            f"process {env.rank} needs cuda:{index} but only {torch.cuda.device_count()} GPU(s) are "
            "visible; start torchrun with --nproc_per_node at most the number of GPUs."
        )
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def distributed(device_spec: str) -> tuple[DistEnv, torch.device]:
    """Join the process group torchrun set up (if any); return this rank's place and device.

    The group is created once per process and kept until the process exits,
    so one process may run several workflows (train, then fine-tune):
    re-creating a destroyed group on torchrun's store is not supported.
    """
    env = env_from_environ()
    device = _rank_device(device_spec, env)
    if env.is_distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        atexit.register(_destroy)
    return env, device


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, env: DistEnv, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when the run has several ranks, else ``model`` itself."""
    if not env.is_distributed:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def mean_over_ranks(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """The mean of a tensor over all ranks (itself in a one-process run); every rank gets the result."""
    if not env.is_distributed:
        return value
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / env.world_size


def barrier(env: DistEnv) -> None:
    """Wait for every rank (no-op in a one-process run)."""
    if env.is_distributed:
        dist.barrier()


def on_main(env: DistEnv, device: torch.device, fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on rank 0 only; if it raises a user error there, every rank stops with an error.

    Without this, a refusal on rank 0 (an existing output folder, say) would
    leave the other ranks waiting forever at their next collective call.
    Other ranks get None.
    """
    result: T | None = None
    error: TgdpetError | None = None
    if env.is_main:
        try:
            result = fn()
        except TgdpetError as e:
            error = e
    if env.is_distributed:
        flag = torch.tensor([0 if error is None else 1], device=device)
        dist.broadcast(flag, src=0)
        if int(flag.item()) and not env.is_main:
            raise TgdpetError("rank 0 stopped with an error (see its message above); this rank stops too.")
    if error is not None:
        raise error
    return result
