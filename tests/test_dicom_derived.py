"""A derived series (a DICOM input's result) says what its source said about the new pixels.

Expected values come from the source slices' own tags and from the output files' own pixels and
RescaleSlope/Intercept, decoded by pydicom, never from the writer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from helpers import make_volume, write_dynamic_series, write_test_series
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from test_dicom_conformance import validator_errors

from tgdpet.io import read_volume, write_frames, write_volume
from tgdpet.io.acquisition import PHILIPS_PET_CREATOR
from tgdpet.io.dicom_write import write_dicom_series

#: What the source's mapping gives per unit of activity (Bq/mL): an SUV factor as Philips writes one.
SUV_PER_BQML = 1e-4


def edit_series(folder: Path, edit) -> list[Path]:
    """Apply ``edit(ds)`` to every slice file of ``folder``; return the files, sorted."""
    files = sorted(folder.iterdir())
    for f in files:
        ds = pydicom.dcmread(f)
        edit(ds)
        ds.save_as(f)
    return files


def rescaled(volume):
    """A result whose slices need other RescaleSlopes than the source's (each slice scaled differently)."""
    factors = np.linspace(2.0, 0.4, volume.shape[0], dtype=np.float32)[:, None, None]
    return volume.with_data(volume.data * factors)


def suv_mapping(ds: Dataset, philips_factor: float | None) -> None:
    """A linear SUVbw mapping of stored values (slope = activity per stored value x 1e-4) and a LUT mapping."""
    activity_per_stored = float(ds.RescaleSlope) * (philips_factor or 1.0)
    linear = Dataset()
    linear.RealWorldValueFirstValueMapped = 0
    linear.RealWorldValueLastValueMapped = 32767
    linear.RealWorldValueIntercept = 0.0
    linear.RealWorldValueSlope = activity_per_stored * SUV_PER_BQML
    linear.LUTExplanation = "SUV body weight"
    linear.LUTLabel = "SUVbw"
    lut = Dataset()
    lut.RealWorldValueFirstValueMapped = 0
    lut.RealWorldValueLastValueMapped = 1
    lut.RealWorldValueLUTData = [0.0, 1.0]
    lut.LUTExplanation = "a table"
    lut.LUTLabel = "TABLE"
    ds.RealWorldValueMappingSequence = Sequence([linear, lut])
    if philips_factor is not None:
        ds.Units = "CNTS"
        ds.private_block(0x7053, PHILIPS_PET_CREATOR, create=True).add_new(0x09, "DS", f"{philips_factor}")


@pytest.mark.parametrize("philips_factor", [None, 2.5], ids=["bqml", "philips-cnts"])
def test_real_world_value_mapping_is_rescaled_to_the_new_pixels(tmp_path, philips_factor):
    """Through the output's mapping every pixel reads 1e-4 x its activity (through RescaleSlope), as it did in
    the source; the table mapping, which cannot be rescaled, is gone."""
    write_test_series(tmp_path / "source")
    edit_series(tmp_path / "source", lambda ds: suv_mapping(ds, philips_factor))
    source = read_volume(tmp_path / "source")
    write_volume(rescaled(source), tmp_path / "out")
    for f in sorted((tmp_path / "out").iterdir()):
        ds = pydicom.dcmread(f)
        stored = ds.pixel_array.astype(np.float64)
        activity = stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        items = ds.RealWorldValueMappingSequence
        (item,) = [i for i in items if i.LUTLabel == "SUVbw"]
        real_world = stored * item.RealWorldValueSlope + item.RealWorldValueIntercept
        np.testing.assert_allclose(real_world, SUV_PER_BQML * activity, rtol=1e-9, atol=1e-12)
        assert item.LUTExplanation == "SUV body weight"
        assert len(items) == 1  # the table is dropped
        assert item.RealWorldValueFirstValueMapped <= stored.min() <= stored.max() <= item.RealWorldValueLastValueMapped
    assert validator_errors(tmp_path / "out") <= validator_errors(tmp_path / "source")


def test_a_utf8_description_is_cut_to_64_bytes_keeping_whole_characters(tmp_path):
    """'PET ' + 25 x 'é' is 29 characters but 54 bytes in UTF-8; with ' tgdpet denoised' (16 bytes) it must lose
    three 'é' (2 bytes each) to fit LO's 64 bytes: 4 + 22 x 2 + 16 = 64."""
    write_test_series(tmp_path / "source")
    files = edit_series(tmp_path / "source", lambda ds: setattr(ds, "SeriesDescription", "PET " + "é" * 25))
    assert pydicom.dcmread(files[0]).SpecificCharacterSet == "ISO_IR 192"  # UTF-8
    write_volume(read_volume(tmp_path / "source"), tmp_path / "out", description="tgdpet denoised")
    for f in sorted((tmp_path / "out").iterdir()):
        assert pydicom.dcmread(f).SeriesDescription == "PET " + "é" * 22 + " tgdpet denoised"
    assert validator_errors(tmp_path / "out") <= validator_errors(tmp_path / "source")


def test_series_number_stays_within_the_range_of_is(tmp_path):
    write_test_series(tmp_path / "source")
    edit_series(tmp_path / "source", lambda ds: setattr(ds, "SeriesNumber", 2147483000))
    write_volume(read_volume(tmp_path / "source"), tmp_path / "out")
    numbers = {int(pydicom.dcmread(f).SeriesNumber) for f in (tmp_path / "out").iterdir()}
    assert len(numbers) == 1 and -(2**31) <= numbers.pop() <= 2**31 - 1
    assert validator_errors(tmp_path / "out") <= validator_errors(tmp_path / "source")


def number_from_the_head(ds: Dataset, n: int, frame: int = 0) -> None:
    """Renumber a slice of an n-slice frame as scanners do: InstanceNumber 1 at the top (highest z) slice."""
    z = round(float(ds.ImagePositionPatient[2]) / 3.0)  # make_volume's slices are 3 mm apart, from z = 0
    ds.InstanceNumber = ds.ImageIndex = frame * n + n - z


def by_place(folder: Path) -> dict[tuple[float, str], Dataset]:
    """The slices of a series by (z position, FrameReferenceTime)."""
    slices = (pydicom.dcmread(f, stop_before_pixels=True) for f in folder.iterdir())
    return {(round(float(ds.ImagePositionPatient[2]), 3), str(ds.get("FrameReferenceTime", ""))): ds for ds in slices}


def test_derived_series_is_numbered_in_its_source_order(tmp_path):
    """A source numbered from the head gives a derived series numbered from the head: every slice has the
    InstanceNumber and ImageIndex of the source slice at its position."""
    n = 8
    write_test_series(tmp_path / "source", make_volume(shape=(n, 6, 6), origin=(0.0, 0.0, 0.0)))
    edit_series(tmp_path / "source", lambda ds: number_from_the_head(ds, n))
    write_volume(read_volume(tmp_path / "source"), tmp_path / "out")
    source, out = by_place(tmp_path / "source"), by_place(tmp_path / "out")
    assert source.keys() == out.keys()
    for place, ds in out.items():
        assert (ds.InstanceNumber, ds.ImageIndex) == (source[place].InstanceNumber, source[place].ImageIndex)


def test_a_dynamic_derived_series_is_numbered_in_its_source_order(tmp_path):
    """Two frames, each numbered from the head, ImageIndex = (frame - 1) x slices + slice index as PS3.3 C.8.9.4
    defines it: the derived series numbers every slice as the source slice at its position and time."""
    n = 4
    files = write_test_series(tmp_path / "static", make_volume(shape=(n, 6, 6), origin=(0.0, 0.0, 0.0)))
    write_dynamic_series(files, tmp_path / "dyn", lambda ds, f, k: number_from_the_head(ds, n, f))
    frames = [read_volume(tmp_path / "dyn", frame=f) for f in range(2)]
    write_frames(frames, tmp_path / "out")
    source, out = by_place(tmp_path / "dyn"), by_place(tmp_path / "out")
    assert source.keys() == out.keys()
    for place, ds in out.items():
        assert (ds.InstanceNumber, ds.ImageIndex) == (source[place].InstanceNumber, source[place].ImageIndex)


def test_a_mean_of_two_halves_references_both_halves(tmp_path):
    """n2n-online's result without --full is the mean of two halves: every slice names the slice of each half at
    its position in SourceImageSequence."""
    write_test_series(tmp_path / "half1")
    write_test_series(tmp_path / "half2", make_volume().with_data(make_volume().data * 1.1))
    h1, h2 = read_volume(tmp_path / "half1"), read_volume(tmp_path / "half2")
    mean = h1.with_data((h1.data + h2.data) / 2)
    write_dicom_series(mean, tmp_path / "out", like=mean, description="tgdpet denoised", dicom_meta=None,
                       overwrite=False, also_from=h2)  # fmt: skip
    half1, half2 = by_place(tmp_path / "half1"), by_place(tmp_path / "half2")
    out = by_place(tmp_path / "out")
    assert half1.keys() == half2.keys() == out.keys()
    for place, ds in out.items():
        referenced = {item.ReferencedSOPInstanceUID for item in ds.SourceImageSequence}
        assert referenced == {half1[place].SOPInstanceUID, half2[place].SOPInstanceUID}
    assert validator_errors(tmp_path / "out") <= validator_errors(tmp_path / "half1")
