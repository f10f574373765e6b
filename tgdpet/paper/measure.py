"""The measurements on the trained networks: BatchNorm after TGD, the kernel-drop study, every network on every
test study, Figs 5-6.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..checkpoint import ModelRecord, load_model, save_model
from ..config import FinetuneConfig
from ..data import Manifest, StudyEntry, load_manifest, load_studies
from ..denoise import load_denoiser
from ..drop import drop_study
from ..evaluate import evaluate_models, truth_path
from ..infer import denoise_array
from ..io import read_volume
from ..train.ddp import DistEnv
from ..train.workflows import patch_dataset
from .analyses import DropPoint, bn_input_statistics, bn_mismatch, reestimate_frozen_bn
from .bookkeeping import Run, cli, instance_key
from .figures import PanelRow, busiest_slice, centroid, crop_box, difference_range, display_range, save_panels
from .report import instance_label
from .scales import BN_PATCHES, BN_REESTIMATED, DROP_PHIS, FINETUNED, MODELS, PHI_FINETUNE, Scale
from .steps import loop_settings, precisions
from .table import LABELS

# --------------------------------------------------------------------------- 4. BatchNorm after TGD


def bn_batches(run: Run, model: ModelRecord, studies: list, seed: int) -> list[torch.Tensor]:
    """The first :data:`BN_PATCHES` patches (inputs only) of TGD-net's first fine-tuning epoch, in batches."""
    cfg = FinetuneConfig(method="tgd", phi=PHI_FINETUNE, **loop_settings(run, run.scale.n_finetune, seed))
    patches = patch_dataset(studies, model.model, cfg, DistEnv())
    patches.set_epoch(0)
    n = min(BN_PATCHES, len(patches))
    inputs = [patches[i][0] for i in range(n)]
    return [torch.stack(inputs[i : i + cfg.batch_size]) for i in range(0, n, cfg.batch_size)]


def bn_study(run: Run) -> dict:
    """BN mismatch of frozen vs retrained channels of every TGD-net (and of v1-net), and TGD-net (BN re-est.).

    Saves each re-estimated network beside TGD-net's run and registers it as
    an instance of :data:`BN_REESTIMATED`, so that it is evaluated like the others.
    """
    studies = load_studies(load_manifest(run.data / "finetune" / "v2"), "train")
    v1 = load_model(run.model("v1-net"), run.device)
    mismatch, n = {}, 0
    for seed in run.seeds:
        tgd = load_model(run.model("TGD-net", seed), run.device)
        batches = bn_batches(run, tgd, studies, seed)
        n = sum(len(b) for b in batches)
        if seed == run.seeds[0]:
            mismatch["v1-net"] = bn_mismatch(v1.model, None, bn_input_statistics(v1.model, batches))
        stats = bn_input_statistics(tgd.model, batches)
        mismatch[instance_label(instance_key("TGD-net", seed), run.instances)] = bn_mismatch(
            tgd.model, tgd.masks, stats
        )
        dest = run.model(BN_REESTIMATED, seed)
        dest.parent.mkdir(parents=True, exist_ok=True)
        save_model(dest, reestimate_frozen_bn(tgd.model, tgd.masks, stats), preset=tgd.preset, masks=tgd.masks,
                   masks_history=tgd.masks_history, normalization=tgd.normalization,
                   provenance={**tgd.provenance, "bn_reestimated": f"frozen channels' running statistics from {n} "
                               "fine-tuning patches"})  # fmt: skip
        run.add(BN_REESTIMATED, seed)
    return {"patches": n, "mismatch": mismatch}


# --------------------------------------------------------------------------- 5. kernel drop (Fig. 4)


def kernel_drop(
    model_path: Path, volume: np.ndarray, z: int, device: torch.device
) -> tuple[np.ndarray, list[DropPoint]]:
    """v1-net's output on ``volume`` and, per threshold, its output with the meaningless kernels dropped.

    Returns v1-net's denoised slice ``z`` and one point per phi: fraction of
    parameters dropped, relative RMS change of the whole denoised volume, and slice ``z``.
    """
    model = load_model(model_path, device).model
    reference, drops = drop_study(model, DROP_PHIS, lambda net: denoise_array(net, volume, device=device,
                                                                               precision="fp32"))  # fmt: skip
    points = [DropPoint(d.phi, d.fraction_dropped, d.output_change, d.output[z]) for d in drops]
    return reference[z], points


def crop_margin(scale: Scale) -> int:
    """Pixels of context the figures keep around the structure they show (32 mm at 4 mm voxels)."""
    return max(2, scale.size // 16)


def fig4_rows(image: np.ndarray, v1: np.ndarray, points: list[DropPoint], margin: int) -> list[PanelRow]:
    """Fig. 4: input and v1-net's output, each threshold's output, and each one's difference to v1-net."""
    box = crop_box(image > 0.05 * image.max(), margin)
    outputs = [("input 60 s (v1)", image[box]), ("v1-net (phi = 0)", v1[box])]
    outputs += [(f"phi {p.phi:.1f}: {100 * p.fraction_dropped:.1f} % dropped", p.image[box]) for p in points]
    changes = [(f"phi {p.phi:.1f}: change {100 * p.output_change:.2f} %", (p.image - v1)[box]) for p in points]
    return [
        PanelRow("denoised", outputs, *display_range(v1[box])),
        PanelRow("minus v1-net", [None, None, *changes], *difference_range([d for _, d in changes]),
                    cmap="RdBu_r"),
    ]  # fmt: skip


# --------------------------------------------------------------------------- 6. evaluation


def evaluate_all(run: Run, manifest: Manifest, studies: dict[str, list[StudyEntry]]) -> dict[str, list[dict]]:
    """Every network instance on every test study (v2 images), in the device's reduced precision
    (:func:`precisions`): lesion bias, liver CoV, hallucination score."""
    models = {key: Path(inst["path"]) for key, inst in run.instances.items()}
    precision = precisions(run.device)["evaluation"]
    results: dict[str, list[dict]] = {}
    for key, entries in studies.items():
        results[key] = []
        for study in entries:
            step = f"evaluate {key} ({study.id})"
            earlier = run.done.pop(step, None)  # a resumed run scores only the networks added since
            todo = {k: p for k, p in models.items() if earlier is None or k not in earlier["rows"]}
            result = run.once(step, lambda: evaluate_models(
                todo, study, label_codes=manifest.label_codes, truth=truth_path(manifest, study),
                device=run.device, precision=precision,
            ) if todo else earlier)  # fmt: skip
            if earlier is not None and result is not earlier:
                result["rows"] = {**earlier["rows"], **result["rows"]}
                run.save_progress()
            results[key].append(result)
            run.commands[f"evaluate {key} {study.id}"] = cli(
                "evaluate", manifest.path.parent, *[f"--model={n}={p}" for n, p in models.items()], study=study.id,
                device=run.device_arg, precision=precision,
            )  # fmt: skip
    return results


# --------------------------------------------------------------------------- 7. figures 5 and 6


def regions(study: StudyEntry, codes: dict) -> dict[str, np.ndarray]:
    """The study's label map split into the masks the figures use."""
    labels = np.rint(read_volume(study.labels).data).astype(np.int64)
    return {name: labels == int(codes[name]) for name in ("liver", "lesion", "bladder", "catheter") if name in codes}


def lesion_row(label: str, study: StudyEntry, codes: dict, denoisers: dict, margin: int) -> PanelRow:
    """Fig. 5 row: the first 60 s realisation and every model's output, through the lesion, cropped to the liver."""
    masks = regions(study, codes)
    lesion = masks["lesion"] if masks["lesion"].any() else masks["liver"]
    z = busiest_slice(lesion)
    box = crop_box(masks["liver"][z] | lesion[z], margin)
    image = read_volume(study.realisations[0]).data
    reference = read_volume(study.target).data[z][box]
    panels = [("input 60 s", image[z][box])]
    panels += [(LABELS[name], denoiser(image)[z][box]) for name, denoiser in denoisers.items()]
    panels.append(("reference 600 s", reference))
    return PanelRow(label, panels, *display_range(reference), marker=centroid(lesion[z][box]))


def ood_rows(study: StudyEntry, codes: dict, denoisers: dict, margin: int) -> list[PanelRow]:
    """Fig. 6: the OOD study's 120 s image (mean of the halves) and its denoised versions, and their errors."""
    masks = regions(study, codes)
    structure = masks["bladder"] | masks["catheter"]
    z = busiest_slice(masks["bladder"].astype(int) + 10 * masks["catheter"] if structure.any() else masks["liver"])
    box = crop_box(structure[z] if structure[z].any() else masks["liver"][z], margin)
    h1, h2 = (read_volume(p).data for p in study.halves)
    image = (h1 + h2) / np.float32(2)
    reference = read_volume(study.target).data[z][box]
    outputs = [("input 120 s", image[z][box])]
    outputs += [(LABELS[name], denoiser(image)[z][box]) for name, denoiser in denoisers.items()]
    differences = [(name, img - reference) for name, img in outputs]
    return [
        PanelRow("images", outputs + [("reference 600 s", reference)], *display_range(reference)),
        PanelRow("minus reference", differences, *difference_range([d for _, d in differences]), cmap="RdBu_r"),
    ]


def write_figures(run: Run, fig4: list[PanelRow], studies: dict[str, StudyEntry], codes: dict) -> None:
    """Fig. 4 (its rows made by the kernel-drop step), Fig. 5 (fine-tuned networks on the first low- and
    high-BMI test studies) and Fig. 6 (online learning on the OOD study); fine-tuned networks of the first seed."""
    save_panels(run.out / "fig4.png", fig4, "Fig. 4: v1-net with its meaningless kernels (KSE < phi) dropped")
    margin = crop_margin(run.scale)
    first = run.seeds[0]
    fp32 = {
        name: load_denoiser(run.model(name, None if name in ("v1-net", "v2-net") else first), device=run.device,
                            precision="fp32")
        for name in MODELS if name != BN_REESTIMATED
    }  # fmt: skip
    fig5 = {name: fp32[name] for name in ("v1-net", "v2-net", *FINETUNED)}
    save_panels(run.out / "fig5.png", [
        lesion_row("low BMI", studies["low_bmi"], codes, fig5, margin),
        lesion_row("high BMI", studies["high_bmi"], codes, fig5, margin),
    ], "Fig. 5: v2 test studies through the liver tumour (same grey scale per row)")  # fmt: skip
    fig6 = {name: fp32[name] for name in ("v2-net", "TGD-net", "TGD-N2N", "TGD2-N2N")}
    save_panels(run.out / "fig6.png", ood_rows(studies["ood"], codes, fig6, margin),
                   "Fig. 6: out-of-distribution study (hot bladder, catheter), 120 s")  # fmt: skip
