"""Writing a :class:`Volume` as a new DICOM PET series.

Two ways, chosen by what the volume (or ``like``) came from:

* **derived**: each source slice header is deep-copied, so patient, study,
  frame of reference, acquisition and vendor attributes are kept, then marked
  as a new derived series (new Series/SOP Instance UIDs, ImageType DERIVED,
  SourceImageSequence pointing at the source slice);
* **from scratch** (NIfTI input, simulator): a complete PET Image Storage
  series built with pydicom, patient/study from ``dicom_meta`` or neutral
  defaults, acquisition facts (dose, weight, times) from ``Volume.meta``.

Pixels are int16 with a per-slice RescaleSlope (intercept 0) so each slice
uses the full 15-bit range, the way scanners store PET; negatives, which a
residual denoiser can produce, are clamped to 0 first.
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

from .. import __version__
from ..errors import TgdpetError
from ..files import atomic_dir
from .acquisition import PHILIPS_PET_CREATOR, apply_meta, format_da, format_tm, set_units
from .geometry import dicom_plane_from_affine, slice_normal
from .volume import Volume

PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"

#: Attributes that differ per slice or describe pixels: ``dicom_meta`` may not set them.
_PER_SLICE = frozenset(
    {"SOPInstanceUID", "InstanceNumber", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
     "SliceLocation", "ImageIndex", "PixelData", "RescaleSlope", "RescaleIntercept", "Rows", "Columns",
     "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SourceImageSequence", "Units"}
)

#: Source attributes that described the source's stored pixel values, not ours.
_STALE = ("SmallestImagePixelValue", "LargestImagePixelValue", "PixelPaddingValue", "PixelPaddingRangeLimit",
          "SmallestPixelValueInSeries", "LargestPixelValueInSeries")


#: How tgdpet names the slice files of a series it writes.
_SLICE_NAME = re.compile(r"(frame_\d{3,}_)?slice_\d{4,}\.dcm")


def is_tgdpet_slice(path: Path) -> bool:
    """A slice file tgdpet wrote: its name, and the DerivationDescription every tgdpet series carries."""
    if not (path.is_file() and _SLICE_NAME.fullmatch(path.name)):
        return False
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["DerivationDescription"])
    except Exception:  # noqa: BLE001 - anything unreadable is not a slice tgdpet wrote
        return False
    return "(tgdpet " in str(ds.get("DerivationDescription", ""))


def check_dicom_meta(dicom_meta: Mapping[str, Any] | None) -> None:
    """Refuse unknown DICOM keywords and per-slice attributes before anything is written."""
    for keyword in dicom_meta or {}:
        if tag_for_keyword(keyword) is None:
            raise TgdpetError(
                f"{keyword!r} in dicom_meta is not a DICOM keyword; use names such as PatientName or StudyInstanceUID."
            )
        if keyword in _PER_SLICE:
            raise TgdpetError(f"dicom_meta cannot set {keyword}, which tgdpet computes for every slice; remove it.")


def quantise(values: np.ndarray) -> tuple[np.ndarray, str]:
    """int16 pixels and the RescaleSlope (as written, a DS string) that best store one slice.

    The stored values are computed with the slope exactly as it will be read
    back, so the error is at most half a step (``max / 65534``).
    """
    v = np.clip(values.astype(np.float64), 0.0, None)
    top = float(v.max())
    slope = DSfloat(top / 32767.0 if top > 0 else 1.0, auto_format=True)
    stored = np.minimum(np.rint(v / float(slope)), 32767).astype(np.int16)
    return stored, str(slope)


def _drop_philips_activity_factor(ds: Dataset) -> None:
    """Remove Philips' CNTS -> Bq/mL factor: the derived slice is written in real units, not CNTS."""
    try:
        block = ds.private_block(0x7053, PHILIPS_PET_CREATOR)
    except KeyError:
        return
    for offset in (0x00, 0x09):  # SUV factor and activity concentration factor, both for CNTS pixels
        tag = block.get_tag(offset)
        if tag in ds:
            del ds[tag]


def _conform(ds: Dataset) -> None:
    """Fill what the PET IOD requires of every series and older sources often lack.

    Laterality (0020,0060) is Type 2C: needed unless BodyPartExamined names an
    unpaired part; when neither is known it is present and empty (unknown).
    """
    if "Laterality" not in ds and not ds.get("BodyPartExamined"):
        ds.Laterality = ""


def _derivation(description: str, derivation: str) -> str:
    """DerivationDescription: what the series is, which tgdpet made it, and how (``derivation``), e.g.
    ``tgdpet denoised (tgdpet 0.2.0): working grid 3.2 x 3.2 x 3.2 mm; ...``; ST holds 1024 characters.

    ``derivation`` may name a user's file (a model), in any script; the slice keeps its source's
    character set, which may be the default repertoire, so what it cannot hold becomes ``?``.
    """
    made = f"{description} (tgdpet {__version__})"
    text = f"{made}: {derivation.encode('ascii', 'replace').decode()}" if derivation else made
    return text[:1024]


def _derived_slice(source: Dataset, description: str, derivation: str) -> Dataset:
    """A copy of a source slice header, marked as the derived image of a new series."""
    ds = copy.deepcopy(source)
    for keyword in _STALE:
        if keyword in ds:
            delattr(ds, keyword)
    _drop_philips_activity_factor(ds)
    ds.ImageType = ["DERIVED", "PRIMARY", *list(source.get("ImageType", []))[2:]]
    original = str(source.get("SeriesDescription", "")).strip()
    described = f"{original[: max(0, 63 - len(description))]} {description}" if original else description
    ds.SeriesDescription = described[:64].strip()  # LO holds 64 characters: keep the suffix whole
    ds.DerivationDescription = _derivation(description, derivation)
    ds.SeriesNumber = int(source.get("SeriesNumber") or 0) + 1000  # next to its source in series lists, yet distinct
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    ds.SourceImageSequence = Sequence([ref])
    return ds


def _scratch_template(volume: Volume, description: str, derivation: str, now: dt.datetime) -> Dataset:
    """The attributes shared by every slice of a series built from nothing."""
    series_time = volume.meta.get("series_datetime") or now
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = PET_IMAGE_STORAGE
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.PatientName = "TGDPET^ANONYMOUS"
    ds.PatientID = "TGDPET"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = generate_uid()
    ds.StudyDate, ds.StudyTime = format_da(series_time), format_tm(series_time)
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.Modality = "PT"
    ds.SeriesNumber = 1
    ds.SeriesDescription = description[:64]
    ds.DerivationDescription = _derivation(description, derivation)
    ds.Manufacturer = "tgdpet"
    ds.SoftwareVersions = __version__
    ds.FrameOfReferenceUID = generate_uid()
    ds.PositionReferenceIndicator = ""
    ds.CountsSource = "EMISSION"
    ds.SeriesType = ["STATIC", "IMAGE"]
    ds.CollimatorType = "NONE"
    ds.NumberOfSlices = volume.shape[0]
    ds.FrameReferenceTime = "0"
    ds.PatientOrientationCodeSequence = Sequence()
    ds.PatientGantryRelationshipCodeSequence = Sequence()
    apply_meta(ds, volume.meta, series_time)
    return ds


def _check_source_matches(volume: Volume, source: tuple) -> None:
    nz, ny, nx = volume.shape
    first = source[0]
    if len(source) != nz or (int(first.Rows), int(first.Columns)) != (ny, nx):
        raise TgdpetError(
            f"the volume is {nz} x {ny} x {nx} voxels but the DICOM series it is written like is "
            f"{len(source)} x {first.Rows} x {first.Columns}; write it as NIfTI or without like=."
        )


def write_dicom_series(
    volume: Volume,
    folder: Path,
    *,
    like: Volume | None,
    description: str,
    dicom_meta: Mapping[str, Any] | None,
    overwrite: bool,
    derivation: str = "",
) -> None:
    """Write ``volume`` as a new PET series of one file per slice into ``folder``, atomically."""
    write_dicom_frames([volume], folder, like=like, description=description, dicom_meta=dicom_meta,
                       overwrite=overwrite, derivation=derivation)  # fmt: skip


def write_dicom_frames(
    frames: list[Volume],
    folder: Path,
    *,
    like: Volume | None,
    description: str,
    dicom_meta: Mapping[str, Any] | None,
    overwrite: bool,
    derivation: str = "",
) -> None:
    """Write one or more time frames as one new PET series (one file per slice and frame), atomically.

    A dynamic result keeps each frame's timing from its source slices (FrameReferenceTime,
    ActualFrameDuration, AcquisitionTime, NumberOfTimeSlices are copied with the header); instances are
    numbered frame after frame, ``ImageIndex = frame * slices + slice + 1`` as the PET module defines it.
    """
    for volume in frames:
        if not np.isfinite(volume.data).all():
            raise TgdpetError(
                "the volume holds NaN or infinite voxels, which DICOM cannot store; write it as NIfTI instead."
            )
    check_dicom_meta(dicom_meta)
    now = dt.datetime.now()
    series_uid = generate_uid()
    with atomic_dir(folder, overwrite=overwrite) as tmp:
        for f, volume in enumerate(frames):
            source = volume.dicom_headers or (like.dicom_headers if like is not None and len(frames) == 1 else ())
            if source:
                _check_source_matches(volume, source)
            template = None if source else _scratch_template(volume, description, derivation, now)
            orientation, pixel_spacing, positions, thickness = dicom_plane_from_affine(volume.affine, volume.shape[0])
            normal = slice_normal(np.array(orientation))
            n = volume.shape[0]
            for k in range(n):
                ds = _derived_slice(source[k], description, derivation) if source else copy.deepcopy(template)
                ds.SeriesInstanceUID = series_uid
                ds.SOPInstanceUID = generate_uid()
                ds.InstanceNumber = f * n + k + 1
                ds.ImageIndex = f * n + k + 1
                ds.ContentDate = ds.InstanceCreationDate = format_da(now)
                ds.ContentTime = ds.InstanceCreationTime = format_tm(now)
                ds.ImageOrientationPatient = [f"{v:.8g}" for v in orientation]
                ds.ImagePositionPatient = [f"{v:.8g}" for v in positions[k]]
                ds.PixelSpacing = [f"{v:.8g}" for v in pixel_spacing]
                if not ds.get("SliceThickness"):  # a source's reconstructed thickness stays as it was
                    ds.SliceThickness = f"{thickness:.8g}"
                ds.SliceLocation = f"{float(positions[k] @ normal):.8g}"
                set_units(ds, volume.units)
                for keyword, value in (dicom_meta or {}).items():
                    setattr(ds, keyword, value)
                _conform(ds)
                meta = FileMetaDataset()
                meta.MediaStorageSOPClassUID = ds.SOPClassUID
                meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                meta.TransferSyntaxUID = ExplicitVRLittleEndian
                ds.file_meta = meta
                stored, slope = quantise(volume.data[k])
                ds.set_pixel_data(stored, "MONOCHROME2", 16, generate_instance_uid=False)
                ds.RescaleSlope = slope
                ds.RescaleIntercept = "0"
                name = f"slice_{k + 1:04d}.dcm" if len(frames) == 1 else f"frame_{f + 1:03d}_slice_{k + 1:04d}.dcm"
                pydicom.dcmwrite(tmp / name, ds, enforce_file_format=True)
