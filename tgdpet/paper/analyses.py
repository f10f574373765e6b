"""The reproduction's side studies: KSE against training length, BatchNorm statistics of frozen channels after
TGD, the kernel-drop table.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from ..kse import check_phi
from ..models import DnCNN, bn_after
from ..tgd import build_masks, count_retrained
from .table import PAPER_DROPPED_PCT, fmt, markdown_table

# --------------------------------------------------------------------------- KSE against training length


def flagged_fractions(model: DnCNN, phis: Sequence[float]) -> dict[str, float]:
    """Fraction of the parameters KSE flags (would retrain or drop) at each ``phi``, keyed by ``f"{phi:g}"``.

    The same count as the kernel-drop study (:func:`tgdpet.drop.drop_kernels`: conv1 included, the last layer never).
    """
    return {f"{phi:g}": count_retrained(model, build_masks(model, check_phi(phi), conv1="retrain")).fraction
            for phi in phis}  # fmt: skip


def kse_curve_markdown(curve: Sequence[Mapping], points: Sequence[float] = (0.1, 0.25, 0.5, 0.75, 1.0)) -> str:
    """The KSE curve at the epochs nearest to the given fractions of training, beside the paper's fractions."""
    if not curve:
        return "Not measured in this run.\n"
    last = curve[-1]["epoch"]
    chosen = sorted({min(curve, key=lambda c: abs(c["epoch"] - f * last))["epoch"] for f in points})
    phis = list(curve[0]["flagged_pct"])
    rows = [
        [str(c["epoch"]), f"{100 * c['epoch'] / last:.0f}", f"{c['patches_seen']:,}"]
        + [fmt(c["flagged_pct"][phi], 1) for phi in phis]
        for c in curve
        if c["epoch"] in chosen
    ]
    rows.append(["paper (500)", "", ""] + [fmt(PAPER_DROPPED_PCT.get(float(phi)), 1) for phi in phis])
    return markdown_table(
        ["epoch", "% of training", "patches seen"] + [f"flagged % at phi {phi}" for phi in phis], rows
    ) + "\n"


# --------------------------------------------------------------------------- BatchNorm statistics after TGD


@torch.no_grad()
def bn_input_statistics(model: DnCNN, batches: Iterable[torch.Tensor]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per conv index with a BN after it: mean and variance (ddof 1) per channel of what that BN receives.

    The model runs in eval mode, so each BN sees what it sees at inference
    (the layers before it normalised by their running statistics).
    """
    model.eval()
    sums: dict[int, list] = {}
    handles = []
    for i in range(len(model.convs)):
        bn = bn_after(model, i)
        if bn is None:
            continue

        def hook(module, inputs, output, i=i) -> None:
            x = inputs[0].detach().double().transpose(0, 1).reshape(inputs[0].shape[1], -1)
            acc = sums.setdefault(i, [0, torch.zeros(x.shape[0], dtype=torch.float64), torch.zeros(x.shape[0], dtype=torch.float64)])
            acc[0] += x.shape[1]
            acc[1] += x.sum(dim=1)
            acc[2] += (x * x).sum(dim=1)

        handles.append(bn.register_forward_hook(hook))
    try:
        device = next(model.parameters()).device
        for x in batches:
            model(x.to(device))
    finally:
        for h in handles:
            h.remove()
    stats = {}
    for i, (n, s, ss) in sums.items():
        mean = s / n
        stats[i] = (mean, (ss - n * mean * mean) / (n - 1))
    return stats


def bn_mismatch(model: DnCNN, masks: Mapping[int, torch.Tensor] | None, stats: Mapping[int, tuple]) -> dict:
    """How far the data's batch statistics are from the kept running statistics, for frozen and retrained channels.

    Per channel: ``|batch mean - running mean| / sqrt(running var + eps)``
    (the shift, in running standard deviations, that normalisation leaves in
    the channel) and ``|ln(batch var / running var)|``. Averaged over the
    frozen channels (``masks`` False) and the retrained ones (True); with
    ``masks`` None every channel counts as frozen (a network not fine-tuned).
    """
    groups: dict[str, list[tuple[float, float]]] = {"frozen": [], "retrained": []}
    for i, (mean, var) in stats.items():
        bn = bn_after(model, i)
        rm, rv = bn.running_mean.double().cpu(), bn.running_var.double().cpu()
        shift = (mean - rm).abs() / torch.sqrt(rv + bn.eps)
        ratio = torch.log(var.clamp_min(1e-12) / rv.clamp_min(1e-12)).abs()
        keep = torch.zeros_like(rm, dtype=torch.bool) if masks is None else masks[i].cpu()
        for c in range(rm.numel()):
            groups["retrained" if keep[c] else "frozen"].append((float(shift[c]), float(ratio[c])))
    return {
        name: {
            "channels": len(values),
            "mean_shift_sd": float(np.mean([v[0] for v in values])) if values else None,
            "mean_abs_log_var_ratio": float(np.mean([v[1] for v in values])) if values else None,
        }
        for name, values in groups.items()
    }


@torch.no_grad()
def reestimate_frozen_bn(model: DnCNN, masks: Mapping[int, torch.Tensor], stats: Mapping[int, tuple]) -> DnCNN:
    """A copy of ``model`` whose frozen channels' BN running statistics are replaced by the measured ``stats``.

    Retrained channels keep theirs (training already fitted them to the new
    data); every weight is unchanged.
    """
    out = copy.deepcopy(model)
    for i, (mean, var) in stats.items():
        bn = bn_after(out, i)
        frozen = ~masks[i].to(bn.running_mean.device)
        bn.running_mean[frozen] = mean.to(bn.running_mean)[frozen]
        bn.running_var[frozen] = var.to(bn.running_var)[frozen]
    return out


def bn_markdown(bn: Mapping) -> str:
    """The BN mismatch table (per seed: frozen vs retrained channels; v1-net before fine-tuning)."""
    if not bn:
        return "Not measured in this run.\n"
    rows = []
    for name, groups in bn["mismatch"].items():
        for group in ("frozen", "retrained"):
            g = groups[group]
            if g["channels"]:
                rows.append([name, group, str(g["channels"]), fmt(g["mean_shift_sd"], 3),
                             fmt(g["mean_abs_log_var_ratio"], 3)])  # fmt: skip
    return markdown_table(
        ["network", "channels", "count", "mean abs(batch mean - running mean) / running sd",
         "mean abs(ln(batch var / running var))"], rows,
    ) + "\n"  # fmt: skip


@dataclass
class DropPoint:
    """One threshold of the kernel-drop study (Fig. 4), with the centre slice it produced."""

    phi: float
    fraction_dropped: float
    output_change: float
    image: np.ndarray = field(repr=False)


def fig4_markdown(points: Sequence[DropPoint], figure: str) -> str:
    """The kernel-drop table (measured beside the paper's fractions) and the image grid's link."""
    table = markdown_table(
        ["phi", "parameters dropped % (measured)", "parameters dropped % (paper)", "output change (relative RMS) %"],
        [
            [f"{p.phi:.1f}", fmt(100 * p.fraction_dropped, 1), fmt(PAPER_DROPPED_PCT.get(round(p.phi, 2)), 1),
             fmt(100 * p.output_change, 2)]
            for p in points
        ],
    )  # fmt: skip
    return (
        "# Fig. 4: kernels dropped by KSE threshold (v1-net)\n\n"
        "Kernels whose output maps score KSE < phi are set to zero at inference (their BN gamma and beta too); "
        "the output change is the RMS difference to v1-net's own output over the whole test volume, relative "
        "to that output's RMS. The paper chose phi = 0.3, the largest threshold that left the output almost "
        "unchanged.\n\n"
        f"{table}\n\n![Fig. 4]({figure})\n"
    )
