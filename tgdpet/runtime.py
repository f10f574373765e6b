"""Where tensors run: the device a user names, or the best one visible.

``--device auto|cpu|cuda[:N]`` everywhere; ``auto`` takes the first visible
CUDA device (CUDA_VISIBLE_DEVICES is honoured by torch) and falls back to CPU.
"""

from __future__ import annotations

import re

import torch

from .errors import TgdpetError


def resolve_device(spec: str = "auto") -> torch.device:
    """Turn a user's device string into a usable ``torch.device`` or say why not."""
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if not m:
        raise TgdpetError(f"unknown device {spec!r}; use auto, cpu, cuda or cuda:N.")
    if not torch.cuda.is_available():
        raise TgdpetError(f"device {spec!r} was asked for but no CUDA GPU is visible; use --device cpu.")
    index = int(m.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise TgdpetError(
            f"device {spec!r} does not exist: {torch.cuda.device_count()} CUDA device(s) are visible."
        )
    return torch.device("cuda", index)
