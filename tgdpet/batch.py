"""Denoising a whole study tree: every PET series in it, the rest skipped with a reason, and a JSON report.

An archive export or a study folder holds PET next to CT, localisers and
reports. :func:`denoise_tree` finds every image (:func:`tgdpet.io.inspect.find_images`),
denoises each readable PET series with :func:`tgdpet.denoise.denoise_file`
into a mirror of the tree, and writes ``tgdpet-report.json`` beside the
outputs: per input, the output path (or why it was skipped), the units, the
SUV factor, the largest error the output's storage adds, how much the
mean activity in the body changed, and the working grid the network ran on
(:class:`Written`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NamedTuple, Sequence

import numpy as np

from . import __version__
from .errors import TgdpetError
from .files import atomic_file, check_can_write
from .io import DENOISED
from .io.inspect import ImageSeries, describe, find_images
from .precision import precision_name

if TYPE_CHECKING:
    from .infer import Denoiser
    from .io import Volume

REPORT_NAME = "tgdpet-report.json"

#: Exit status of ``tgdpet denoise`` when a study tree was denoised but some of its images were skipped.
SKIPPED_EXIT = 3

Mm = tuple[float, float, float]


def _mm(size: Sequence[float]) -> str:
    return " x ".join(f"{v:.3g}" for v in size) + " mm"


def mm_record(size: Sequence[float]) -> list[float]:
    """A voxel size as reports hold it: a list of mm, rounded to 0.1 micrometre."""
    return [round(float(v), 4) for v in size]


class Written(NamedTuple):
    """A denoised output as written, and the grid the network ran on for each of its frames.

    Sizes are voxel sizes in mm along the patient's left-right, anterior-posterior and head-foot axes (the
    canonical frame's x, y, z, whatever the storage order). The working grid is chosen per image
    (:func:`tgdpet.resample.denoise_on_best_grid`) and sets the finest scale the network acted on, so a
    reader of the result needs it next to the image's own voxels.
    """

    path: Path
    voxel_mm: Mm
    grids_mm: tuple[Mm, ...]

    @classmethod
    def of(cls, path: str | os.PathLike, volume: "Volume", grids_mm: Sequence[Mm]) -> "Written":
        """The output at ``path`` of ``volume`` (its voxel size in the canonical frame), denoised on ``grids_mm``."""
        from .io.orientation import canonical_voxel_mm

        return cls(Path(path), canonical_voxel_mm(volume)[::-1], tuple(grids_mm))

    def note(self) -> str:
        """The working grid in words, e.g. ``working grid 3.2 x 3.2 x 3.2 mm; the image's voxels are 4 x 4 x 4 mm``."""
        counts = {g: self.grids_mm.count(g) for g in dict.fromkeys(self.grids_mm)}
        if len(counts) == 1:
            grids = f"working grid {_mm(self.grids_mm[0])}"
        else:
            grids = "working grids " + ", ".join(f"{_mm(g)} ({n} frame{'s' * (n > 1)})" for g, n in counts.items())
        return f"{grids}; the image's voxels are {_mm(self.voxel_mm)}"

    def derivation(self, made_by: str = "") -> str:
        """What made the result (``made_by``, e.g. :func:`model_note`) and on which grid, for a DICOM result's
        DerivationDescription: both travel with the images into a PACS."""
        return f"{made_by}; {self.note()}" if made_by else self.note()

    def record(self) -> dict[str, Any]:
        """The report's fields: the output, the image's voxel size and the working grid of every frame (x, y, z)."""
        return {
            "output": str(self.path.resolve()),
            "voxel_mm": mm_record(self.voxel_mm),
            "working_grids_mm": [mm_record(g) for g in self.grids_mm],
        }


def is_study_tree(path: str | os.PathLike) -> bool:
    """A folder whose images are not one flat DICOM series folder: NIfTI/ECAT files, or series in subfolders.

    A damaged file directly in the folder leaves it a series folder, so that
    reading it refuses the series by naming that file.
    """
    folder = Path(path)
    if not folder.is_dir():
        return False
    found = find_images([folder])
    return any(s.kind not in ("dicom", "damaged") or s.folder.resolve() != folder.resolve() for s in found)


def output_path(series: ImageSeries, root: Path, out_root: Path, shared_folder: bool) -> Path:
    """Where a series' result goes: its place in the tree, mirrored under ``out_root``.

    NIfTI keeps its name; ECAT (read only) becomes ``.nii.gz``; a DICOM series
    is a folder named like its own, or, when its folder holds several series
    or is the tree's root (whose mirror ``out_root`` holds the other results
    and the report), a subfolder per series.
    """
    if series.kind == "dicom":
        rel = series.folder.resolve().relative_to(root.resolve())
        if shared_folder or rel == Path("."):
            number = series.slices[0][1].get("SeriesNumber", "")
            rel = rel / f"series_{number}_{series.series_uid[-8:]}"  # type: ignore[index]
        return out_root / rel
    rel = series.path.resolve().relative_to(root.resolve())
    return out_root / (rel.with_name(f"{rel.stem}.nii.gz") if series.kind == "ecat" else rel)


#: Units of images that hold activity (NIfTI records no modality: a label map says units=LABELS).
ACTIVITY_UNITS = ("BQML", "SUV", "CNTS")


def is_denoised_output(series: ImageSeries) -> bool:
    """An earlier result of tgdpet (its description says so): a tree holding one is not denoised twice."""
    if series.kind == "dicom":
        return str(series.slices[0][1].get("DerivationDescription", "")).startswith(DENOISED)
    if series.kind != "nifti":
        return False
    import nibabel as nib

    try:
        descrip = nib.load(str(series.path)).header["descrip"].tobytes().decode("latin-1")
    except Exception:  # noqa: BLE001 - a damaged file is reported by describe(), not here
        return False
    return descrip.startswith(DENOISED)


def _skip_reason(series: ImageSeries, info: dict[str, Any]) -> str | None:
    """Why a series is not denoised, or ``None`` when it is."""
    if is_denoised_output(series):
        return f"it is a tgdpet result already (described '{DENOISED}'); denoise it on its own if that is meant"
    if not info.get("readable"):
        return str(info["problem"])
    if info["format"] == "dicom" and info.get("modality") != "PT":
        return f"a {info.get('modality') or 'modality-less'} series, not PET"
    if info.get("units") not in ACTIVITY_UNITS:
        return f"its values are in {info.get('units')}, not activity ({', '.join(ACTIVITY_UNITS)})"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_record(denoiser: "Denoiser", model_path: str | os.PathLike | None) -> dict[str, Any]:
    """What made the outputs, for the report: the model file (name, path, SHA-256), device, precision, TTA.

    The hash identifies the weights even when a file is renamed or replaced
    under the same name.
    """
    from .builtin import is_builtin, resolve_model  # reads model files: loaded only when a report is made

    path = resolve_model(model_path)
    precision = precision_name(denoiser.dtype)
    return {
        "model": {"name": path.stem, "path": str(path.resolve()), "sha256": _sha256(path),
                  "built_in": is_builtin(path)},
        "device": str(denoiser.device),
        "precision": precision,
        "tta": denoiser.tta,
    }  # fmt: skip


def model_note(run: dict[str, Any]) -> str:
    """The model of a :func:`run_record` in words, for a DICOM result's DerivationDescription, e.g.
    ``model dncnn-fdg-uniform64 (SHA-256 0123456789ab)``: enough to find the weights again from PACS."""
    return f"model {run['model']['name']} (SHA-256 {run['model']['sha256'][:12]})"


def storage_error(written: Path) -> float:
    """The largest error storing the result added, in the output's units (``storage_error_units``): half the
    largest RescaleSlope of a DICOM output (int16 with a per-slice slope), 0 for NIfTI (float32, as computed)."""
    if not written.is_dir():
        return 0.0
    import pydicom

    slopes = [float(pydicom.dcmread(f, stop_before_pixels=True).RescaleSlope) for f in written.iterdir()]
    return max(slopes) / 2.0


def body_mean_change(before: np.ndarray, after: np.ndarray) -> float:
    """Relative change (%) of the mean activity inside the body mask of the input."""
    from .inputs import body_mask

    mask = body_mask(before)
    mean_before = float(before[mask].mean())
    return 100.0 * (float(after[mask].mean()) - mean_before) / mean_before if mean_before else 0.0


def _denoise_one(
    denoise: Callable[[Path, Path], Written],
    series: ImageSeries,
    out: Path,
    frame: int | None,
    check: Callable[[Volume], list[str]] | None,
    echo: Callable[[str], None],
) -> tuple[Written, dict[str, Any]]:
    """Denoise one image and measure what the report says about it, from the files as written."""
    from .io import read_volume

    before = read_volume(series.path, frame=frame)
    warnings = check(before) if check is not None else []
    name = (series.folder if series.kind == "dicom" else series.path).name  # a series: its folder, not a slice
    for message in warnings:
        echo(f"warning: {name}: {message}")
    written = denoise(series.path, out)
    after = read_volume(written.path)
    return written, {
        "warnings": warnings,
        **written.record(),
        "storage_error_max": storage_error(written.path),
        "storage_error_units": after.units,
        "body_mean_change_percent": round(body_mean_change(before.data, after.data), 4),
    }


def report_record(root: Path, run: dict[str, Any] | None, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The report of a tree or dataset: what made it, and per input what happened (denoised or why skipped)."""
    return {
        "tgdpet": __version__,
        "created": dt.datetime.now().isoformat(timespec="seconds"),
        "root": str(root.resolve()),
        **(run or {}),
        "denoised": sum(e["status"] == "denoised" for e in entries),
        "skipped": sum(e["status"] == "skipped" for e in entries),
        "inputs": entries,
    }


def denoise_tree(
    root: str | os.PathLike,
    out_root: str | os.PathLike,
    denoise: Callable[[Path, Path], Written],
    *,
    frame: int | None = None,
    overwrite: bool = False,
    echo: Callable[[str], None] = print,
    run: dict[str, Any] | None = None,
    check: Callable[[Volume], list[str]] | None = None,
) -> dict[str, Any]:
    """Denoise every PET image under ``root`` into ``out_root``; return (and write) the report.

    Args:
        root: the study tree.
        out_root: the folder for the outputs and ``tgdpet-report.json``; created here once
            there is something to denoise; an existing one only with ``overwrite``.
        denoise: ``denoise(input, output) -> Written`` for one image, e.g. a partial of
            :func:`tgdpet.denoise.denoise_file` with a loaded denoiser.
        frame: the time frame of dynamic inputs.
        overwrite: write into an existing ``out_root`` (``denoise`` decides about each output).
        echo: where one line per input is printed.
        run: what denoises (:func:`run_record`: model, device, precision), recorded in the report.
        check: ``check(volume) -> sentences`` naming how an input lies outside the model's training
            range (:func:`tgdpet.denoise.domain_warnings`); printed and kept in its entry.

    A series tgdpet cannot read, or that is not PET, is skipped with the
    sentence it would be refused with; one that fails while denoising is
    reported the same way, and the others go on.
    """
    root, out_root = Path(root), Path(out_root)
    check_can_write(out_root, overwrite)
    found = find_images([root])
    per_folder: dict[Path, int] = {}  # DICOM series per folder: several get a subfolder each
    for s in found:
        per_folder[s.folder] = per_folder.get(s.folder, 0) + (s.kind == "dicom")
    entries = []
    jobs = []
    for series in found:
        info = describe(series, frame)
        entry: dict[str, Any] = {"input": str((series.folder if series.kind == "dicom" else series.path).resolve())}
        keys = ("format", "series_uid", "modality", "units", "suv_factor", "suv_problem")
        entry.update({k: info.get(k) for k in keys})
        reason = _skip_reason(series, info)
        if reason is None:
            jobs.append((series, output_path(series, root, out_root, per_folder[series.folder] > 1), entry))
        else:
            entry.update(status="skipped", reason=reason)
            echo(f"skipped: {entry['input']} ({reason})")
        entries.append(entry)
    if not jobs:
        raise TgdpetError(
            f"{root} holds no PET image tgdpet can denoise ({len(found)} image(s) skipped); "
            "run tgdpet inspect on it to see why."
        )
    out_root.mkdir(parents=True, exist_ok=overwrite)
    for series, out, entry in jobs:
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            written, fields = _denoise_one(denoise, series, out, frame, check, echo)
            entry.update(status="denoised", **fields)
            echo(f"denoised: {entry['input']} -> {entry['output']} ({written.note()})")
        except TgdpetError as e:
            entry.update(status="skipped", reason=str(e))
            echo(f"skipped: {entry['input']} ({e})")
    report = report_record(root, run, entries)
    check_can_write(out_root / REPORT_NAME, overwrite)
    with atomic_file(out_root / REPORT_NAME) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    return report
