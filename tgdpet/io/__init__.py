"""Volumes in and out: NIfTI files and DICOM PET series, plus SUV.

``read_volume`` and ``write_volume`` pick the format from the path:
``*.nii`` / ``*.nii.gz`` is NIfTI, an ECAT 7 file (read only) is told by its
magic number, a folder (or one file of it) is a DICOM series. A volume read from either keeps its source so that
``write_volume(result, out, like=input)`` writes a result that viewers and
PACS treat as belonging to the input (same header codes; same patient, study
and frame of reference in a new derived series).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import TgdpetError
from ..files import check_can_write, check_replaceable
from .dicom_read import dicom_frame_count, read_dicom_series
from .dicom_write import is_tgdpet_slice, write_dicom_frames, write_dicom_series
from .ecat import is_ecat, read_ecat
from .nifti import is_nifti_name, nifti_frame_count, read_nifti, write_nifti, write_nifti_frames
from .suv import convert_units, from_suv, suv_factor, to_suv
from .volume import MAX_VOXELS, META_TAGS, Volume, check_finite

__all__ = [
    "DENOISED",
    "MAX_VOXELS",
    "META_TAGS",
    "Volume",
    "check_output_name",
    "check_replaceable_output",
    "convert_units",
    "frame_count",
    "from_suv",
    "read_volume",
    "suv_factor",
    "to_suv",
    "write_frames",
    "write_volume",
]

#: The description of every denoised output (NIfTI descrip, DICOM SeriesDescription suffix and
#: DerivationDescription): how a tree of earlier results is told from the images they came from.
DENOISED = "tgdpet denoised"

#: A file extension (a letter, then up to 4 letters or digits: ``.png``, ``.dcm``, ``.h5``) cannot
#: name a DICOM series folder; folders named by UIDs (``1.2.840.5``) have none.
_EXTENSION = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,4}$")


def check_output_name(path: str | os.PathLike) -> Path:
    """Refuse an output name tgdpet cannot write: a file extension other than .nii/.nii.gz.

    Anything but NIfTI is written as a DICOM series into a folder, so a name
    such as ``out.png`` would become a folder called out.png; it is refused.
    """
    out = Path(path)
    if not is_nifti_name(out) and _EXTENSION.search(out.name):
        raise TgdpetError(
            f"tgdpet cannot write {out.name}: outputs are NIfTI files (.nii, .nii.gz) or DICOM series folders "
            "(a name without a file extension)."
        )
    return out


def check_replaceable_output(path: str | os.PathLike) -> None:
    """Refuse to replace an existing DICOM output folder unless it holds only a series tgdpet wrote.

    A DICOM output is replaced whole; a folder the user named with ``-o`` may
    hold their own files, which ``--overwrite`` must not delete.
    """
    out = Path(path)
    if out.is_dir() and not is_nifti_name(out):
        check_replaceable(out, is_tgdpet_slice, "the slices of a DICOM series tgdpet wrote")


def read_volume(
    path: str | os.PathLike,
    *,
    series_uid: str | None = None,
    frame: int | None = None,
    allow_nonfinite: bool = False,
) -> Volume:
    """Read a PET volume from a NIfTI file or a DICOM PET series.

    Args:
        path: a ``.nii``/``.nii.gz`` file, an ECAT 7 file, a folder holding one
            DICOM PET series (searched recursively), or one DICOM file of a series.
        series_uid: the SeriesInstanceUID to read when the folder holds several.
        frame: the time frame to read from a 4-D NIfTI file, a dynamic DICOM
            series or a multi-frame ECAT file (0 is the first).
        allow_nonfinite: accept NaN/Inf voxels instead of refusing the file.

    NIfTI has no field for activity units: the ``units=`` note tgdpet writes in
    ``descrip`` is read back, and other NIfTI files are taken to be in Bq/mL.
    DICOM units come from Units (0054,1001), with SUV-bw (``GML``) read as ``SUV``.

    Raises:
        TgdpetError: the path is missing, not NIfTI/DICOM, damaged, not a
            single evenly spaced PET series, or holds NaN/Inf voxels.
    """
    p = Path(path)
    if not p.exists():
        raise TgdpetError(f"{p} does not exist; check the path.")
    if p.is_file() and is_nifti_name(p):
        if series_uid is not None:
            raise TgdpetError(f"series_uid applies to DICOM folders, but {p} is a NIfTI file; leave it out.")
        volume = read_nifti(p, frame)
    elif p.is_file() and is_ecat(p):
        if series_uid is not None:
            raise TgdpetError(f"series_uid applies to DICOM folders, but {p} is an ECAT file; leave it out.")
        volume = read_ecat(p, frame)
    else:
        volume = read_dicom_series(p, series_uid, frame)
    check_finite(volume.data, p, allow_nonfinite)
    return volume


def _refuse_overwriting_source(volume: Volume, like: Volume | None, out: Path) -> None:
    """Inputs are never modified, even with overwrite: refuse an output that is an input, or inside a DICOM input's
    folder (which would then hold a second series, and the next read of the input would find both)."""
    target = out.resolve()
    for v in (volume, like):
        for src in v.source_paths if v is not None else ():
            src = src.resolve()
            if target == src or target in src.parents:
                source = src if v.source_format == "nifti" else f"series in {src.parent}"
                raise TgdpetError(f"writing {out} would replace the input {source}; choose another output name.")
            if v.source_format == "dicom" and src.parent in target.parents:
                raise TgdpetError(
                    f"writing {out} would put it inside the folder of the input series ({src.parent}); "
                    "choose an output outside it."
                )


def write_volume(
    volume: Volume,
    path: str | os.PathLike,
    *,
    like: Volume | None = None,
    overwrite: bool = False,
    description: str = DENOISED,
    units: str | None = None,
    dicom_meta: Mapping[str, Any] | None = None,
    derivation: str = "",
    also_from: Volume | None = None,
) -> Path:
    """Write a volume as NIfTI (``*.nii``, ``*.nii.gz``) or, for any other name, a DICOM series folder.

    Args:
        volume: what to write; its NIfTI header or DICOM slice headers (if any)
            are the template of the output.
        path: the output file or folder; written atomically.
        like: a volume (usually the input) whose header to follow when
            ``volume`` carries none of its own.
        overwrite: replace an existing output.
        description: NIfTI ``descrip`` / DICOM SeriesDescription suffix and
            DerivationDescription.
        units: write in these units (``BQML`` or ``SUV``), converting with the
            volume's acquisition meta; default: the volume's own units.
        dicom_meta: DICOM attributes (by keyword) set on every slice of a DICOM
            output, e.g. ``{"PatientID": "s000", "StudyInstanceUID": uid}`` so
            several series land in one study.
        derivation: how the result was made, in words (the model, the working grid), appended to a DICOM
            output's DerivationDescription, where a PACS reader meets it; NIfTI's 80-character
            ``descrip`` has no room for it.
        also_from: a second DICOM image ``volume`` was made from (n2n-online's other half), which a DICOM
            output's SourceImageSequence references beside ``like``'s slices.

    Returns:
        The path written.
    """
    out = check_output_name(path)
    is_nifti = is_nifti_name(out)
    check_can_write(out, overwrite)
    if overwrite and out.exists() and out.is_dir() == is_nifti:
        raise TgdpetError(f"{out} exists as a {'folder' if is_nifti else 'file'}; remove it or choose another name.")
    _refuse_overwriting_source(volume, like, out)
    if overwrite:
        check_replaceable_output(out)
    if units is not None:
        volume = convert_units(volume, units)
    if volume.units == "SUV":
        volume = volume.with_data(np.clip(volume.data, 0.0, None))  # negative uptake has no meaning
    if is_nifti:
        if dicom_meta:
            raise TgdpetError("dicom_meta applies to DICOM outputs, but the output is NIfTI; leave it out.")
        write_nifti(volume, out, like=like, description=description)
    else:
        write_dicom_series(volume, out, like=like, description=description, dicom_meta=dicom_meta, overwrite=overwrite,
                           derivation=derivation, also_from=also_from)  # fmt: skip
    return out


def frame_count(path: str | os.PathLike) -> int:
    """Time frames of a NIfTI file or a DICOM series (1 for a static image), from headers alone; ECAT files
    count as 1 here (one frame is read with ``read_volume(..., frame=N)``)."""
    p = Path(path)
    if not p.exists():
        raise TgdpetError(f"{p} does not exist; check the path.")
    if p.is_file() and is_nifti_name(p):
        return nifti_frame_count(p)
    if p.is_file() and is_ecat(p):
        return 1
    return dicom_frame_count(p)


def write_frames(
    frames: list[Volume],
    path: str | os.PathLike,
    *,
    like: Volume | None = None,
    overwrite: bool = False,
    description: str = DENOISED,
    derivation: str = "",
) -> Path:
    """Write the frames of a dynamic image, atomically: one 4-D NIfTI file (time last), or, for a name
    without an extension, one DICOM series holding every frame (each with its source's timing).
    ``derivation`` is as in :func:`write_volume`."""
    out = check_output_name(path)
    check_can_write(out, overwrite)
    for frame in frames:
        _refuse_overwriting_source(frame, like, out)
    if overwrite:
        check_replaceable_output(out)
    if is_nifti_name(out):
        write_nifti_frames(frames, out, like=like, description=description)
    else:
        write_dicom_frames(frames, out, like=like, description=description, dicom_meta=None, overwrite=overwrite,
                           derivation=derivation)  # fmt: skip
    return out
