"""Does a model denoise the images clinics make? Test studies across voxel sizes and reconstructions.

    python scripts/clinical_grid.py --work WORK [--model NAME=FILE ...] [--voxels 2.0,2.7,4.0]
                                    [--protocols v1,v2,sharp,smooth] [--seeds 5000,6000]
                                    [--realisations 10] [--noise-seed K] [--no-resample] [--tta]
                                    [--json out.json]

For every voxel size and seed, ``tgdpet simulate`` draws a low-, a normal- and
a high-BMI test study (the 20 mm 4:1 liver tumour, ``R`` disjoint 60 s
realisations of a 600 s scan; the paper's 10 by default, which together are
that scan, so the inputs' ensemble mean differs from the 600 s image only by
the reconstruction's count-dependence) and reconstructs each with every protocol
(kept in ``WORK/data/<voxel>mm_seed<S>`` and reused by later runs). Every
model denoises every realisation as ``tgdpet denoise`` would (on the working
grid it chooses per image, unless ``--no-resample``), and ``tgdpet
evaluate``'s figures are printed per cell: the tumour's bias against the
600 s image and the liver CoV as a multiple of the input's, with the
project's targets (bias within +-5 %, CoV at most 0.5x) checked, the
bias's standard error (+-, paired with the inputs over the realisations:
``tgdpet.metrics.paired_bias_standard_error``), and the inputs' own tumour bias beside them
(the JSON also holds the tumour's change by denoising, denoised against
input, and how many realisations went to each working grid,
``working_grids_mm``). ``--noise-seed K`` scans the same patients again
(``tgdpet simulate --noise-seed``: the phantoms of ``--seeds``, new counts'
noise), so a cell's figure can be repeated on an independent scan. Without
``--model`` the built-in model is measured; ``--tta`` averages each network's
output over the 8 in-plane flips, as ``tgdpet denoise --tta`` does.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from _user_errors import (  # noqa: E402
    ArgumentParser,
    comma_list,
    output_file,
    positive_float,
    positive_int,
    run,
    seed_int,
)
from tgdpet.builtin import resolve_model  # noqa: E402
from tgdpet.errors import TgdpetError  # noqa: E402
from tgdpet.evaluate import evaluate_manifest, prepare_denoisers  # noqa: E402
from tgdpet.files import atomic_file  # noqa: E402
from tgdpet.simulate import SimulationConfig, cohort, write_dataset  # noqa: E402
from tgdpet.simulate.grid import AXIAL_FOV_MM, TRANSAXIAL_FOV_MM  # noqa: E402

BIAS_TARGET_PCT, COV_TARGET = 5.0, 0.5
BODIES = ("low", "normal", "high")


def simulation(
    voxel_mm: float, seed: int, protocols: list[str], realisations: int, noise_seed: int | None
) -> SimulationConfig:
    """The test studies at one voxel size and seed: the low-, normal- and high-BMI study, every protocol."""
    try:
        return SimulationConfig(
            studies=cohort(0, BODIES, ood=()),
            size=round(TRANSAXIAL_FOV_MM / voxel_mm),
            slices=round(AXIAL_FOV_MM / voxel_mm),
            protocols=tuple(protocols),
            realisations=realisations,
            seed=seed,
            noise_seed=noise_seed,
            progress=False,
        )
    except TgdpetError as e:
        raise TgdpetError(f"the test studies at {voxel_mm:g} mm voxels, seed {seed}: {e}") from None


def dataset_folder(work: Path, config: SimulationConfig, voxel_mm: float) -> Path:
    """Where ``config``'s studies are kept; a folder already there must hold them (it is reused, not replaced)."""
    rescan = "" if config.noise_seed is None else f"_noise{config.noise_seed}"
    out = work / "data" / f"{voxel_mm:g}mm_seed{config.seed}{rescan}"
    missing = [p for p in config.protocols if not (out / p / "manifest.json").is_file()]
    if missing and out.exists():
        raise TgdpetError(f"{out} lacks protocols {', '.join(missing)}; remove it to simulate it again.")
    if not missing:
        held = json.loads((out / "simulation.json").read_text())["config"]["realisations"]
        if held != config.realisations:
            raise TgdpetError(f"{out} holds {held} realisations a study, not {config.realisations}; "
                              f"pass --realisations {held} or use another --work.")  # fmt: skip
    return out


def simulate(out: Path, config: SimulationConfig) -> None:
    """Simulate the studies into ``out``, unless an earlier run did."""
    if out.exists():
        return
    start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    write_dataset(out, config)
    print(f"simulated {out} in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)


def named_models(specs: list[str]) -> dict[str, str]:
    """``--model NAME=FILE`` values as name -> model file (FILE may name a built-in model); default: the built-in."""
    models: dict[str, str] = {}
    for spec in specs:
        name, sep, model = (part.strip() for part in spec.partition("="))
        if not sep or not name or not model:
            raise TgdpetError(f"--model {spec!r} must be NAME=FILE, e.g. --model v1-net=runs/v1/best.safetensors.")
        if name in models:
            raise TgdpetError(f"--model names {name!r} twice; give every model its own name.")
        models[name] = str(resolve_model(model))
    return models or {"built-in": str(resolve_model(None))}


def cell(study: dict, model: str) -> dict:
    """One study's figures for one model: tumour bias (and its standard error), liver CoV ratio and bias, the input's.

    ``lesion_change_pct`` is what denoising did to the tumour: the denoised
    images' ensemble mean over the tumour against the inputs', both read from
    their biases against the same 600 s image. The bias mixes that with the
    inputs' own departure from the 600 s image (``input_lesion_bias_pct``:
    the counts left out of the realisations, and the reconstruction's
    count-dependence), which no denoiser can undo.
    """
    rows = study["rows"]
    bias, input_bias = rows[model]["lesion_bias_pct"], rows["input"]["lesion_bias_pct"]
    return {
        "lesion_bias_pct": bias,
        "lesion_bias_se_pct": rows[model]["lesion_bias_se_pct"],
        "cov_ratio": rows[model]["liver_cov_pct"] / rows["input"]["liver_cov_pct"],
        "liver_bias_pct": rows[model]["liver_bias_pct"],
        "input_cov_pct": rows["input"]["liver_cov_pct"],
        "input_lesion_bias_pct": input_bias,
        "lesion_change_pct": 100.0 * ((100.0 + bias) / (100.0 + input_bias) - 1.0),
        "working_grids_mm": _grid_counts(study["working_grids_mm"][model]),
    }


def _grid_counts(grids: list) -> dict[str, int]:
    """How many of a study's realisations were denoised on each working grid, e.g. ``{"3.2 mm": 10}``."""
    names = [" x ".join(f"{v:.3g}" for v in (g[:1] if len(set(g)) == 1 else g)) + " mm" for g in grids]
    return {name: names.count(name) for name in dict.fromkeys(names)}


def meets(c: dict) -> bool:
    return abs(c["lesion_bias_pct"]) <= BIAS_TARGET_PCT and c["cov_ratio"] <= COV_TARGET


def table(results: list[dict], model: str) -> str:
    """Markdown: a row per voxel size and protocol, a column per BMI class (one entry per seed).

    Each entry is the tumour bias % with its standard error (paired with
    the inputs) / liver CoV ratio, then in brackets the inputs' own tumour
    bias %, against which the bias is to be read.
    """
    heading = "BMI: tumour bias % +- SE / liver CoV x (input bias %)"
    lines = [
        f"| voxels, protocol | {' | '.join(f'{b} {heading}' for b in BODIES)}"
        " | targets met |",
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
                bias, se, ratio = c["lesion_bias_pct"], c["lesion_bias_se_pct"], c["cov_ratio"]
                entries.append(f"{bias:+.1f} +-{se:.1f} / {ratio:.2f} ({c['input_lesion_bias_pct']:+.1f})")
                met, total = met + meets(c), total + 1
            cols.append(", ".join(entries))
        lines.append(f"| {voxel:g} mm, {protocol} | {' | '.join(cols)} | {met}/{total} |")
    return "\n".join(lines)


def main() -> None:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the simulated test studies")
    parser.add_argument("--model", action="append", default=[],
                        help="NAME=FILE, FILE a model file or a built-in model's name (repeatable; default: built-in)")
    parser.add_argument("--voxels", type=comma_list(positive_float), default="2.0,2.7,4.0",
                        help="voxel sizes in mm (isotropic)")
    parser.add_argument("--protocols", type=lambda text: text.split(","), default="v1,v2,sharp,smooth")
    parser.add_argument("--seeds", type=comma_list(seed_int), default="5000,6000")
    parser.add_argument(
        "--realisations", type=positive_int, default=10, help="60 s realisations a study (10 make the 600 s scan)"
    )
    parser.add_argument("--noise-seed", type=seed_int, help="scan the same patients again, with this seed's noise")
    parser.add_argument("--no-resample", action="store_true", help="run the network on the input's own grid")
    parser.add_argument("--tta", action="store_true", help="as tgdpet denoise --tta: the mean over 8 in-plane flips")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", type=output_file, help="also write every figure here")
    args = parser.parse_args()
    # everything a user can get wrong is refused before the first study is simulated
    if args.work.exists() and not args.work.is_dir():
        raise TgdpetError(f"--work {args.work} is a file; name a folder for the test studies.")
    models = named_models(args.model)
    prepare_denoisers(models, device=args.device)
    runs = []
    for voxel in args.voxels:
        for seed in args.seeds:
            config = simulation(voxel, seed, args.protocols, args.realisations, args.noise_seed)
            runs.append((voxel, seed, dataset_folder(args.work, config, voxel), config))
    results = []
    for voxel, seed, data, config in runs:
        simulate(data, config)
        for protocol in args.protocols:
            start = time.perf_counter()
            evaluated = evaluate_manifest(
                data / protocol, models, device=args.device, precision="auto", resample=not args.no_resample,
                tta=args.tta,
            )
            cells = {
                body: {m: cell(s, m) for m in models}
                for body, s in zip(BODIES, evaluated["studies"])
            }  # fmt: skip
            run = {"voxel_mm": voxel, "seed": seed, "noise_seed": args.noise_seed, "protocol": protocol}
            results.append({**run, "cells": cells})
            print(f"{voxel:g} mm, seed {seed}, {protocol}: evaluated in {time.perf_counter() - start:.0f} s "
                  + json.dumps(cells), file=sys.stderr, flush=True)  # fmt: skip
    for model in models:
        best_grid = "finer voxels on the best of the grids up to the model's"
        how = "network on the input grid" if args.no_resample else best_grid
        print(f"\n{model} ({how}{', 8 flips averaged' if args.tta else ''})")
        print(table(results, model))
    if args.json:
        with atomic_file(args.json) as tmp:
            record = {"models": models, "resample": not args.no_resample, "tta": args.tta, "results": results}
            tmp.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    run(main)
