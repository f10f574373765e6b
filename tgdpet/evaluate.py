"""Evaluating denoisers on the test studies of a dataset, as in the paper's Table 1.

For each test study every model denoises the same set of images, and
:mod:`tgdpet.metrics` scores the results against the study's target (the
long scan, the paper's reference T); the un-denoised images are scored too,
as the row ``"input"``, so every figure has its baseline beside it.

Which images a study contributes:

- its ``realisations`` when it lists them: R i.i.d. equal-count images (the
  paper's 10 x 60 s), what the ensemble figures (lesion bias, liver CoV) are
  defined on;
- otherwise its ``inputs``, each scored on its own and the scores averaged.
  An out-of-distribution study written by ``tgdpet simulate`` has one input,
  the full 120 s scan whose halves ``tgdpet n2n-online`` adapts a model on:
  that full image is what the adapted model and its parents are compared on.
  Its ``halves`` are training data and are not scored.

Figures, per study and row (``None`` where a study lacks what a figure
needs: a label, a truth image, two images for a CoV):

- ``lesion_bias_pct``: lesion ensemble bias against the target (eq. 6);
- ``lesion_bias_se_pct``: a model's lesion bias's standard error, paired
  with the inputs over the realisations (percentage points; two images or
  more; none for the input row, the baseline of the pairing): how well the
  realisations pin down what the model did to this scan. A rescan of the
  same patient also moves the inputs' own bias, which it leaves out (see
  :func:`tgdpet.metrics.paired_bias_standard_error`);
- ``liver_cov_pct``: liver CoV across the images (eq. 7, ddof = 1);
- ``liver_bias_pct``: liver ensemble bias against the target (eq. 6 in the
  liver). The liver is the reference region of PERCIST and Deauville reads:
  a denoiser that moves its mean moves every reading normalised by it;
- ``lesion_bias_truth_pct``: lesion ensemble bias against the phantom's true
  activity, when the study's ``meta`` names a ``truth`` image (a path
  relative to the manifest, on the study's grid, in the image units);
- ``psnr_db``, ``ssim``: against the target, averaged over the images (SSIM
  per axial slice); an infinite PSNR (identical images) is reported as None;
- ``hallucination_<label>_pct`` for the out-of-distribution labels
  (:data:`OOD_LABELS`) present in the study: relative RMS error against the
  target in the structure and a rim of ``dilation`` voxels around it, of the
  *ensemble mean* of the images (mean over the realisations of denoised
  minus target). A hallucination is a systematic error, present in every
  realisation; the noise left in one realisation is not, and averaging
  first removes it (its RMS falls as 1/sqrt(R)), so the score measures what
  a denoiser invents rather than how much noise it leaves.

Regions come from the study's label map and the manifest's ``label_codes``
(``lesion``, ``liver``, ``bladder``, ``catheter``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

import numpy as np
import torch

from . import metrics
from .batch import mm_record
from .checkpoint import ModelRecord
from .data import Manifest, StudyEntry, load_manifest, read_on_target_grid
from .domain import domain_of
from .errors import TgdpetError
from .files import atomic_file, check_can_write
from .denoise import load_denoiser
from .infer import Denoiser
from .runtime import resolve_device

FORMAT = "tgdpet-evaluation"
FORMAT_VERSION = 1

#: The row holding the scores of the images before denoising.
INPUT_ROW = "input"

#: Labels of structures a denoiser has not learnt, where it may hallucinate.
OOD_LABELS = ("bladder", "catheter")

#: Every figure's key and its column heading, in table order.
COLUMNS: dict[str, str] = {
    "lesion_bias_pct": "lesion bias %",
    "lesion_bias_se_pct": "lesion bias SE",
    "liver_cov_pct": "liver CoV %",
    "liver_bias_pct": "liver bias %",
    "lesion_bias_truth_pct": "bias vs truth %",
    "psnr_db": "PSNR dB",
    "ssim": "SSIM",
    **{f"hallucination_{name}_pct": f"halluc. {name} %" for name in OOD_LABELS},
}

ModelSpec = str | os.PathLike | ModelRecord


@dataclass
class StudyImages:
    """What one study's evaluation needs, in memory, all on the target's grid.

    ``regions`` holds the non-empty masks of the labels the figures use;
    ``kind`` says where ``images`` came from (``realisations`` or ``inputs``).
    """

    id: str
    target: np.ndarray
    images: list[np.ndarray]
    kind: str
    regions: dict[str, np.ndarray]
    truth: np.ndarray | None = None
    voxel_mm: tuple[float, float, float] | None = None  # (z, y, x): denoisers handle finer voxels on their grid


def truth_path(manifest: Manifest, study: StudyEntry) -> Path | None:
    """The phantom truth image a study's ``meta`` names (relative to the manifest), if any."""
    value = study.meta.get("truth")
    if value is None:
        return None
    path = manifest.path.parent / str(value)
    if not path.exists():
        raise TgdpetError(f"study {study.id!r}: its truth image {path} does not exist; fix 'meta.truth' in the manifest.")
    return path


def load_study_images(
    study: StudyEntry, label_codes: Mapping[str, int], truth: str | os.PathLike | None = None
) -> StudyImages:
    """Read a study's target, labels, truth and the images to denoise (see the module docstring)."""
    from .io import read_volume
    from .io.orientation import to_canonical

    target_volume = to_canonical(read_volume(study.target))
    target, voxel_mm = target_volume.data, target_volume.spacing[::-1]

    def on_grid(path: str | os.PathLike, what: str, same_units: bool = True) -> np.ndarray:
        return read_on_target_grid(path, target_volume, study.id, what, same_units=same_units)

    if study.realisations:
        images = [on_grid(p, f"realisation #{k + 1}") for k, p in enumerate(study.realisations)]
        kind = "realisations"
    else:
        images = [on_grid(p, f"input #{k + 1}") for k, p in enumerate(study.inputs)]
        kind = "inputs"
    regions: dict[str, np.ndarray] = {}
    if study.labels is not None:
        if not label_codes:
            raise TgdpetError(
                f"study {study.id!r} has a label map but the manifest has no 'label_codes'; add e.g. "
                '{"liver": 2, "lesion": 3, "bladder": 4, "catheter": 5}.'
            )
        labels = np.rint(on_grid(study.labels, "label map", same_units=False)).astype(np.int64)
        for name in ("lesion", "liver", *OOD_LABELS):
            if name in label_codes:
                mask = labels == int(label_codes[name])
                if mask.any():
                    regions[name] = mask
    truth_image = on_grid(truth, "truth image") if truth is not None else None
    return StudyImages(study.id, target, images, kind, regions, truth_image, voxel_mm)


def _denoiser(name: str, spec: ModelSpec, device: torch.device, precision: str, resample: bool, tta: bool) -> Denoiser:
    options = dict(device=device, precision=precision, resample=resample, tta=tta)
    if isinstance(spec, ModelRecord):
        spec.check_normalization(f"model {name!r}")
        return Denoiser(spec.model, domain=domain_of(spec.provenance), **options)
    return load_denoiser(spec, **options)


def prepare_denoisers(
    models: Mapping[str, ModelSpec],
    *,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    resample: bool = True,
    tta: bool = False,
) -> dict[str, Denoiser]:
    """Load every model once (files are checked before any study is read).

    ``resample``: finer voxels than a model's are denoised on its grid, as ``tgdpet denoise`` does
    (:mod:`tgdpet.resample`); False runs each network on the images' own grid. ``tta``: as ``tgdpet
    denoise --tta``, the mean over the 8 in-plane flips and transposes.
    """
    if INPUT_ROW in models:
        raise TgdpetError(f"a model may not be named {INPUT_ROW!r}: that row holds the un-denoised images.")
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    return {name: _denoiser(name, spec, dev, precision, resample, tta) for name, spec in models.items()}


def _bounding_box(masks: Iterable[np.ndarray]) -> tuple[slice, ...] | None:
    """The smallest box holding every mask: ensemble figures need only these voxels of each image."""
    union = None
    for m in masks:
        union = m if union is None else union | m
    if union is None:
        return None
    idx = np.nonzero(union)
    return tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _mean(values: list[float]) -> float | None:
    return _finite(float(np.mean(values))) if values else None


def score_images(
    images: Iterable[np.ndarray],
    study: StudyImages,
    *,
    dilation: int = 2,
    made_from: list[np.ndarray] | None = None,
) -> dict[str, float | None]:
    """Every figure of one row: ``images`` are the study's images as one model left them, in order.

    The images are consumed one at a time; only the part of each that the
    ensemble figures need (the box around lesion and liver) is kept.
    ``made_from``, the images they were made from in the same order, adds
    the lesion bias's standard error paired with them.
    """
    ensemble = {k: v for k, v in study.regions.items() if k in ("lesion", "liver")}
    box = _bounding_box(ensemble.values())
    crops, psnrs, ssims = [], [], []
    ood = [name for name in OOD_LABELS if name in study.regions]
    total: np.ndarray | None = None  # sum of the images, for the ensemble mean the hallucination score needs
    slices_fit_ssim = min(study.target.shape[1:]) >= metrics.SSIM_WINDOW
    for img in images:
        psnrs.append(metrics.psnr(img, study.target))
        if slices_fit_ssim:
            ssims.append(metrics.ssim(img, study.target))
        if ood:
            total = img.astype(np.float64) if total is None else total + img
        if box is not None:
            crops.append(img[box])
    row: dict[str, float | None] = dict.fromkeys(COLUMNS)
    stack = np.stack(crops) if ensemble else None
    if "lesion" in ensemble:
        lesion = ensemble["lesion"][box]
        row["lesion_bias_pct"] = metrics.lesion_ensemble_bias(stack, study.target[box], lesion)
        if made_from is not None and len(crops) >= 2:
            inputs = np.stack([x[box] for x in made_from])
            row["lesion_bias_se_pct"] = metrics.paired_bias_standard_error(stack, inputs, study.target[box], lesion)
        if study.truth is not None:
            row["lesion_bias_truth_pct"] = metrics.bias_vs_truth(stack, study.truth[box], lesion)
    if "liver" in ensemble:
        liver = ensemble["liver"][box]
        row["liver_bias_pct"] = metrics.ensemble_region_bias(stack, study.target[box], liver)
        if len(crops) >= 2:
            row["liver_cov_pct"] = metrics.liver_cov(stack, liver)
    row["psnr_db"] = _mean(psnrs)
    row["ssim"] = _mean(ssims)
    if total is not None:
        mean_image = total / len(psnrs)
        for name in ood:
            row[f"hallucination_{name}_pct"] = _finite(
                metrics.hallucination_score(mean_image, study.target, study.regions[name], dilation=dilation)
            )
    return row


def _denoised(
    denoiser: Denoiser, images: list[np.ndarray], voxel_mm: tuple[float, float, float] | None, grids: list
) -> Iterator[np.ndarray]:
    """Each image denoised, its working grid (x, y, z mm, as :class:`tgdpet.batch.Written`) appended to ``grids``."""
    for img in images:
        out, grid_zyx = denoiser.denoise_with_grid(img, voxel_mm=voxel_mm)
        grids.append(None if grid_zyx is None else mm_record(grid_zyx[::-1]))
        yield out


def evaluate_study(
    denoisers: Mapping[str, Denoiser], study: StudyImages, *, dilation: int = 2, progress: bool = False
) -> dict:
    """Score the un-denoised images and every model's output on one study (a JSON-able dict); with each
    model's working grid per image (``working_grids_mm``; ``None`` where the voxel size is unknown)."""
    from tqdm.auto import tqdm

    grids: dict[str, list] = {}
    try:
        rows = {INPUT_ROW: score_images(study.images, study, dilation=dilation)}
        for name, denoiser in tqdm(denoisers.items(), desc=f"study {study.id}", unit="model", disable=not progress):
            denoised = _denoised(denoiser, study.images, study.voxel_mm, grids.setdefault(name, []))
            rows[name] = score_images(denoised, study, dilation=dilation, made_from=study.images)
    except ValueError as e:  # a degenerate study, e.g. a target that is 0 throughout the lesion
        raise TgdpetError(f"study {study.id!r} cannot be scored: {e} Check its target and label map.") from None
    return {
        "study": study.id,
        "images": study.kind,
        "n_images": len(study.images),
        "region_voxels": {name: int(mask.sum()) for name, mask in study.regions.items()},
        "truth": study.truth is not None,
        "rows": rows,
        "working_grids_mm": grids,
    }


def evaluate_models(
    models: Mapping[str, ModelSpec],
    study: StudyEntry,
    *,
    label_codes: Mapping[str, int],
    truth: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    dilation: int = 2,
    progress: bool = False,
) -> dict:
    """Evaluate models (name -> model file or :class:`ModelRecord`) on one study of a manifest.

    ``precision`` defaults to fp32: bf16 moves outputs by ~0.1-0.3 %, the
    size of the differences between models the paper reports.
    """
    denoisers = prepare_denoisers(models, device=device, precision=precision)
    images = load_study_images(study, label_codes, truth)
    return evaluate_study(denoisers, images, dilation=dilation, progress=progress)


def evaluate_manifest(
    manifest_path: str | os.PathLike,
    models: Mapping[str, ModelSpec],
    *,
    study_id: str | None = None,
    device: str | torch.device = "auto",
    precision: str = "fp32",
    dilation: int = 2,
    progress: bool = False,
    resample: bool = True,
    tta: bool = False,
) -> dict:
    """Evaluate models on every ``test`` study of a manifest, or on the study named ``study_id``.

    ``resample`` and ``tta`` as in :func:`prepare_denoisers`.
    """
    manifest = load_manifest(manifest_path)
    if study_id is not None:
        studies = [s for s in manifest.studies if s.id == study_id]
        if not studies:
            raise TgdpetError(
                f"{manifest.path} has no study {study_id!r}; its studies are {', '.join(s.id for s in manifest.studies)}."
            )
    else:
        studies = manifest.split("test")
        if not studies:
            raise TgdpetError(f"{manifest.path} has no study with split 'test'; name one to evaluate with --study.")
    denoisers = prepare_denoisers(models, device=device, precision=precision, resample=resample, tta=tta)
    results = [
        evaluate_study(
            denoisers,
            load_study_images(s, manifest.label_codes, truth_path(manifest, s)),
            dilation=dilation,
            progress=progress,
        )
        for s in studies
    ]
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "manifest": str(manifest.path),
        "models": {name: (str(spec) if not isinstance(spec, ModelRecord) else None) for name, spec in models.items()},
        "precision": precision,
        "tta": tta,
        "dilation_voxels": dilation,
        "studies": results,
    }


def format_table(study_result: dict) -> str:
    """A plain-text table of one study: a row per model, a column per figure it has."""
    rows = study_result["rows"]
    keys = [k for k in COLUMNS if any(r[k] is not None for r in rows.values())]
    name_width = max(len("model"), *(len(n) for n in rows))
    widths = [max(len(COLUMNS[k]), 8) for k in keys]

    def fmt(key: str, value: float | None) -> str:
        if value is None:
            return "-"
        return f"{value:.4f}" if key == "ssim" else f"{value:.2f}"

    lines = [
        f"study {study_result['study']} ({study_result['n_images']} image(s): {study_result['images']})",
        "  ".join([f"{'model':<{name_width}}"] + [f"{COLUMNS[k]:>{w}}" for k, w in zip(keys, widths)]),
    ]
    lines.append("-" * len(lines[-1]))
    for name, row in rows.items():
        lines.append("  ".join([f"{name:<{name_width}}"] + [f"{fmt(k, row[k]):>{w}}" for k, w in zip(keys, widths)]))
    return "\n".join(lines)


def check_results_path(path: str | os.PathLike, manifest: Manifest, overwrite: bool = False) -> Path:
    """Where results may go: not over the manifest or a file it names (inputs are never replaced, even with
    ``overwrite``), nor over any other file without ``overwrite``."""
    dest = Path(path).resolve()
    if any(dest == p.resolve() for p in manifest.files()):
        raise TgdpetError(f"--json {path} is an input of the evaluation (the manifest or an image it names); "
                          "name a new file for the results.")  # fmt: skip
    return check_can_write(path, overwrite)


def save_results(results: dict, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write evaluation results as JSON, atomically; refuses to replace a file without ``overwrite``
    (:func:`check_results_path` also keeps the inputs' files, before the evaluation)."""
    dest = check_can_write(path, overwrite)
    with atomic_file(dest) as tmp:
        tmp.write_text(json.dumps(results, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return dest
