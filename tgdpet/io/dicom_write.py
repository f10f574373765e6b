"""Writing a :class:`Volume` as a new DICOM PET series.

Two ways, chosen by what the volume (or ``like``) came from:

* **derived**: each source slice header is deep-copied, so patient, study,
  frame of reference, acquisition and vendor attributes are kept, then marked
  as a new derived series (new Series/SOP Instance UIDs, ImageType DERIVED,
  SourceImageSequence pointing at the source slice, numbered in the source's
  own InstanceNumber order, its real-world value mappings rescaled to the new pixels);
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
from pydicom.charset import convert_encodings, encode_string
from pydicom.datadict import tag_for_keyword
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat

from .. import __version__
from ..errors import TgdpetError
from ..files import atomic_dir
from .acquisition import (
    PHILIPS_PET_CREATOR,
    apply_meta,
    format_da,
    format_tm,
    philips_activity_factor,
    set_units,
    units_from_dataset,
)
from .geometry import dicom_plane_from_affine, slice_normal
from .volume import Volume

PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"

#: The range of an IS value (a signed 32-bit integer), which SeriesNumber must stay within.
_IS_MAX = 2**31 - 1

#: How far a derived series' number is from its source's.
_SERIES_OFFSET = 1000

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


def _fits_lo(text: str, character_set: str | list[str] | None) -> bool:
    """Whether ``text`` fits an LO value: 64 bytes once encoded in the slice's SpecificCharacterSet, where a
    character may take several bytes (UTF-8 'é' takes two), so counting characters is not enough."""
    return len(encode_string(text, convert_encodings(character_set or "ISO_IR 6"))) <= 64


def _series_description(original: str, description: str, character_set: str | list[str] | None) -> str:
    """``original`` followed by ``description``, cut to fit an LO value: whole characters are dropped from the
    end of ``original`` (never part of a multi-byte character), so the suffix saying what the series is stays."""
    suffix = description
    while suffix and not _fits_lo(suffix, character_set):
        suffix = suffix[:-1]
    for n in range(len(original), 0, -1):
        described = f"{original[:n].rstrip()} {suffix}".strip()
        if _fits_lo(described, character_set):
            return described
    return suffix.strip()


def _derived_series_number(source: int) -> int:
    """The SeriesNumber of a series derived from series number ``source``: ``source + 1000``, next to its source
    in series lists yet distinct, or ``source - 1000`` where the sum would pass the largest IS value
    (2147483647), which a validator rejects as out of range."""
    number = source + _SERIES_OFFSET
    return number if number <= _IS_MAX else source - _SERIES_OFFSET


def _slice_indices(source: tuple[Dataset, ...]) -> list[int]:
    """Each position's 0-based place in its source's own InstanceNumber order (positions run along the normal).

    Scanners usually number from the head (InstanceNumber 1 at the top slice), opposite to position order; a
    derived series numbered the same way scrolls as its source does when a viewer hangs it by InstanceNumber.
    A source whose numbers are missing or repeated is numbered in position order.
    """
    numbers = [ds.get("InstanceNumber") for ds in source]
    if any(n in (None, "") for n in numbers) or len({int(n) for n in numbers}) < len(numbers):
        return list(range(len(source)))
    ranks = np.empty(len(source), int)
    ranks[np.argsort([int(n) for n in numbers])] = np.arange(len(source))
    return ranks.tolist()


def _rescale_real_world_values(ds: Dataset, source: Dataset, units: str, stored: np.ndarray, slope: float) -> None:
    """Make each linear RealWorldValueMapping item of ``ds`` (a copy of ``source``) map the new stored values.

    The source's item maps a stored value s to m*s + b, and its rescale maps s to activity a = f*(r*s + i)
    (f: Philips' CNTS factor, else 1), so the real-world value is k*a + c with k = m/(r*f), c = b - m*i/r.
    The new slice stores a = slope*s' (intercept 0), so its item maps s' to (k*slope)*s' + c. Left as it was,
    the source's item would show viewers that read it (Philips PET SUV) values off by a factor differing
    per slice. A LUT item, a source slope of 0, or a slice now in other units cannot be carried over: dropped.
    """
    if "RealWorldValueMappingSequence" not in ds:
        return
    r = float(source.get("RescaleSlope") or 0.0)  # the reader refuses a slice without one; unknown: drop
    i = float(source.get("RescaleIntercept") or 0.0)
    f = philips_activity_factor(source) or 1.0
    same_units = units_from_dataset(source) == units
    kept = []
    for item in ds.RealWorldValueMappingSequence:
        if not same_units or r == 0 or "RealWorldValueSlope" not in item:
            continue
        m, b = float(item.RealWorldValueSlope), float(item.get("RealWorldValueIntercept") or 0.0)
        item.RealWorldValueSlope = m / (r * f) * slope
        item.RealWorldValueIntercept = b - m * i / r
        for keyword, value in (("RealWorldValueFirstValueMapped", stored.min()),
                               ("RealWorldValueLastValueMapped", stored.max())):  # fmt: skip
            if keyword in item:
                item.add_new(keyword, "SS", int(value))  # signed, as the int16 pixels are
        kept.append(item)
    if kept:
        ds.RealWorldValueMappingSequence = Sequence(kept)
    else:
        del ds.RealWorldValueMappingSequence


def _reference(source: Dataset) -> Dataset:
    """A SourceImageSequence item naming ``source``."""
    ref = Dataset()
    ref.ReferencedSOPClassUID = source.SOPClassUID
    ref.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return ref


def _derived_slice(source: Dataset, description: str, derivation: str, also: tuple[Dataset, ...] = ()) -> Dataset:
    """A copy of a source slice header, marked as the derived image of a new series made from ``source`` and the
    slices in ``also`` (at the same position in other images whose pixels the result was made from)."""
    ds = copy.deepcopy(source)
    for keyword in _STALE:
        if keyword in ds:
            delattr(ds, keyword)
    _drop_philips_activity_factor(ds)
    ds.ImageType = ["DERIVED", "PRIMARY", *list(source.get("ImageType", []))[2:]]
    original = str(source.get("SeriesDescription", "")).strip()
    ds.SeriesDescription = _series_description(original, description, ds.get("SpecificCharacterSet"))
    ds.DerivationDescription = _derivation(description, derivation)
    ds.SeriesNumber = _derived_series_number(int(source.get("SeriesNumber") or 0))
    ds.SourceImageSequence = Sequence([_reference(s) for s in (source, *also)])
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
    ds.SeriesDescription = _series_description("", description, ds.SpecificCharacterSet)
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
    also_from: Volume | None = None,
) -> None:
    """Write ``volume`` as a new PET series of one file per slice into ``folder``, atomically.

    ``also_from`` is a second DICOM image on the same grid whose pixels ``volume`` was made from as well (the
    second half of an ``n2n-online`` mean of two halves): each slice then references both source slices at its
    position, so a PACS can trace the result to all the images it came from.
    """
    write_dicom_frames([volume], folder, like=like, description=description, dicom_meta=dicom_meta,
                       overwrite=overwrite, derivation=derivation, also_from=also_from)  # fmt: skip


def write_dicom_frames(
    frames: list[Volume],
    folder: Path,
    *,
    like: Volume | None,
    description: str,
    dicom_meta: Mapping[str, Any] | None,
    overwrite: bool,
    derivation: str = "",
    also_from: Volume | None = None,
) -> None:
    """Write one or more time frames as one new PET series (one file per slice and frame), atomically.

    A dynamic result keeps each frame's timing from its source slices (FrameReferenceTime,
    ActualFrameDuration, AcquisitionTime, NumberOfTimeSlices are copied with the header); instances are
    numbered frame after frame, ``ImageIndex = frame * slices + slice + 1`` as the PET module defines it, ``slice``
    being a position's place in its source frame's InstanceNumber order. ``also_from`` (one frame only) is as in
    :func:`write_dicom_series`.
    """
    also = also_from.dicom_headers if also_from is not None else ()
    if also and len(frames) != 1:
        raise ValueError("also_from names the sources of a single image; a dynamic result has one per frame")
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
            if also:
                _check_source_matches(volume, also)
            template = None if source else _scratch_template(volume, description, derivation, now)
            orientation, pixel_spacing, positions, thickness = dicom_plane_from_affine(volume.affine, volume.shape[0])
            normal = slice_normal(np.array(orientation))
            n = volume.shape[0]
            indices = _slice_indices(source) if source else range(n)
            for k in range(n):
                stored, slope = quantise(volume.data[k])
                if source:
                    ds = _derived_slice(source[k], description, derivation, also=also[k : k + 1])
                    _rescale_real_world_values(ds, source[k], volume.units, stored, float(slope))
                else:
                    ds = copy.deepcopy(template)
                ds.SeriesInstanceUID = series_uid
                ds.SOPInstanceUID = generate_uid()
                ds.InstanceNumber = ds.ImageIndex = f * n + indices[k] + 1  # ImageIndex as the PET module defines it
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
                ds.set_pixel_data(stored, "MONOCHROME2", 16, generate_instance_uid=False)
                ds.RescaleSlope = slope
                ds.RescaleIntercept = "0"
                name = f"slice_{k + 1:04d}.dcm" if len(frames) == 1 else f"frame_{f + 1:03d}_slice_{k + 1:04d}.dcm"
                pydicom.dcmwrite(tmp / name, ds, enforce_file_format=True)
