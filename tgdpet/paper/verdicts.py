"""Which method wins, decided on paired differences and two standard errors, and the report's answers, generated
from the numbers.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from .table import (
    COV_KEPT_TOLERANCE,
    LABELS,
    PAPER_TABLE1,
    PAPER_TIME_SAVED_PCT,
    _get,
    cell,
    instances_of,
    markdown_table,
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
        f"against {LABELS[b]}: {_labelled_sentence(task_verdict(items, tgd, b, 'old'))}"
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
