"""Targeted Gradient Descent: retrain only the kernels that make meaningless feature maps.

Three steps, each a function here:

1. :func:`build_masks` turns KSE scores (:mod:`tgdpet.kse`) into one boolean
   mask per conv layer, over its output channels: True = retrain, False = freeze.
2. :func:`attach` hooks the masks into a model for fine-tuning and returns a
   :class:`TGDEngine`; the model's forward pass is unchanged.
3. :func:`count_retrained` counts the parameters some masks let TGD change
   (the kernel-drop study of paper Fig. 4, which drops instead of retraining,
   is :mod:`tgdpet.drop`).

What belongs to output channel ``n`` of ``convs[i]``: the kernel
``weight[n]``, ``bias[n]`` and, when a BatchNorm follows the conv, its
``weight[n]`` (gamma), ``bias[n]`` (beta), ``running_mean[n]`` and
``running_var[n]``. Freezing channel ``n`` freezes all of them, except, with
``read_kernels="retrain"`` (the default in parameter mode), the slices
``weight[n, c]`` that read a retrained map ``c`` of the layer before
(:func:`trainable_entries` says why).

TGD^n (paper Sect. 2.1): after fine-tuning, :func:`build_masks` on the
fine-tuned weights gives the masks for the next task. Every round's masks are
kept in the model file (``masks`` and ``masks_history``, :mod:`tgdpet.checkpoint`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import torch
import torch.nn.functional as F
from torch.utils.hooks import RemovableHandle

from .kse import LayerScore, channel_parameter_count, conv_name, score_network
from .models import DnCNN, bn_after, count_parameters

Masks = dict[int, torch.Tensor]
Conv1Option = Literal["retrain", "freeze"]
Mode = Literal["activation", "parameter"]
BNStats = Literal["stored", "batch"]
ReadKernels = Literal["retrain", "freeze"]


# --------------------------------------------------------------------------- masks


def masks_from_scores(model: DnCNN, scores: Sequence[LayerScore], conv1: Conv1Option = "freeze") -> Masks:
    """Retrain masks for every conv layer from the per-layer KSE scores of :func:`~tgdpet.kse.score_network`.

    See :func:`build_masks` for the rules; this variant reuses scores already computed.
    """
    if conv1 not in ("retrain", "freeze"):
        raise ValueError(f"conv1 must be 'retrain' or 'freeze', got {conv1!r}.")
    masks = {s.source: s.meaningless.clone() for s in scores}
    if conv1 == "freeze":
        masks[0] = torch.zeros_like(masks[0])
    last = len(model.convs) - 1
    masks[last] = torch.zeros(model.convs[last].out_channels, dtype=torch.bool)
    return dict(sorted(masks.items()))


def build_masks(
    model: DnCNN, phi: float, conv1: Conv1Option = "freeze", k: int = 5, alpha: float = 1.0
) -> Masks:
    """One boolean mask per conv layer, keyed by index into ``model.convs``: True = retrain.

    Output channel ``n`` of ``convs[i]`` is retrained when the KSE that
    ``convs[i + 1]`` gives it is below ``phi`` (paper Eq. for ``M_n``).

    - The last conv layer (the "noise classifier", conv8 in the paper) is
      always frozen: nothing scores its output, and the paper keeps it fixed.
    - ``conv1``: ``"freeze"`` (default) keeps conv1 entirely fixed, as the
      paper's Fig. 1 draws no TGD layer after it. ``"retrain"`` applies
      conv2's KSE mask to conv1 like to every other layer (the paper's text
      puts a TGD layer after every conv). Why freeze: conv1 has no BatchNorm,
      and there KSE ranks channels against their importance: on a v1-net
      trained without a channel penalty the conv1 maps it flagged changed the
      output 2.9x as much as the rest when zeroed (docs/tgd.md).
    """
    return masks_from_scores(model, score_network(model, phi, k=k, alpha=alpha), conv1)


def check_masks(model: DnCNN, masks: dict) -> Masks:
    """Validate masks against ``model`` and return them as CPU bool tensors for every conv layer.

    A layer missing from ``masks`` is frozen entirely: TGD retrains only what
    it is told to. Raises ValueError naming the first inconsistency.
    """
    n_layers = len(model.convs)
    out: Masks = {}
    for key, value in masks.items():
        i = int(key)
        if not 0 <= i < n_layers:
            raise ValueError(f"mask for conv index {i}, but the model has conv indices 0..{n_layers - 1}")
        m = torch.as_tensor(value).detach().cpu()
        width = model.convs[i].out_channels
        if m.ndim != 1 or m.numel() != width:
            raise ValueError(f"mask for {conv_name(i)} has shape {tuple(m.shape)}, expected ({width},)")
        if m.dtype != torch.bool:
            if not bool(((m == 0) | (m == 1)).all()):
                raise ValueError(f"mask for {conv_name(i)} holds values other than 0 and 1")
            m = m != 0
        out[i] = m.clone()
    for i in range(n_layers):
        out.setdefault(i, torch.zeros(model.convs[i].out_channels, dtype=torch.bool))
    return dict(sorted(out.items()))


def masks_to_lists(masks: Masks) -> dict[str, list[int]]:
    """Masks as JSON-ready ``{"conv index": [0/1 per output channel]}``."""
    return {str(i): [int(v) for v in m.tolist()] for i, m in sorted(masks.items())}


# --------------------------------------------------------------------------- counting


@dataclass
class LayerCount:
    """How many of one conv layer's output channels, and of their parameters, are retrained."""

    conv_index: int
    name: str
    channels: int
    retrained_channels: int
    params_per_channel: int
    read_parameters: int = 0  # frozen channels' kernel entries that read a retrained map (read_kernels="retrain")

    @property
    def parameters(self) -> int:
        return self.channels * self.params_per_channel

    @property
    def retrained_parameters(self) -> int:
        return self.retrained_channels * self.params_per_channel + self.read_parameters


@dataclass
class RetrainCount:
    """Per-layer and whole-network count of the parameters TGD retrains for some masks."""

    layers: list[LayerCount]
    total_parameters: int

    @property
    def retrained_parameters(self) -> int:
        return sum(layer.retrained_parameters for layer in self.layers)

    @property
    def fraction(self) -> float:
        return self.retrained_parameters / self.total_parameters


def count_retrained(model: DnCNN, masks: dict, read_kernels: ReadKernels = "freeze") -> RetrainCount:
    """Count the trainable parameters ``masks`` let TGD change (:func:`~tgdpet.kse.channel_parameter_count`).

    ``read_kernels`` as in :func:`trainable_entries`: with "retrain" the
    frozen channels' kernel slices that read a retrained map count too, as
    ``tgd-finetune`` trains them by default. The default, "freeze", counts
    the flagged channels alone (what the kernel-drop study drops).
    """
    masks = check_masks(model, masks)
    if read_kernels not in ("retrain", "freeze"):
        raise ValueError(f"read_kernels must be 'retrain' or 'freeze', got {read_kernels!r}.")

    def read_parameters(i: int) -> int:
        if read_kernels == "freeze" or i == 0:
            return 0
        conv = model.convs[i]
        frozen = conv.out_channels - int(masks[i].sum())
        return frozen * int(masks[i - 1].sum()) * conv.kernel_size[0] * conv.kernel_size[1]

    layers = [
        LayerCount(
            conv_index=i,
            name=conv_name(i),
            channels=conv.out_channels,
            retrained_channels=int(masks[i].sum()),
            params_per_channel=channel_parameter_count(model, i),
            read_parameters=read_parameters(i),
        )
        for i, conv in enumerate(model.convs)
    ]
    return RetrainCount(layers=layers, total_parameters=count_parameters(model))


def retrain_summary(
    model: DnCNN,
    phi: float,
    conv1: Conv1Option = "freeze",
    read_kernels: ReadKernels = "retrain",
    k: int = 5,
    alpha: float = 1.0,
) -> dict:
    """JSON-ready account of what TGD at ``phi`` would retrain, layer by layer (``tgdpet score-kse``).

    Each layer lists its output channels, how many of them KSE flags as
    meaningless (``None`` for the last layer, which nothing scores), how many
    are retrained under the ``conv1`` option, the parameters that implies
    (with ``read_kernels="retrain"``, tgd-finetune's default, the frozen
    kernels' entries that read a retrained map among them: the last layer's
    too), and the per-channel KSE scores.
    """
    scores = score_network(model, phi, k=k, alpha=alpha)
    masks = masks_from_scores(model, scores, conv1)
    count = count_retrained(model, masks, read_kernels)
    by_source = {s.source: s for s in scores}
    layers = []
    for layer in count.layers:
        scored = by_source.get(layer.conv_index)
        layers.append(
            {
                "layer": layer.name,
                "conv_index": layer.conv_index,
                "channels": layer.channels,
                "meaningless_channels": scored.n_meaningless if scored else None,
                "retrained_channels": layer.retrained_channels,
                "parameters": layer.parameters,
                "retrained_parameters": layer.retrained_parameters,
                "retrained_fraction_of_network": layer.retrained_parameters / count.total_parameters,
                "kse": scored.scores.tolist() if scored else None,
            }
        )
    return {
        "phi": phi,
        "conv1": conv1,
        "read_kernels": read_kernels,
        "layers": layers,
        "total": {
            "parameters": count.total_parameters,
            "retrained_parameters": count.retrained_parameters,
            "retrained_fraction": count.fraction,
        },
    }


# --------------------------------------------------------------------------- silent channels


@torch.no_grad()
def silent_channels(model: DnCNN, x: torch.Tensor) -> Masks:
    """Per conv layer but the last: True where the channel's map is exactly zero after its ReLU on all of ``x``.

    Evaluated with the stored BatchNorm statistics (eval mode), as TGD's frozen
    channels run. A silent map has no gradient: its ReLU passes none back to
    its kernels, and the kernels that read it see an input of zeros.
    """
    was_training = model.training
    model.eval()
    silent = {}
    h = x
    for i, conv in enumerate(model.convs[:-1]):
        h = conv(h)
        bn = bn_after(model, i)
        h = torch.relu(bn(h) if bn is not None else h)
        silent[i] = (h.amax(dim=(0, 2, 3)) <= 0).cpu()
    model.train(was_training)
    return silent


@torch.no_grad()
def revive(model: DnCNN, masks: Masks, silent: Masks, generator: torch.Generator | None = None) -> dict[int, int]:
    """Re-initialise every retrained channel whose map is silent, without changing the network's output.

    Such a channel cannot learn: its map is zero on the new data, so neither
    its kernels nor the kernels reading it get any gradient. This is what the
    channel penalty leaves in the channels KSE flags (docs/tgd.md: TGD² on the
    penalised networks of the medium reproduction changed no weight). Its
    kernel and bias are drawn again as at initialisation (Kaiming normal, zero
    bias), its BatchNorm reset (gamma 1, beta 0, running mean 0, variance 1),
    and the kernels that read it in the next layer set to zero: the map
    carried nothing and is read by nothing, so the output is unchanged, and
    fine-tuning grows the readers and the kernels together. Returns the number
    of revived channels per layer (layers with none left out).
    """
    counts = {}
    for i, keep in masks.items():
        if i >= len(model.convs) - 1:
            continue
        revived = (keep.cpu() & silent[i]).nonzero().flatten().tolist()
        if not revived:
            continue
        conv, bn, reader = model.convs[i], bn_after(model, i), model.convs[i + 1]
        fresh = torch.empty_like(conv.weight[revived], device="cpu")
        fresh.normal_(0.0, (2.0 / (conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1])) ** 0.5,
                      generator=generator)  # fmt: skip
        conv.weight[revived] = fresh.to(conv.weight.device, conv.weight.dtype)
        conv.bias[revived] = 0.0
        if bn is not None:
            bn.weight[revived], bn.bias[revived] = 1.0, 0.0
            bn.running_mean[revived], bn.running_var[revived] = 0.0, 1.0
        reader.weight[:, revived] = 0.0
        counts[i] = len(revived)
    return counts


# --------------------------------------------------------------------------- engine


def channel_tensors(model: DnCNN, i: int, buffers: bool = False) -> list[torch.Tensor]:
    """The tensors whose first axis runs over the output channels of ``convs[i]``.

    Conv weight and bias, the following BN's gamma and beta, and with
    ``buffers`` also its running mean and variance.
    """
    conv, bn = model.convs[i], bn_after(model, i)
    tensors = [conv.weight, conv.bias]
    if bn is not None:
        tensors += [bn.weight, bn.bias] + ([bn.running_mean, bn.running_var] if buffers else [])
    return [t for t in tensors if t is not None]


def trainable_entries(model: DnCNN, masks: Masks, read_kernels: ReadKernels = "retrain") -> list[tuple]:
    """Every tensor TGD masks, with a boolean of its shape: True where fine-tuning may change it.

    Output channel ``n`` of ``convs[i]`` is retrained or frozen whole (its
    kernel ``weight[n]``, bias, and the BN parameters and running statistics
    after it), as the paper's masks say. With ``read_kernels="retrain"`` the
    kernels that *read* a retrained map, ``convs[i + 1].weight[:, c]``, are
    retrained too, in frozen channels and in the last layer. Why: a map KSE
    calls meaningless is read by the next layer with kernels near zero (that
    is what KSE measures, and what the channel penalty makes exact). If those
    readers stay frozen, whatever the retrained kernels learn reaches the
    output only through the readers' near-zero weights: on the medium
    reproduction's penalised v1-net the last layer read its 27 flagged maps
    with kernels of norm 0.0002 against 0.43 for the other 5 (docs/tgd.md).
    Frozen channels still compute on old data what they computed before, up
    to what the revived maps add through these new weights.
    """
    entries = []
    for i, keep in masks.items():
        conv, bn = model.convs[i], bn_after(model, i)
        out_keep = keep.view(-1, 1, 1, 1)
        if read_kernels == "retrain" and i > 0:
            out_keep = out_keep | masks[i - 1].view(1, -1, 1, 1)
        entries.append((conv.weight, out_keep.expand_as(conv.weight)))
        per_channel = [conv.bias] + ([bn.weight, bn.bias, bn.running_mean, bn.running_var] if bn is not None else [])
        entries += [(t, keep) for t in per_channel if t is not None]
    return [(t, k.to(t.device)) for t, k in entries if not bool(k.all())]


def _zero_masked(keep: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A gradient hook that zeroes the entries where ``keep`` (broadcastable) is False.

    Selecting (``torch.where``, rather than multiplying) keeps the
    gradient's dtype (bf16/fp16 under autocast), turns a NaN gradient of a
    frozen channel into an exact 0, and keeps the gradient's memory format:
    ``masked_fill`` returns a contiguous (NCHW) tensor, which made every later
    backward op of a channels-last network convert layouts, and was 2x slower
    on a channels-last gradient.
    """
    drop = ~keep

    def hook(grad: torch.Tensor) -> torch.Tensor:
        return torch.where(drop.to(grad.device), 0, grad)

    return hook


def _mask_output_gradient(keep: torch.Tensor):
    """A forward hook that makes the module's output pass dL/dY_n * M_n backwards (the TGD layer).

    The output tensor itself is returned untouched, so the forward pass is
    bit-identical; only a gradient hook is added to it.
    """
    grad_hook = _zero_masked(keep.view(1, -1, 1, 1))

    def forward_hook(module: torch.nn.Module, inputs, output: torch.Tensor) -> None:
        if output.requires_grad:
            output.register_hook(grad_hook)

    return forward_hook


def _stored_statistics_for_frozen(keep: torch.Tensor, mean: torch.Tensor, var: torch.Tensor):
    """A forward hook for a BatchNorm that, in training mode, normalises the frozen channels (``keep`` False)
    with the stored running statistics ``mean``/``var`` and the retrained ones with the batch's, as usual.

    Why: at test time every channel is normalised with its running statistics.
    A frozen channel normalised by batch statistics while fine-tuning feeds the
    layers after it maps they never see at test time (train/test mismatch),
    and the kernels being retrained learn to rely on that. With the stored
    statistics a frozen channel computes in training exactly what it computes
    at test time. ``mean`` and ``var`` are the attach-time copies, not the
    module's buffers, so BatchNorm re-estimation (which resets the buffers)
    never changes what a frozen channel computes.
    """
    view = keep.view(1, -1, 1, 1)

    def hook(module: torch.nn.BatchNorm2d, inputs, output: torch.Tensor) -> torch.Tensor | None:
        if not module.training:
            return None
        x = inputs[0]
        stored = F.batch_norm(
            x, mean.to(x.device), var.to(x.device), module.weight, module.bias, training=False, eps=module.eps
        )
        return torch.where(view.to(output.device), output, stored.to(output.dtype))

    return hook


class TGDEngine:
    """TGD attached to a model; make it with :func:`attach`.

    Call :meth:`restore_frozen` after every ``optimizer.step()`` (or pass the
    optimizer to :func:`attach`, which does it for you): gradient masking
    alone does not keep frozen entries exact, because Adam's ``weight_decay``,
    AdamW's decoupled decay and momentum carried in the optimizer state move
    parameters whose gradient is zero, and BatchNorm in train mode updates
    the running statistics of every channel. :meth:`restore_frozen` writes
    the values snapshotted at attach time back into the frozen entries, so
    they stay bit-identical for any number of steps. Use as a context
    manager, or call :meth:`detach`, to return to the plain model.
    """

    def __init__(
        self,
        model: DnCNN,
        masks: dict,
        mode: Mode = "parameter",
        optimizer: torch.optim.Optimizer | None = None,
        bn_stats: BNStats = "stored",
        read_kernels: ReadKernels | None = None,
    ) -> None:
        if mode not in ("activation", "parameter"):
            raise ValueError(f"mode must be 'activation' or 'parameter', got {mode!r}.")
        if bn_stats not in ("stored", "batch"):
            raise ValueError(f"bn_stats must be 'stored' or 'batch', got {bn_stats!r}.")
        read_kernels = read_kernels or ("retrain" if mode == "parameter" else "freeze")
        if read_kernels not in ("retrain", "freeze"):
            raise ValueError(f"read_kernels must be 'retrain' or 'freeze', got {read_kernels!r}.")
        if mode == "activation" and read_kernels == "retrain":
            raise ValueError(
                "read_kernels='retrain' needs mode='parameter': activation masking stops the gradient of every "
                "frozen channel, so the kernels reading a retrained map there could not learn; pass "
                "read_kernels='freeze' with mode='activation'."
            )
        self.model = model
        self.mode = mode
        self.bn_stats = bn_stats
        self.read_kernels = read_kernels
        self.masks = check_masks(model, masks)
        self._handles: list[RemovableHandle] = []
        self._entries = trainable_entries(model, self.masks, read_kernels)
        self._frozen = [(t, keep, t.detach().clone()) for t, keep in self._entries]
        if bn_stats == "stored":
            self._install_stored_statistics()  # before the gradient masks: they must see its output
        self._install_gradient_masks()
        if optimizer is not None:
            self._handles.append(optimizer.register_step_post_hook(lambda *_: self.restore_frozen()))

    def trainable_parameters(self) -> int:
        """How many parameter entries fine-tuning may change (BN running statistics are buffers, not counted)."""
        masked = {id(t): keep for t, keep in self._entries}
        return sum(int(masked[id(p)].sum()) if id(p) in masked else p.numel() for p in self.model.parameters())

    def _install_stored_statistics(self) -> None:
        for i, keep in self.masks.items():
            bn = bn_after(self.model, i)
            if bn is None or bool(keep.all()):
                continue
            hook = _stored_statistics_for_frozen(
                keep.to(bn.running_mean.device), bn.running_mean.detach().clone(), bn.running_var.detach().clone()
            )
            self._handles.append(bn.register_forward_hook(hook))

    def _install_gradient_masks(self) -> None:
        last = len(self.model.convs) - 1
        if self.mode == "activation":
            for i, keep in self.masks.items():
                if i == last or bool(keep.all()):
                    continue
                # The TGD layers of paper Fig. 1 sit after the conv and after its BN. BatchNorm's
                # backward is per channel and maps an all-zero output gradient to an exactly zero
                # input gradient, so where a BN follows, the mask after it already zeroes the
                # conv output's gradient: one masking pass per block gives the paper's gradients
                # bit for bit at half the memory traffic.
                module = bn_after(self.model, i) or self.model.convs[i]
                self._handles.append(module.register_forward_hook(_mask_output_gradient(keep.to(module.weight.device))))
        # Parameter mode masks every parameter; activation mode the last conv's, since its output is the
        # prediction and masking that gradient would stop all learning.
        params = {id(p) for p in self.model.parameters()}
        last_conv = {id(t) for t in channel_tensors(self.model, last)}
        for t, keep in self._entries:
            if id(t) in params and (self.mode == "parameter" or id(t) in last_conv):
                self._handles.append(t.register_hook(_zero_masked(keep)))

    @torch.no_grad()
    def restore_frozen(self) -> None:
        """Write the attach-time values back into every frozen parameter entry and BN running statistic."""
        for tensor, keep, saved in self._frozen:
            tensor.copy_(torch.where(keep, tensor, saved.to(tensor.device)))

    def detach(self) -> None:
        """Remove every hook; the model is the plain network again (its weights are kept as they are)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> "TGDEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.detach()


def attach(
    model: DnCNN,
    masks: dict,
    mode: Mode = "parameter",
    optimizer: torch.optim.Optimizer | None = None,
    bn_stats: BNStats = "stored",
    read_kernels: ReadKernels | None = None,
) -> TGDEngine:
    """Attach TGD to ``model`` for fine-tuning with ``masks`` (True = retrain, per output channel).

    ``mode="parameter"`` (default) masks the parameter gradients: frozen
    kernels, biases, gammas and betas get none, and retrained kernels get the
    true gradient of the loss, including what flows back to them through the
    frozen kernels that read their maps. ``mode="activation"`` is the paper's
    literal TGD layer: identity in the forward pass, and in the backward pass
    the gradient of every conv output and every BN output is multiplied by the
    mask, so no gradient flows to earlier layers through a frozen channel and
    a retrained kernel learns only from its effect through other retrained
    channels. Measured in the medium reproduction (docs/tgd.md), the
    parameter mode learns the new task and keeps the old one better.

    ``bn_stats="stored"`` (default) normalises frozen channels with their
    stored running statistics while training, as at test time
    (:func:`_stored_statistics_for_frozen`); ``"batch"`` normalises them with
    the batch's statistics, as a BatchNorm in train mode does (the paper's
    code, presumably). Retrained channels always use batch statistics and
    learn new running statistics.

    ``read_kernels="retrain"`` (the default in parameter mode; activation
    mode cannot) also retrains the kernels that read a retrained map, in
    frozen channels and in the last layer (:func:`trainable_entries` says
    why); ``"freeze"`` (the default in activation mode) keeps every kernel of
    a frozen channel, as the paper's masks do.

    Attach after moving the model to its device. With ``optimizer`` given,
    :meth:`TGDEngine.restore_frozen` runs after each of its steps; otherwise
    call it yourself after every ``optimizer.step()``.
    """
    return TGDEngine(model, masks, mode=mode, optimizer=optimizer, bn_stats=bn_stats, read_kernels=read_kernels)
