"""Tables, figures and the written report of the paper's reproduction (``scripts/reproduce_paper.py``).

The script runs the experiment; this module turns what it measured into what
a reader checks against the paper: Table 1 beside the published numbers, the
kernel-drop study of Fig. 4, the image panels of Figs 5-6, and answers to the
paper's claims. The answers are sentences *generated from the measured
numbers* with the rule that decides each verdict stated next to it, so a run
that does not support a claim says so.

Error bars. A run fine-tunes the same v1-net (and adapts the same v2-net)
with several seeds and evaluates every network on several test studies per
BMI class. A Table 1 cell is the mean +- sd (ddof 1) over every (seed, test
study) pair a network was scored on, with n beside it. A verdict compares
two fine-tuning methods on *paired* differences (same seed, same test
study) and calls a difference only when it exceeds two standard errors
(:func:`compare`).

Everything here is a pure function of numbers and arrays, except the writers
(:func:`save_panels`, :func:`write_text`), which write atomically, and the
BatchNorm helpers, which run a network.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from .files import atomic_file
from .kse import check_phi
from .models import DnCNN, bn_after
from .tgd import build_masks, count_retrained

#: Paper Table 1 (low-BMI study): lesion ensemble bias and liver CoV, in %.
PAPER_TABLE1: dict[str, tuple[float, float]] = {
    "v1-net": (-6.30, 6.02),
    "v2-net": (-4.07, 8.56),
    "FT-net": (-4.71, 7.87),
    "TGD-net": (-3.77, 6.46),
}
#: Paper Sect. 4: percentage of the parameters dropped at each KSE threshold (Fig. 4).
PAPER_DROPPED_PCT: dict[float, float] = {0.3: 51.4, 0.4: 51.6, 0.5: 53.0, 0.6: 67.3}
#: Paper Sect. 4.1: training time TGD fine-tuning saved against training v2-net from scratch.
PAPER_TIME_SAVED_PCT = 64.0

#: The row of the un-denoised images (named like :data:`tgdpet.evaluate.INPUT_ROW`).
INPUT = "input"
#: Display names; keys are the model names used in files and JSON.
LABELS: dict[str, str] = {
    INPUT: "input (no denoising)",
    "v1-net": "v1-net",
    "v2-net": "v2-net",
    "FT-net": "FT-net",
    "TGD-net": "TGD-net",
    "EWC-net": "EWC-net",
    "TGD2-net": "TGD²-net",
    "TGD-N2N": "TGD-N2N",
    "TGD2-N2N": "TGD²-N2N",
    "TGD-net-BN": "TGD-net (BN re-est.)",
    "TGD-paper-net": "TGD-net (paper-literal)",
    "TGD-paper-N2N": "TGD-N2N (paper-literal)",
    "TGD-revive-net": "TGD-net (revive)",
    "TGD2-revive-net": "TGD²-net (revive)",
    "TGD-revive-N2N": "TGD-N2N (revive)",
}

#: Table 1 columns: (key in a row, heading, decimals). Keys are ``<study>_<figure>`` or training facts.
TABLE1_COLUMNS: tuple[tuple[str, str, int], ...] = (
    ("low_bmi_lesion_bias_pct", "low-BMI lesion bias %", 2),
    ("low_bmi_liver_cov_pct", "low-BMI liver CoV %", 2),
    ("high_bmi_lesion_bias_pct", "high-BMI lesion bias %", 2),
    ("high_bmi_liver_cov_pct", "high-BMI liver CoV %", 2),
    ("ood_hallucination_bladder_pct", "OOD halluc. bladder %", 2),
    ("ood_hallucination_catheter_pct", "OOD halluc. catheter %", 2),
    ("ood_liver_cov_pct", "OOD liver CoV %", 2),
    ("train_s", "training time s", 1),
    ("patches_seen", "patches seen", 0),
    ("retrained_pct", "params trained %", 1),
)

#: Figures of :func:`tgdpet.evaluate.evaluate_models` that Table 1 shows, per study.
_FIGURES = {
    "low_bmi": ("lesion_bias_pct", "liver_cov_pct"),
    "high_bmi": ("lesion_bias_pct", "liver_cov_pct"),
    "ood": ("hallucination_bladder_pct", "hallucination_catheter_pct", "liver_cov_pct"),
}

#: A liver CoV that moves by at most this fraction of its value counts as "kept".
COV_KEPT_TOLERANCE = 0.10


# --------------------------------------------------------------------------- numbers


def _get(row: Mapping | None, key: str) -> float | None:
    value = None if row is None else row.get(key)
    return None if value is None or not math.isfinite(value) else float(value)


def instances_of(instances: Mapping[str, Mapping], model: str) -> list[str]:
    """The keys (evaluation row names) of every instance of ``model``, in seed order."""
    keys = [k for k, v in instances.items() if v["model"] == model]
    return sorted(keys, key=lambda k: (instances[k]["seed"] is not None, instances[k]["seed"] or 0))


def study_values(evaluation: Mapping[str, Sequence[Mapping]], study: str, row: str, figure: str) -> list[float]:
    """One figure of one evaluation row over the test studies of a class (missing figures left out)."""
    values = (_get(result["rows"].get(row), figure) for result in evaluation[study])
    return [v for v in values if v is not None]


def summary(values: Sequence[float]) -> dict:
    """Mean, sd (ddof 1; None below two values) and n of some numbers (all None when there are none)."""
    n = len(values)
    if n == 0:
        return {"mean": None, "sd": None, "n": 0}
    mean = float(np.mean(values))
    sd = float(np.std(values, ddof=1)) if n >= 2 else None
    return {"mean": mean, "sd": sd, "n": n}


def table1_rows(
    evaluation: Mapping[str, Sequence[Mapping]],
    instances: Mapping[str, Mapping],
    training: Mapping[str, Mapping],
    models: Sequence[str],
) -> list[dict]:
    """One row per model (the un-denoised input first) with Table 1's figures and its training cost.

    ``evaluation`` maps ``low_bmi``, ``high_bmi`` and ``ood`` to a list of
    :func:`~tgdpet.evaluate.evaluate_models` results (one per test study);
    ``instances`` maps an evaluation row name (an instance: one trained
    network) to ``{"model": Table 1 name, "seed": fine-tuning seed or None}``; ``training`` maps an instance name to its record (``wall_s``,
    ``patches_seen``, ``method``). A figure ``key`` of a row holds the mean
    over every (instance, test study) pair, ``key_sd`` and ``key_n`` its sd and n.
    """
    rows = []
    for name in (INPUT, *models):
        keys = [INPUT] if name == INPUT else instances_of(instances, name)
        row: dict = {"model": name}
        for study, figures in _FIGURES.items():
            for figure in figures:
                values = [v for k in keys for v in study_values(evaluation, study, k, figure)]
                stats = summary(values)
                row[f"{study}_{figure}"] = stats["mean"]
                row[f"{study}_{figure}_sd"] = stats["sd"]
                row[f"{study}_{figure}_n"] = stats["n"]
        records = [training[k] for k in keys if k in training]
        for key, value in (
            ("train_s", lambda r: r["wall_s"]),
            ("patches_seen", lambda r: r["patches_seen"]),
            ("retrained_pct", lambda r: 100 * r["method"]["retrained_fraction"]),
        ):
            stats = summary([float(value(r)) for r in records])
            row[key], row[f"{key}_sd"], row[f"{key}_n"] = stats["mean"], stats["sd"], stats["n"]
        rows.append(row)
    return rows


def _fmt(value: float | None, decimals: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if decimals == 0 else f"{value:.{decimals}f}"


def cell(row: Mapping, key: str, decimals: int = 2) -> str:
    """A Table 1 cell: ``mean ± sd (n)``; ``mean (1)`` for one value, ``-`` for none."""
    mean, sd, n = row.get(key), row.get(f"{key}_sd"), row.get(f"{key}_n", 1 if row.get(key) is not None else 0)
    if mean is None:
        return "-"
    if sd is None:
        return f"{_fmt(mean, decimals)} ({n})"
    return f"{_fmt(mean, decimals)} ± {_fmt(sd, decimals)} ({n})"


def markdown_table(headings: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headings) + " |", "|" + "|".join("---" for _ in headings) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def table1_markdown(rows: Sequence[Mapping]) -> str:
    """Table 1 as a markdown table (every model, every study), then the paper's low-BMI numbers beside ours."""
    main = markdown_table(
        ["model"] + [heading for _, heading, _ in TABLE1_COLUMNS],
        [[LABELS[r["model"]]] + [cell(r, key, d) for key, _, d in TABLE1_COLUMNS] for r in rows],
    )
    by_model = {r["model"]: r for r in rows}
    paper = markdown_table(
        ["model", "lesion bias % (measured)", "lesion bias % (paper)", "liver CoV % (measured)", "liver CoV % (paper)"],
        [
            [
                LABELS[name],
                cell(by_model[name], "low_bmi_lesion_bias_pct"),
                _fmt(bias),
                cell(by_model[name], "low_bmi_liver_cov_pct"),
                _fmt(cov),
            ]
            for name, (bias, cov) in PAPER_TABLE1.items()
            if name in by_model
        ],
    )
    return (
        f"{main}\n\nEach cell: mean ± sd (n), over every (fine-tuning seed, test study) pair the network was scored "
        "on; one value shows as `mean (1)`.\n\n"
        f"Low-BMI study beside the paper's Table 1:\n\n{paper}\n"
    )


# --------------------------------------------------------------------------- verdicts

#: Figures a verdict compares, per task: (study, figure key, what "better" means).
#: The old task is v1-net's high-BMI knowledge (no fine-tuning saw a high-BMI study);
#: the new task is the low-BMI v2 study the fine-tuning data resembles.
VERDICT_FIGURES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "old": (("high_bmi", "lesion_bias_pct", "abs"), ("high_bmi", "liver_cov_pct", "value")),
    "new": (("low_bmi", "lesion_bias_pct", "abs"), ("low_bmi", "liver_cov_pct", "value")),
}
TASKS = {"old": "keep the old task (high-BMI study, v1 knowledge)", "new": "learn the new task (low-BMI v2 study)"}
#: The method pairs the verdicts compare (a, b): a difference a - b below 0 means a is better.
VERDICT_PAIRS: tuple[tuple[str, str], ...] = (
    ("TGD-net", "FT-net"), ("TGD-net", "EWC-net"), ("EWC-net", "FT-net"), ("TGD-net", "TGD-paper-net"),
    ("TGD-paper-net", "FT-net"), ("TGD-revive-net", "FT-net"), ("TGD-revive-net", "EWC-net"),
    ("TGD-revive-net", "TGD-net"),
)  # fmt: skip
#: A difference counts when its magnitude exceeds this many standard errors.
SE_MULTIPLE = 2.0
DECISION_RULE = (
    "For two fine-tuning methods A and B and one figure (|lesion bias| or liver CoV, lower is better), "
    "d = A - B is taken per fine-tuning seed (both fine-tuned with the same seed, hence the same patches) and "
    "test study, and averaged over the test studies of the seed: one d per seed. With one seed, each test study "
    "gives one d instead. A is better (worse) when the mean of the d is below (above) zero by more than "
    f"{SE_MULTIPLE:g} standard errors (sd of the d / sqrt(n)); otherwise there is no significant difference at "
    "this scale. With n = 1 nothing can be decided. A method keeps a task better than another when it is "
    "significantly better on at least one of the task's two figures and significantly worse on neither (the same "
    "rule for learning the new task)."
)


def _badness(value: float, how: str) -> float:
    return abs(value) if how == "abs" else value


def paired_differences(
    evaluation: Mapping[str, Sequence[Mapping]], instances: Mapping[str, Mapping], a: str, b: str, study: str,
    figure: str, how: str,
) -> tuple[list[float], str]:
    """The paired differences ``a - b`` of a figure's badness, and what one difference is over (see :data:`DECISION_RULE`)."""
    seeds_a = {instances[k]["seed"]: k for k in instances_of(instances, a)}
    seeds_b = {instances[k]["seed"]: k for k in instances_of(instances, b)}
    per_seed: list[list[float]] = []
    for seed in sorted(set(seeds_a) & set(seeds_b), key=lambda s: (s is None, s or 0)):
        diffs = []
        for result in evaluation[study]:
            va, vb = _get(result["rows"].get(seeds_a[seed]), figure), _get(result["rows"].get(seeds_b[seed]), figure)
            if va is not None and vb is not None:
                diffs.append(_badness(va, how) - _badness(vb, how))
        if diffs:
            per_seed.append(diffs)
    if len(per_seed) >= 2:
        return [float(np.mean(d)) for d in per_seed], "fine-tuning seeds"
    return (per_seed[0] if per_seed else []), "test studies"


def compare(
    evaluation: Mapping[str, Sequence[Mapping]], instances: Mapping[str, Mapping], a: str, b: str, study: str,
    figure: str, how: str,
) -> dict:
    """One verdict: the mean paired difference ``a - b``, its standard error, n, and the decision of :data:`DECISION_RULE`."""
    diffs, unit = paired_differences(evaluation, instances, a, b, study, figure, how)
    n = len(diffs)
    mean = float(np.mean(diffs)) if n else None
    se = float(np.std(diffs, ddof=1) / math.sqrt(n)) if n >= 2 else None
    if n < 2:
        verdict = "not decidable (n = 1)" if n == 1 else "not measurable"
    elif abs(mean) > SE_MULTIPLE * se:
        verdict = f"{a} better" if mean < 0 else f"{b} better"
    else:
        verdict = "no significant difference"
    return {"a": a, "b": b, "study": study, "figure": figure, "lower_is_better": "|value|" if how == "abs" else "value",
            "diff": mean, "se": se, "n": n, "over": unit, "verdict": verdict}  # fmt: skip


def verdicts(evaluation: Mapping[str, Sequence[Mapping]], instances: Mapping[str, Mapping]) -> list[dict]:
    """Every pair of :data:`VERDICT_PAIRS` on both tasks' figures, with the task named in each verdict."""
    return [
        {"task": task, **compare(evaluation, instances, a, b, study, figure, how)}
        for a, b in VERDICT_PAIRS
        if instances_of(instances, a) and instances_of(instances, b)
        for task, figures in VERDICT_FIGURES.items()
        for study, figure, how in figures
    ]


def task_verdict(items: Sequence[Mapping], a: str, b: str, task: str) -> str:
    """Whether ``a`` keeps ``task`` better than ``b``, from the figure verdicts (rule in :data:`DECISION_RULE`)."""
    mine = [v for v in items if v["a"] == a and v["b"] == b and v["task"] == task]
    if not mine or all(v["n"] < 2 for v in mine):
        return "not decidable (fewer than two seeds or test studies)"
    better = [v for v in mine if v["verdict"] == f"{a} better"]
    worse = [v for v in mine if v["verdict"] == f"{b} better"]
    if better and not worse:
        return f"yes, {a} is better"
    if worse and not better:
        return f"no, {b} is better"
    if better and worse:
        return "mixed (better on one figure, worse on another)"
    return "no significant difference at this scale"


_FIGURE_NAMES = {"lesion_bias_pct": "abs. lesion bias %", "liver_cov_pct": "liver CoV %"}


def _labelled(text: str) -> str:
    """A verdict with the networks' display names (``TGD2-net better`` -> ``TGD²-net better``)."""
    name, _, rest = text.partition(" ")
    return f"{LABELS[name]} {rest}" if name in LABELS and rest else text


def verdicts_markdown(items: Sequence[Mapping], rule: bool = True) -> str:
    """The verdict table (one line per pair, task and figure) and one sentence per pair and task.

    ``rule`` puts :data:`DECISION_RULE` first.
    """
    if not items:
        return "No two fine-tuning methods were run, so there is nothing to compare.\n"
    table = markdown_table(
        ["A vs B", "task", "figure (lower is better)", "mean of A - B ± SE", "n (over)", "verdict"],
        [
            [f"{LABELS[v['a']]} vs {LABELS[v['b']]}", v["task"], _FIGURE_NAMES[v["figure"]],
             "-" if v["diff"] is None else f"{v['diff']:+.2f}" + ("" if v["se"] is None else f" ± {v['se']:.2f}"),
             f"{v['n']} ({v['over']})", _labelled(v["verdict"])]
            for v in items
        ],
    )  # fmt: skip
    pairs = dict.fromkeys((v["a"], v["b"]) for v in items)
    sentences = [
        f"- **Does {LABELS[a]} {TASKS[task]} better than {LABELS[b]}?** "
        f"{_labelled_sentence(task_verdict(items, a, b, task))}."
        for a, b in pairs
        for task in TASKS
    ]
    return (f"{DECISION_RULE}\n\n" if rule else "") + f"{table}\n\n" + "\n".join(sentences) + "\n"


def _labelled_sentence(text: str) -> str:
    """A task verdict (``yes, TGD-net is better``) with the display names."""
    head, sep, tail = text.partition(", ")
    return f"{head}{sep}{_labelled(tail)}" if sep else text


# --------------------------------------------------------------------------- KSE against training length


def flagged_fractions(model: DnCNN, phis: Sequence[float]) -> dict[str, float]:
    """Fraction of the parameters KSE flags (would retrain or drop) at each ``phi``, keyed by ``f"{phi:g}"``.

    The same count as the kernel-drop study (:func:`tgdpet.tgd.drop_kernels`: conv1 included, the last layer never).
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
        + [_fmt(c["flagged_pct"][phi], 1) for phi in phis]
        for c in curve
        if c["epoch"] in chosen
    ]
    rows.append(["paper (500)", "", ""] + [_fmt(PAPER_DROPPED_PCT.get(float(phi)), 1) for phi in phis])
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
                rows.append([name, group, str(g["channels"]), _fmt(g["mean_shift_sd"], 3),
                             _fmt(g["mean_abs_log_var_ratio"], 3)])  # fmt: skip
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
            [f"{p.phi:.1f}", _fmt(100 * p.fraction_dropped, 1), _fmt(PAPER_DROPPED_PCT.get(round(p.phi, 2)), 1),
             _fmt(100 * p.output_change, 2)]
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


# --------------------------------------------------------------------------- answers


def _pct_change(new: float, old: float) -> float:
    return (new - old) / abs(old) * 100 if old else math.inf


def answer_knowledge_kept(rows: Mapping[str, Mapping], items: Sequence[Mapping], tgd: str = "TGD-net") -> str:
    """Does ``tgd`` (a TGD variant) keep v1-net's knowledge on the high-BMI study better than FT-net and EWC-net?
    (the verdicts decide)."""
    name = LABELS[tgd]
    if not any(v["a"] == tgd and v["task"] == "old" for v in items):
        return f"**v1 knowledge on the high-BMI study:** not measurable ({name} or the methods it is compared with did not run)."
    against = [
        f"against {LABELS[b]}: {task_verdict(items, tgd, b, 'old')}"
        for b in ("FT-net", "EWC-net")
        if any(v["a"] == tgd and v["b"] == b for v in items)
    ]
    shown = [m for m in (tgd, "FT-net", "EWC-net", "v1-net", "v2-net") if m in rows]
    cov = ", ".join(f"{LABELS[m]} {cell(rows[m], 'high_bmi_liver_cov_pct')}" for m in shown)
    bias = ", ".join(f"{LABELS[m]} {cell(rows[m], 'high_bmi_lesion_bias_pct')}" for m in shown)
    return (
        f"**Does {name} keep v1 knowledge on the high-BMI study better than FT-net and EWC-net?** "
        + "; ".join(against)
        + f". High-BMI liver CoV %: {cov}. High-BMI lesion bias %: {bias}. Neither fine-tuning saw a high-BMI "
        "study, so the liver noise and the lesion bias left on it measure how much of v1-net's high-BMI denoising "
        "survived (the paper's Fig. 5 argument); the verdict follows the decision rule above."
    )


def answer_close_to_v2(rows: Mapping[str, Mapping]) -> str:
    """How close does TGD-net come to v2-net (trained from scratch on v2) on the low-BMI study?"""
    b = {m: _get(rows.get(m), "low_bmi_lesion_bias_pct") for m in ("v1-net", "v2-net", "FT-net", "TGD-net")}
    c = {m: _get(rows.get(m), "low_bmi_liver_cov_pct") for m in ("v1-net", "v2-net", "FT-net", "TGD-net")}
    if None in (b["TGD-net"], b["v2-net"], c["TGD-net"], c["v2-net"]):
        return "**TGD-net against v2-net on the low-BMI study:** not measurable (a lesion or liver figure is missing)."
    sentence = (
        f"**How close does TGD-net come to v2-net on the low-BMI study?** Lesion bias {b['TGD-net']:.2f} % against "
        f"{b['v2-net']:.2f} % ({b['TGD-net'] - b['v2-net']:+.2f} points), liver CoV {c['TGD-net']:.2f} % against "
        f"{c['v2-net']:.2f} % ({c['TGD-net'] - c['v2-net']:+.2f} points; means, Table 1 gives their sd)."
    )
    if b["v1-net"] is not None and abs(b["v2-net"] - b["v1-net"]) > 1e-6:

        def share(model: str) -> float:
            return (b[model] - b["v1-net"]) / (b["v2-net"] - b["v1-net"]) * 100

        sentence += (
            f" From v1-net's lesion bias ({b['v1-net']:.2f} %) to v2-net's, TGD-net moved {share('TGD-net'):.0f} % of "
            "the way"
            + (f" and FT-net {share('FT-net'):.0f} %" if b["FT-net"] is not None else "")
            + " (100 % = v2-net's bias, below 0 = away from it)."
        )
    sentence += (
        f" The paper: TGD-net {PAPER_TABLE1['TGD-net'][0]:.2f} / {PAPER_TABLE1['TGD-net'][1]:.2f} % against v2-net "
        f"{PAPER_TABLE1['v2-net'][0]:.2f} / {PAPER_TABLE1['v2-net'][1]:.2f} % (bias / CoV)."
    )
    return sentence


def answer_compute_saved(training: Mapping[str, Mapping], n_train: int, n_finetune: int) -> str:
    """How much training compute did TGD fine-tuning save against training v2-net from scratch?"""
    tgd, v2 = training.get("TGD-net"), training.get("v2-net")
    if not tgd or not v2 or not v2["patches_seen"] or not v2["wall_s"]:
        return "**Training compute saved:** not measurable (a training record is missing)."
    patches = (1 - tgd["patches_seen"] / v2["patches_seen"]) * 100
    wall = (1 - tgd["wall_s"] / v2["wall_s"]) * 100
    epochs = (
        f"Both ran {tgd['epochs']} epochs of one patch per input slice, so the saving comes from fine-tuning on "
        f"{n_finetune} instead of {n_train} studies"
        if tgd["epochs"] == v2["epochs"]
        else f"TGD-net ran {tgd['epochs']} epochs and v2-net {v2['epochs']} (one patch per input slice each), on "
        f"{n_finetune} and {n_train} studies"
    )
    return (
        f"**How much training compute did TGD save against v2-net?** TGD-net's fine-tuning saw "
        f"{tgd['patches_seen']:,} patches against v2-net's {v2['patches_seen']:,} ({patches:.0f} % fewer) and took "
        f"{tgd['wall_s']:.1f} s against {v2['wall_s']:.1f} s of training ({wall:.0f} % less time; the paper saved "
        f"{PAPER_TIME_SAVED_PCT:.0f} %). {epochs}; fewer v2 studies also means fewer to reconstruct with v2 "
        f"({n_finetune} instead of {n_train}). The saving presumes v1-net exists."
    )


def _n2n_pair(rows: Mapping[str, Mapping], base: str, adapted: str) -> str | None:
    """One sentence on an online-learning pair (base network -> its N2N-adapted version), or None."""
    parts = []
    for structure in ("bladder", "catheter"):
        before = _get(rows.get(base), f"ood_hallucination_{structure}_pct")
        after = _get(rows.get(adapted), f"ood_hallucination_{structure}_pct")
        if before is not None and after is not None:
            parts.append(
                f"{structure} {before:.2f} -> {after:.2f} % ({'lower' if after < before else 'not lower'}, "
                f"{_pct_change(after, before):+.0f} %)"
            )
    if not parts:
        return None
    cov_before = _get(rows.get(base), "ood_liver_cov_pct")
    cov_after = _get(rows.get(adapted), "ood_liver_cov_pct")
    sentence = f"{LABELS[base]} -> {LABELS[adapted]}: hallucination score " + ", ".join(parts)
    if cov_before is not None and cov_after is not None:
        change = _pct_change(cov_after, cov_before)
        kept = "kept" if abs(change) <= COV_KEPT_TOLERANCE * 100 else ("raised" if change > 0 else "lowered")
        sentence += f"; liver CoV {cov_before:.2f} -> {cov_after:.2f} % ({kept}, {change:+.0f} %)"
    return sentence + "."


def answer_online_learning(rows: Mapping[str, Mapping]) -> str:
    """Does TGD-N2N lower the hallucination score on the OOD study while keeping its liver CoV?"""
    pairs = [
        s
        for s in (
            _n2n_pair(rows, "v2-net", "TGD-N2N"),
            _n2n_pair(rows, "TGD-net", "TGD2-N2N"),
            _n2n_pair(rows, "v2-net", "TGD-paper-N2N"),
            _n2n_pair(rows, "v2-net", "TGD-revive-N2N"),
        )
        if s
    ]
    if not pairs:
        return "**Online learning:** not measurable (no bladder or catheter region on the OOD study at this grid)."
    return (
        "**Does TGD-N2N lower the hallucination score while keeping the liver CoV?** On the out-of-distribution "
        "study (hot bladder and catheter, never seen in training), scored on its 60 s realisations: "
        + " ".join(pairs)
        + f" Means over the fine-tuning seeds. A CoV counts as kept when it moves by at most "
        f"{COV_KEPT_TOLERANCE:.0%} of its value; the hallucination score is the relative RMS error of the ensemble "
        "mean over the realisations against the 600 s image in and around the structure, so noise that averages "
        "out does not count."
    )


def answers(
    rows: Sequence[Mapping], training: Mapping[str, Mapping], items: Sequence[Mapping], n_train: int, n_finetune: int
) -> list[str]:
    """The answers of the report, each generated from the measured numbers.

    ``training`` maps a model name to the training record of one of its
    instances (the first seed's); ``items`` are the :func:`verdicts`.
    """
    by_model = {r["model"]: r for r in rows}
    revive = [answer_knowledge_kept(by_model, items, "TGD-revive-net")] if "TGD-revive-net" in by_model else []
    return [
        answer_knowledge_kept(by_model, items),
        *revive,
        answer_close_to_v2(by_model),
        answer_compute_saved(training, n_train, n_finetune),
        answer_online_learning(by_model),
    ]


# --------------------------------------------------------------------------- report


def instance_label(key: str, instances: Mapping[str, Mapping]) -> str:
    """A network's display name, with its fine-tuning seed when it has one."""
    inst = instances.get(key, {"model": key, "seed": None})
    label = LABELS.get(inst["model"], inst["model"])
    return label if inst["seed"] is None else f"{label} (seed {inst['seed']})"


def git_line(git: Mapping | None) -> str:
    if not git or not git.get("commit"):
        return "git commit: unknown (not run from a git checkout)"
    dirty = {True: " (with uncommitted changes)", None: " (uncommitted changes not recorded)"}.get(git.get("dirty"), "")
    return f"git commit {git['commit']}{dirty}"


def provenance_line(results: Mapping) -> str:
    """The code the run came from; an interrupted run resumed with ``--resume`` names every attempt's commit."""
    attempts = results.get("attempts") or []
    if len(attempts) < 2:
        return git_line(results.get("git")) + "."
    each = "; ".join(f"{a.get('started', '?')} from {git_line(a.get('git'))}" for a in attempts)
    return (f"Interrupted and resumed with `--resume` ({len(attempts)} attempts; steps marked *continued* below "
            f"went on from an earlier attempt's last complete epoch): {each}.")  # fmt: skip


def duration(seconds: float) -> str:
    """``1 h 05 min`` or ``12 min``: a run's wall time for the report's first line."""
    hours, minutes = divmod(round(seconds / 60), 60)
    if not hours:
        return f"{minutes} min" if minutes else "under a minute"
    return f"{hours} h {minutes:02d} min"


def precision_line(results: Mapping) -> str:
    """The sentence that says in which precision the run trained and evaluated (empty for a run from before
    2026-12-02, which did not record it)."""
    p = results.get("precision")
    if not p:
        return ""
    training = "fp32" if p["training"] == "fp32" else f"{p['training']} autocast (fp32 weights and optimiser)"
    return f" Training in {training}; evaluation in {p['evaluation']} (the kernel-drop study and figures in fp32)."


def report_markdown(results: dict, link: str) -> str:
    """The report: what ran, how to repeat it, Table 1 with error bars, the verdicts, KSE against training
    length, the BN statistics after TGD, the figures and the answers, all from ``results`` (results.json).

    ``link`` is the path from the report's folder to the results folder ("" beside it).
    """
    s = results["scale"]
    instances = results["instances"]
    prefix = f"{link}/" if link else ""
    levels = ", ".join(f"{x:g}" for x in s["levels_s"])
    commands = "\n".join(f"# {step}\n{command}" for step, command in results["commands"].items())
    steps = markdown_table(
        ["step", "wall time s", "CPU time s"],
        [[k + (" (*continued*: this attempt's part)" if v.get("continued") else ""), f"{v['wall_s']:.1f}",
          f"{v['cpu_s']:.1f}"] for k, v in results["steps"].items()]
        + [["total", f"{results['total_s']:.1f}", ""]],
    )
    nets = markdown_table(
        ["network", "starts from", "data (studies)", "epochs", "patches / epoch", "patches seen", "training s"],
        [
            [instance_label(name, instances), instance_label(r["base"], instances) if r.get("base") else "scratch",
             f"{r['data']} ({r['studies']})", str(r["epochs"]), f"{r['patches_per_epoch']:,}",
             f"{r['patches_seen']:,}", f"{r['wall_s']:.1f}"]
            for name, r in results["training"].items()
        ],
    )  # fmt: skip
    v = results["versions"]
    datasets = "\n".join(f"- `{name}` (seed {d['seed']}): {d['summary']}" for name, d in results["datasets"].items())
    tests = ", ".join(f"{key}: {', '.join(ids)}" for key, ids in results["test_studies"].items())
    answers = "\n\n".join(f"{i}. {text}" for i, text in enumerate(results["answers"], start=1))
    seeds = ", ".join(str(x) for x in results["finetune_seeds"])
    every = s.get("every_seed")
    seeded = (f"every fine-tuning and online-learning network is trained with each of the fine-tuning seeds {seeds}"
              if every is None else
              f"{', '.join(LABELS.get(m, m) for m in every)} are trained with each of the fine-tuning seeds {seeds}, "
              f"the other fine-tuned and online-learning networks with seed {results['finetune_seeds'][0]} only")
    penalty = (f", with a channel penalty of {s['channel_penalty']:g}: a group lasso over feature maps that leaves "
               "spare capacity for TGD" if s.get("channel_penalty") else "")
    drop = markdown_table(
        ["phi", "parameters flagged % (measured, end of training)", "paper %", "output change when dropped %"],
        [[f"{p['phi']:.1f}", _fmt(100 * p["fraction_dropped"], 1), _fmt(p["paper_dropped_pct"], 1),
          _fmt(100 * p["output_change"], 2)] for p in results["kernel_drop"]],
    )  # fmt: skip
    return f"""# Reproduction of Targeted Gradient Descent (Chen, Asma, Chan, MICCAI 2021) on simulated PET

Scale **{s['name']}**: {s['summary']}; this run took {duration(results['total_s'])} in all on {v['device']}.
Written by `scripts/reproduce_paper.py` from the numbers it measured
(rebuild it from `{prefix}results.json` with `--report-only`); nothing here is written by hand.
{provenance_line(results)}

## What ran

Simulated data (tgdpet's whole-body PET simulator; v1 = coarse-noise reconstruction, v2 = finer noise, the
same counts), {s['size']} x {s['size']} x {s['slices']} voxels, count levels {levels} s against a 600 s target,
tests of {s['realisations']} x 60 s realisations, {s['test_studies']} test studies per BMI class ({tests}):

{datasets}

The fine-tuning studies are separate from the {s['n_train']} training studies, as in the paper. The tests are on v2
images. v1-net and v2-net are trained once (seed {results['seed']}{penalty}); {seeded} from the same
v1-net / v2-net. TGD²-net is TGD-net
fine-tuned by TGD again (masks from its own weights) on the `third` dataset, a third task the paper's TGD²
notation allows; TGD²-N2N is the paper's TGD-net + online learning. TGD-net, TGD²-net, TGD-N2N and TGD²-N2N use
tgdpet's TGD (parameter-gradient masking, the kernels reading a retrained map retrained too, conv1 frozen, frozen
channels on their stored BatchNorm statistics; docs/tgd.md); TGD-net (paper-literal) and TGD-N2N (paper-literal)
take the paper literally (activation-gradient masking, conv1's meaningless kernels retrained, frozen channels on
batch statistics while training, every kernel of a frozen channel frozen). TGD-net, TGD²-net and TGD-N2N (revive)
are tgdpet's TGD with `--revive`: retrained channels whose maps are silent on the new data re-initialised, with the
kernels reading them zeroed so the output is unchanged at the start (docs/tgd.md); TGD²-net (revive) is TGD-net
(revive) fine-tuned again on `third` with `--revive`.

{nets}

An epoch is one random {s['patch_size']}x{s['patch_size']}x3 patch per input slice of the dataset (studies x count
levels x slices; for N2N the two halves), so compute scales with the data as in the paper, where every network
trained 500 epochs (N2N 150). Adam, lr 1e-3, MSE, batch {s['batch_size']}, network preset `{s['preset']}`.{precision_line(results)}
Training times are the training loop alone (the step times below add data loading).

## Table 1

Lesion ensemble bias and liver CoV over the realisations of each test study (eq. 6-7 of the supplement, the 600 s
image as reference); the hallucination score is the relative RMS error of the ensemble mean over the realisations
(mean denoised image minus the 600 s image) in and around the bladder and the catheter of the OOD study, so noise
that averages out over the realisations does not count. The N2N networks were adapted to the OOD study only;
their low- and high-BMI figures show what online learning did to their general denoising. TGD-net (BN re-est.)
is TGD-net with its frozen channels' BatchNorm running statistics re-estimated on the fine-tuning data (below).
For v1-net and v2-net (trained once) the ± is over the test studies alone; for every other network over
seeds x test studies.

{results['table1_markdown']}
## Verdicts

{verdicts_markdown(results['verdicts'])}
## KSE against training length

Parameters KSE flags (kernels with KSE < phi: those TGD retrains, or the kernel-drop study removes) in v1-net,
scored after each epoch of its training. The paper's figures are for 500 epochs.

{kse_curve_markdown(results.get('kse_curve', []))}
At the end of training, and what dropping the flagged kernels does to v1-net's output (Fig. 4):

{drop}

## BatchNorm statistics of frozen channels after TGD

TGD keeps the frozen channels' BN running mean and variance (by design: they are part of v1-net's knowledge),
but the new task's data gives those channels other batch statistics. Measured on
{results.get('bn', {}).get('patches', 0):,} fine-tuning patches (drawn as in training), each BN's input with the
network in eval mode: the mean shift in running standard deviations and the log variance ratio, per channel,
averaged over frozen and over retrained channels. v1-net's row is the same measure before any fine-tuning.

{bn_markdown(results.get('bn', {}))}
Re-estimating the frozen channels' running statistics on the fine-tuning data changes Table 1's figures as the
row TGD-net (BN re-est.) shows; paired against TGD-net:

{verdicts_markdown(results.get('bn', {}).get('verdicts', []), rule=False)}
## Figures

- [Fig. 4]({prefix}fig4.md) ([image]({prefix}fig4.png)): kernels dropped by KSE threshold on v1-net.
- [Fig. 5]({prefix}fig5.png): low- and high-BMI test slices through the lesion (red arrow), first 60 s
  realisation, every fine-tuning method (first seed), one grey scale per row (Bq/mL).
- [Fig. 6]({prefix}fig6.png): the OOD study's 120 s image (mean of the N2N halves) through bladder and catheter,
  denoised by v2-net, TGD-net, TGD-N2N and TGD²-N2N (first seed); second row: minus the 600 s image.

## Answers, from the measured numbers

{answers}

## Differences from the paper

Simulated instead of clinical studies; studies: {s['n_train']} + {s['n_finetune']} (paper: 20 + 7); epochs:
{s['epochs']} (paper: 500) and {s['n2n_epochs']} for N2N (paper: 150); network preset `{s['preset']}` (the paper's
widths are the preset `paper`); {s['test_studies']} test studies per BMI class and {s['seeds']} fine-tuning
seed(s) (the paper: one study each, one run).

## How to repeat it

```
python scripts/reproduce_paper.py --scale {s['name']} --out {results['out']} --device {results['device_arg']} \\
    --seed {results['seed']}
```

The same steps with the `tgdpet` command (the datasets have no command equivalent: `tgdpet simulate` draws a
fixed cohort; the script calls `tgdpet.simulate.write_dataset` with the study lists above):

```
{commands}
```

Seed {results['seed']} (datasets: {', '.join(f"{k} {d['seed']}" for k, d in results["datasets"].items())}).
Versions: tgdpet {v['tgdpet']}, torch {v['torch']}, numpy {v['numpy']}, Python {v['python']}; {v['platform']};
device {v['device']}.

Time per step (the CPU time counts all threads; wall time well above CPU time / threads means the cores were
shared with other work):

{steps}
"""


# --------------------------------------------------------------------------- images


def busiest_slice(mask: np.ndarray) -> int:
    """The axial slice holding most voxels of ``mask`` (z, y, x): the slice a figure shows."""
    counts = np.asarray(mask).reshape(mask.shape[0], -1).sum(axis=1)
    if not counts.any():
        raise ValueError("the region to show is empty")
    return int(np.argmax(counts))


def crop_box(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    """The bounding box of a 2D ``mask`` grown by ``margin`` pixels, clipped to the image."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return slice(None), slice(None)
    h, w = mask.shape
    return (
        slice(max(int(ys.min()) - margin, 0), min(int(ys.max()) + margin + 1, h)),
        slice(max(int(xs.min()) - margin, 0), min(int(xs.max()) + margin + 1, w)),
    )


def centroid(mask: np.ndarray) -> tuple[float, float] | None:
    """(y, x) centre of a 2D mask, or None when it is empty."""
    ys, xs = np.nonzero(mask)
    return (float(ys.mean()), float(xs.mean())) if ys.size else None


@dataclass
class PanelRow:
    """One row of a figure: images shown on one shared grey (or colour) scale."""

    label: str
    panels: list[tuple[str, np.ndarray] | None]  # None leaves a column empty, to align rows
    vmin: float
    vmax: float
    cmap: str = "gray_r"
    marker: tuple[float, float] | None = None  # (y, x) a red arrow points at, e.g. the lesion


def display_range(reference: np.ndarray, percentile: float = 99.5) -> tuple[float, float]:
    """0 to a high percentile of the reference: every panel of a row uses it, so intensities compare."""
    vmax = float(np.percentile(reference, percentile))
    return 0.0, vmax if vmax > 0 else 1.0


def difference_range(differences: Sequence[np.ndarray]) -> tuple[float, float]:
    """A symmetric range that holds 99.5 % of all the difference images' values."""
    v = max(float(np.percentile(np.abs(d), 99.5)) for d in differences) or 1.0
    return -v, v


def save_panels(path: str | Path, rows: Sequence[PanelRow], title: str, caption: str = "") -> Path:
    """Draw rows of image panels (one shared scale and a colour bar per row) into a PNG, atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_cols = max(len(r.panels) for r in rows)
    height, width = next(p for p in rows[0].panels if p is not None)[1].shape
    aspect = height / width
    fig = Figure(figsize=(2.2 * n_cols + 1.0, 2.2 * aspect * len(rows) + 0.8 + 0.3 * bool(caption)), dpi=120,
                 layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    for r, row in enumerate(rows):
        image = None
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(row.panels) or row.panels[c] is None:
                ax.set_axis_off()
                continue
            name, img = row.panels[c]
            image = ax.imshow(img, cmap=row.cmap, vmin=row.vmin, vmax=row.vmax, interpolation="nearest")
            ax.set_title(name, fontsize=8)
            if row.marker is not None:
                y, x = row.marker
                off = 0.18 * max(img.shape)
                ax.annotate("", xy=(x, y), xytext=(x + off, y - off),
                            arrowprops={"arrowstyle": "->", "color": "red", "lw": 1.2})  # fmt: skip
        first = next(c for c, panel in enumerate(row.panels) if panel is not None)
        axes[r, first].set_ylabel(row.label, fontsize=8)
        fig.colorbar(image, ax=list(axes[r]), fraction=0.02, pad=0.01)
    fig.suptitle(title, fontsize=10)
    if caption:
        fig.supxlabel(caption, fontsize=7)
    dest = Path(path)
    with atomic_file(dest, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return dest


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically (UTF-8)."""
    dest = Path(path)
    with atomic_file(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return dest
