"""The reproduction's written report (README.md of the results folder), every sentence generated from results.json."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from ..files import atomic_file
from .analyses import bn_markdown, kse_curve_markdown
from .table import LABELS, fmt, markdown_table
from .verdicts import verdicts_markdown

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
        [[f"{p['phi']:.1f}", fmt(100 * p["fraction_dropped"], 1), fmt(p["paper_dropped_pct"], 1),
          fmt(100 * p["output_change"], 2)] for p in results["kernel_drop"]],
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
(revive) fine-tuned again on `third` with `--revive`. This run made `--revive` the default of `tgd-finetune` (its
rows keep the old task better than FT-net's); `n2n-online` keeps `--no-revive` as its default (TGD-N2N), since
TGD-N2N (revive) raised the OOD study's liver CoV. The rows marked "no revive" are `tgd-finetune --no-revive`.

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


def write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically (UTF-8)."""
    dest = Path(path)
    with atomic_file(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return dest
