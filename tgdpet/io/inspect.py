"""What a folder tree holds, series by series, from headers alone: ``tgdpet inspect`` and batch denoising.

:func:`find_images` walks the inputs once and lists every image series in
them (NIfTI and ECAT files; DICOM images grouped by SeriesInstanceUID,
wherever their files lie). :func:`describe` reports one of them the way a
user checking an archive wants it: modality, units, size, spacing,
orientation, the range of per-slice RescaleSlope, whether SUV can be computed
and, when tgdpet would refuse the series, the sentence it would refuse it with.
Only DICOM headers are read, never pixel data. A DICOM series is the files
of one SeriesInstanceUID in one folder: a copy elsewhere is another input.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset

from ..errors import TgdpetError
from .dicom_read import group_series, plan_series, series_files
from .ecat import is_ecat
from .nifti import is_nifti_name
from .suv import suv_factor
from .volume import Volume


@dataclass(frozen=True)
class ImageSeries:
    """One image found: a NIfTI or ECAT file, a DICOM series (its files, with headers), or a damaged file.

    ``path`` is what :func:`tgdpet.io.read_volume` takes for it: the file, or
    for DICOM the first file of the series (which stands for its series).
    ``kind`` is ``nifti``, ``ecat``, ``dicom`` or ``damaged`` (then ``problem`` says why).
    """

    kind: str
    path: Path
    folder: Path
    slices: tuple[tuple[Path, Dataset], ...] = ()
    problem: str | None = None

    @property
    def series_uid(self) -> str | None:
        return str(self.slices[0][1].SeriesInstanceUID) if self.slices else None


def find_images(paths: list[str | os.PathLike]) -> list[ImageSeries]:
    """Every NIfTI file, ECAT file and DICOM series under ``paths`` (files or folders; hidden entries skipped)."""
    files: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise TgdpetError(f"{p} does not exist; check the path.")
        files.extend(series_files(p) if p.is_dir() else [p])
    found: list[ImageSeries] = []
    others: list[Path] = []
    for f in dict.fromkeys(files):  # each file once, in order
        if is_nifti_name(f):
            found.append(ImageSeries("nifti", f, f.parent))
        elif is_ecat(f):
            found.append(ImageSeries("ecat", f, f.parent))
        else:
            others.append(f)
    damaged: dict[Path, str] = {}
    by_folder: dict[tuple[Path, str], list[tuple[Path, Dataset]]] = {}
    for uid, slices in group_series(others, damaged).items():
        for path, ds in slices:  # a copy of a series in another folder is another input
            by_folder.setdefault((path.parent, uid), []).append((path, ds))
    for (folder, _), slices in by_folder.items():
        slices = sorted(slices, key=lambda item: str(item[0]))
        found.append(ImageSeries("dicom", slices[0][0], folder, tuple(slices)))
    found.extend(ImageSeries("damaged", f, f.parent, problem=why) for f, why in damaged.items())
    return sorted(found, key=lambda s: (str(s.folder), str(s.path)))


def suv_status(units: str, meta: dict[str, Any]) -> tuple[float | None, str | None]:
    """The factor from Bq/mL to SUV(bw), or why there is none (``None`` and a sentence)."""
    if units == "SUV":
        return 1.0, None
    if units != "BQML":
        return None, f"the values are in {units}, not Bq/mL"
    try:
        return suv_factor(Volume(np.zeros((1, 1, 1), np.float32), np.eye(4), units=units, meta=meta)), None
    except TgdpetError as e:
        return None, str(e)


def _orientation(affine: np.ndarray) -> str:
    """Axis codes of voxel x, y, z in RAS terms, e.g. ``LPS`` for DICOM's usual axial stack."""
    return "".join(nib.aff2axcodes(affine))


def _syntax_name(ds: Dataset) -> str:
    ts = ds.file_meta.get("TransferSyntaxUID")
    return str(ts.name) if ts is not None else "unknown"


def _describe_dicom(series: ImageSeries, frame: int | None) -> dict[str, Any]:
    first = series.slices[0][1]
    slopes = [float(ds.get("RescaleSlope", 1.0) or 1.0) for _, ds in series.slices]
    info: dict[str, Any] = {
        "format": "dicom",
        "path": str(series.folder),
        "series_uid": series.series_uid,
        "description": str(first.get("SeriesDescription", "")),
        "modality": str(first.get("Modality", "")),
        "files": len(series.slices),
        "transfer_syntax": sorted({_syntax_name(ds) for _, ds in series.slices}),
        "slope_range": [min(slopes), max(slopes)],
    }
    try:
        plan = plan_series(series.folder, list(series.slices), frame)
    except TgdpetError as e:
        return {**info, "readable": False, "problem": str(e), "suv_factor": None, "suv_problem": None}
    factor, why = suv_status(plan.units, plan.meta)
    spacing = np.linalg.norm(plan.affine[:3, :3], axis=0)
    return {
        **info,
        "readable": True,
        "problem": None,
        "units": plan.units,
        "frames": plan.frames,
        "shape_zyx": [len(plan.slices), int(first.Rows), int(first.Columns)],
        "spacing_mm": [round(float(s), 4) for s in spacing],
        "orientation": _orientation(plan.affine),
        "suv_factor": factor,
        "suv_problem": why,
    }


def _describe_file(series: ImageSeries, frame: int | None) -> dict[str, Any]:
    """NIfTI or ECAT: read the image (tgdpet's own reader, so its refusals are reported as they would be)."""
    from . import read_volume

    info: dict[str, Any] = {  # ECAT files are PET by definition; NIfTI records no modality
        "format": series.kind, "path": str(series.path), "modality": "PT" if series.kind == "ecat" else None
    }
    try:
        volume = read_volume(series.path, frame=frame)
    except TgdpetError as e:
        return {**info, "readable": False, "problem": str(e), "suv_factor": None, "suv_problem": None}
    slope, units_recorded = None, True
    if series.kind == "nifti":
        from .nifti import nifti_units_note

        header_slope = nib.load(str(series.path)).header.get_slope_inter()[0]
        slope = 1.0 if header_slope is None else float(header_slope)
        units_recorded = nifti_units_note(series.path) is not None  # NIfTI has no field for activity units
    factor, why = suv_status(volume.units, volume.meta)
    return {
        **info,
        "readable": True,
        "problem": None,
        "units": volume.units,
        "units_recorded": units_recorded,
        "shape_zyx": list(volume.shape),
        "spacing_mm": [round(s, 4) for s in volume.spacing],
        "orientation": _orientation(volume.affine),
        "slope_range": None if slope is None else [slope, slope],
        "suv_factor": factor,
        "suv_problem": why,
    }


def describe(series: ImageSeries, frame: int | None = None) -> dict[str, Any]:
    """One series as ``tgdpet inspect`` reports it (JSON-ready); ``problem`` says why tgdpet would refuse it."""
    if series.kind == "damaged":
        return {"format": "dicom", "path": str(series.path), "readable": False, "problem": series.problem}
    if series.kind == "dicom":
        return _describe_dicom(series, frame)
    return _describe_file(series, frame)


def inspect_inputs(paths: list[str | os.PathLike], frame: int | None = None) -> list[dict[str, Any]]:
    """Describe every series under ``paths``; refuses only when nothing at all is found."""
    found = find_images(paths)
    if not found:
        hidden = [p for p in map(Path, paths) if p.is_dir() and any(p.iterdir()) and not series_files(p)]
        note = (" (only hidden entries, which tgdpet never reads: a .tmp-* one is the leftover of an interrupted "
                "write, safe to delete)") if hidden else ""  # fmt: skip
        raise TgdpetError(
            f"no NIfTI, ECAT or DICOM image found in {', '.join(str(p) for p in paths)}{note}; check the path."
        )
    return [describe(s, frame) for s in found]
