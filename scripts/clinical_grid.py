"""Does a model denoise the images clinics make? Test studies across voxel sizes and reconstructions.

    python scripts/clinical_grid.py --work WORK [--model NAME=FILE ...] [--voxels 2.0,2.7,4.0]
                                    [--protocols v1,v2,sharp,smooth] [--seeds 5000,6000]
                                    [--realisations 5] [--no-resample] [--json out.json]

For every voxel size and seed, ``tgdpet simulate`` draws a low-, a normal- and
a high-BMI test study (the 20 mm 4:1 liver tumour, ``R`` disjoint 60 s
realisations of a 600 s scan) and reconstructs each with every protocol
(kept in ``WORK/data/<voxel>mm_seed<S>`` and reused by later runs). Every
model denoises every realisation as ``tgdpet denoise`` would (finer voxels
than the model's on its grid, unless ``--no-resample``), and ``tgdpet
evaluate``'s figures are printed per cell: the tumour's bias against the
600 s image and the liver CoV as a multiple of the input's, with the
project's targets (bias within +-5 %, CoV at most 0.5x) checked. Without
``--model`` the built-in model is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from tgdpet.evaluate import evaluate_manifest  # noqa: E402
from tgdpet.files import atomic_file  # noqa: E402
from tgdpet.builtin import pretrained_model_path  # noqa: E402
from tgdpet.simulate import SimulationConfig, cohort, write_dataset  # noqa: E402
from tgdpet.simulate.grid import AXIAL_FOV_MM, TRANSAXIAL_FOV_MM  # noqa: E402

BIAS_TARGET_PCT, COV_TARGET = 5.0, 0.5
BODIES = ("low", "normal", "high")


def dataset(work: Path, voxel_mm: float, seed: int, protocols: list[str], realisations: int) -> Path:
    """The test studies at one voxel size and seed (simulated once, then reused)."""
    out = work / "data" / f"{voxel_mm:g}mm_seed{seed}"
    missing = [p for p in protocols if not (out / p / "manifest.json").is_file()]
    if missing and out.exists():
        raise SystemExit(f"{out} lacks protocols {', '.join(missing)}; remove it to simulate it again.")
    if missing:
        config = SimulationConfig(
            studies=cohort(0, BODIES, ood=()),
            size=round(TRANSAXIAL_FOV_MM / voxel_mm),
            slices=round(AXIAL_FOV_MM / voxel_mm),
            protocols=tuple(protocols),
            realisations=realisations,
            seed=seed,
            progress=False,
        )
        start = time.perf_counter()
        out.parent.mkdir(parents=True, exist_ok=True)
        write_dataset(out, config)
        print(f"simulated {out} in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    return out


def cell(study: dict, model: str) -> dict:
    """One study's figures for one model: tumour bias, liver CoV ratio, liver bias."""
    rows = study["rows"]
    return {
        "lesion_bias_pct": rows[model]["lesion_bias_pct"],
        "cov_ratio": rows[model]["liver_cov_pct"] / rows["input"]["liver_cov_pct"],
        "liver_bias_pct": rows[model]["liver_bias_pct"],
        "input_cov_pct": rows["input"]["liver_cov_pct"],
    }


def meets(c: dict) -> bool:
    return abs(c["lesion_bias_pct"]) <= BIAS_TARGET_PCT and c["cov_ratio"] <= COV_TARGET


def table(results: list[dict], model: str) -> str:
    """Markdown: a row per voxel size and protocol, a column per BMI class (one entry per seed)."""
    lines = [
        f"| voxels, protocol | {' | '.join(f'{b} BMI: tumour bias % / liver CoV x' for b in BODIES)} | targets met |",
        "|---|---|---|---|---|",
    ]
    keys = list(dict.fromkeys((r["voxel_mm"], r["protocol"]) for r in results))
    for voxel, protocol in keys:
        runs = [r for r in results if (r["voxel_mm"], r["protocol"]) == (voxel, protocol)]
        cols, met, total = [], 0, 0
        for body in BODIES:
            entries = []
            for r in runs:
                c = r["cells"][body][model]
                entries.append(f"{c['lesion_bias_pct']:+.1f} / {c['cov_ratio']:.2f}")
                met, total = met + meets(c), total + 1
            cols.append(", ".join(entries))
        lines.append(f"| {voxel:g} mm, {protocol} | {' | '.join(cols)} | {met}/{total} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the simulated test studies")
    parser.add_argument("--model", action="append", default=[], help="NAME=FILE (repeatable; default: built-in)")
    parser.add_argument("--voxels", default="2.0,2.7,4.0", help="voxel sizes in mm (isotropic)")
    parser.add_argument("--protocols", default="v1,v2,sharp,smooth")
    parser.add_argument("--seeds", default="5000,6000")
    parser.add_argument("--realisations", type=int, default=5)
    parser.add_argument("--no-resample", action="store_true", help="run the network on the input's own grid")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    models = dict(m.split("=", 1) for m in args.model) or {"built-in": str(pretrained_model_path())}
    protocols = args.protocols.split(",")
    results = []
    for voxel in (float(v) for v in args.voxels.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            data = dataset(args.work, voxel, seed, protocols, args.realisations)
            for protocol in protocols:
                start = time.perf_counter()
                evaluated = evaluate_manifest(
                    data / protocol, models, device=args.device, precision="auto", resample=not args.no_resample
                )
                cells = {
                    body: {m: cell(s, m) for m in models}
                    for body, s in zip(BODIES, evaluated["studies"])
                }  # fmt: skip
                results.append({"voxel_mm": voxel, "seed": seed, "protocol": protocol, "cells": cells})
                print(f"{voxel:g} mm, seed {seed}, {protocol}: evaluated in {time.perf_counter() - start:.0f} s "
                      + json.dumps(cells), file=sys.stderr, flush=True)  # fmt: skip
    for model in models:
        print(f"\n{model} ({'network on the input grid' if args.no_resample else 'finer voxels on the model grid'})")
        print(table(results, model))
    if args.json:
        with atomic_file(args.json) as tmp:
            tmp.write_text(json.dumps({"models": models, "resample": not args.no_resample, "results": results}, indent=1))


if __name__ == "__main__":
    main()
