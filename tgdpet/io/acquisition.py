"""PET acquisition facts <-> DICOM attributes: units, patient weight, dose, timing.

The reader turns a slice header into :attr:`Volume.meta` (what SUV needs);
the writer turns ``meta`` back into the same attributes, so a volume read from
DICOM, or simulated with known dose and weight, converts to SUV either way.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.valuerep import DA, DT, TM

#: Half-life of fluorine-18 in seconds (DICOM PS3.16 / NIST).
F18_HALF_LIFE_S = 6586.2


#: Philips stores PET in CNTS with a private factor to Bq/mL: (7053,xx09) of this private creator.
PHILIPS_PET_CREATOR = "Philips PET Private Group"
_PHILIPS_ACTIVITY_FACTOR = 0x09


def philips_activity_factor(ds: Dataset) -> float | None:
    """Philips' Activity Concentration Scale Factor (7053,xx09) of a CNTS slice; ``None`` when absent.

    Philips scanners write PET in Units CNTS; pixel values (after
    RescaleSlope/Intercept) times this factor are Bq/mL. Only CNTS slices
    use it: a series already in BQML or SUV is not scaled again.
    """
    if str(ds.get("Units", "") or "").upper() != "CNTS":
        return None
    try:
        element = ds.private_block(0x7053, PHILIPS_PET_CREATOR)[_PHILIPS_ACTIVITY_FACTOR]
    except KeyError:
        return None
    value = element.value
    try:
        factor = float(value.decode("ascii").strip("\x00 ") if isinstance(value, bytes) else value)
    except (TypeError, ValueError, UnicodeDecodeError):
        return None
    return factor if factor > 0 else None


def units_from_dataset(ds: Dataset) -> str:
    """tgdpet units of a PET slice: the DICOM Units term, with SUV-bw (``GML``) read as ``SUV``.

    Philips CNTS with its activity factor is read as ``BQML`` (the reader applies the factor).
    """
    units = str(ds.get("Units", "") or "").upper()
    if units == "GML" and str(ds.get("SUVType", "BW") or "BW").upper() == "BW":
        return "SUV"
    if units == "CNTS" and philips_activity_factor(ds) is not None:
        return "BQML"
    return units or "BQML"


def set_units(ds: Dataset, units: str) -> None:
    """Write tgdpet units as DICOM Units (SUV body weight is ``GML`` with SUVType ``BW``)."""
    if units.upper() == "SUV":
        ds.Units = "GML"
        ds.SUVType = "BW"
    else:
        ds.Units = units.upper()
        if "SUVType" in ds:
            del ds.SUVType


def _parse(kind: type, value: Any) -> Any:
    """Parse a DA/TM/DT string; ``None`` when absent or malformed (reported later as missing)."""
    if value in (None, ""):
        return None
    try:
        return kind(str(value).strip())
    except ValueError:
        return None


def _combine(date: dt.date | None, time: dt.time | None) -> dt.datetime | None:
    if date is None or time is None:
        return None
    return dt.datetime.combine(date, dt.time(time.hour, time.minute, time.second, time.microsecond))


def meta_from_dataset(ds: Dataset) -> dict[str, Any]:
    """The acquisition facts a PET slice header records (keys of ``io.volume.META_TAGS``).

    Only what is present and readable is returned; SUV names what is missing.
    """
    meta: dict[str, Any] = {}
    series = _combine(_parse(DA, ds.get("SeriesDate")), _parse(TM, ds.get("SeriesTime")))
    if series is not None:
        meta["series_datetime"] = series
    if ds.get("PatientWeight"):
        meta["patient_weight_kg"] = float(ds.PatientWeight)
    if ds.get("DecayCorrection"):
        meta["decay_correction"] = str(ds.DecayCorrection).upper()
    if "CorrectedImage" in ds and ds.CorrectedImage:
        values = ds.CorrectedImage
        meta["corrected_image"] = tuple(str(v).upper() for v in ([values] if isinstance(values, str) else values))
    if ds.get("ActualFrameDuration"):
        meta["frame_duration_s"] = float(ds.ActualFrameDuration) / 1000.0
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    if seq:
        rp = seq[0]
        if rp.get("RadionuclideTotalDose"):
            meta["injected_dose_bq"] = float(rp.RadionuclideTotalDose)
        if rp.get("RadionuclideHalfLife"):
            meta["half_life_s"] = float(rp.RadionuclideHalfLife)
        injection = _parse(DT, rp.get("RadiopharmaceuticalStartDateTime"))
        if injection is not None:
            # naive, like SeriesDate/SeriesTime, so the two can be subtracted
            meta["injection_datetime"] = dt.datetime.combine(injection.date(), injection.time())
        elif series is not None:
            injection = _combine(series.date(), _parse(TM, rp.get("RadiopharmaceuticalStartTime")))
            if injection is not None:
                # A bare time is on the series' day, unless that puts it after the
                # scan: then the injection was the evening before (a scan past midnight).
                meta["injection_datetime"] = injection - dt.timedelta(days=1) if injection > series else injection
    return meta


def format_da(value: dt.datetime) -> str:
    """A DICOM DA string (YYYYMMDD)."""
    return value.strftime("%Y%m%d")


def format_tm(value: dt.datetime) -> str:
    """A DICOM TM string (HHMMSS.ffffff)."""
    return value.strftime("%H%M%S.%f")


def decay_factor(frame_duration_s: float, half_life_s: float) -> float:
    """DICOM DecayFactor of a static frame: mean decay over the frame, corrected back to its start."""
    lam_d = math.log(2.0) / half_life_s * frame_duration_s
    return lam_d / -math.expm1(-lam_d) if lam_d > 0 else 1.0


def apply_meta(ds: Dataset, meta: dict[str, Any], series_datetime: dt.datetime) -> None:
    """Write the acquisition facts of ``meta`` into a new PET slice (PET Series and Isotope modules).

    Unknown values are left empty (type 2), never invented: a series without a
    recorded dose or weight honestly cannot be converted to SUV.
    """
    half_life = float(meta.get("half_life_s", F18_HALF_LIFE_S))
    ds.SeriesDate = ds.AcquisitionDate = format_da(series_datetime)
    ds.SeriesTime = ds.AcquisitionTime = format_tm(series_datetime)
    ds.PatientWeight = f"{meta['patient_weight_kg']:.6g}" if "patient_weight_kg" in meta else None
    ds.DecayCorrection = str(meta.get("decay_correction", "START")).upper()
    ds.CorrectedImage = list(meta.get("corrected_image", ("ATTN", "DECY")))
    frame = meta.get("frame_duration_s")
    ds.ActualFrameDuration = round(frame * 1000.0) if frame else None
    ds.DecayFactor = f"{decay_factor(frame, half_life) if frame else 1.0:.8g}"

    rp = Dataset()
    rp.RadionuclideHalfLife = f"{half_life:.6g}"
    rp.RadionuclideTotalDose = f"{meta['injected_dose_bq']:.8g}" if "injected_dose_bq" in meta else None
    injection = meta.get("injection_datetime")
    rp.RadiopharmaceuticalStartTime = format_tm(injection) if injection else None
    rp.RadiopharmaceuticalStartDateTime = injection.strftime("%Y%m%d%H%M%S.%f") if injection else None
    if half_life == F18_HALF_LIFE_S:
        code = Dataset()  # SNOMED CT (SCT); the older SRT code C-111A1 is retired
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "77004003", "SCT", "^18^Fluorine"
        rp.RadionuclideCodeSequence = Sequence([code])
    ds.RadiopharmaceuticalInformationSequence = Sequence([rp])
