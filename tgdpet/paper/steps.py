"""The experiment's first steps: simulate the datasets, train v1-net and v2-net, fine-tune every method per seed,
adapt online.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from ..checkpoint import load_model
from ..config import FinetuneConfig, N2NConfig, TrainConfig
from ..data import Manifest, StudyEntry
from ..errors import TgdpetError
from ..files import atomic_file
from ..precision import autocast_dtype, precision_name
from ..simulate import OOD_FEATURES, SimulationConfig, StudySpec, study_seed, write_dataset
from ..train import finetune, n2n_online, train
from ..train.outputs import STATE
from .analyses import flagged_fractions
from .bookkeeping import Run, cli, epoch_patches, fit_record, instance_key, loop_options
from .scales import DROP_PHIS, EPOCH_LINE, FINETUNED, NO_REVIVE, PAPER_LITERAL, PHI_FINETUNE, PHI_N2N, REVIVE, Scale

# --------------------------------------------------------------------------- 1. data


def simulation_configs(scale: Scale, seed: int, device: torch.device) -> dict[str, SimulationConfig]:
    """The three datasets of the run (see the module docstring), keyed by folder name."""
    bodies = ("low", "high")
    main = (
        [StudySpec("train", bodies[i % 2]) for i in range(scale.n_train)]
        + [StudySpec("test", "low", tumour=True)] * scale.test_studies  # v1 too: Fig. 4 runs v1-net on a v1 image
        + [StudySpec("test", "high", tumour=True, protocols=("v2",))] * scale.test_studies
        + [StudySpec("test", "normal", ood=OOD_FEATURES, halves=True, protocols=("v2",))]
    )
    common = {
        "size": scale.size,
        "slices": scale.slices,
        "levels_s": scale.levels_s,
        "realisations": scale.realisations,
        "device": str(device),
        "progress": False,
    }
    return {
        "main": SimulationConfig(studies=tuple(main), protocols=("v1", "v2"), seed=study_seed(seed, 0), **common),
        "finetune": SimulationConfig(
            studies=(StudySpec("train", "low"),) * scale.n_finetune, protocols=("v2",), seed=study_seed(seed, 1),
            **common,
        ),
        "third": SimulationConfig(
            studies=(StudySpec("train", "high"),) * scale.n_third, protocols=("v2",), seed=study_seed(seed, 2),
            **common,
        ),
    }  # fmt: skip


def describe(config: SimulationConfig) -> str:
    """One line per dataset for the report: how many studies of each kind, body size, features, protocols."""
    kinds: dict[str, int] = {}
    for s in config.studies:
        what = f"{s.kind} {s.body}-BMI" + (f" + {'/'.join(s.ood)}" if s.ood else "") + (" + tumour" if s.tumour else "")
        what += f" ({'+'.join(config.study_protocols(s))})"
        kinds[what] = kinds.get(what, 0) + 1
    return ", ".join(f"{n} x {what}" for what, n in kinds.items())


def simulate(run: Run) -> dict[str, SimulationConfig]:
    """Write the three datasets under ``OUT/data`` (a resumed run keeps each one simulated with the same config)."""
    configs = simulation_configs(run.scale, run.seed, run.device)
    run.data.mkdir(exist_ok=True)
    for name, config in configs.items():
        step = f"simulate {name} ({len(config.studies)} studies)"
        if run.resume and simulated_with(run.data / name, config):
            run.log(f"{step}: reusing {run.data / name}")
            continue
        run.log.timed(step, lambda: write_dataset(run.data / name, config, overwrite=run.overwrite or run.resume))
    return configs


def simulated_with(folder: Path, config: SimulationConfig) -> bool:
    """Whether ``folder`` holds a complete dataset simulated with ``config`` (its simulation.json says so)."""
    try:
        recorded = json.loads((folder / "simulation.json").read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return recorded == json.loads(json.dumps(asdict(config)))


def find_test_studies(manifest: Manifest, body: str, feature: str) -> list[StudyEntry]:
    """The test studies of a body size with a feature (``tumour``, ``catheter``), from their manifest ``meta``."""
    found = [s for s in manifest.split("test") if s.meta.get("body") == body and feature in s.meta.get("features", ())]
    if not found:
        raise TgdpetError(f"{manifest.path} has no {body}-BMI test study with a {feature}; simulate the data again.")
    return found


# --------------------------------------------------------------------------- 2. networks


def loop_settings(run: Run, n_studies: int, seed: int) -> dict:
    """Epochs of one patch per input slice of ``n_studies`` studies, the scale's batch and patch sizes, precision."""
    s = run.scale
    return {
        "epochs": s.epochs,
        "patches_per_epoch": epoch_patches(n_studies * len(s.levels_s) * s.slices, s.batch_size),
        "batch_size": s.batch_size,
        "patch_size": s.patch_size,
        "seed": seed,
        "device": run.device_arg,
        "amp": training_amp(run.device),
    }


def training_amp(device: torch.device) -> bool:
    """Mixed precision wherever the hardware has units for it (CUDA, CPUs with bf16 matrix units), as the
    built-in model trains: a small-preset step is ~3x faster in bf16 on such a CPU, and the weights and the
    optimiser stay fp32. tgdpet's default keeps narrow presets in fp32 on CPUs, so the run says so explicitly."""
    return autocast_dtype(device) is not None


def precisions(device: torch.device) -> dict[str, str]:
    """The precisions the run trains and evaluates in, for results.json and the report.

    The evaluation runs in the reduced precision the device has (bf16 on CPUs
    with bf16 units): measured on the 20 medium-scale networks of 2026-12-01
    against their fp32 figures, lesion bias moved by at most 0.13 points,
    liver CoV by 0.09, the hallucination score by 0.10 (means 0.01), against
    seed-to-seed spreads of 0.7-9 points; 3 networks on one study took
    49-53 s against 85-91 s in fp32 (loading and scoring the study included).
    The kernel-drop study and the figures stay fp32: the former measures
    output changes of a few tenths of a per cent, as large as bf16's rounding.
    """
    name = precision_name(autocast_dtype(device))
    return {"training": name, "evaluation": name}


def snapshot_echo(run: Run, name: str) -> Callable[[str], None]:
    """A training echo that also keeps a copy of the just-saved weights after every epoch (in ``run.snapshots``)."""
    say = run.log.echo(name)

    def echo(message: str) -> None:
        say(message)
        line = EPOCH_LINE.match(message)
        if line:
            run.snapshots.mkdir(exist_ok=True)
            with atomic_file(run.snapshots / f"epoch-{int(line[1]):04d}.safetensors") as tmp:
                shutil.copyfile(run.model(name), tmp)

    return echo


def kse_curve(snapshots: Path) -> list[dict]:
    """KSE's flagged fractions of each kept epoch's weights, with the patches the network had seen by then."""
    curve = []
    for path in sorted(snapshots.glob("epoch-*.safetensors")):
        record = load_model(path)
        fractions = flagged_fractions(record.model, DROP_PHIS)
        curve.append({"epoch": record.provenance["epochs"], "patches_seen": record.provenance["patches_seen"],
                      "flagged_pct": {phi: 100 * f for phi, f in fractions.items()}})  # fmt: skip
    return curve


def fit(run: Run, key: str, folder: Path, start: Callable[[bool, bool], dict]) -> dict:
    """The record of training run ``key`` in ``folder``: trained, continued from its last complete epoch
    (resuming), or recorded by an earlier attempt.

    ``start(resume, overwrite)`` runs the library's train or finetune and
    returns the record; a folder without a training state (a run killed
    before its first epoch) is started again.
    """
    resume = run.resume and (folder / STATE).is_file()
    if not resume and key == "v1-net" and run.snapshots.exists():
        shutil.rmtree(run.snapshots)  # an earlier run's epochs are not this run's
    overwrite = run.overwrite or run.resume
    return run.once(key, lambda: start(resume, overwrite), **({"continued": True} if resume else {}))


def train_networks(run: Run) -> None:
    """v1-net and v2-net from scratch, then per seed FT-net, TGD-net, EWC-net from v1-net and TGD²-net from TGD-net."""
    s = run.scale
    (run.out / "runs").mkdir(exist_ok=True)
    for name, protocol in (("v1-net", "v1"), ("v2-net", "v2")):
        cfg = TrainConfig(preset=s.preset, channel_penalty=s.channel_penalty, **loop_settings(run, s.n_train, run.seed))
        data, folder = run.data / "main" / protocol, run.model(name).parent
        echo = snapshot_echo(run, name) if name == "v1-net" else run.log.echo(name)
        command = run.commands[name] = cli("train", data, out=folder, **loop_options(cfg))

        def start(resume: bool, overwrite: bool) -> dict:
            result = train(data, folder, cfg, resume=resume, overwrite=overwrite, progress_bar=False, echo=echo,
                           command=command)  # fmt: skip
            return fit_record(result, cfg, data=f"main/{protocol}", studies=s.n_train, command=command)

        run.training[run.add(name)] = fit(run, name, folder, start)

    finetunes = (
        ("FT-net", "v1-net", "finetune", s.n_finetune, {"method": "last3"}),
        ("TGD-net", "v1-net", "finetune", s.n_finetune, {"method": "tgd", "phi": PHI_FINETUNE, **NO_REVIVE}),
        ("EWC-net", "v1-net", "finetune", s.n_finetune, {"method": "ewc"}),
        ("TGD2-net", "TGD-net", "third", s.n_third, {"method": "tgd", "phi": PHI_FINETUNE, **NO_REVIVE}),
        ("TGD-paper-net", "v1-net", "finetune", s.n_finetune, {"method": "tgd", "phi": PHI_FINETUNE, **PAPER_LITERAL}),
        ("TGD-revive-net", "v1-net", "finetune", s.n_finetune, {"method": "tgd", "phi": PHI_FINETUNE, **REVIVE}),
        ("TGD2-revive-net", "TGD-revive-net", "third", s.n_third, {"method": "tgd", "phi": PHI_FINETUNE, **REVIVE}),
    )
    for seed in run.seeds:
        for name, base, dataset, n, method in finetunes:
            if not s.trains(name, seed, run.seeds):
                continue
            base_seed = seed if base in FINETUNED else None
            cfg = FinetuneConfig(**method, **loop_settings(run, n, seed))
            data, folder, key = run.data / dataset / "v2", run.model(name, seed).parent, instance_key(name, seed)
            base_file = run.model(base, base_seed)
            command = run.commands[key] = cli("tgd-finetune", base_file, data, out=folder, **loop_options(cfg))

            def start(resume: bool, overwrite: bool) -> dict:
                result = finetune(base_file, data, folder, cfg, resume=resume, overwrite=overwrite,
                                  progress_bar=False, echo=run.log.echo(key), command=command)  # fmt: skip
                return fit_record(result, cfg, data=f"{dataset}/v2", studies=n, base=instance_key(base, base_seed),
                                  command=command)  # fmt: skip

            run.training[run.add(name, seed)] = fit(run, key, folder, start)


# --------------------------------------------------------------------------- 3. online learning


def online_learning(run: Run, ood: StudyEntry) -> None:
    """Per seed, TGD-N2N (from v2-net), TGD²-N2N (from that seed's TGD-net) and the paper-literal TGD-N2N (from
    v2-net): Noise2Noise on the OOD halves."""
    s = run.scale
    (run.out / "n2n").mkdir(exist_ok=True)
    for seed in run.seeds:
        for name, base, base_seed, how in (
            ("TGD-N2N", "v2-net", None, NO_REVIVE),
            ("TGD2-N2N", "TGD-net", seed, NO_REVIVE),
            ("TGD-paper-N2N", "v2-net", None, PAPER_LITERAL),
            ("TGD-revive-N2N", "v2-net", None, REVIVE),
        ):
            if not s.trains(name, seed, run.seeds):
                continue
            cfg = N2NConfig(
                phi=PHI_N2N, epochs=s.n2n_epochs, patches_per_epoch=epoch_patches(2 * s.slices, s.batch_size),
                batch_size=s.batch_size, patch_size=s.patch_size, seed=seed, device=run.device_arg,
                amp=training_amp(run.device), **how,
            )  # fmt: skip
            key, model, base_file = instance_key(name, seed), run.model(name, seed), run.model(base, base_seed)
            denoised = model.with_name(f"{model.stem}_denoised.nii.gz")
            command = run.commands[key] = cli("n2n-online", base_file, *ood.halves, out=denoised, save_model=model,
                                              **loop_options(cfg))  # fmt: skip
            run.training[run.add(name, seed)] = run.once(key, lambda: fit_record(n2n_online(
                base_file, ood.halves[0], ood.halves[1], denoised, cfg, save_model_path=model,
                overwrite=run.overwrite or run.resume, progress_bar=False, command=command,
            ).fit, cfg, data=f"main/v2 {ood.id} halves", studies=1, base=instance_key(base, base_seed),
                command=command))  # fmt: skip
