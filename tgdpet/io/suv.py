"""Standardised uptake value (SUV body weight) from Bq/mL and back.

``SUV = C * weight_g / dose_at_reference`` where the injected dose is decayed
to the time the image values are decay-corrected to: the series start for
DecayCorrection START (``dose * 2^(-dt / T_half)``, ``dt`` from injection to
SeriesDate/SeriesTime), the injection itself for ADMIN. This is the same
rule as the QIBA / cornerstone SUV calculators without vendor-private times.
"""

from __future__ import annotations

import math

from ..errors import TgdpetError
from .volume import META_TAGS, Volume


def _need(volume: Volume, key: str):
    value = volume.meta.get(key)
    if value is None:
        raise TgdpetError(
            f"cannot compute SUV: the input records no {META_TAGS[key]}; use a DICOM PET series whose header has it "
            "(NIfTI and ECAT files record none)."
        )
    return value


def suv_factor(volume: Volume) -> float:
    """The number that turns this volume's Bq/mL into SUV(bw), from its acquisition meta.

    Library users whose volume has no DICOM header set the :data:`~tgdpet.io.volume.META_TAGS` keys of
    ``volume.meta`` themselves (``patient_weight_kg``, ``injected_dose_bq``, ...).
    """
    weight_kg = float(_need(volume, "patient_weight_kg"))
    dose_bq = float(_need(volume, "injected_dose_bq"))
    if not (math.isfinite(weight_kg) and math.isfinite(dose_bq) and weight_kg > 0 and dose_bq > 0):
        raise TgdpetError(
            f"cannot compute SUV: patient weight {weight_kg} kg and injected dose {dose_bq} Bq must both be positive "
            "numbers; fix the header values."
        )
    corrected = volume.meta.get("corrected_image")
    if corrected is not None and "DECY" not in corrected:
        raise TgdpetError(
            f"cannot compute SUV: CorrectedImage (0028,0051) is {'/'.join(corrected)} without DECY, so the image "
            "is not decay corrected; use a decay-corrected reconstruction."
        )
    decay = str(volume.meta.get("decay_correction", "START")).upper()
    if decay == "ADMIN":
        return weight_kg * 1000.0 / dose_bq
    if decay != "START":
        raise TgdpetError(
            f"cannot compute SUV: DecayCorrection (0054,1102) is {decay}, tgdpet handles START and ADMIN; "
            "use a reconstruction decay-corrected to the scan start."
        )
    half_life = float(_need(volume, "half_life_s"))
    if not (math.isfinite(half_life) and half_life > 0):
        raise TgdpetError(
            f"cannot compute SUV: the radionuclide half-life is {half_life} s, not a positive number; check "
            f"{META_TAGS['half_life_s']}."
        )
    elapsed = (_need(volume, "series_datetime") - _need(volume, "injection_datetime")).total_seconds()
    if elapsed < 0:
        raise TgdpetError(
            f"cannot compute SUV: the injection time is {-elapsed:.0f} s after the series time; check "
            f"{META_TAGS['injection_datetime']} and SeriesTime."
        )
    return weight_kg * 1000.0 / (dose_bq * 2.0 ** (-elapsed / half_life))


def to_suv(volume: Volume) -> Volume:
    """The volume in SUV(bw) (g/mL); it must be in Bq/mL (units BQML)."""
    if volume.units != "BQML":
        raise TgdpetError(
            f"cannot compute SUV from values in {volume.units}; SUV needs an image in Bq/mL (units BQML)."
        )
    return volume.with_data(volume.data * suv_factor(volume), units="SUV")


def from_suv(volume: Volume) -> Volume:
    """The volume back in Bq/mL from SUV(bw), using the same acquisition meta."""
    if volume.units != "SUV":
        raise TgdpetError(f"the volume is in {volume.units}, not SUV; from_suv converts SUV images back to Bq/mL.")
    return volume.with_data(volume.data / suv_factor(volume), units="BQML")


def convert_units(volume: Volume, units: str) -> Volume:
    """The volume in ``units`` (BQML or SUV), converting when it is in the other one."""
    units = units.upper()
    if units == volume.units:
        return volume
    if units == "SUV":
        return to_suv(volume)
    if units == "BQML":
        return from_suv(volume)
    raise TgdpetError(f"cannot convert {volume.units} to {units}; tgdpet converts between BQML and SUV only.")
