"""Round trips through NIfTI and DICOM: values, geometry, headers, UIDs, SUV."""

from __future__ import annotations

import datetime as dt
import gzip
import random

import nibabel as nib
import numpy as np
import pydicom
import pytest
from helpers import make_volume, suv_meta, tree_snapshot, write_test_series

from tgdpet.errors import TgdpetError
from tgdpet.io import Volume, from_suv, read_volume, suv_factor, to_suv, write_volume


def quantisation_step(data: np.ndarray) -> np.ndarray:
    """Largest error int16 storage with a per-slice slope may make, per slice (z, 1, 1)."""
    return (np.clip(data, 0, None).max(axis=(1, 2)) / 32767.0)[:, None, None] * 0.5 + 1e-3


def world(affine: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    return (affine @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]


# ---------------------------------------------------------------- NIfTI


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_nifti_round_trip_keeps_values_affine_and_codes(tmp_path, suffix):
    xyz = np.random.default_rng(0).random((16, 12, 6)).astype(np.float32) * 1e4
    affine = np.array([[-2.0, 0, 0, 30], [0, 2.5, 0, -40], [0, 0, 3.27, -12], [0, 0, 0, 1]])
    img = nib.Nifti1Image(xyz, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=4)
    src = tmp_path / f"src{suffix}"
    img.to_filename(src)

    vol = read_volume(src)
    assert vol.data.shape == (6, 12, 16) and vol.data.dtype == np.float32
    np.testing.assert_array_equal(vol.data, xyz.transpose(2, 1, 0))
    np.testing.assert_allclose(vol.affine, affine, atol=1e-5)
    assert vol.spacing == pytest.approx((2.0, 2.5, 3.27))

    out = tmp_path / f"out{suffix}"
    write_volume(vol.with_data(vol.data * 0.5), out, like=vol)
    raw = out.read_bytes()
    assert (raw[:2] == b"\x1f\x8b") == (suffix == ".nii.gz")
    with (gzip.open if suffix == ".nii.gz" else open)(out, "rb") as f:
        hdr = nib.Nifti1Header.from_fileobj(f)
    assert (int(hdr["qform_code"]), int(hdr["sform_code"])) == (1, 4)
    assert (float(hdr["scl_slope"]), float(hdr["scl_inter"])) == (1.0, 0.0)
    assert hdr.get_data_dtype() == np.float32
    back = read_volume(out)
    np.testing.assert_array_equal(back.data, vol.data * 0.5)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    assert not list(tmp_path.glob(".tmp-*"))


def test_nifti_frame_of_4d_and_units_note(tmp_path):
    frames = np.stack([np.full((4, 5, 3), f, np.float32) for f in (1.0, 2.0, 3.0)], axis=-1)
    path = tmp_path / "dyn.nii.gz"
    nib.Nifti1Image(frames, np.eye(4)).to_filename(path)
    assert np.all(read_volume(path, frame=2).data == 3.0)

    suv = make_volume(units="SUV")
    write_volume(suv, tmp_path / "suv.nii")
    assert read_volume(tmp_path / "suv.nii").units == "SUV"


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "o.nii.gz"
    write_volume(make_volume(), out)
    before = tree_snapshot(tmp_path)
    with pytest.raises(TgdpetError, match="already exists"):
        write_volume(make_volume(shape=(3, 4, 5)), out)
    assert tree_snapshot(tmp_path) == before
    write_volume(make_volume(shape=(3, 4, 5)), out, overwrite=True)
    assert read_volume(out).shape == (3, 4, 5)
    series = tmp_path / "series"
    write_test_series(series)
    with pytest.raises(TgdpetError, match="already exists"):
        write_volume(make_volume(shape=(3, 4, 5)), series)
    write_volume(make_volume(shape=(3, 4, 5)), series, overwrite=True)
    assert read_volume(series).shape == (3, 4, 5)


# ---------------------------------------------------------------- DICOM


def test_dicom_from_scratch_round_trip(tmp_path):
    vol = make_volume()
    files = write_test_series(tmp_path / "s", vol, dicom_meta={"PatientID": "SIM007", "PatientName": "SIM^SEVEN"})
    assert len(files) == 8
    ds = pydicom.dcmread(files[0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.128" and ds.Modality == "PT" and ds.Units == "BQML"
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert ds.PatientID == "SIM007" and list(ds.CorrectedImage) == ["ATTN", "DECY"]
    assert float(ds.RadiopharmaceuticalInformationSequence[0].RadionuclideHalfLife) == 6586.2
    assert ds.pixel_array.dtype == np.int16

    back = read_volume(tmp_path / "s")
    assert back.source_format == "dicom" and back.units == "BQML"
    assert np.all(np.abs(back.data - vol.data) <= quantisation_step(vol.data))
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)
    for key in ("patient_weight_kg", "injected_dose_bq", "half_life_s", "injection_datetime", "series_datetime"):
        assert back.meta[key] == vol.meta[key]
    assert suv_factor(back) == pytest.approx(suv_factor(vol), rel=1e-6)


def test_derived_series_keeps_patient_study_and_references_source(tmp_path):
    write_test_series(tmp_path / "in", make_volume(), dicom_meta={"PatientID": "P1", "StudyDescription": "WB FDG"})
    source = read_volume(tmp_path / "in")
    denoised = source.with_data(source.data * 0.7 - 100.0)
    write_volume(denoised, tmp_path / "out", description="tgdpet denoised")
    out = read_volume(tmp_path / "out")

    assert np.all(np.abs(out.data - denoised.data) <= quantisation_step(denoised.data))
    np.testing.assert_allclose(out.affine, source.affine, atol=1e-5)
    src_sops = [d.SOPInstanceUID for d in source.dicom_headers]
    assert {d.SeriesInstanceUID for d in out.dicom_headers} != {source.dicom_headers[0].SeriesInstanceUID}
    assert len({d.SeriesInstanceUID for d in out.dicom_headers}) == 1
    assert len({d.SOPInstanceUID for d in out.dicom_headers}) == 8
    assert not {d.SOPInstanceUID for d in out.dicom_headers} & set(src_sops)
    for k, d in enumerate(out.dicom_headers):
        s = source.dicom_headers[k]
        for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID", "StudyDescription"):
            assert d.get(keyword) == s.get(keyword)
        assert d.SourceImageSequence[0].ReferencedSOPInstanceUID == src_sops[k]
        assert d.ImageType[0] == "DERIVED"
        assert d.SeriesDescription.endswith("tgdpet denoised") and "tgdpet denoised" in d.DerivationDescription


def test_derived_series_written_like_a_dicom_input_from_nifti_volume(tmp_path):
    write_test_series(tmp_path / "in", dicom_meta={"PatientID": "P2"})
    source = read_volume(tmp_path / "in")
    bare = Volume(data=source.data[:, :, :] * 2, affine=source.affine)  # e.g. a model output without headers
    write_volume(bare, tmp_path / "out", like=source)
    out = read_volume(tmp_path / "out")
    assert out.dicom_headers[0].PatientID == "P2"
    assert out.dicom_headers[0].StudyInstanceUID == source.dicom_headers[0].StudyInstanceUID


def test_negatives_are_clamped_in_dicom(tmp_path):
    vol = make_volume()
    vol.data[0] -= 1e5  # a slice entirely negative
    write_test_series(tmp_path / "s", vol)
    back = read_volume(tmp_path / "s")
    assert np.all(back.data[0] == 0) and back.data.min() >= 0


def test_dicom_lps_geometry_becomes_ras_affine(tmp_path):
    """Hand-built axial slices: IPP (-100, -80, 50 + 3k) LPS, 2.0 mm columns, 2.5 mm rows."""
    files = write_test_series(tmp_path / "s", make_volume(shape=(5, 6, 7)))
    for f in files:
        ds = pydicom.dcmread(f)
        k = int(ds.InstanceNumber) - 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [2.5, 2.0]
        ds.ImagePositionPatient = [-100, -80, 50 + 3 * k]
        ds.save_as(f)
    vol = read_volume(tmp_path / "s")
    expected = np.array([[-2.0, 0, 0, 100], [0, -2.5, 0, 80], [0, 0, 3, 50], [0, 0, 0, 1]])
    np.testing.assert_allclose(vol.affine, expected)
    # voxel (column 3, row 4, slice 2) is at LPS (-100 + 3*2, -80 + 4*2.5, 56) = RAS (94, 70, 56)
    np.testing.assert_allclose(world(vol.affine, np.array([[3, 4, 2]])), [[94, 70, 56]])


@pytest.mark.parametrize(
    "affine",
    [
        np.diag([2.0, 2.5, 3.0, 1.0]),  # RAS NIfTI
        np.diag([-2.0, -2.5, 3.0, 1.0]),  # LPS-like, as converted scanner data
        np.array([[1.9, -0.6, 0.0, 10], [0.6, 1.9, 0.0, -5], [0.0, 0.0, 3.0, 7], [0, 0, 0, 1]]),  # rotated in-plane
    ],
)
def test_nifti_to_dicom_to_read_keeps_affine(tmp_path, affine):
    write_volume(make_volume(affine=affine), tmp_path / "a.nii.gz")
    nifti = read_volume(tmp_path / "a.nii.gz")
    write_volume(nifti, tmp_path / "s")
    back = read_volume(tmp_path / "s")
    np.testing.assert_allclose(back.affine, nifti.affine, atol=1e-4)
    assert np.all(np.abs(back.data - nifti.data) <= quantisation_step(nifti.data))


def test_left_handed_nifti_keeps_world_positions_through_dicom(tmp_path):
    """An LAS grid (det < 0) comes back in DICOM's slice order: same voxels at the same places."""
    vol = make_volume(affine=np.diag([-2.0, 2.5, 3.0, 1.0]))
    write_volume(vol, tmp_path / "s")
    back = read_volume(tmp_path / "s")
    nz = vol.shape[0]
    assert np.all(np.abs(back.data - vol.data[::-1]) <= quantisation_step(vol.data)[::-1])
    ijk = np.array([[0, 0, 0], [3, 5, 1], [15, 15, nz - 1]])
    flipped = ijk * [1, 1, -1] + [0, 0, nz - 1]
    np.testing.assert_allclose(world(back.affine, ijk), world(vol.affine, flipped), atol=1e-4)


def test_shuffled_files_come_back_in_position_order(tmp_path):
    vol = make_volume()
    folder = tmp_path / "s"
    files = write_test_series(folder, vol)
    rng = random.Random(3)
    numbers = list(range(1, 9))
    rng.shuffle(numbers)
    for f, n in zip(files, numbers):
        ds = pydicom.dcmread(f)
        ds.InstanceNumber = n  # scrambled numbering must not matter
        ds.save_as(f)
        f.rename(folder / f"{rng.getrandbits(40):x}")
    back = read_volume(folder)
    assert np.all(np.abs(back.data - vol.data) <= quantisation_step(vol.data))
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)


def test_each_slice_uses_its_own_rescale_slope(tmp_path):
    files = write_test_series(tmp_path / "s", make_volume(shape=(4, 6, 6)))
    for f in files:
        ds = pydicom.dcmread(f)
        k = int(ds.InstanceNumber) - 1
        ds.PixelData = np.full((6, 6), 100, np.int16).tobytes()
        ds.RescaleSlope = str(0.5 * (k + 1))
        ds.RescaleIntercept = str(10 * k)
        ds.save_as(f)
    data = read_volume(tmp_path / "s").data
    for k in range(4):
        assert np.all(data[k] == 100 * 0.5 * (k + 1) + 10 * k)


def test_series_uid_picks_one_series_and_a_file_stands_for_its_series(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    a, b = make_volume(), make_volume(shape=(5, 16, 16))
    write_test_series(folder / "a", a)
    write_test_series(folder / "b", b)
    uid_b = pydicom.dcmread(next((folder / "b").iterdir())).SeriesInstanceUID
    assert read_volume(folder, series_uid=uid_b).shape == (5, 16, 16)
    one_file = sorted((folder / "a").iterdir())[3]
    assert read_volume(one_file).shape == (8, 16, 16)


# ---------------------------------------------------------------- SUV


def test_suv_hand_computed_value():
    # 70 kg, 370 MBq injected 60 min before the scan start, F-18:
    # decayed dose = 3.7e8 * 2^(-3600/6586.2) = 2.53314e8 Bq; SUV of 5000 Bq/mL = 5000 * 70000 / 2.53314e8.
    vol = make_volume(shape=(2, 2, 2))
    vol.data[:] = 5000.0
    suv = to_suv(vol)
    assert suv.units == "SUV"
    np.testing.assert_allclose(suv.data, 1.38167, rtol=1e-4)
    admin = to_suv(Volume(vol.data, vol.affine, meta=suv_meta(decay_correction="ADMIN")))
    np.testing.assert_allclose(admin.data, 5000 * 70000 / 3.7e8, rtol=1e-6)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [("patient_weight_kg", float("nan"), "positive numbers"), ("injected_dose_bq", float("inf"), "positive numbers"),
     ("half_life_s", -5.0, "half-life is -5.0 s")],
)
def test_suv_of_a_header_value_that_is_not_a_number_is_not_computable(field, value, says):
    """inspect --json and the batch report hold the SUV factor: NaN or Infinity there is not JSON."""
    from tgdpet.io.inspect import suv_status

    factor, why = suv_status("BQML", suv_meta(**{field: value}))
    assert factor is None and says in why


def test_suv_round_trip_in_memory_and_through_dicom(tmp_path):
    vol = make_volume()
    np.testing.assert_allclose(from_suv(to_suv(vol)).data, vol.data, rtol=1e-6)
    write_volume(vol, tmp_path / "suv", units="SUV")
    assert pydicom.dcmread(next((tmp_path / "suv").iterdir())).Units == "GML"
    suv = read_volume(tmp_path / "suv")
    assert suv.units == "SUV"
    expected = to_suv(vol).data
    assert np.all(np.abs(suv.data - expected) <= quantisation_step(expected))
    bqml = from_suv(suv)
    np.testing.assert_allclose(bqml.data, vol.data, rtol=1e-3, atol=vol.data.max() / 32767)


def test_suv_injection_time_without_date_before_midnight(tmp_path):
    meta = suv_meta(injection_datetime=dt.datetime(2024, 3, 4, 23, 30), series_datetime=dt.datetime(2024, 3, 5, 0, 30))
    files = write_test_series(tmp_path / "s", make_volume(meta=meta))
    for f in files:  # keep only RadiopharmaceuticalStartTime, as many scanners do
        ds = pydicom.dcmread(f)
        del ds.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartDateTime
        ds.save_as(f)
    back = read_volume(tmp_path / "s")
    assert back.meta["injection_datetime"] == dt.datetime(2024, 3, 4, 23, 30)
    assert suv_factor(back) == pytest.approx(70000 / (3.7e8 * 2 ** (-3600 / 6586.2)), rel=1e-6)


def test_nifti_output_keeps_a_qform_that_disagrees_with_the_sform(tmp_path):
    """Tools that read the qform must find the result where they found the input: it is copied, not recomputed."""
    sform = np.array([[-2.0, 0, 0, 30], [0, 2.0, 0, -40], [0, 0, 2.0, -12], [0, 0, 0, 1]])
    qform = sform.copy()
    qform[:3, 3] += (10.0, 20.0, 30.0)
    img = nib.Nifti1Image(np.ones((8, 8, 4), np.float32), sform)
    img.header.set_qform(qform, code=1)
    img.header.set_sform(sform, code=2)
    img.to_filename(tmp_path / "src.nii.gz")
    vol = read_volume(tmp_path / "src.nii.gz")
    write_volume(vol.with_data(vol.data * 2), tmp_path / "out.nii.gz", like=vol)
    out = nib.load(tmp_path / "out.nii.gz").header
    np.testing.assert_allclose(out.get_qform(), qform, atol=1e-5)
    np.testing.assert_allclose(out.get_sform(), sform, atol=1e-5)
    assert (int(out["qform_code"]), int(out["sform_code"])) == (1, 2)


def test_4d_nifti_output_keeps_the_time_step(tmp_path):
    from tgdpet.io import write_frames

    img = nib.Nifti1Image(np.ones((6, 6, 4, 2), np.float32), np.diag([3.0, 3.0, 3.0, 1.0]))
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms((3.0, 3.0, 3.0, 300.0))
    img.to_filename(tmp_path / "dyn.nii.gz")
    frames = [read_volume(tmp_path / "dyn.nii.gz", frame=k) for k in range(2)]
    write_frames(frames, tmp_path / "out.nii.gz", like=frames[0])
    out = nib.load(tmp_path / "out.nii.gz").header
    assert out.get_zooms() == pytest.approx((3.0, 3.0, 3.0, 300.0)) and out.get_xyzt_units() == ("mm", "sec")


@pytest.mark.parametrize(("unit", "mm_per_unit"), [("meter", 1000.0), ("micron", 0.001), ("mm", 1.0)])
def test_nifti_spatial_units_are_read_as_mm(tmp_path, unit, mm_per_unit):
    """4 mm voxels at (10, -20, 30) mm, written in the header's unit: read back in mm, written out in mm."""
    affine = np.diag([4.0 / mm_per_unit] * 3 + [1.0])
    affine[:3, 3] = np.array([10.0, -20.0, 30.0]) / mm_per_unit
    img = nib.Nifti1Image(np.ones((8, 8, 4), np.float32), affine)
    img.header.set_qform(affine, code=1)
    img.header.set_xyzt_units(unit, "sec")
    img.to_filename(tmp_path / "src.nii")
    vol = read_volume(tmp_path / "src.nii")
    assert vol.spacing == pytest.approx((4.0, 4.0, 4.0))
    np.testing.assert_allclose(vol.affine[:3, 3], (10.0, -20.0, 30.0), atol=1e-4)
    write_volume(vol, tmp_path / "out.nii", like=vol)
    back = nib.load(tmp_path / "out.nii")
    assert back.header.get_xyzt_units() == ("mm", "sec")
    np.testing.assert_allclose(back.affine[:3, :3], np.diag([4.0] * 3), atol=1e-4)
    np.testing.assert_allclose(back.affine[:3, 3], (10.0, -20.0, 30.0), atol=1e-4)


def test_complex_nifti_is_refused(tmp_path):
    nib.Nifti1Image(np.ones((6, 6, 4), np.complex64), np.eye(4)).to_filename(tmp_path / "c.nii")
    with pytest.raises(TgdpetError, match="not as real numbers"):
        read_volume(tmp_path / "c.nii")
