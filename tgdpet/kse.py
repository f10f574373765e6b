"""Kernel Sparsity and Entropy (KSE, Li et al., CVPR 2019), as used by TGD.

KSE rates how much the feature maps *entering* a conv layer matter to it,
from that layer's weights alone (no data needed). For a weight ``W`` of shape
``(N_out, C_in, kh, kw)`` and each input channel ``c``:

1. sparsity   ``s_c = sum_n ||W[n, c]||_1``;
2. density    ``dm_i = sum of the Euclidean distances from W[i, c] to its k
   nearest neighbours among the other N_out - 1 kernels W[j, c]``
   (``k`` clamped to ``N_out - 1``; a lone kernel has density 0);
3. entropy    ``e_c = -sum_i p_i log2 p_i`` with ``p_i = dm_i / sum_j dm_j``,
   ``0 log 0 = 0``, and ``e_c = 0`` when every ``dm_i`` is 0;
4. ``s`` and ``e`` are min-max normalised over the layer's channels;
5. ``v_c = sqrt(s~_c / (1 + alpha e~_c))`` and ``KSE_c = min-max(v)_c``.

Large sparsity (strong kernels) and low entropy (a few distinctive kernels)
mean the channel carries information; a low score marks a "meaningless" map.

This follows the definition, not the published KSE code: that code reshapes
an array it has already transposed, so its entropy for channel ``c`` mixes
kernels of several channels; it also crashes for ``N_out < 6`` and on
identical kernels and returns NaN on constant weights. Here every degenerate
case has a defined, finite answer:

- min-max of a constant vector (including a layer with a single input
  channel, ``C_in = 1``) is 0, so such a layer scores all its channels 0;
- identical or all-zero kernels have density 0 and entropy 0.

TGD uses the scores of conv layer ``i`` to mark which *output* channels of
conv layer ``i - 1`` are meaningless: see :func:`score_network`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .errors import TgdpetError
from .models import DnCNN, bn_after


def _min_max(x: torch.Tensor) -> torch.Tensor:
    """Scale ``x`` to [0, 1]; a constant vector (no spread to scale) maps to 0, never NaN."""
    lo, hi = x.min(), x.max()
    span = hi - lo
    if span > 0:
        return (x - lo) / span
    return torch.zeros_like(x)


def _kernel_density(kernels: torch.Tensor, k: int) -> torch.Tensor:
    """Density ``dm`` of every kernel: summed distance to its ``k`` nearest other kernels.

    ``kernels`` is ``(C, N, D)``: for each input channel, its ``N`` flattened
    kernels. Returns ``(C, N)``. Distances are computed directly (not through
    the ``|a|^2 + |b|^2 - 2ab`` matrix product), because that shortcut loses
    digits on near-equal kernels and reorders near-ties.
    """
    n = kernels.shape[1]
    k = min(k, n - 1)
    if k < 1:
        return kernels.new_zeros(kernels.shape[:2])
    dist = torch.cdist(kernels, kernels, compute_mode="donot_use_mm_for_euclid_dist")
    # A kernel is not its own neighbour.
    dist.diagonal(dim1=1, dim2=2).fill_(float("inf"))
    return dist.topk(k, dim=2, largest=False).values.sum(dim=2)


def _entropy_bits(density: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (bits) of each row of ``density`` read as a distribution; 0 for all-zero rows."""
    total = density.sum(dim=1, keepdim=True)
    p = density / torch.where(total > 0, total, torch.ones_like(total))
    return -torch.xlogy(p, p).sum(dim=1) / math.log(2.0)  # xlogy(0, 0) = 0


def sparsity_and_entropy(weight: torch.Tensor | np.ndarray, k: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw kernel sparsity ``s_c`` and kernel entropy ``e_c`` (bits) of every input channel, before normalising.

    ``weight`` has shape ``(N_out, C_in, kh, kw)`` (a torch tensor on any
    device, or a numpy array). The computation runs on the CPU in float64 so
    that scores, and hence TGD masks, do not depend on the device or on the
    weight's dtype. Returns two float64 CPU tensors of length ``C_in``.
    """
    w = torch.as_tensor(weight).detach().to(device="cpu", dtype=torch.float64)
    if w.ndim != 4:
        raise ValueError(f"expected a conv weight of shape (N_out, C_in, kh, kw), got shape {tuple(w.shape)}.")
    if k < 1:
        raise ValueError(f"k (number of nearest neighbours) must be at least 1, got {k}.")
    if not torch.isfinite(w).all():
        raise ValueError("the conv weight contains NaN or infinite values; KSE is undefined for it.")
    n_out, c_in = w.shape[:2]
    kernels = w.reshape(n_out, c_in, -1).transpose(0, 1)  # (C_in, N_out, kh*kw): W[:, c] per row
    return kernels.abs().sum(dim=(1, 2)), _entropy_bits(_kernel_density(kernels, k))


def kse_scores(weight: torch.Tensor | np.ndarray, k: int = 5, alpha: float = 1.0) -> torch.Tensor:
    """KSE score in [0, 1] of each of the ``C_in`` input channels of one conv weight.

    ``weight`` is as for :func:`sparsity_and_entropy`; ``k`` nearest
    neighbours, ``alpha`` weighs entropy against sparsity (1 in the paper).
    Returns a float64 CPU tensor of length ``C_in``.
    """
    if alpha < 0:
        raise ValueError(f"alpha must be non-negative, got {alpha}.")
    sparsity, entropy = sparsity_and_entropy(weight, k)
    v = torch.sqrt(_min_max(sparsity) / (1.0 + alpha * _min_max(entropy)))
    return _min_max(v)


def channel_parameter_count(model: DnCNN, conv_index: int) -> int:
    """Trainable parameters that produce one output channel of ``model.convs[conv_index]``.

    These are what TGD retrains or freezes together, and what the kernel-drop
    study zeroes: the kernel ``weight[n]`` (``C_in * kh * kw`` values), the
    bias ``bias[n]``, and BN ``weight[n]`` (gamma) and ``bias[n]`` (beta)
    when a BatchNorm follows the conv. BN running statistics are buffers,
    not parameters, so they are protected by TGD but not counted here.
    """
    conv = model.convs[conv_index]
    count = conv.weight[0].numel() + (1 if conv.bias is not None else 0)
    bn = bn_after(model, conv_index)
    if bn is not None and bn.affine:
        count += 2
    return count


@dataclass
class LayerScore:
    """KSE of the feature maps between two conv layers, and what that means for TGD.

    ``scores[n]`` is the KSE of output channel ``n`` of ``convs[source]``
    (``source_name``), measured by the weights of ``convs[layer]`` (``name``)
    that read it. ``meaningless[n]`` is ``scores[n] < phi``: the kernels that
    produce those channels are the ones TGD retrains.
    """

    layer: int
    name: str
    source: int
    source_name: str
    scores: torch.Tensor
    meaningless: torch.Tensor
    params_per_channel: int

    @property
    def channels(self) -> int:
        return int(self.scores.numel())

    @property
    def n_meaningless(self) -> int:
        return int(self.meaningless.sum())

    @property
    def meaningless_parameters(self) -> int:
        """Parameters of ``source`` that produce meaningless channels."""
        return self.n_meaningless * self.params_per_channel


def conv_name(conv_index: int) -> str:
    """The paper's 1-based name of ``model.convs[conv_index]`` (``convs[0]`` is ``conv1``)."""
    return f"conv{conv_index + 1}"


def check_phi(phi: float) -> float:
    """Refuse a KSE threshold outside [0, 1], the range of the scores."""
    if not 0.0 <= phi <= 1.0:
        raise TgdpetError(f"the KSE threshold phi must be between 0 and 1, got {phi}; the paper uses 0.3.")
    return float(phi)


def score_network(model: DnCNN, phi: float, k: int = 5, alpha: float = 1.0) -> list[LayerScore]:
    """Score the output channels of ``convs[0..L-2]`` with the KSE of the layer after each.

    One :class:`LayerScore` per conv layer ``i >= 1``, in order. The output of
    the last conv layer is the network's prediction, which no layer scores.
    """
    phi = check_phi(phi)
    out = []
    for i in range(1, len(model.convs)):
        scores = kse_scores(model.convs[i].weight, k=k, alpha=alpha)
        out.append(
            LayerScore(
                layer=i,
                name=conv_name(i),
                source=i - 1,
                source_name=conv_name(i - 1),
                scores=scores,
                meaningless=scores < phi,
                params_per_channel=channel_parameter_count(model, i - 1),
            )
        )
    return out
