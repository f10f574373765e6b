"""Reading one DICOM PET series (a folder of single-frame slices) into a :class:`Volume`.

Two passes: first every header (without pixel data) is read, grouped by
SeriesInstanceUID and checked (modality, decoder, geometry, sizes) so that a
bad series is refused before any pixel is decoded or any volume allocated;
then the chosen slices' pixels are decoded in position order and each slice's
own RescaleSlope/Intercept applied (PET scales every slice separately).

Slices are ordered by ImagePositionPatient projected on the slice normal, never
by InstanceNumber, which scanners and anonymisers do not keep consistent.
A dynamic series (several time frames at each position) is split into its
frames by FrameReferenceTime (or AcquisitionTime); one frame is read when
asked for by number. Files without the 128-byte preamble (bare datasets, as
old archives hold them) are read too; anything else in the folder that is not
a DICOM image (text, DICOMDIR, hidden files) is passed over.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from ..errors import TgdpetError
from .acquisition import meta_from_dataset, philips_activity_factor, units_from_dataset
from .geometry import affine_from_dicom, slice_normal
from .volume import Volume, allocate, check_voxel_count

_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError)
#: How many pixel bytes one byte of a compressed DICOM file can decode to, at most. RLE's runs
#: expand at most 64-fold (2 bytes -> 128). Other codecs have no hard limit, but no real PET
#: slice comes near 1100:1 (a 512 x 512 slice of 16-bit pixels is 512 KiB; its DICOM header
#: alone is over 1 KiB). A header claiming more is refused before the volume is allocated.
_MAX_EXPANSION = {RLELossless: 64}
_DEFAULT_MAX_EXPANSION = 1100
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_DECODE_ERRORS = (OSError, ValueError, RuntimeError, NotImplementedError, TypeError, AttributeError)
#: What every slice needs to be placed and sized: keyword -> (tag, number of values).
_GEOMETRY_TAGS = {
    "ImagePositionPatient": ("(0020,0032)", 3),
    "ImageOrientationPatient": ("(0020,0037)", 6),
    "PixelSpacing": ("(0028,0030)", 2),
    "Rows": ("(0028,0010)", 1),
    "Columns": ("(0028,0011)", 1),
    "BitsAllocated": ("(0028,0100)", 1),
}


#: How a bare dataset (no preamble, no "DICM") can begin: group 0x0002 or 0x0008, little or big endian.
_BARE_STARTS = (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")


def _bare_dataset(path: Path, stop_before_pixels: bool) -> Dataset | None:
    """A file without preamble read as a dataset, with the transfer syntax it was found in; else ``None``.

    Only files that start like a DICOM group are tried, and any failure means
    "not DICOM": text and other junk beside a series must not stop the read.
    """
    with open(path, "rb") as f:
        if f.read(2) not in _BARE_STARTS:
            return None
    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
        if "SOPInstanceUID" not in ds or "SeriesInstanceUID" not in ds:
            return None
        if "TransferSyntaxUID" not in ds.file_meta:
            implicit, little = ds.original_encoding
            ds.file_meta.TransferSyntaxUID = (
                ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
            )
        str(ds.SeriesInstanceUID)  # parse it now: a lookalike file fails here, not later
        return ds
    except Exception:  # noqa: BLE001 - a forced parse of a non-DICOM file can fail in any way
        return None


def _dcmread(path: Path, stop_before_pixels: bool) -> Dataset | None:
    """A DICOM file's dataset (with or without preamble); ``None`` when the file is not DICOM."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        return _bare_dataset(path, stop_before_pixels)


def read_header(path: Path) -> Dataset | None:
    """The header of a DICOM file without its pixel data; ``None`` when the file is not DICOM."""
    try:
        return _dcmread(path, stop_before_pixels=True)
    except _READ_ERRORS as e:
        raise TgdpetError(
            f"{path} is a damaged DICOM file ({e}); copy it again or remove it from the folder."
        ) from None


def series_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` (recursively) that tgdpet may read: hidden entries are skipped."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def group_series(
    files: list[Path], damaged: dict[Path, str] | None = None
) -> dict[str, list[tuple[Path, Dataset]]]:
    """The DICOM images among ``files``, by SeriesInstanceUID (other files, DICOMDIR included, left out).

    A damaged DICOM file is refused, or, when ``damaged`` is given, recorded
    there with the reason and passed over (a study tree is read around it).
    """
    series: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for path in files:
        try:
            ds = read_header(path)
        except TgdpetError as e:
            if damaged is None:
                raise
            damaged[path] = str(e)
            continue
        if ds is not None and "SeriesInstanceUID" in ds and "SOPInstanceUID" in ds:
            series[str(ds.SeriesInstanceUID)].append((path, ds))
    return dict(series)


def _scan_folder(folder: Path) -> dict[str, list[tuple[Path, Dataset]]]:
    """Every DICOM image in ``folder`` (recursively, hidden entries skipped), by series UID."""
    files = series_files(folder)
    if not files and any(folder.iterdir()):
        raise TgdpetError(
            f"the folder {folder} holds only hidden entries (a .tmp-* one is the leftover of an interrupted tgdpet "
            "write, safe to delete); give a folder holding one DICOM PET series."
        )
    if not files:
        raise TgdpetError(f"the folder {folder} is empty; give a folder holding one DICOM PET series.")
    series = group_series(files)
    if not series:
        raise TgdpetError(
            f"the folder {folder} holds no DICOM images ({len(files)} other file(s)); "
            "give a folder holding one DICOM PET series, or a .nii/.nii.gz file."
        )
    return series


def _describe(uid: str, slices: list[tuple[Path, Dataset]]) -> str:
    ds = slices[0][1]
    return f"{uid} ({ds.get('Modality', '?')}, '{ds.get('SeriesDescription', '')}', {len(slices)} files)"


def _choose_series(folder: Path, series: dict[str, list[tuple[Path, Dataset]]], series_uid: str | None):
    """The one series to read: the only one present, or the one the user named."""
    listing = "; ".join(_describe(uid, s) for uid, s in series.items())
    if series_uid is None:
        if len(series) > 1:
            raise TgdpetError(
                f"the folder {folder} holds {len(series)} series: {listing}; give one file of the series to use "
                "instead of the folder (its whole series is read), or move each series into a folder of its own."
            )
        return next(iter(series.values()))
    if series_uid not in series:
        raise TgdpetError(f"series {series_uid} is not in {folder}, which holds: {listing}; check the UID.")
    return series[series_uid]


def _check_decodable(path: Path, ds: Dataset) -> None:
    """Refuse compressed pixel data early when no installed plugin can decode it."""
    ts = getattr(ds.file_meta, "TransferSyntaxUID", None)
    if ts is None or not ts.is_compressed:
        return
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise TgdpetError(
            f"{path} is compressed with {ts.name}, which pydicom cannot decode; convert the series to "
            "uncompressed DICOM first (e.g. gdcmconv --raw)."
        ) from None
    if not decoder.is_available:
        raise TgdpetError(
            f'{path} is compressed ({ts.name}) and no decoder for it is installed; run pip install "tgdpet[jpeg]" '
            "(pylibjpeg) or convert the series to uncompressed DICOM."
        )


def _number(value: Any) -> float:
    """A header value as a float, NaN where it is not a number (a damaged or hand-edited tag)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _check_slice(path: Path, ds: Dataset) -> None:
    """Per-file checks that need no pixels: PET, single frame, geometry present, size plausible."""
    modality = str(ds.get("Modality", ""))
    if modality != "PT":
        raise TgdpetError(
            f"{path} is a {modality or 'modality-less'} image, not PET (Modality PT); "
            "give the PET series (e.g. the attenuation-corrected PET, not the CT)."
        )
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise TgdpetError(
            f"{path} is a multi-frame (enhanced) image; tgdpet reads series of single-slice PET files, "
            "convert it with dcm2niix and give the NIfTI file."
        )
    for keyword, (tag, count) in _GEOMETRY_TAGS.items():
        value = ds.get(keyword)
        values = [value] if isinstance(value, int | float) else list(value or [])
        if len(values) != count or not all(np.isfinite(_number(v)) for v in values):
            raise TgdpetError(
                f"{path} has no valid {keyword} {tag} ({count} finite number(s)), which tgdpet needs to place the "
                "slice; re-export the series."
            )
    if int(ds.Rows) < 1 or int(ds.Columns) < 1:
        raise TgdpetError(f"{path} declares an empty {ds.Rows} x {ds.Columns} image; re-export the series.")
    if ds.get("RescaleSlope") in (None, ""):  # Type 1 in the PET Image module (PS3.3 C.8.9.4): slices differ in scale
        raise TgdpetError(
            f"{path} has no RescaleSlope (0028,1053), which every PET image must have: PET scales each slice "
            "separately, so without it the slice's values are unknown; re-export the series."
        )
    slope = _number(ds.RescaleSlope)
    if not np.isfinite(slope) or slope == 0:
        raise TgdpetError(f"{path} has RescaleSlope {ds.RescaleSlope}, which scales no value; re-export the series.")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise TgdpetError(
            f"{path} is a colour image (SamplesPerPixel {ds.SamplesPerPixel}); give the PET series itself."
        )
    ts = getattr(ds.file_meta, "TransferSyntaxUID", None)
    needed = int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated) // 8
    size = path.stat().st_size
    if ts is not None and ts.is_deflated and needed > _DEFAULT_MAX_EXPANSION * size:
        raise TgdpetError(
            f"{path} declares {ds.Rows} x {ds.Columns} pixels ({needed:,} bytes), more than its {size:,} bytes of "
            "deflated data can hold; the header is damaged, re-export the series."
        )
    if ts is not None and not ts.is_compressed and not ts.is_deflated and needed > size:
        raise TgdpetError(
            f"{path} declares {ds.Rows} x {ds.Columns} pixels ({needed:,} bytes) but the file holds only "
            f"{size:,} bytes; the file is truncated or its header is damaged, re-export the series."
        )
    if ts is not None and ts.is_compressed and needed > _MAX_EXPANSION.get(ts, _DEFAULT_MAX_EXPANSION) * size:
        raise TgdpetError(
            f"{path} declares {ds.Rows} x {ds.Columns} pixels ({needed:,} bytes), more than its {size:,} bytes of "
            f"{ts.name} data can hold; the header is damaged, re-export the series."
        )


def _check_same_grid(slices: list[tuple[Path, Dataset]]) -> np.ndarray:
    """All slices share rows, columns, pixel spacing and orientation; return the orientation."""
    path0, ds0 = slices[0]
    iop0 = np.array(ds0.ImageOrientationPatient, float)
    for path, ds in slices[1:]:
        if (ds.Rows, ds.Columns) != (ds0.Rows, ds0.Columns):
            raise TgdpetError(
                f"{path.name} is {ds.Rows} x {ds.Columns} pixels but {path0.name} is {ds0.Rows} x {ds0.Columns}; "
                "a series must have one slice size, re-export it."
            )
        if not np.allclose(np.array(ds.PixelSpacing, float), np.array(ds0.PixelSpacing, float), rtol=1e-4, atol=1e-4):
            raise TgdpetError(
                f"{path.name} has pixel spacing {list(ds.PixelSpacing)} mm but {path0.name} has "
                f"{list(ds0.PixelSpacing)} mm; a series must have one pixel size, re-export it."
            )
        if not np.allclose(np.array(ds.ImageOrientationPatient, float), iop0, atol=1e-4):
            raise TgdpetError(
                f"{path.name} and {path0.name} have different orientations (mixed image planes); "
                "keep only the slices of one orientation in the series folder."
            )
    return iop0


def _check_spacing(positions: np.ndarray, paths: list[Path]) -> None:
    """Sorted slice positions (mm along the normal) are evenly spaced; name a missing or duplicated slice."""
    gaps = np.diff(positions)
    dup = np.flatnonzero(gaps < 1e-2)
    if dup.size:
        i = int(dup[0])
        raise TgdpetError(
            f"{paths[i].name} and {paths[i + 1].name} both hold the slice at {positions[i]:.2f} mm and record the "
            "same frame time (a duplicated slice); remove the duplicate from the folder."
        )
    spacing = float(np.median(gaps))
    tol = 0.05 * spacing + 0.01
    bad = np.flatnonzero(np.abs(gaps - spacing) > tol)
    if not bad.size:
        return
    i = int(bad[0])
    gap = float(gaps[i])
    k = round(gap / spacing)
    where = f"between {paths[i].name} ({positions[i]:.2f} mm) and {paths[i + 1].name} ({positions[i + 1]:.2f} mm)"
    if k >= 2 and abs(gap - k * spacing) <= tol:
        raise TgdpetError(
            f"{k - 1} slice(s) missing {where} in a series spaced {spacing:.3f} mm; copy or export the complete series."
        )
    raise TgdpetError(
        f"the slices are unevenly spaced: {gap:.3f} mm {where} but {spacing:.3f} mm elsewhere; "
        "tgdpet needs evenly spaced slices, resample the series first."
    )


def _frame_time(ds: Dataset) -> tuple[float, str] | None:
    """When a slice's time frame starts: FrameReferenceTime (ms), else AcquisitionTime; ``None`` if neither."""
    reference = ds.get("FrameReferenceTime")
    if reference not in (None, ""):
        return float(reference), f"FrameReferenceTime {float(reference):g} ms"
    acquired = str(ds.get("AcquisitionTime", "") or "").strip()
    if acquired:
        return 0.0, f"AcquisitionTime {acquired}"
    return None


def split_frames(slices: list[tuple[Path, Dataset]]) -> list[list[tuple[Path, Dataset]]]:
    """The series' time frames, earliest first: one for a static series, several for a dynamic one.

    A dynamic series holds every position once per frame; slices sharing a
    position are told apart by their frame's start time. Slices that share a
    position and a time are duplicates, which :func:`_check_spacing` names.
    """
    iop = _check_same_grid(slices)
    normal = slice_normal(iop)
    positions = np.round([np.array(ds.ImagePositionPatient, float) @ normal for _, ds in slices], 2)
    if len(np.unique(positions)) == len(slices):
        return [slices]
    times = [_frame_time(ds) for _, ds in slices]
    if any(t is None for t in times):
        return [slices]
    groups: dict[tuple[float, str], list[tuple[Path, Dataset]]] = defaultdict(list)
    for item, time in zip(slices, times):
        groups[time].append(item)  # type: ignore[index]
    if len(groups) == 1:
        return [slices]
    frames = [groups[t] for t in sorted(groups)]
    sizes = sorted({len(f) for f in frames})
    if len(sizes) > 1:
        raise TgdpetError(
            f"the series is dynamic ({len(frames)} time frames) but its frames hold different numbers of slices "
            f"({', '.join(str(n) for n in sizes)}); copy or export the complete series."
        )
    return frames


def pick_frame(frames: list[list[tuple[Path, Dataset]]], frame: int | None, where: object) -> list[tuple[Path, Dataset]]:
    """The frame asked for; a dynamic series needs one named, a static one is frame 0."""
    n = len(frames)
    if frame is None:
        if n > 1:
            first, last = _frame_time(frames[0][0][1]), _frame_time(frames[-1][0][1])
            raise TgdpetError(
                f"{where} is a dynamic series of {n} time frames of {len(frames[0])} slices each "
                f"({first[1]} to {last[1]}); pick one with --frame N, 0 <= N < {n}."  # type: ignore[index]
            )
        return frames[0]
    if not 0 <= frame < n:
        raise TgdpetError(f"frame {frame} does not exist in {where}, which has {n} time frame(s); use 0 to {n - 1}.")
    return frames[frame]


def _sorted_geometry(slices: list[tuple[Path, Dataset]]) -> tuple[list[tuple[Path, Dataset]], np.ndarray]:
    """Slices sorted along the normal, checked, and the stack's RAS affine.

    The affine's slice axis is the measured step between positions, so a
    gantry-tilted stack (positions not along the normal) keeps its shear exactly.
    """
    iop = _check_same_grid(slices)
    normal = slice_normal(iop)
    xyz = np.array([np.array(ds.ImagePositionPatient, float) for _, ds in slices])
    order = np.argsort(xyz @ normal, kind="stable")
    slices = [slices[i] for i in order]
    xyz = xyz[order]
    ds0 = slices[0][1]
    if len(slices) > 1:
        _check_spacing(xyz @ normal, [p for p, _ in slices])
        step = (xyz[-1] - xyz[0]) / (len(slices) - 1)
        off_line = np.linalg.norm(xyz - (xyz[0] + np.arange(len(slices))[:, None] * step), axis=1)
        if off_line.max() > 0.05 * np.linalg.norm(step) + 0.01:
            raise TgdpetError(
                f"the slice positions of the series do not lie on one line ({slices[int(off_line.argmax())][0].name} "
                "is off it); the folder mixes stacks, keep one series per folder."
            )
    else:
        thickness = float(ds0.get("SpacingBetweenSlices") or ds0.get("SliceThickness") or 1.0)
        step = normal * thickness
    return slices, affine_from_dicom(iop, np.array(ds0.PixelSpacing, float), xyz[0], step)


def _check_units(slices: list[tuple[Path, Dataset]]) -> str:
    """The series' units, one for all slices; Philips CNTS needs its activity factor on every slice."""
    units = {units_from_dataset(ds) for _, ds in slices}
    if len(units) > 1:
        raise TgdpetError(
            f"the slices of the series are in different units ({', '.join(sorted(units))}); re-export the series."
        )
    return units.pop()


#: Attributes every slice of one series shares, and what two values of each would mean.
_IDENTITY = {
    "PatientID": "two patients",
    "PatientName": "two patients",
    "StudyInstanceUID": "two studies",
    "FrameOfReferenceUID": "two frames of reference (scans)",
}


def _check_one_identity(slices: list[tuple[Path, Dataset]]) -> None:
    """One patient, study and frame of reference: a stray slice of another would be denoised into the series.

    A SeriesInstanceUID alone does not prove it: copying, anonymising or a
    faulty export can put a slice with another patient's identity under it.
    """
    path0, ds0 = slices[0]
    for keyword, meaning in _IDENTITY.items():
        first = str(ds0.get(keyword, "") or "")
        for path, ds in slices[1:]:
            value = str(ds.get(keyword, "") or "")
            if value != first:
                raise TgdpetError(
                    f"{path.name} has {keyword} {value!r} but {path0.name} has {first!r} in the same series; the "
                    f"folder mixes {meaning}, keep only the slices that belong together in it."
                )


def _check_complete(slices: list[tuple[Path, Dataset]], where: object) -> None:
    """A series holds as many slices as its NumberOfSlices (0054,0081) says.

    A slice missing in the middle shows as a gap in the positions; one missing
    at either end leaves evenly spaced slices, and only the count tells.
    """
    recorded = {str(ds.get("NumberOfSlices", "") or "").strip() for _, ds in slices} - {""}
    if not recorded:
        return
    if len(recorded) > 1:
        raise TgdpetError(
            f"the slices of {where} record different NumberOfSlices ({', '.join(sorted(recorded))}); the folder "
            "mixes series, re-export the series."
        )
    try:
        expected = int(float(recorded.pop()))
    except ValueError:
        return  # an unreadable count says nothing; the positions were checked already
    held = len(slices)
    if expected == held:
        return
    try:
        indices = sorted(int(ds.ImageIndex) for _, ds in slices)
        span = f" (ImageIndex {indices[0]} to {indices[-1]})"
    except (AttributeError, TypeError, ValueError):
        span = ""
    missing = f"{expected - held} slice(s) are missing at its ends" if expected > held else "it holds extra slices"
    raise TgdpetError(
        f"{where} records NumberOfSlices {expected} but holds {held} slices{span}, so {missing}; "
        "copy or export the complete series."
    )


@dataclass(frozen=True)
class SeriesPlan:
    """A DICOM series checked from its headers alone: what reading its pixels will give.

    Attributes:
        folder: where the series was found.
        slices: the (path, header) of each slice of the chosen frame, in position order.
        affine: voxel ``(x, y, z, 1)`` -> RAS mm.
        units: tgdpet units (Philips CNTS with an activity factor read as BQML).
        frames: how many time frames the series holds.
        meta: acquisition facts (keys of ``io.volume.META_TAGS``).
    """

    folder: Path
    slices: list[tuple[Path, Dataset]]
    affine: np.ndarray
    units: str
    frames: int
    meta: dict[str, Any]


def plan_series(folder: Path, slices: list[tuple[Path, Dataset]], frame: int | None = None) -> SeriesPlan:
    """Check a series from its headers (nothing decoded or allocated) and choose its frame."""
    for p, ds in slices:
        _check_slice(p, ds)
        _check_decodable(p, ds)
    _check_one_identity(slices)
    frames = split_frames(slices)
    chosen, affine = _sorted_geometry(pick_frame(frames, frame, f"the series in {folder}"))
    _check_complete(chosen, f"the series in {folder}")
    units = _check_units(chosen)
    first = chosen[0][1]
    return SeriesPlan(folder, chosen, affine, units, len(frames), meta_from_dataset(first))


def _slice_pixels(path: Path, rows: int, columns: int) -> np.ndarray:
    """One slice's pixels in the series' units (its own RescaleSlope/Intercept, and Philips factor, applied)."""
    try:
        ds = _dcmread(path, stop_before_pixels=False)
    except _READ_ERRORS as e:
        raise TgdpetError(f"{path} is a damaged DICOM file ({e}); copy it again or re-export the series.") from None
    if ds is None or "PixelData" not in ds:
        raise TgdpetError(f"{path} holds no pixel data; re-export the series.")
    ts = getattr(ds.file_meta, "TransferSyntaxUID", None)
    needed = rows * columns * int(ds.BitsAllocated) // 8
    if ts is not None and not ts.is_compressed and len(ds.PixelData) < needed:
        raise TgdpetError(
            f"{path} declares {rows} x {columns} pixels ({needed:,} bytes) but holds {len(ds.PixelData):,} bytes of "
            "pixel data; the file is truncated, copy it again or re-export the series."
        )
    try:
        pixels = ds.pixel_array
    except _DECODE_ERRORS as e:
        raise TgdpetError(f"cannot decode the pixel data of {path} ({e}); re-export the series uncompressed.") from None
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    activity = philips_activity_factor(ds) or 1.0
    with np.errstate(over="ignore", invalid="ignore"):
        values = (pixels.astype(np.float64) * slope + intercept) * activity
    if not (np.isfinite(values).all() and np.abs(values).max(initial=0.0) <= _FLOAT32_MAX):
        raise TgdpetError(
            f"{path} has RescaleSlope {slope:g} and RescaleIntercept {intercept:g}, which scale its pixels beyond "
            "the range of float32 images; the header is damaged, re-export the series."
        )
    return values


def find_series(path: Path, series_uid: str | None = None) -> tuple[Path, list[tuple[Path, Dataset]]]:
    """The folder and slices of the series at ``path``: a folder (one series, or the one named), or one file of it.

    A single file stands for its whole series in the same folder, the way
    viewers open a series from one of its images.
    """
    if path.is_file():
        header = read_header(path)
        if header is None or "SeriesInstanceUID" not in header:
            raise TgdpetError(
                f"{path} is neither a NIfTI file (.nii, .nii.gz), an ECAT file nor a DICOM image; give one of those."
            )
        series_uid = series_uid or str(header.SeriesInstanceUID)
        path = path.parent
    return path, _choose_series(path, _scan_folder(path), series_uid)


def dicom_frame_count(path: Path, series_uid: str | None = None) -> int:
    """How many time frames the DICOM series at ``path`` holds (1 for a static one), from its headers."""
    folder, slices = find_series(path, series_uid)
    return plan_series(folder, slices, 0).frames


def read_dicom_series(path: Path, series_uid: str | None = None, frame: int | None = None) -> Volume:
    """Read a DICOM PET series (one time frame of a dynamic one) into a :class:`Volume`."""
    folder, slices = find_series(path, series_uid)
    plan = plan_series(folder, slices, frame)
    rows, columns = int(plan.slices[0][1].Rows), int(plan.slices[0][1].Columns)
    shape = (len(plan.slices), rows, columns)
    check_voxel_count(shape, f"the series in {folder}")
    data = allocate(shape, f"the series in {folder}")
    for k, (p, _) in enumerate(plan.slices):
        pixels = _slice_pixels(p, rows, columns)
        if pixels.shape != (rows, columns):
            raise TgdpetError(f"{p} decodes to {pixels.shape} pixels, not {rows} x {columns}; re-export the series.")
        data[k] = pixels
    return Volume(
        data=data,
        affine=plan.affine,
        units=plan.units,
        source_format="dicom",
        dicom_headers=tuple(ds for _, ds in plan.slices),
        source_paths=tuple(p for p, _ in plan.slices),
        meta=plan.meta,
    )
