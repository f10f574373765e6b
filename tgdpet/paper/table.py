"""Table 1 from the evaluation's numbers: mean +- sd over every (seed, test study) a network was scored on,
beside the paper's.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

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
    "TGD-net": "TGD-net (no revive)",
    "EWC-net": "EWC-net",
    "TGD2-net": "TGD²-net (no revive)",
    "TGD-N2N": "TGD-N2N",
    "TGD2-N2N": "TGD²-N2N",
    "TGD-net-BN": "TGD-net (no revive, BN re-est.)",
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


def fmt(value: float | None, decimals: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if decimals == 0 else f"{value:.{decimals}f}"


def cell(row: Mapping, key: str, decimals: int = 2) -> str:
    """A Table 1 cell: ``mean ± sd (n)``; ``mean (1)`` for one value, ``-`` for none."""
    mean, sd, n = row.get(key), row.get(f"{key}_sd"), row.get(f"{key}_n", 1 if row.get(key) is not None else 0)
    if mean is None:
        return "-"
    if sd is None:
        return f"{fmt(mean, decimals)} ({n})"
    return f"{fmt(mean, decimals)} ± {fmt(sd, decimals)} ({n})"


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
                fmt(bias),
                cell(by_model[name], "low_bmi_liver_cov_pct"),
                fmt(cov),
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
