"""Reproduce Chen, Asma & Chan, "Targeted Gradient Descent" (MICCAI 2021) on simulated PET data.

    python scripts/reproduce_paper.py --scale small --out results/ [--device auto] [--seed 0] [--overwrite]
                                      [--docs docs/reproduction.md]

One path from nothing to the paper's Table 1, Fig. 4 and Figs 5-6, through the
library API (the equivalent ``tgdpet`` commands are written to the report):

1. Simulate three datasets (all images of a study come from one scan, so v1
   and v2 differ only in reconstruction):
   - ``main``: N training studies alternating low and high BMI, reconstructed
     with v1 and v2; a low-BMI and a high-BMI test study, each a 600 s scan
     with a liver tumour cut into R x 60 s realisations (the tests are on v2
     images; the low-BMI one also in v1, for Fig. 4); an out-of-distribution
     (OOD) study with a catheter and a very hot bladder (v2), with R x 60 s
     realisations and two 60 s halves of a 120 s scan for Noise2Noise.
   - ``finetune``: low-BMI studies reconstructed with v2 only, *separate* from
     the N training studies, as the paper's 7 low-BMI fine-tuning studies.
   - ``third``: high-BMI v2 studies, a third task for TGD² (TGD-net
     TGD-fine-tuned again with masks from its own weights).
2. Train v1-net (main/v1) and v2-net (main/v2) from scratch, then fine-tune
   v1-net on ``finetune``: FT-net (last three conv blocks), TGD-net
   (phi = 0.3) and EWC-net; TGD²-net = TGD-net fine-tuned by TGD on ``third``.
3. Online learning on the OOD study (phi = 0.4): TGD-N2N from v2-net and
   TGD²-N2N from TGD-net.
4. The kernel-drop study of Fig. 4 on v1-net at phi = 0.3 ... 0.6.
5. Evaluate every model on the three v2 test studies (lesion bias, liver
   CoV, hallucination score) and write table1.md, fig4.md/png, fig5.png,
   fig6.png, results.json and README.md into ``--out``.

Compute. An epoch is one random patch per input slice of the dataset
(studies x count levels x slices), and every network trains the same number of
epochs (the paper: 500 for all, 150 for N2N). Fine-tuning on 7 studies then
costs 7/20 of training on 20: the paper's "64 % of the training time saved".
Scales fix patches, not wall-clock time, so a run is reproducible.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

import tgdpet
from tgdpet import reproduce as rp
from tgdpet.checkpoint import load_model
from tgdpet.data import Manifest, StudyEntry, load_manifest
from tgdpet.errors import TgdpetError
from tgdpet.evaluate import evaluate_models, truth_path
from tgdpet.infer import denoise_array, load_denoiser
from tgdpet.io import read_volume
from tgdpet.runtime import resolve_device
from tgdpet.simulate import OOD_FEATURES, SimulationConfig, StudySpec, write_dataset
from tgdpet.tgd import drop_kernels, relative_rms_change
from tgdpet.train import FinetuneConfig, N2NConfig, TrainConfig, finetune, n2n_online, train
from tgdpet.train.loop import FitResult

#: The paper's thresholds: TGD fine-tuning, online learning, and the kernel-drop study (Fig. 4).
PHI_FINETUNE = 0.3
PHI_N2N = 0.4
DROP_PHIS = (0.3, 0.4, 0.5, 0.6)
#: The fine-tuned networks of Table 1, then the online-learning ones, in table order.
FINETUNED = ("FT-net", "TGD-net", "EWC-net", "TGD2-net")
MODELS = ("v1-net", "v2-net", *FINETUNED, "TGD-N2N", "TGD2-N2N")


@dataclass(frozen=True)
class Scale:
    """How big the reproduction is; everything not set here is the paper's setting."""

    name: str
    summary: str
    size: int  # pixels per row over the 512 mm field of view
    slices: int  # slices over the 576 mm neck-to-pelvis extent
    levels_s: tuple[float, ...]  # count levels of the noisy training inputs (s of the 600 s scan)
    realisations: int  # 60 s realisations of each test study
    n_train: int  # v1 / v2 training studies (low and high BMI alternating)
    n_finetune: int  # separate low-BMI v2 studies for FT-net, TGD-net, EWC-net
    n_third: int  # high-BMI v2 studies for TGD²-net
    preset: str
    batch_size: int
    patch_size: int
    epochs: int  # for every network trained or fine-tuned
    n2n_epochs: int


SCALES = {
    "tiny": Scale(
        "tiny", "pipeline check for tests: a tiny grid and net, one epoch each (numbers are meaningless)",
        size=40, slices=45, levels_s=(60, 180), realisations=2, n_train=2, n_finetune=1, n_third=1,
        preset="tiny", batch_size=16, patch_size=16, epochs=1, n2n_epochs=1,
    ),
    "small": Scale(
        "small", "2 CPU cores in about 50 minutes: 4 mm voxels, the 'small' net (7 x 32 channels), 16 epochs",
        size=128, slices=144, levels_s=(30, 45, 60, 90, 120, 180), realisations=10, n_train=12, n_finetune=4,
        n_third=3, preset="small", batch_size=64, patch_size=32, epochs=16, n2n_epochs=150,
    ),
    "paper": Scale(
        "paper", "a GPU: the paper's 20 + 7 studies, its network and 500 / 150 epochs, 2.7 mm voxels",
        size=192, slices=216, levels_s=(30, 45, 60, 90, 120, 180), realisations=10, n_train=20, n_finetune=7,
        n_third=7, preset="paper", batch_size=64, patch_size=32, epochs=500, n2n_epochs=150,
    ),
}  # fmt: skip


# --------------------------------------------------------------------------- bookkeeping


class Log:
    """Prints what the run is doing, with the time since the start, and keeps each step's wall and CPU time.

    The CPU time (all threads of this process) tells a slow step on a busy
    machine from a slow step: on an idle one, wall ~ CPU / threads.
    """

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.steps: dict[str, dict[str, float]] = {}

    def __call__(self, message: str) -> None:
        minutes, seconds = divmod(time.perf_counter() - self.start, 60)
        print(f"[{int(minutes):3d}:{seconds:04.1f}] {message}", flush=True)

    def timed(self, name: str, action: Callable[[], object]) -> object:
        """Run ``action``, record its wall and CPU time under ``name``, return its result."""
        self(f"{name} ...")
        wall, cpu = time.perf_counter(), time.process_time()
        result = action()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        self.steps[name] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}
        self(f"{name}: done in {wall:.1f} s ({cpu:.1f} CPU s)")
        return result


def cli(*words: object, **options: object) -> str:
    """A ``tgdpet`` command line: positional words, then ``--option value`` (True: a bare flag; None: left out)."""
    parts = ["tgdpet", *(str(w) for w in words)]
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif value is not None and value is not False:
            parts += [flag, str(value)]
    return shlex.join(parts)


def loop_options(cfg: TrainConfig | FinetuneConfig) -> dict:
    """The command-line options that set ``cfg`` (others are the commands' defaults)."""
    keys = ("preset", "method", "phi", "conv1", "tgd_mode", "epochs", "patches_per_epoch", "batch_size",
            "patch_size", "lr", "seed", "device")  # fmt: skip
    options = {k: getattr(cfg, k) for k in keys if hasattr(cfg, k)}
    if getattr(cfg, "method", None) == "ewc":
        options["ewc_lambda"] = cfg.ewc_lambda
    if getattr(cfg, "method", None) in ("all", "last3", "ewc"):
        for k in ("phi", "conv1", "tgd_mode"):
            options.pop(k)
    return options


def fit_record(result: FitResult, model: Path, cfg, step: dict, **facts: object) -> dict:
    """What Table 1 and the report need from a training run; ``step`` is its wall and CPU time in the log."""
    p = result.progress
    return {
        "model": str(model),
        "wall_s": round(p.elapsed_s, 1),  # the training loop alone
        "step_s": step["wall_s"],  # with loading the data (and EWC's Fisher)
        "step_cpu_s": step["cpu_s"],
        "patches_seen": p.patches_seen,
        "patches_per_epoch": cfg.patches_per_epoch,
        "steps": p.step,
        "epochs": p.history[-1]["epoch"] if p.history else 0,
        "final_train_loss": p.history[-1]["train_loss"] if p.history else None,
        "method": result.method,
        **facts,
    }


# --------------------------------------------------------------------------- step 1: data


def dataset_seed(seed: int, index: int) -> int:
    """Seed of the run's dataset ``index``: different datasets must hold different phantoms."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def simulation_configs(scale: Scale, seed: int, device: torch.device) -> dict[str, SimulationConfig]:
    """The three datasets of the run (see the module docstring), keyed by folder name."""
    bodies = ("low", "high")
    main = [StudySpec("train", bodies[i % 2]) for i in range(scale.n_train)] + [
        StudySpec("test", "low", tumour=True),  # v1 too: Fig. 4 runs v1-net on a v1 image
        StudySpec("test", "high", tumour=True, protocols=("v2",)),
        StudySpec("test", "normal", ood=OOD_FEATURES, halves=True, protocols=("v2",)),
    ]
    common = {
        "size": scale.size,
        "slices": scale.slices,
        "levels_s": scale.levels_s,
        "realisations": scale.realisations,
        "device": str(device),
        "progress": False,
    }
    return {
        "main": SimulationConfig(studies=tuple(main), protocols=("v1", "v2"), seed=dataset_seed(seed, 0), **common),
        "finetune": SimulationConfig(
            studies=(StudySpec("train", "low"),) * scale.n_finetune, protocols=("v2",), seed=dataset_seed(seed, 1),
            **common,
        ),
        "third": SimulationConfig(
            studies=(StudySpec("train", "high"),) * scale.n_third, protocols=("v2",), seed=dataset_seed(seed, 2),
            **common,
        ),
    }  # fmt: skip


def find_test_study(manifest: Manifest, body: str, feature: str) -> StudyEntry:
    """The test study of a body size with a feature (``tumour``, ``catheter``), from its manifest ``meta``."""
    for study in manifest.split("test"):
        if study.meta.get("body") == body and feature in study.meta.get("features", ()):
            return study
    raise TgdpetError(f"{manifest.path} has no {body}-BMI test study with a {feature}; simulate the data again.")


def epoch_patches(images_slices: int, batch_size: int) -> int:
    """One patch per input slice, in whole batches (at least one)."""
    return max(batch_size, images_slices // batch_size * batch_size)


# --------------------------------------------------------------------------- step 4: kernel drop


def kernel_drop(model_path: Path, volume: np.ndarray, z: int, device: torch.device) -> tuple[np.ndarray, list[rp.DropPoint]]:
    """Fig. 4: v1-net's output on ``volume`` and, per threshold, with its meaningless kernels dropped.

    Returns v1-net's denoised slice ``z`` and one point per phi (fraction of
    parameters dropped, relative RMS change of the whole denoised volume, slice ``z``).
    """
    model = load_model(model_path, device).model
    reference = denoise_array(model, volume, device=device, precision="fp32")
    points = []
    for phi in DROP_PHIS:
        dropped, fraction = drop_kernels(model, phi)
        out = denoise_array(dropped, volume, device=device, precision="fp32")
        points.append(rp.DropPoint(phi, fraction, relative_rms_change(reference, out), out[z]))
    return reference[z], points


# --------------------------------------------------------------------------- step 6: figures


def regions(study: StudyEntry, codes: dict) -> dict[str, np.ndarray]:
    """The study's label map split into the masks the figures use."""
    labels = np.rint(read_volume(study.labels).data).astype(np.int64)
    return {name: labels == int(codes[name]) for name in ("liver", "lesion", "bladder", "catheter") if name in codes}


def lesion_row(label: str, study: StudyEntry, codes: dict, denoisers: dict, margin: int) -> rp.PanelRow:
    """Fig. 5 row: the first 60 s realisation and every model's output, through the lesion, cropped to the liver."""
    masks = regions(study, codes)
    lesion = masks["lesion"] if masks["lesion"].any() else masks["liver"]
    z = rp.busiest_slice(lesion)
    box = rp.crop_box(masks["liver"][z] | lesion[z], margin)
    image = read_volume(study.realisations[0]).data
    reference = read_volume(study.target).data[z][box]
    panels = [("input 60 s", image[z][box])]
    panels += [(rp.LABELS[name], denoiser(image)[z][box]) for name, denoiser in denoisers.items()]
    panels.append(("reference 600 s", reference))
    vmin, vmax = rp.display_range(reference)
    return rp.PanelRow(label, panels, vmin, vmax, marker=rp.centroid(lesion[z][box]))


def ood_rows(study: StudyEntry, codes: dict, denoisers: dict, margin: int) -> list[rp.PanelRow]:
    """Fig. 6: the OOD study's 120 s image (mean of the halves) and its denoised versions, and their errors."""
    masks = regions(study, codes)
    structure = masks["bladder"] | masks["catheter"]
    z = rp.busiest_slice(masks["bladder"].astype(int) + 10 * masks["catheter"] if structure.any() else masks["liver"])
    box = rp.crop_box(structure[z] if structure[z].any() else masks["liver"][z], margin)
    h1, h2 = (read_volume(p).data for p in study.halves)
    image = (h1 + h2) / np.float32(2)
    reference = read_volume(study.target).data[z][box]
    outputs = [("input 120 s", image[z][box])]
    outputs += [(rp.LABELS[name], denoiser(image)[z][box]) for name, denoiser in denoisers.items()]
    differences = [(name, img - reference) for name, img in outputs]
    return [
        rp.PanelRow("images", outputs + [("reference 600 s", reference)], *rp.display_range(reference)),
        rp.PanelRow("minus reference", differences, *rp.difference_range([d for _, d in differences]), cmap="RdBu_r"),
    ]


# --------------------------------------------------------------------------- report


def versions(device: torch.device) -> dict:
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        hardware = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads"
    return {
        "tgdpet": tgdpet.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": f"{device} ({hardware})",
    }


def _dataset_line(name: str, config: SimulationConfig) -> str:
    kinds: dict[str, int] = {}
    for s in config.studies:
        what = f"{s.kind} {s.body}-BMI" + (f" + {'/'.join(s.ood)}" if s.ood else "") + (" + tumour" if s.tumour else "")
        what += f" ({'+'.join(config.study_protocols(s))})"
        kinds[what] = kinds.get(what, 0) + 1
    studies = ", ".join(f"{n} x {what}" for what, n in kinds.items())
    return f"- `{name}` (seed {config.seed}): {studies}"


def readme(results: dict, configs: dict[str, SimulationConfig], rows: list[dict], link: str) -> str:
    """The report: what ran, how to repeat it, Table 1, the figures and the answers from the measured numbers.

    ``link`` is the path from the report's folder to the results folder ("" beside it).
    """
    s = results["scale"]
    prefix = f"{link}/" if link else ""
    commands = "\n".join(f"# {step}\n{command}" for step, command in results["commands"].items())
    steps = rp.markdown_table(
        ["step", "wall time s", "CPU time s"],
        [[k, f"{v['wall_s']:.1f}", f"{v['cpu_s']:.1f}"] for k, v in results["steps"].items()]
        + [["total", f"{results['total_s']:.1f}", ""]],
    )
    nets = rp.markdown_table(
        ["network", "starts from", "data (studies)", "epochs", "patches / epoch", "patches seen", "training s"],
        [
            [rp.LABELS[name], rp.LABELS.get(r.get("base"), "scratch"), f"{r['data']} ({r['studies']})",
             str(r["epochs"]), f"{r['patches_per_epoch']:,}", f"{r['patches_seen']:,}", f"{r['wall_s']:.1f}"]
            for name, r in results["training"].items()
        ],
    )  # fmt: skip
    v = results["versions"]
    answers = "\n\n".join(f"{i}. {text}" for i, text in enumerate(results["answers"], start=1))
    return f"""# Reproduction of Targeted Gradient Descent (Chen, Asma, Chan, MICCAI 2021) on simulated PET

Scale **{s['name']}**: {s['summary']}. Written by `scripts/reproduce_paper.py` from the numbers it measured;
everything below is in `{prefix}results.json`.

## What ran

Simulated data (tgdpet's whole-body PET simulator; v1 = coarse-noise reconstruction, v2 = finer noise, the
same counts), {s['size']} x {s['size']} x {s['slices']} voxels, count levels {', '.join(f'{x:g}' for x in s['levels_s'])} s
against a 600 s target, tests of {s['realisations']} x 60 s realisations:

{chr(10).join(_dataset_line(name, c) for name, c in configs.items())}

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
widths are the preset `paper`). Lesion bias and CoV come from one test study
each, as in the paper, so differences of a few tenths of a point are within what another seed would change.

## How to repeat it

```
python scripts/reproduce_paper.py --scale {s['name']} --out {results['out']} --device {results['device_arg']} --seed {results['seed']}
```

The same steps with the `tgdpet` command (the datasets have no command equivalent: `tgdpet simulate` draws a
fixed cohort; the script calls `tgdpet.simulate.write_dataset` with the study lists above):

```
{commands}
```

Seed {results['seed']} (datasets: {', '.join(f"{k} {c.seed}" for k, c in configs.items())}).
Versions: tgdpet {v['tgdpet']}, torch {v['torch']}, numpy {v['numpy']}, Python {v['python']}; {v['platform']};
device {v['device']}.

{steps}
"""


# --------------------------------------------------------------------------- the run


def prepare_out(out: Path, overwrite: bool) -> None:
    """Create ``out``; refuse to mix this run with an earlier one unless ``overwrite``."""
    if out.exists() and not out.is_dir():
        raise TgdpetError(f"{out} exists and is not a folder; choose another --out.")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise TgdpetError(f"{out} already holds files; pass --overwrite to replace that run or choose another --out.")
    out.mkdir(parents=True, exist_ok=True)


def run(args: argparse.Namespace) -> dict:
    scale = SCALES[args.scale]
    out = Path(args.out)
    prepare_out(out, args.overwrite)
    device = resolve_device(args.device)
    log = Log()
    log(f"reproducing the TGD paper at scale {scale.name} ({scale.summary}) on {device}, seed {args.seed}, into {out}")
    commands: dict[str, str] = {}
    training: dict[str, dict] = {}

    # 1. data
    configs = simulation_configs(scale, args.seed, device)
    data = out / "data"
    data.mkdir(exist_ok=True)
    for name, config in configs.items():
        log.timed(f"simulate {name} ({len(config.studies)} studies)",
              lambda: write_dataset(data / name, config, overwrite=args.overwrite))  # fmt: skip
    main_v1, main_v2 = load_manifest(data / "main" / "v1"), load_manifest(data / "main" / "v2")
    low, high = find_test_study(main_v2, "low", "tumour"), find_test_study(main_v2, "high", "tumour")
    ood = find_test_study(main_v2, "normal", "catheter")
    n_levels = len(scale.levels_s)

    # 2. networks
    runs = out / "runs"
    runs.mkdir(exist_ok=True)

    def loop(n_studies: int) -> dict:
        return {
            "epochs": scale.epochs,
            "patches_per_epoch": epoch_patches(n_studies * n_levels * scale.slices, scale.batch_size),
            "batch_size": scale.batch_size,
            "patch_size": scale.patch_size,
            "seed": args.seed,
            "device": args.device,
        }

    def echo(name: str) -> Callable[[str], None]:
        return lambda message: log(f"{name}: {message}")

    for name, protocol in (("v1-net", "v1"), ("v2-net", "v2")):
        cfg = TrainConfig(preset=scale.preset, **loop(scale.n_train))
        folder = data / "main" / protocol
        commands[name] = cli("train", folder, out=runs / name, **loop_options(cfg))
        result = log.timed(name, lambda: train(
            folder, runs / name, cfg, overwrite=args.overwrite, progress_bar=False, echo=echo(name),
            command=commands[name],
        ))  # fmt: skip
        training[name] = fit_record(result, runs / name / "last.safetensors", cfg, log.steps[name],
                                    data=f"main/{protocol}", studies=scale.n_train, command=commands[name])  # fmt: skip

    finetunes = (
        ("FT-net", "v1-net", "finetune", scale.n_finetune, {"method": "last3"}),
        ("TGD-net", "v1-net", "finetune", scale.n_finetune, {"method": "tgd", "phi": PHI_FINETUNE}),
        ("EWC-net", "v1-net", "finetune", scale.n_finetune, {"method": "ewc"}),
        ("TGD2-net", "TGD-net", "third", scale.n_third, {"method": "tgd", "phi": PHI_FINETUNE}),
    )
    for name, base, data_name, n, method in finetunes:
        cfg = FinetuneConfig(**method, **loop(n))
        base_model, folder = runs / base / "last.safetensors", data / data_name / "v2"
        commands[name] = cli("tgd-finetune", base_model, folder, out=runs / name, **loop_options(cfg))
        result = log.timed(name, lambda: finetune(
            base_model, folder, runs / name, cfg, overwrite=args.overwrite, progress_bar=False, echo=echo(name),
            command=commands[name],
        ))  # fmt: skip
        training[name] = fit_record(result, runs / name / "last.safetensors", cfg, log.steps[name],
                                    data=f"{data_name}/v2", studies=n, base=base, command=commands[name])  # fmt: skip

    # 3. online learning on the OOD study
    online = out / "n2n"
    online.mkdir(exist_ok=True)
    for name, base in (("TGD-N2N", "v2-net"), ("TGD2-N2N", "TGD-net")):
        cfg = N2NConfig(
            phi=PHI_N2N, epochs=scale.n2n_epochs, patches_per_epoch=epoch_patches(2 * scale.slices, scale.batch_size),
            batch_size=scale.batch_size, patch_size=scale.patch_size, seed=args.seed, device=args.device,
        )  # fmt: skip
        base_model, model = runs / base / "last.safetensors", online / f"{name}.safetensors"
        denoised = online / f"{name}_denoised.nii.gz"
        commands[name] = cli("n2n-online", base_model, *ood.halves, out=denoised, save_model=model,
                             **loop_options(cfg))  # fmt: skip
        result = log.timed(name, lambda: n2n_online(
            base_model, ood.halves[0], ood.halves[1], denoised, cfg, save_model_path=model,
            overwrite=args.overwrite, progress_bar=False, command=commands[name],
        ))  # fmt: skip
        training[name] = fit_record(result.fit, model, cfg, log.steps[name], data=f"main/v2 {ood.id} halves",
                                    studies=1, base=base, command=commands[name])  # fmt: skip
    model_files = {name: Path(training[name]["model"]) for name in MODELS}

    # 4. kernel-drop study (Fig. 4) on a held-out v1 image
    low_v1 = next(s for s in main_v1.studies if s.id == low.id)
    volume = read_volume(low_v1.realisations[0]).data
    codes = main_v2.label_codes
    z4 = rp.busiest_slice(regions(low_v1, codes)["liver"])
    v1_slice, drop = log.timed("kernel-drop study", lambda: kernel_drop(model_files["v1-net"], volume, z4, device))
    commands["kernel drop (Fig. 4)"] = cli(
        "score-kse", model_files["v1-net"], drop=True, phis=",".join(map(str, DROP_PHIS)), volume=low_v1.realisations[0]
    )

    # 5. evaluation
    evaluation = {}
    for key, study in (("low_bmi", low), ("high_bmi", high), ("ood", ood)):
        evaluation[key] = log.timed(f"evaluate {key} ({study.id})", lambda: evaluate_models(
            model_files, study, label_codes=codes, truth=truth_path(main_v2, study), device=device, precision="fp32",
        ))  # fmt: skip
        commands[f"evaluate {key}"] = cli(
            "evaluate", data / "main" / "v2", *[f"--model={n}={p}" for n, p in model_files.items()], study=study.id,
            device=args.device,
        )  # fmt: skip

    # 6. tables, figures, report
    def figures() -> None:
        margin = max(2, scale.size // 16)
        z_box = rp.crop_box(volume[z4] > 0.05 * volume[z4].max(), margin)
        rp.save_panels(out / "fig4.png", [
            rp.PanelRow("denoised", [("input 60 s (v1)", volume[z4][z_box]), ("v1-net (phi = 0)", v1_slice[z_box])]
                        + [(f"phi {p.phi:.1f}: {100 * p.fraction_dropped:.1f} % dropped", p.image[z_box]) for p in drop],
                        *rp.display_range(v1_slice[z_box])),
            rp.PanelRow("minus v1-net", [None, None] + [(f"phi {p.phi:.1f}: change {100 * p.output_change:.2f} %",
                                                         (p.image - v1_slice)[z_box]) for p in drop],
                        *rp.difference_range([p.image - v1_slice for p in drop]), cmap="RdBu_r"),
        ], "Fig. 4: v1-net with its meaningless kernels (KSE < phi) dropped")  # fmt: skip
        loaded = {name: load_denoiser(model_files[name], device=device, precision="fp32")
                  for name in ("v1-net", "v2-net", *FINETUNED, "TGD-N2N", "TGD2-N2N")}  # fmt: skip
        fig5 = {n: loaded[n] for n in ("v1-net", "v2-net", *FINETUNED)}
        rp.save_panels(out / "fig5.png", [
            lesion_row("low BMI", low, codes, fig5, margin), lesion_row("high BMI", high, codes, fig5, margin),
        ], "Fig. 5: v2 test studies through the liver tumour (same grey scale per row)")  # fmt: skip
        fig6 = {n: loaded[n] for n in ("v2-net", "TGD-net", "TGD-N2N", "TGD2-N2N")}
        rp.save_panels(out / "fig6.png", ood_rows(ood, codes, fig6, margin),
                       "Fig. 6: out-of-distribution study (hot bladder, catheter), 120 s")  # fmt: skip

    log.timed("figures", figures)
    rows = rp.table1_rows(evaluation, training, MODELS)
    results = {
        "format": "tgdpet-reproduction",
        "format_version": 1,
        "scale": asdict(scale),
        "seed": args.seed,
        "out": str(out),
        "device_arg": args.device,
        "versions": versions(device),
        "datasets": {name: {"seed": c.seed, "studies": [asdict(s) for s in c.studies]} for name, c in configs.items()},
        "test_studies": {"low_bmi": low.id, "high_bmi": high.id, "ood": ood.id},
        "training": training,
        "kernel_drop": [{"phi": p.phi, "fraction_dropped": p.fraction_dropped, "output_change": p.output_change,
                         "paper_dropped_pct": rp.PAPER_DROPPED_PCT[p.phi]} for p in drop],  # fmt: skip
        "evaluation": evaluation,
        "table1": rows,
        "paper": {"table1_low_bmi": rp.PAPER_TABLE1, "time_saved_pct": rp.PAPER_TIME_SAVED_PCT},
        "answers": rp.answers(rows, training, scale.n_train, scale.n_finetune),
        "commands": commands,
        "steps": log.steps,
    }
    results["table1_markdown"] = rp.table1_markdown(rows)
    rp.write_text(out / "table1.md", "# Table 1 (simulated data)\n\n" + results["table1_markdown"])
    rp.write_text(out / "fig4.md", rp.fig4_markdown(drop, "fig4.png"))
    results["total_s"] = round(time.perf_counter() - log.start, 1)
    rp.write_text(out / "results.json", json.dumps(results, indent=2, allow_nan=False) + "\n")
    rp.write_text(out / "README.md", readme(results, configs, rows, ""))
    if args.docs:
        docs = Path(args.docs)
        rp.write_text(docs, readme(results, configs, rows, os.path.relpath(out, docs.parent)))
    log(f"done in {results['total_s']:.0f} s: {out / 'README.md'}")
    return results


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=SCALES, default="small", help="small: 2 CPU cores, ~50 min; paper: a GPU")
    parser.add_argument("--out", default="results", help="folder for data, models, tables, figures [default: results]")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N [default: auto]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the weights and the patches")
    parser.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    parser.add_argument("--docs", help="also write the report here (e.g. docs/reproduction.md)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except TgdpetError as e:
        print(f"Error: {e}", file=sys.stderr)
        return TgdpetError.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
