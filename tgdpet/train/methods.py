"""What fine-tuning changes: TGD and the baselines users compare it with.

A method decides which parameters the optimiser sees, how the model is put
in train mode, what is added to the loss, what happens after each optimiser
step, and what is recorded in the saved model:

- ``scratch`` training from scratch: everything trains.
- ``all``     plain fine-tuning of every layer.
- ``tgd``     Targeted Gradient Descent (:mod:`tgdpet.tgd`): only kernels whose
              output maps have KSE < phi are retrained; frozen kernels and
              their BN parameters and running statistics come out bit-identical.
- ``last3``   the paper's FT-net: only the last three conv blocks (convs[-3:]
              and their BatchNorms) train; the other BatchNorms run in eval
              mode so their running statistics stay as they were.
- ``ewc``     Elastic Weight Consolidation: plain fine-tuning plus
              ``lambda * sum_i F_i (theta_i - theta*_i)^2``.

EWC's Fisher. Classic EWC estimates the Fisher information on the *old*
task's data, which TGD's setting does not have (that is its premise). We use
the practical substitute: the diagonal empirical Fisher of the *old model*
(theta*, BatchNorm in eval mode) on the *new* data, i.e. the mean over
patches of the squared per-patch gradient of the MSE loss. It measures how
much each parameter matters to what the old network does on the images at
hand. F is divided by its mean over all parameters, so ``--ewc-lambda`` has
the same meaning for every model and dataset: with lambda = 1, moving a
parameter of average importance by d costs d^2, on the scale of the MSE of
normalised intensities.
"""

from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from .. import tgd
from ..models import DnCNN, bn_after, count_parameters


class Method:
    """Training every parameter (from scratch); the base the other methods refine."""

    name = "scratch"
    has_penalty = False  # whether penalty() adds a term to the loss (logged as "penalty")

    def __init__(self, model: DnCNN) -> None:
        self.model = model

    def trainable(self) -> list[nn.Parameter]:
        """The parameters handed to the optimiser."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def set_train_mode(self) -> None:
        """Put the model in training mode (called at the start of every epoch, after validation)."""
        self.model.train()

    def penalty(self) -> torch.Tensor | None:
        """A term added to the data loss, or None."""
        return None

    def after_step(self) -> None:
        """Called after every optimiser step."""

    def record(self, base_history: list) -> dict:
        """``masks``/``masks_history`` for :func:`tgdpet.checkpoint.save_model`.

        Anything but TGD changes kernels outside any mask, so the latest masks
        no longer describe the weights: ``masks`` is None, earlier TGD rounds
        stay in the history.
        """
        return {"masks": None, "masks_history": list(base_history)}

    def summary(self) -> dict:
        """What is retrained, for logs and provenance."""
        total = count_parameters(self.model)
        trained = sum(p.numel() for p in self.trainable())
        return {
            "method": self.name,
            "retrained_parameters": trained,
            "total_parameters": total,
            "retrained_fraction": trained / total,
        }

    def state_dict(self) -> dict:
        """What a resumed run needs to rebuild this method exactly (tensors and plain values)."""
        return {}

    def close(self) -> None:
        """Remove anything attached to the model."""


def channel_groups(model: DnCNN) -> list[list[torch.Tensor]]:
    """Per conv layer whose output maps KSE scores, the tensors that carry each output channel ``c``.

    Each entry lists tensors whose first axis (or, for the reading kernels,
    second axis) runs over the layer's output channels: what *makes* map
    ``c`` (the BatchNorm's gamma and beta after it, or for conv1, which has
    no BatchNorm, the kernel and bias that make it), and what *reads* it (the
    next conv's kernels ``weight[:, c]``, which KSE scores). The reading
    kernels are moved to the first axis.
    """
    groups = []
    for i in range(len(model.convs) - 1):
        bn = bn_after(model, i)
        makes = [bn.weight, bn.bias] if bn is not None else [model.convs[i].weight, model.convs[i].bias]
        reads = model.convs[i + 1].weight.transpose(0, 1)
        groups.append([t for t in makes if t is not None] + [reads])
    return groups


def channel_penalty(model: DnCNN) -> torch.Tensor:
    """Group lasso over feature maps: the sum over every scored channel of the L2 norm of all it carries.

    Why: KSE can only find kernels that carry nothing if training leaves some
    (the paper's Eq. 4 has a regulariser R; without one, 2 of 224 channels of
    our networks were dead). A group norm pulls a channel's making and reading
    parameters to zero together, so channels the task does not need die whole
    and the rest are untouched in direction (Wen et al. 2016, structured
    sparsity). Making and reading are penalised together because BatchNorm
    makes a map's scale free: penalising only the reading kernels would let
    training grow gamma and shrink them, so that KSE flags maps that matter.
    """
    total = torch.zeros((), device=model.convs[0].weight.device)
    for tensors in channel_groups(model):
        squares = sum(t.float().pow(2).reshape(t.shape[0], -1).sum(1) for t in tensors)
        total = total + torch.sqrt(squares + 1e-12).sum()
    return total


class ChannelSparsity(Method):
    """Training from scratch with ``lam`` times :func:`channel_penalty` added to the loss (``--channel-penalty``)."""

    has_penalty = True

    def __init__(self, model: DnCNN, lam: float) -> None:
        super().__init__(model)
        self.lam = float(lam)

    def penalty(self) -> torch.Tensor:
        return self.lam * channel_penalty(self.model)

    def summary(self) -> dict:
        return {**super().summary(), "channel_penalty": self.lam}


class AllLayers(Method):
    """Plain fine-tuning of every layer."""

    name = "all"


class TGD(Method):
    """Targeted Gradient Descent with ``masks`` (True = retrain), attached to the model here."""

    name = "tgd"

    def __init__(
        self,
        model: DnCNN,
        masks: dict,
        *,
        mode: str,
        phi: float,
        conv1: str,
        bn_stats: str,
        read_kernels: str | None,
        revived: dict[int, int] | None = None,
    ) -> None:
        super().__init__(model)
        self.masks = tgd.check_masks(model, masks)
        self.revived = {int(i): int(n) for i, n in (revived or {}).items()}  # channels re-initialised, per layer
        self.mode, self.phi, self.conv1, self.bn_stats = mode, phi, conv1, bn_stats
        # Attach after the model has its final device and memory format: the
        # engine snapshots the frozen entries of the tensors it sees now.
        self.engine = tgd.attach(model, self.masks, mode=mode, bn_stats=bn_stats, read_kernels=read_kernels)
        self.read_kernels = self.engine.read_kernels

    def after_step(self) -> None:
        self.engine.restore_frozen()

    def record(self, base_history: list) -> dict:
        return {"masks": self.masks, "masks_history": list(base_history) + [self.masks]}

    def summary(self) -> dict:
        total = count_parameters(self.model)
        trained = self.engine.trainable_parameters()
        return {
            "method": self.name,
            "phi": self.phi,
            "conv1": self.conv1,
            "tgd_mode": self.mode,
            "bn_stats": self.bn_stats,
            "read_kernels": self.read_kernels,
            "revived_channels": sum(self.revived.values()),
            "flagged_parameters": tgd.count_retrained(self.model, self.masks).retrained_parameters,
            "retrained_parameters": trained,
            "total_parameters": total,
            "retrained_fraction": trained / total,
        }

    def state_dict(self) -> dict:
        return {"masks": {str(i): m.clone() for i, m in self.masks.items()}, "revived": dict(self.revived)}

    def close(self) -> None:
        self.engine.detach()


class LastBlocks(Method):
    """Only the last ``n`` conv blocks train (the paper's FT-net has n = 3)."""

    name = "last3"

    def __init__(self, model: DnCNN, n: int = 3) -> None:
        super().__init__(model)
        last = range(len(model.convs) - n, len(model.convs))
        trained = [model.convs[i] for i in last] + [bn for i in last if (bn := bn_after(model, i)) is not None]
        keep = {id(p) for m in trained for p in m.parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in keep)
        self.frozen_bns = [bn for bn in model.bns if not any(bn is m for m in trained)]

    def set_train_mode(self) -> None:
        self.model.train()
        for bn in self.frozen_bns:
            bn.eval()  # frozen blocks keep their running statistics

    def close(self) -> None:
        for p in self.model.parameters():
            p.requires_grad_(True)


class EWC(Method):
    """Fine-tuning every layer with the EWC penalty around the starting weights ``theta*``."""

    name = "ewc"
    has_penalty = True

    def __init__(self, model: DnCNN, fisher: dict[str, torch.Tensor], lam: float) -> None:
        super().__init__(model)
        self.lam = float(lam)
        named = dict(model.named_parameters())
        self.fisher = {k: fisher[k].to(named[k]) for k in named}
        self.anchor = {k: p.detach().clone() for k, p in named.items()}
        self._params = named

    @classmethod
    def from_state(cls, model: DnCNN, state: dict, lam: float) -> "EWC":
        """Rebuild from :meth:`state_dict`, with ``theta*`` from the state, not from the model's current weights."""
        method = cls(model, state["fisher"], lam)
        method.anchor = {k: state["anchor"][k].to(p) for k, p in method._params.items()}
        return method

    def penalty(self) -> torch.Tensor:
        total = sum(
            (self.fisher[k] * (p.float() - self.anchor[k]).pow(2)).sum() for k, p in self._params.items()
        )
        return self.lam * total

    def summary(self) -> dict:
        return {**super().summary(), "ewc_lambda": self.lam}

    def state_dict(self) -> dict:
        return {
            "fisher": {k: v.detach().cpu() for k, v in self.fisher.items()},
            "anchor": {k: v.detach().cpu() for k, v in self.anchor.items()},
        }


def empirical_fisher(
    model: DnCNN, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher of ``model`` on ``batches``, divided by its mean (see the module docstring).

    Per-patch gradients come from ``torch.func.vmap``; BatchNorm runs in eval
    mode, so each patch's gradient is that of the model as it is, and the
    running statistics are not touched.
    """
    was_training = model.training
    model.eval()
    params = {k: p.detach() for k, p in model.named_parameters()}
    buffers = {k: b.detach() for k, b in model.named_buffers()}

    def loss(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(functional_call(model, (p, buffers), (x[None],)), y[None])

    per_patch = vmap(grad(loss), in_dims=(None, 0, 0))
    sums = {k: torch.zeros_like(p, dtype=torch.float32) for k, p in params.items()}
    n = 0
    try:
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            for k, g in per_patch(params, x, y).items():
                sums[k] += g.float().pow(2).sum(0)
            n += x.shape[0]
    finally:
        model.train(was_training)
    if n == 0:
        raise ValueError("no patches to estimate the Fisher information from")
    fisher = {k: v / n for k, v in sums.items()}
    mean = torch.cat([v.flatten() for v in fisher.values()]).mean()
    return {k: v / mean for k, v in fisher.items()} if mean > 0 else fisher
