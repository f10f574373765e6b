"""Tables, figures and the written report of the paper's reproduction (``scripts/reproduce_paper.py``).

The script runs the experiment; this module turns what it measured into what
a reader checks against the paper: Table 1 beside the published numbers, the
kernel-drop study of Fig. 4, the image panels of Figs 5-6, and answers to the
paper's claims. The answers are sentences *generated from the measured
numbers* with the rule that decides each verdict stated next to it, so a run
that does not support a claim says so.

Everything here is a pure function of numbers and arrays, except the writers
(:func:`save_panels`, :func:`write_text`), which write atomically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .files import atomic_file

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


def table1_rows(
    evaluation: Mapping[str, Mapping], training: Mapping[str, Mapping], models: Sequence[str]
) -> list[dict]:
    """One row per model (the un-denoised input first) with Table 1's figures and its training cost.

    ``evaluation`` maps ``low_bmi``, ``high_bmi`` and ``ood`` to
    :func:`~tgdpet.evaluate.evaluate_models` results; ``training`` maps a
    model name to its record (``wall_s``, ``patches_seen``, ``method``).
    """
    rows = []
    for name in (INPUT, *models):
        row: dict = {"model": name}
        for study, figures in _FIGURES.items():
            scores = evaluation[study]["rows"].get(name)
            for figure in figures:
                row[f"{study}_{figure}"] = _get(scores, figure)
        record = training.get(name)
        row["train_s"] = record["wall_s"] if record else None
        row["patches_seen"] = record["patches_seen"] if record else None
        row["retrained_pct"] = 100 * record["method"]["retrained_fraction"] if record else None
        rows.append(row)
    return rows


def _fmt(value: float | None, decimals: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if decimals == 0 else f"{value:.{decimals}f}"


def markdown_table(headings: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headings) + " |", "|" + "|".join("---" for _ in headings) + "|"]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


def table1_markdown(rows: Sequence[Mapping]) -> str:
    """Table 1 as a markdown table (every model, every study), then the paper's low-BMI numbers beside ours."""
    main = markdown_table(
        ["model"] + [heading for _, heading, _ in TABLE1_COLUMNS],
        [[LABELS[r["model"]]] + [_fmt(r[key], d) for key, _, d in TABLE1_COLUMNS] for r in rows],
    )
    by_model = {r["model"]: r for r in rows}
    paper = markdown_table(
        ["model", "lesion bias % (measured)", "lesion bias % (paper)", "liver CoV % (measured)", "liver CoV % (paper)"],
        [
            [
                LABELS[name],
                _fmt(by_model[name]["low_bmi_lesion_bias_pct"]),
                _fmt(bias),
                _fmt(by_model[name]["low_bmi_liver_cov_pct"]),
                _fmt(cov),
            ]
            for name, (bias, cov) in PAPER_TABLE1.items()
            if name in by_model
        ],
    )
    return f"{main}\n\nLow-BMI study beside the paper's Table 1:\n\n{paper}\n"


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


def answer_knowledge_kept(rows: Mapping[str, Mapping]) -> str:
    """Does TGD-net keep v1-net's knowledge on the high-BMI study better than FT-net? (verdict: liver CoV)."""
    cov = {m: _get(rows.get(m), "high_bmi_liver_cov_pct") for m in ("v1-net", "v2-net", "FT-net", "TGD-net")}
    bias = {m: _get(rows.get(m), "high_bmi_lesion_bias_pct") for m in ("FT-net", "TGD-net")}
    if cov["TGD-net"] is None or cov["FT-net"] is None:
        return "**v1 knowledge on the high-BMI study:** not measurable (no liver CoV on the high-BMI study)."
    diff = cov["TGD-net"] - cov["FT-net"]
    verdict = (
        f"Yes: TGD-net's liver CoV is {abs(diff):.2f} points lower than FT-net's"
        if diff < 0
        else f"No: TGD-net's liver CoV is {diff:.2f} points higher than (or equal to) FT-net's"
    )
    sentence = (
        f"**Does TGD-net keep v1 knowledge on the high-BMI study better than FT-net?** {verdict} "
        f"(TGD-net {cov['TGD-net']:.2f} %, FT-net {cov['FT-net']:.2f} %, v1-net {_fmt(cov['v1-net'])} %, "
        f"v2-net {_fmt(cov['v2-net'])} %). Neither fine-tuning saw a high-BMI study, so the liver noise left "
        "on it measures how much of the v1-net's high-BMI denoising survived (the paper's Fig. 5 argument)."
    )
    if bias["TGD-net"] is not None and bias["FT-net"] is not None:
        better = "smaller" if abs(bias["TGD-net"]) < abs(bias["FT-net"]) else "larger"
        sentence += (
            f" Its lesion bias there is {bias['TGD-net']:.2f} % against FT-net's {bias['FT-net']:.2f} % "
            f"({better} in magnitude)."
        )
    return sentence


def answer_close_to_v2(rows: Mapping[str, Mapping]) -> str:
    """How close does TGD-net come to v2-net (trained from scratch on v2) on the low-BMI study?"""
    b = {m: _get(rows.get(m), "low_bmi_lesion_bias_pct") for m in ("v1-net", "v2-net", "FT-net", "TGD-net")}
    c = {m: _get(rows.get(m), "low_bmi_liver_cov_pct") for m in ("v1-net", "v2-net", "FT-net", "TGD-net")}
    if None in (b["TGD-net"], b["v2-net"], c["TGD-net"], c["v2-net"]):
        return "**TGD-net against v2-net on the low-BMI study:** not measurable (a lesion or liver figure is missing)."
    sentence = (
        f"**How close does TGD-net come to v2-net on the low-BMI study?** Lesion bias {b['TGD-net']:.2f} % against "
        f"{b['v2-net']:.2f} % ({b['TGD-net'] - b['v2-net']:+.2f} points), liver CoV {c['TGD-net']:.2f} % against "
        f"{c['v2-net']:.2f} % ({c['TGD-net'] - c['v2-net']:+.2f} points)."
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
    pairs = [s for s in (_n2n_pair(rows, "v2-net", "TGD-N2N"), _n2n_pair(rows, "TGD-net", "TGD2-N2N")) if s]
    if not pairs:
        return "**Online learning:** not measurable (no bladder or catheter region on the OOD study at this grid)."
    return (
        "**Does TGD-N2N lower the hallucination score while keeping the liver CoV?** On the out-of-distribution "
        "study (hot bladder and catheter, never seen in training), scores over its 60 s realisations: "
        + " ".join(pairs)
        + f" A CoV counts as kept when it moves by at most {COV_KEPT_TOLERANCE:.0%} of its value; the hallucination "
        "score is the relative RMS error against the 600 s image in and around the structure, so it also counts "
        "left-over noise (compare with the input row)."
    )


def answers(rows: Sequence[Mapping], training: Mapping[str, Mapping], n_train: int, n_finetune: int) -> list[str]:
    """The four answers of the report, each generated from the measured numbers."""
    by_model = {r["model"]: r for r in rows}
    return [
        answer_knowledge_kept(by_model),
        answer_close_to_v2(by_model),
        answer_compute_saved(training, n_train, n_finetune),
        answer_online_learning(by_model),
    ]


# --------------------------------------------------------------------------- report


def report_markdown(results: dict, link: str) -> str:
    """The report: what ran, how to repeat it, Table 1, the figures and the answers from the measured numbers.

    ``link`` is the path from the report's folder to the results folder ("" beside it).
    """
    s = results["scale"]
    prefix = f"{link}/" if link else ""
    levels = ", ".join(f"{x:g}" for x in s["levels_s"])
    commands = "\n".join(f"# {step}\n{command}" for step, command in results["commands"].items())
    steps = markdown_table(
        ["step", "wall time s", "CPU time s"],
        [[k, f"{v['wall_s']:.1f}", f"{v['cpu_s']:.1f}"] for k, v in results["steps"].items()]
        + [["total", f"{results['total_s']:.1f}", ""]],
    )
    nets = markdown_table(
        ["network", "starts from", "data (studies)", "epochs", "patches / epoch", "patches seen", "training s"],
        [
            [LABELS[name], LABELS.get(r.get("base"), "scratch"), f"{r['data']} ({r['studies']})",
             str(r["epochs"]), f"{r['patches_per_epoch']:,}", f"{r['patches_seen']:,}", f"{r['wall_s']:.1f}"]
            for name, r in results["training"].items()
        ],
    )  # fmt: skip
    v = results["versions"]
    datasets = "\n".join(f"- `{name}` (seed {d['seed']}): {d['summary']}" for name, d in results["datasets"].items())
    answers = "\n\n".join(f"{i}. {text}" for i, text in enumerate(results["answers"], start=1))
    return f"""# Reproduction of Targeted Gradient Descent (Chen, Asma, Chan, MICCAI 2021) on simulated PET

Scale **{s['name']}**: {s['summary']}. Written by `scripts/reproduce_paper.py` from the numbers it measured;
everything below is in `{prefix}results.json`.

## What ran

Simulated data (tgdpet's whole-body PET simulator; v1 = coarse-noise reconstruction, v2 = finer noise, the
same counts), {s['size']} x {s['size']} x {s['slices']} voxels, count levels {levels} s against a 600 s target,
tests of {s['realisations']} x 60 s realisations:

{datasets}

The fine-tuning studies are separate from the {s['n_train']} training studies, as in the paper. The tests are on v2
images. TGD²-net is TGD-net fine-tuned by TGD again (masks from its own weights) on the `third` dataset, a third
task the paper's TGD² notation allows; TGD²-N2N is the paper's TGD-net + online learning.

{nets}

An epoch is one random {s['patch_size']}x{s['patch_size']}x3 patch per input slice of the dataset (studies x count
levels x slices; for N2N the two halves), so compute scales with the data as in the paper, where every network
trained 500 epochs (N2N 150). Adam, lr 1e-3, MSE, batch {s['batch_size']}, network preset `{s['preset']}`.
Training times are the training loop alone (the step times below add data loading).

## Table 1

Lesion ensemble bias and liver CoV over the realisations of each test study (eq. 6-7 of the supplement, the 600 s
image as reference); the hallucination score is the relative RMS error against the 600 s image in and around the
bladder and the catheter of the OOD study, averaged over its realisations. The N2N networks were adapted to the
OOD study only; their low- and high-BMI figures show what online learning did to their general denoising.

{results['table1_markdown']}
## Figures

- [Fig. 4]({prefix}fig4.md) ([image]({prefix}fig4.png)): kernels dropped by KSE threshold on v1-net.
- [Fig. 5]({prefix}fig5.png): low- and high-BMI test slices through the lesion (red arrow), first 60 s
  realisation, every fine-tuning method, one grey scale per row (Bq/mL).
- [Fig. 6]({prefix}fig6.png): the OOD study's 120 s image (mean of the N2N halves) through bladder and catheter,
  denoised by v2-net, TGD-net, TGD-N2N and TGD²-N2N; second row: minus the 600 s image.

## Answers, from the measured numbers

{answers}

## Differences from the paper

Simulated instead of clinical studies; studies: {s['n_train']} + {s['n_finetune']} (paper: 20 + 7); epochs:
{s['epochs']} (paper: 500) and {s['n2n_epochs']} for N2N (paper: 150); network preset `{s['preset']}` (the paper's
widths are the preset `paper`). Lesion bias and CoV come from one test study each, as in the paper: small
differences between networks may not hold for another seed (`--seed`).

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
