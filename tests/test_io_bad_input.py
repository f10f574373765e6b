"""Bad inputs and outputs are refused with one clear TgdpetError, and nothing is written or changed."""

from __future__ import annotations

import gzip
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
from helpers import make_volume, suv_meta, tree_snapshot, write_test_nifti, write_test_series
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders.base import Decoder
from pydicom.uid import JPEGLSLossless

from tgdpet.errors import TgdpetError
from tgdpet.io import Volume, read_volume, to_suv, write_volume


def assert_refused(root, fn, match):
    """``fn()`` raises TgdpetError matching ``match`` and leaves every file under ``root`` as it was."""
    before = tree_snapshot(root)
    with pytest.raises(TgdpetError, match=match) as info:
        fn()
    assert tree_snapshot(root) == before
    assert "\n" not in str(info.value)


def edit_slices(files, edit):
    """Apply ``edit(ds, k)`` to every slice file, k = InstanceNumber - 1."""
    for f in files:
        ds = pydicom.dcmread(f)
        edit(ds, int(ds.InstanceNumber) - 1)
        ds.save_as(f)


@pytest.fixture
def series(tmp_path):
    folder = tmp_path / "series"
    return folder, write_test_series(folder)


# ---------------------------------------------------------------- paths and formats


def test_missing_path(tmp_path):
    assert_refused(tmp_path, lambda: read_volume(tmp_path / "nope.nii.gz"), "does not exist")


def test_file_that_is_neither_dicom_nor_nifti(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image\n")
    assert_refused(tmp_path, lambda: read_volume(tmp_path / "notes.txt"), "neither a NIfTI file")


def test_empty_folder_and_folder_without_dicom(tmp_path):
    (tmp_path / "empty").mkdir()
    assert_refused(tmp_path, lambda: read_volume(tmp_path / "empty"), "is empty")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.txt").write_text("hello")
    assert_refused(tmp_path, lambda: read_volume(tmp_path / "docs"), "holds no DICOM images")


# ---------------------------------------------------------------- DICOM series


def test_folder_with_two_series_lists_them(tmp_path):
    (tmp_path / "mixed").mkdir()
    write_test_series(tmp_path / "mixed" / "a")
    write_test_series(tmp_path / "mixed" / "b")
    uids = {pydicom.dcmread(next((tmp_path / "mixed" / s).iterdir())).SeriesInstanceUID for s in "ab"}
    before = tree_snapshot(tmp_path)
    with pytest.raises(TgdpetError, match="holds 2 series") as info:
        read_volume(tmp_path / "mixed")
    assert all(uid in str(info.value) for uid in uids) and "give one file of the series" in str(info.value)
    assert tree_snapshot(tmp_path) == before
    assert_refused(tmp_path, lambda: read_volume(tmp_path / "mixed", series_uid="1.2.3"), "is not in")


def test_missing_slice_is_named(series, tmp_path):
    folder, files = series
    files[4].unlink()  # slice_0005.dcm
    assert_refused(tmp_path, lambda: read_volume(folder), r"1 slice\(s\) missing between slice_0004.dcm")


def test_duplicated_slice_is_named(series, tmp_path):
    folder, files = series
    shutil.copy(files[2], folder / "copy_of_3.dcm")
    assert_refused(tmp_path, lambda: read_volume(folder), "both hold the slice")


def test_uneven_spacing(series, tmp_path):
    folder, files = series

    def shift_last(ds, k):
        if k == 7:
            ds.ImagePositionPatient = [*list(ds.ImagePositionPatient)[:2], float(ds.ImagePositionPatient[2]) + 1.4]

    edit_slices(files, shift_last)
    assert_refused(tmp_path, lambda: read_volume(folder), "unevenly spaced")


def test_mixed_orientations(series, tmp_path):
    folder, files = series
    edit_slices(files, lambda ds, k: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0, -1]) if k == 3 else None)
    assert_refused(tmp_path, lambda: read_volume(folder), "different orientations")


def test_slice_without_position(series, tmp_path):
    folder, files = series
    edit_slices(files, lambda ds, k: delattr(ds, "ImagePositionPatient") if k == 2 else None)
    assert_refused(tmp_path, lambda: read_volume(folder), r"slice_0003.dcm has no valid ImagePositionPatient \(0020")


def test_non_pet_modality(series, tmp_path):
    folder, files = series
    edit_slices(files, lambda ds, k: setattr(ds, "Modality", "CT"))
    assert_refused(tmp_path, lambda: read_volume(folder), "not PET")


def test_compressed_pixels_without_decoder_name_the_extra(series, tmp_path, monkeypatch):
    folder, files = series

    def compress(ds, k):
        ds.file_meta.TransferSyntaxUID = JPEGLSLossless
        ds.PixelData = encapsulate([b"\xff\xd8\xff\xf7 not really JPEG-LS \xff\xd9"])
        ds["PixelData"].VR = "OB"

    edit_slices(files, compress)
    # Whatever plugins this machine has, the reader must ask pydicom and explain the missing one.
    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))
    assert_refused(tmp_path, lambda: read_volume(folder), r'pip install "tgdpet\[jpeg\]"')


def test_header_claiming_huge_slices(series, tmp_path):
    folder, files = series
    edit_slices(files[:1], lambda ds, k: (setattr(ds, "Rows", 8192), setattr(ds, "Columns", 8192)))
    assert_refused(tmp_path, lambda: read_volume(folder), "declares 8192 x 8192 pixels")


def test_truncated_pixel_data(series, tmp_path):
    folder, files = series
    edit_slices(files[5:6], lambda ds, k: setattr(ds, "PixelData", ds.PixelData[:100]))
    assert_refused(tmp_path, lambda: read_volume(folder), "truncated")


# ---------------------------------------------------------------- NIfTI


def test_4d_without_frame_and_2d(tmp_path):
    nib.Nifti1Image(np.zeros((4, 5, 3, 2), np.float32), np.eye(4)).to_filename(tmp_path / "dyn.nii.gz")
    assert_refused(tmp_path, lambda: read_volume(tmp_path / "dyn.nii.gz"), "4-D with 2 frames")
    assert_refused(tmp_path, lambda: read_volume(tmp_path / "dyn.nii.gz", frame=2), "frame 2 does not exist")
    nib.Nifti1Image(np.zeros((4, 5), np.float32), np.eye(4)).to_filename(tmp_path / "flat.nii")
    assert_refused(tmp_path, lambda: read_volume(tmp_path / "flat.nii"), "2-D image")


def test_nonfinite_voxels_refused_unless_allowed(tmp_path):
    vol = make_volume()
    vol.data[2, 3, 4] = np.nan
    vol.data[5, 1, 1] = np.inf
    write_test_nifti(tmp_path / "nan.nii.gz", vol)
    assert_refused(tmp_path, lambda: read_volume(tmp_path / "nan.nii.gz"), "holds 2 NaN or infinite voxels")
    assert np.isnan(read_volume(tmp_path / "nan.nii.gz", allow_nonfinite=True).data[2, 3, 4])


def test_corrupt_and_truncated_nifti(tmp_path):
    write_test_nifti(tmp_path / "good.nii", make_volume(shape=(8, 32, 32)))
    raw = (tmp_path / "good.nii").read_bytes()
    (tmp_path / "short.nii").write_bytes(raw[: len(raw) // 2])
    assert_refused(tmp_path, lambda: read_volume(tmp_path / "short.nii"), "is truncated")
    write_test_nifti(tmp_path / "good.nii.gz", make_volume(shape=(8, 32, 32)))
    gz = (tmp_path / "good.nii.gz").read_bytes()
    (tmp_path / "short.nii.gz").write_bytes(gz[: len(gz) // 2])
    assert_refused(tmp_path, lambda: read_volume(tmp_path / "short.nii.gz"), "not a readable NIfTI")
    (tmp_path / "noise.nii").write_bytes(np.random.default_rng(1).bytes(600))
    assert_refused(tmp_path, lambda: read_volume(tmp_path / "noise.nii"), "not a readable NIfTI")


@pytest.mark.parametrize(
    ("name", "shape", "match"),
    [("huge.nii", (4096, 4096, 4096), "more than the"), ("bomb.nii.gz", (512, 512, 512), "can hold")],
)
def test_nifti_header_claiming_huge_volume(tmp_path, name, shape, match):
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.float32)
    hdr["vox_offset"] = 352
    opener = gzip.open if name.endswith(".gz") else open
    with opener(tmp_path / name, "wb") as f:
        f.write(hdr.binaryblock + b"\0" * 4 + b"\0" * 4096)
    assert_refused(tmp_path, lambda: read_volume(tmp_path / name), match)


# ---------------------------------------------------------------- writing and SUV


def test_bad_outputs_write_nothing(tmp_path):
    vol = make_volume()
    series = tmp_path / "s"
    assert_refused(tmp_path, lambda: write_volume(vol, tmp_path / "out.nrrd"), "tgdpet cannot write out.nrrd")
    assert_refused(tmp_path, lambda: write_volume(vol, series, dicom_meta={"PatientNam": "x"}), "not a DICOM keyword")
    assert_refused(
        tmp_path, lambda: write_volume(vol, series, dicom_meta={"SOPInstanceUID": "1.2"}), "computes for every slice"
    )
    bad = vol.with_data(np.where(vol.data > 9000, np.nan, vol.data))
    assert_refused(tmp_path, lambda: write_volume(bad, series), "NaN or infinite")
    assert_refused(tmp_path, lambda: write_volume(vol, tmp_path / "missing" / "o.nii"), "does not exist")


def test_output_over_the_input_refused_even_with_overwrite(series, tmp_path):
    folder, _ = series
    vol = read_volume(folder)
    assert_refused(tmp_path, lambda: write_volume(vol, folder, overwrite=True), "would replace the input series")
    smaller = make_volume(shape=(4, 16, 16))
    assert_refused(tmp_path, lambda: write_volume(smaller, tmp_path / "o", like=vol), "written like is 8 x 16 x 16")


def test_suv_needs_its_tags():
    with pytest.raises(TgdpetError, match=r"PatientWeight \(0010,1030\)"):
        to_suv(make_volume(meta={k: v for k, v in suv_meta().items() if k != "patient_weight_kg"}))
    with pytest.raises(TgdpetError, match="RadiopharmaceuticalStartDateTime"):
        to_suv(make_volume(meta={k: v for k, v in suv_meta().items() if k != "injection_datetime"}))
    with pytest.raises(TgdpetError, match="without DECY"):
        to_suv(make_volume(meta=suv_meta(corrected_image=("ATTN",))))
    with pytest.raises(TgdpetError, match="needs an image in Bq/mL"):
        to_suv(Volume(np.ones((2, 2, 2)), np.eye(4), units="CNTS", meta=suv_meta()))
