"""One reproduction from the command line to results.json and the report: fresh, resumed, or the report alone."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..data import load_manifest
from ..errors import TgdpetError
from ..files import check_can_write
from ..io import read_volume
from ..runtime import resolve_device
from .analyses import DropPoint, fig4_markdown
from .bookkeeping import Run, cli, git_state, prepare_out, read_progress, versions
from .figures import busiest_slice
from .measure import bn_study, crop_margin, evaluate_all, fig4_rows, kernel_drop, regions, write_figures
from .report import report_markdown, write_text
from .scales import BN_REESTIMATED, DROP_PHIS, FORMAT_VERSION, MODELS, SCALES
from .steps import describe, find_test_studies, kse_curve, online_learning, precisions, simulate, train_networks
from .table import PAPER_DROPPED_PCT, PAPER_TABLE1, PAPER_TIME_SAVED_PCT, table1_markdown, table1_rows
from .verdicts import TASKS, VERDICT_FIGURES, VERDICT_PAIRS, answers, compare, task_verdict, verdicts


def derived(results: dict) -> dict:
    """What results.json holds that follows from its measured numbers: Table 1, the verdicts, the answers.

    Recomputed by ``--report-only``, so the markdown always follows the numbers.
    """
    evaluation, instances, training = results["evaluation"], results["instances"], results["training"]
    rows = table1_rows(evaluation, instances, training, MODELS)
    items = verdicts(evaluation, instances)
    first = {}
    for key, inst in instances.items():
        if key in training:
            first.setdefault(inst["model"], training[key])
    bn = dict(results.get("bn", {}))
    if bn:
        bn["verdicts"] = [{"task": task, **compare(evaluation, instances, BN_REESTIMATED, "TGD-net", study, figure,
                                                      how)}
                          for task, figures in VERDICT_FIGURES.items() for study, figure, how in figures]  # fmt: skip
    s = results["scale"]
    return {
        "table1": rows,
        "table1_markdown": table1_markdown(rows),
        "verdicts": items,
        "task_verdicts": {f"{a} vs {b}, {task}": task_verdict(items, a, b, task)
                          for a, b in VERDICT_PAIRS for task in TASKS},  # fmt: skip
        "bn": bn,
        "answers": answers(rows, first, items, s["n_train"], s["n_finetune"]),
    }


def write_report(results: dict, out: Path, docs: Path | None) -> None:
    """table1.md, fig4.md, results.json and README.md in ``out`` (and the report at ``docs``), from ``results``."""
    drop = [DropPoint(p["phi"], p["fraction_dropped"], p["output_change"], np.zeros(0)) for p in results["kernel_drop"]]
    write_text(out / "table1.md", "# Table 1 (simulated data)\n\n" + results["table1_markdown"])
    write_text(out / "fig4.md", fig4_markdown(drop, "fig4.png"))
    write_text(out / "results.json", json.dumps(results, indent=2, allow_nan=False) + "\n")
    write_text(out / "README.md", report_markdown(results, ""))
    if docs is not None:
        write_text(docs, report_markdown(results, os.path.relpath(out, docs.parent)))


def reproduce(args: argparse.Namespace) -> dict:
    """The whole reproduction (module docstring); returns what results.json holds."""
    if args.resume and args.overwrite:
        raise TgdpetError("--resume continues the run in --out and --overwrite replaces it; pass one of them.")
    docs = check_can_write(args.docs, args.overwrite or args.resume) if args.docs else None  # before the long run
    out = Path(args.out)
    prepare_out(out, args.overwrite, args.resume)
    scale = SCALES[args.scale]
    progress = read_progress(out, scale, args.seed) if args.resume else {}
    run = Run(scale, out, args.seed, args.device, resolve_device(args.device), args.overwrite, args.resume)
    run.done, run.log.steps = progress.get("done", {}), progress.get("steps", {})
    # The code each attempt starts from; a long run's checkout may move on before it ends.
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    run.attempts = [*progress.get("attempts", []), {"git": git_state(), "started": started}]
    if not run.resume:
        run.save_progress()  # so that a run killed in its first step can be resumed; a resume is saved by its steps
    run.log(f"{'resuming' if run.resume else 'reproducing'} the TGD paper at scale {run.scale.name} "
            f"({run.scale.summary}) on {run.device}, seed {run.seed}, into {out}")  # fmt: skip

    configs = simulate(run)
    main_v1, main_v2 = load_manifest(run.data / "main" / "v1"), load_manifest(run.data / "main" / "v2")
    studies = {
        "low_bmi": find_test_studies(main_v2, "low", "tumour"),
        "high_bmi": find_test_studies(main_v2, "high", "tumour"),
        "ood": find_test_studies(main_v2, "normal", "catheter")[:1],
    }
    train_networks(run)
    online_learning(run, studies["ood"][0])
    bn = run.log.timed("BatchNorm statistics after TGD", lambda: bn_study(run))

    low_v1 = next(s for s in main_v1.studies if s.id == studies["low_bmi"][0].id)  # held out, v1, 60 s
    image = read_volume(low_v1.realisations[0]).data
    z = busiest_slice(regions(low_v1, main_v1.label_codes)["liver"])
    v1_slice, drop = run.log.timed("kernel-drop study", lambda: kernel_drop(run.model("v1-net"), image, z, run.device))
    run.commands["kernel drop (Fig. 4)"] = cli("score-kse", run.model("v1-net"), drop=True,
                                               phis=",".join(map(str, DROP_PHIS)), volume=low_v1.realisations[0])

    evaluation = evaluate_all(run, main_v2, studies)
    curve = run.log.timed("KSE of v1-net after each epoch", lambda: kse_curve(run.snapshots))
    fig4 = fig4_rows(image[z], v1_slice, drop, crop_margin(run.scale))
    first = {key: entries[0] for key, entries in studies.items()}
    run.log.timed("figures", lambda: write_figures(run, fig4, first, main_v2.label_codes))

    results = {
        "format": "tgdpet-reproduction",
        "format_version": FORMAT_VERSION,
        "git": run.attempts[0]["git"],
        "attempts": run.attempts,
        "scale": asdict(run.scale),
        "seed": run.seed,
        "finetune_seeds": run.seeds,
        "out": str(out),
        "device_arg": run.device_arg,
        "versions": versions(run.device),
        "precision": precisions(run.device),
        "datasets": {name: {"seed": c.seed, "summary": describe(c), "studies": [asdict(s) for s in c.studies]}
                     for name, c in configs.items()},  # fmt: skip
        "test_studies": {key: [study.id for study in entries] for key, entries in studies.items()},
        "instances": run.instances,
        "training": {name: {"model": run.instances[name]["path"], **record} for name, record in run.training.items()},
        "kse_curve": curve,
        "kernel_drop": [{"phi": p.phi, "fraction_dropped": p.fraction_dropped, "output_change": p.output_change,
                         "paper_dropped_pct": PAPER_DROPPED_PCT[p.phi]} for p in drop],  # fmt: skip
        "bn": bn,
        "evaluation": evaluation,
        "paper": {"table1_low_bmi": PAPER_TABLE1, "time_saved_pct": PAPER_TIME_SAVED_PCT,
                  "dropped_pct": PAPER_DROPPED_PCT},  # fmt: skip
        "commands": run.commands,
        "steps": run.log.steps,
        "total_s": round(sum(a.get("wall_s", 0) for a in run.attempts[:-1]) + time.perf_counter() - run.log.start, 1),
    }
    results.update(derived(results))
    write_report(results, out, docs)
    run.log(f"done in {results['total_s']:.0f} s: {out / 'README.md'}")
    return results


def report_only(args: argparse.Namespace) -> dict:
    """Rebuild Table 1, the verdicts, the answers and the markdown from ``--out``'s results.json (no training)."""
    out = Path(args.out)
    path = out / "results.json"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TgdpetError(f"{path} does not exist; run the reproduction into {out} first.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TgdpetError(f"{path} is not a readable results file ({e}); run the reproduction again.") from None
    if results.get("format") != "tgdpet-reproduction" or results.get("format_version") != FORMAT_VERSION:
        raise TgdpetError(
            f"{path} is not a results file of this script's format (tgdpet-reproduction version {FORMAT_VERSION}); "
            "run the reproduction again to get one."
        )
    docs = Path(args.docs) if args.docs else None
    results.update(derived(results))
    write_report(results, out, docs)
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Reproduce Chen, Asma & Chan, "Targeted Gradient Descent" (MICCAI 2021) on simulated PET data.'
    )
    parser.add_argument("--scale", choices=SCALES, default="small",
                        help="small: 2 CPU cores, under an hour, one seed; medium: 2 CPU cores, about 2 h with bf16 "
                             "units (4 h in fp32), 3 seeds x 3 test studies for error bars; paper: a GPU; tiny: a "
                             "few-minute pipeline check")
    parser.add_argument("--out", default="results", help="folder for data, models, tables, figures [default: results]")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N [default: auto]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the weights and the patches")
    parser.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run in --out (same --scale and --seed): finished steps are "
                             "kept, training continues from its last complete epoch")
    parser.add_argument("--docs", help="also write the report here, e.g. docs/reproduction/README.md")
    parser.add_argument("--report-only", action="store_true",
                        help="rebuild table1.md, fig4.md, README.md (and --docs) from --out's results.json")
    return parser.parse_args(argv)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report_only(args) if args.report_only else reproduce(args)
    except TgdpetError as e:
        print(f"Error: {e}", file=sys.stderr)
        return TgdpetError.exit_code
    return 0

