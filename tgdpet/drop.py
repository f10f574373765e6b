"""The kernel-drop study (paper Fig. 4): what removing the "meaningless" kernels does to a network's output.

KSE flags the kernels of every channel scoring below ``phi``; TGD retrains
them. If they truly carry nothing, setting them to zero should leave the
denoised image almost unchanged: this module measures that. It knows
networks and arrays only; how a volume is denoised is the caller's
``denoise`` function (the CLI passes :func:`tgdpet.infer.denoise_array` in
fp32), so the study sits below the denoiser and the file readers.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from .models import DnCNN
from .tgd import build_masks, channel_tensors, check_masks, count_retrained

#: Denoises the study's volume with a network: ``(z, y, x)`` array out.
Denoise = Callable[[DnCNN], np.ndarray]


def zero_channels(model: DnCNN, masks: dict) -> DnCNN:
    """A copy of ``model`` with the channels where ``masks`` is True dropped (set to zero).

    Dropping output channel ``n`` of ``convs[i]`` zeroes its kernel
    ``weight[n]``, ``bias[n]`` and, when a BN follows, BN gamma ``[n]`` and
    beta ``[n]``. Zeroing the BN affine parameters too makes the feature map
    exactly zero after BN and ReLU (zeroing the kernel alone would leave a
    constant map ``beta - gamma * mean / std``), so the channel is truly
    removed. The dropped parameters are thus the same set TGD would retrain.
    """
    masks = check_masks(model, masks)
    dropped = copy.deepcopy(model)
    with torch.no_grad():
        for i, drop in masks.items():
            if not bool(drop.any()):
                continue
            for p in channel_tensors(dropped, i):
                p[drop.to(p.device)] = 0
    return dropped


def drop_kernels(model: DnCNN, phi: float, k: int = 5, alpha: float = 1.0) -> tuple[DnCNN, float]:
    """Paper Fig. 4: a copy of ``model`` without its meaningless kernels, and the fraction of parameters dropped.

    Meaningless kernels are those of every channel with KSE < ``phi``
    (conv1 included; the last layer is never dropped); see
    :func:`zero_channels` for what is zeroed. The fraction is over all
    trainable parameters of the network.
    """
    masks = build_masks(model, phi, conv1="retrain", k=k, alpha=alpha)
    return zero_channels(model, masks), count_retrained(model, masks).fraction


def relative_rms_change(reference: np.ndarray, other: np.ndarray) -> float:
    """``RMS(other - reference) / RMS(reference)``; against an all-zero reference, the plain RMS difference."""
    ref = np.asarray(reference, dtype=np.float64)
    diff = np.asarray(other, dtype=np.float64) - ref
    denom = math.sqrt(float(np.mean(ref**2)))
    num = math.sqrt(float(np.mean(diff**2)))
    return num / denom if denom > 0 else num


@dataclass
class DropResult:
    """One threshold of the kernel-drop study."""

    phi: float
    fraction_dropped: float
    output_change: float | None  # relative RMS change of the denoised volume; None without a volume
    output: np.ndarray | None = field(default=None, repr=False)  # the dropped network's denoised volume

    def to_dict(self) -> dict:
        """The figures, JSON-ready (the denoised volume left out)."""
        return {"phi": self.phi, "fraction_dropped": self.fraction_dropped, "output_change": self.output_change}


def drop_study(
    model: DnCNN,
    phis: Sequence[float],
    denoise: Denoise | None = None,
    k: int = 5,
    alpha: float = 1.0,
) -> tuple[np.ndarray | None, list[DropResult]]:
    """Paper Fig. 4 over several thresholds: parameters dropped and, given ``denoise``, how much the output changes.

    Returns the intact network's output (None without ``denoise``) and one
    result per threshold, each with the dropped network's output. Denoise in
    fp32, so that the change measured is the dropped kernels' and not
    reduced-precision rounding.
    """
    reference = denoise(model) if denoise is not None else None
    results = []
    for phi in phis:
        dropped, fraction = drop_kernels(model, phi, k=k, alpha=alpha)
        output = denoise(dropped) if denoise is not None else None
        change = relative_rms_change(reference, output) if output is not None else None
        results.append(DropResult(float(phi), fraction, change, output))
    return reference, results
