"""DICOM as archives hold it: every encoding and geometry is made here from a tgdpet series with pydicom.

Values are checked against pydicom's own decoding of the source files (stored
pixels times their RescaleSlope), geometry against voxel positions worked out
by hand from one file's ImagePositionPatient / ImageOrientationPatient /
PixelSpacing, never against tgdpet's own reader.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from helpers import make_volume, write_test_series
from nibabel.testing import data_path
from pydicom.encaps import encapsulate
from pydicom.pixels import get_encoder
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from tgdpet import __version__
from tgdpet.errors import TgdpetError
from tgdpet.io import read_volume, to_suv, write_volume
from tgdpet.io.acquisition import PHILIPS_PET_CREATOR

IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture
def source(tmp_path) -> list[Path]:
    """A tgdpet-written series of 6 slices of 32 rows x 40 columns (non-square pixels, 2.0 x 2.5 mm).

    32 is the smallest side JPEG 2000's default six resolution levels accept.
    """
    return write_test_series(tmp_path / "source", make_volume(shape=(6, 32, 40)))


def rewrite(files: list[Path], dest: Path, edit, name=lambda k, f: f.name) -> list[Path]:
    """Copy a series into ``dest``, applying ``edit(ds, k)`` to each file before it is saved."""
    dest.mkdir()
    out = []
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        path = dest / name(k, f)
        edit(ds, k, path)
        out.append(path)
    return out


def by_hand(files: list[Path]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per file: activity (stored * slope + intercept, by pydicom) and each pixel's RAS position, from its tags."""
    result = []
    for f in files:
        ds = pydicom.dcmread(f, force=True)
        if "TransferSyntaxUID" not in ds.file_meta:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        values = ds.pixel_array * float(ds.RescaleSlope) + float(ds.get("RescaleIntercept", 0))
        r, c = np.array(ds.ImageOrientationPatient[:3], float), np.array(ds.ImageOrientationPatient[3:], float)
        row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
        rows, cols = np.mgrid[0 : ds.Rows, 0 : ds.Columns]
        lps = np.array(ds.ImagePositionPatient, float) + cols[..., None] * col_mm * r + rows[..., None] * row_mm * c
        result.append((values, lps * np.array([-1.0, -1.0, 1.0])))
    return result


def assert_matches_by_hand(volume, files, rtol=1e-6):
    """Every pixel of every file is the voxel the volume's affine puts at that pixel's world position."""
    inverse = np.linalg.inv(volume.affine)
    for values, ras in by_hand(files):
        ijk = ras.reshape(-1, 3) @ inverse[:3, :3].T + inverse[:3, 3]
        np.testing.assert_allclose(ijk, np.rint(ijk), atol=1e-4)
        i, j, k = np.rint(ijk).astype(int).T
        np.testing.assert_allclose(volume.data[k, j, i], values.ravel(), rtol=rtol, atol=1e-3)


# ---------------------------------------------------------------- transfer syntaxes


def _save_as(ts):
    def edit(ds, k, path):
        ds.file_meta.TransferSyntaxUID = ts
        ds.save_as(path, enforce_file_format=True)

    return edit


def _big_endian(ds, k, path):
    stored = ds.pixel_array  # decoded while the dataset is still little endian
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    ds.PixelData = stored.astype(">i2").tobytes()
    pydicom.dcmwrite(path, ds, implicit_vr=False, little_endian=False, force_encoding=True)


@pytest.mark.parametrize(
    "edit",
    [_save_as(ImplicitVRLittleEndian), _save_as(DeflatedExplicitVRLittleEndian), _big_endian],
    ids=["implicit-little", "deflated", "explicit-big"],
)
def test_uncompressed_transfer_syntaxes(source, tmp_path, edit):
    files = rewrite(source, tmp_path / "enc", edit)
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID != pydicom.dcmread(source[0]).file_meta.TransferSyntaxUID
    vol = read_volume(tmp_path / "enc")
    assert vol.shape == (6, 32, 40)
    assert_matches_by_hand(vol, source)


def _compress(ts, **kwargs):
    def edit(ds, k, path):
        # half the stored range, so a lossy codec's overshoot cannot wrap past int16's top
        stored = ds.pixel_array // 2
        ds.RescaleSlope = f"{float(ds.RescaleSlope) * 2:.12g}"
        ds.compress(ts, stored, **kwargs)
        ds.save_as(path, enforce_file_format=True)

    return edit


#: Codec -> how far its decoded values may be from the source (lossless: exact to float32 rounding).
CODECS = {
    "rle": (RLELossless, {}, 1e-6),
    "jpeg2000-lossless": (JPEG2000Lossless, {}, 1e-6),
    "jpeg2000-lossy": (JPEG2000, {"j2k_cr": [5]}, 0.01),
    "jpegls-lossless": (JPEGLSLossless, {}, 1e-6),
    "jpegls-near-lossless": (JPEGLSNearLossless, {"jls_error": 3}, 0.01),
}


@pytest.mark.parametrize("codec", list(CODECS))
def test_compressed_transfer_syntaxes(source, tmp_path, codec):
    ts, kwargs, tolerance = CODECS[codec]
    if not get_encoder(ts).is_available:
        message = f"no {ts.name} encoder installed (pip install 'tgdpet[jpeg,test]') to make the test file"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    files = rewrite(source, tmp_path / "enc", _compress(ts, **kwargs))
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == ts
    vol = read_volume(tmp_path / "enc")
    assert_matches_by_hand(vol, files)  # the decoded pixels, where their tags put them
    halved = [pydicom.dcmread(f) for f in source]  # what was encoded, decoded by nobody
    expected = np.stack([(ds.pixel_array // 2) * 2 * float(ds.RescaleSlope) for ds in halved])
    assert np.abs(vol.data - expected).max() <= tolerance * expected.max() + 1e-3


def test_jpeg_baseline_8_bit(source, tmp_path):
    """8-bit JPEG baseline (lossy), made with Pillow: decoded within JPEG's error and placed right."""
    from PIL import Image

    from pydicom.pixels import get_decoder

    if not get_decoder(JPEGBaseline8Bit).is_available:
        message = "no JPEG baseline decoder installed (pip install 'tgdpet[jpeg]')"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)

    def edit(ds, k, path):
        values = ds.pixel_array * float(ds.RescaleSlope)
        scale = values.max() / 255.0
        stored = np.rint(values / scale).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(stored).save(buf, format="JPEG", quality=95)
        ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = encapsulate([buf.getvalue()])
        ds["PixelData"].VR = "OB"
        ds.RescaleSlope = f"{scale:.10g}"
        ds.save_as(path, enforce_file_format=True)

    files = rewrite(source, tmp_path / "jpeg", edit)
    vol = read_volume(tmp_path / "jpeg")
    expected = np.stack([v for v, _ in by_hand(source)])
    assert np.abs(vol.data - expected).max() <= 0.03 * expected.max()  # 8 bits, quality 95
    assert_matches_by_hand(vol, files)


# ---------------------------------------------------------------- stored values


def test_unsigned_pixels_with_a_negative_intercept(source, tmp_path):
    """uint16 storage with RescaleIntercept -1000 * slope, as some scanners write."""

    def edit(ds, k, path):
        slope = float(ds.RescaleSlope)
        ds.PixelData = (ds.pixel_array.astype(np.int32) + 1000).astype(np.uint16).tobytes()
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = f"{-1000 * slope:.12g}"
        ds.save_as(path, enforce_file_format=True)

    files = rewrite(source, tmp_path / "u16", edit)
    assert pydicom.dcmread(files[0]).pixel_array.dtype == np.uint16
    vol = read_volume(tmp_path / "u16")
    assert_matches_by_hand(vol, source, rtol=1e-5)


def test_signed_pixels_with_negative_values(source, tmp_path):
    """int16 storage holding negatives (a scanner's unclamped reconstruction) keeps them."""

    def edit(ds, k, path):
        ds.PixelData = (ds.pixel_array.astype(np.int16) - 5000).tobytes()
        ds.save_as(path, enforce_file_format=True)

    files = rewrite(source, tmp_path / "neg", edit)
    vol = read_volume(tmp_path / "neg")
    assert vol.data.min() < 0
    assert_matches_by_hand(vol, files)


# ---------------------------------------------------------------- geometry


def _geometry(orientation, position, spacing=None, tilt=None):
    """An edit placing slice k at ``position(k)`` with ``orientation`` (and optional pixel spacing / tilt)."""

    def edit(ds, k, path):
        ds.ImageOrientationPatient = [f"{v:.10g}" for v in orientation]
        ds.ImagePositionPatient = [f"{v:.10g}" for v in position(k)]
        if spacing is not None:
            ds.PixelSpacing = [f"{v:g}" for v in spacing]
        if tilt is not None:
            ds.GantryDetectorTilt = f"{tilt:g}"
        ds.save_as(path, enforce_file_format=True)

    return edit


_C, _S = np.cos(np.radians(30)), np.sin(np.radians(30))
GEOMETRIES = {
    # in-plane rotation by 30 degrees; slices along +z
    "rotated-30deg": _geometry([_C, _S, 0, -_S, _C, 0], lambda k: (10.0, -20.0, 3.0 * k)),
    # coronal slices (rows along -z), stacked along +y
    "coronal": _geometry([1, 0, 0, 0, 0, -1], lambda k: (-5.0, 4.0 * k, 60.0)),
    # feet-first supine: rows run to the patient's right, the normal points to the feet
    "feet-first": _geometry([-1, 0, 0, 0, 1, 0], lambda k: (40.0, -30.0, -3.27 * k)),
    # head-first, but files numbered from the top down (positions decreasing with InstanceNumber)
    "decreasing": _geometry([1, 0, 0, 0, 1, 0], lambda k: (0.0, 0.0, 100.0 - 2.5 * k)),
    "non-square": _geometry([1, 0, 0, 0, 1, 0], lambda k: (0.0, 0.0, 4.0 * k), spacing=(3.0, 1.2)),
    # 15 degree gantry tilt: image planes tilted, positions along the table (z): the stack is sheared
    "gantry-tilt": _geometry(
        [1, 0, 0, 0, np.cos(np.radians(15)), -np.sin(np.radians(15))], lambda k: (0.0, 0.0, 3.0 * k), tilt=15
    ),
}


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_geometry_variants_put_every_pixel_where_its_tags_say(source, tmp_path, name):
    files = rewrite(source, tmp_path / name, GEOMETRIES[name])
    vol = read_volume(tmp_path / name)
    assert_matches_by_hand(vol, files)
    # and a series written from it puts every pixel at the same place
    write_volume(vol, tmp_path / "out", like=vol)
    back = read_volume(tmp_path / "out")
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)
    out_files = sorted((tmp_path / "out").iterdir())
    assert_matches_by_hand(back, out_files)


def test_gantry_tilt_is_kept_as_a_shear(source, tmp_path):
    rewrite(source, tmp_path / "tilt", GEOMETRIES["gantry-tilt"])
    vol = read_volume(tmp_path / "tilt")
    columns = vol.affine[:3, :3] / np.linalg.norm(vol.affine[:3, :3], axis=0)
    # the slice axis is not perpendicular to the image plane: 15 degrees off its normal
    normal = np.cross(columns[:, 0], columns[:, 1])
    assert np.degrees(np.arccos(abs(normal @ columns[:, 2]))) == pytest.approx(15.0, abs=1e-4)


# ---------------------------------------------------------------- files and folders


def test_files_without_extension_or_preamble_and_junk_beside_them(source, tmp_path):
    def bare(ds, k, path):
        if k % 2:  # every other file has no preamble and no file meta: a bare implicit-VR dataset
            ds.preamble = None
            ds.file_meta = pydicom.dataset.FileMetaDataset()
            pydicom.dcmwrite(path, ds, implicit_vr=True, little_endian=True)
        else:
            ds.save_as(path, enforce_file_format=True)

    folder = tmp_path / "archive"
    files = rewrite(source, folder, bare, name=lambda k, f: f"IM{k:05d}")
    assert files[1].read_bytes()[128:132] != b"DICM" and files[0].read_bytes()[128:132] == b"DICM"
    (folder / "README.txt").write_text("exported by an archive\n")
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1" + bytes(64))
    (folder / "junk.bin").write_bytes(b"\x08\x00" + os.urandom(200))  # starts like a bare dataset, is not one
    dicomdir = pydicom.Dataset()
    dicomdir.FileSetID = "ARCHIVE"
    dicomdir.DirectoryRecordSequence = pydicom.Sequence()
    dicomdir.file_meta = pydicom.dataset.FileMetaDataset()
    dicomdir.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    dicomdir.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    dicomdir.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    pydicom.dcmwrite(folder / "DICOMDIR", dicomdir, enforce_file_format=True)

    vol = read_volume(folder)
    assert vol.shape == (6, 32, 40)
    assert_matches_by_hand(vol, files)
    assert read_volume(files[3]).shape == (6, 32, 40)  # a bare file stands for its series too


# ---------------------------------------------------------------- units


def _philips(factor):
    def edit(ds, k, path):
        ds.Units = "CNTS"
        if factor is not None:
            block = ds.private_block(0x7053, PHILIPS_PET_CREATOR, create=True)
            block.add_new(0x00, "DS", "0.000123")  # SUV factor, for CNTS pixels
            block.add_new(0x09, "DS", f"{factor:g}")
        ds.save_as(path, enforce_file_format=True)

    return edit


def test_philips_cnts_with_activity_factor_is_read_in_bqml(source, tmp_path):
    rewrite(source, tmp_path / "philips", _philips(2.5))
    vol = read_volume(tmp_path / "philips")
    assert vol.units == "BQML"
    expected = np.stack([v for v, _ in by_hand(source)]) * 2.5
    np.testing.assert_allclose(vol.data, expected, rtol=1e-6)
    write_volume(vol, tmp_path / "out", like=vol)  # written in Bq/mL, without the factor for CNTS
    out = pydicom.dcmread(next((tmp_path / "out").iterdir()))
    assert out.Units == "BQML" and (0x7053, 0x1009) not in out
    np.testing.assert_allclose(read_volume(tmp_path / "out").data, vol.data, rtol=2e-4, atol=1e-3)


def test_cnts_without_factor_stays_cnts_and_suv_is_refused(source, tmp_path):
    rewrite(source, tmp_path / "cnts", _philips(None))
    vol = read_volume(tmp_path / "cnts")
    assert vol.units == "CNTS"
    with pytest.raises(TgdpetError, match="cannot compute SUV from values in CNTS"):
        to_suv(vol)


def test_gml_series_is_read_as_suv(source, tmp_path):
    def edit(ds, k, path):
        ds.Units, ds.SUVType = "GML", "BW"
        ds.save_as(path, enforce_file_format=True)

    rewrite(source, tmp_path / "gml", edit)
    assert read_volume(tmp_path / "gml").units == "SUV"


# ---------------------------------------------------------------- dynamic series


def _dynamic(source: list[Path], folder: Path, frames: int, same_time: bool = False) -> None:
    """Write ``frames`` copies of the series at the same positions, frame f scaled by f + 1."""
    folder.mkdir()
    for f in range(frames):
        for k, path in enumerate(source):
            ds = pydicom.dcmread(path)
            ds.SOPInstanceUID = pydicom.uid.generate_uid()
            ds.RescaleSlope = f"{float(ds.RescaleSlope) * (f + 1):.12g}"
            ds.FrameReferenceTime = "0" if same_time else str(60000 * f)
            ds.InstanceNumber = f * len(source) + k + 1
            ds.save_as(folder / f"f{f}_{k}.dcm", enforce_file_format=True)


def test_dynamic_series_is_refused_by_name_and_read_by_frame(source, tmp_path):
    _dynamic(source, tmp_path / "dyn", 3)
    with pytest.raises(TgdpetError, match=r"dynamic series of 3 time frames of 6 slices each .*--frame N"):
        read_volume(tmp_path / "dyn")
    expected = np.stack([v for v, _ in by_hand(source)])
    for f in range(3):
        np.testing.assert_allclose(read_volume(tmp_path / "dyn", frame=f).data, expected * (f + 1), rtol=1e-6)
    with pytest.raises(TgdpetError, match="frame 3 does not exist"):
        read_volume(tmp_path / "dyn", frame=3)


def test_duplicated_slices_at_one_time_are_refused(source, tmp_path):
    _dynamic(source, tmp_path / "dup", 2, same_time=True)
    with pytest.raises(TgdpetError, match="same frame time \\(a duplicated slice\\)"):
        read_volume(tmp_path / "dup")


def test_dynamic_dicom_is_denoised_whole_and_by_frame(source, tmp_path):
    """Without --frame every frame is denoised into one dynamic series (one series UID, each frame's timing
    kept); each of its frames equals that frame denoised alone with --frame into NIfTI."""
    from click.testing import CliRunner
    from helpers import trained_like_model

    from tgdpet.checkpoint import save_model
    from tgdpet.cli import main

    _dynamic(source, tmp_path / "dyn", 2)
    model = save_model(tmp_path / "modèle.safetensors", trained_like_model(), preset="tiny")
    base = ["--model", str(model), "--device", "cpu", "--precision", "fp32", "--no-progress"]
    runner = CliRunner()
    whole = runner.invoke(main, ["denoise", str(tmp_path / "dyn"), "-o", str(tmp_path / "out"), *base])
    assert whole.exit_code == 0, whole.output
    files = sorted((tmp_path / "out").iterdir())
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    assert len(files) == 12 and len({h.SeriesInstanceUID for h in headers}) == 1
    assert sorted(int(h.ImageIndex) for h in headers) == list(range(1, 13))
    assert sorted({str(h.FrameReferenceTime) for h in headers}) == ["0", "60000"]
    # The model (its file's name, in the default repertoire every source's character set holds, and its SHA-256,
    # hashed here), and the grid: a model file without a training range runs on the image's own (x, y, z: 2 x 2.5
    # x 3 mm, the source's).
    sha = hashlib.sha256(model.read_bytes()).hexdigest()[:12]
    assert {h.DerivationDescription for h in headers} == {
        f"tgdpet denoised (tgdpet {__version__}): model mod?le (SHA-256 {sha}); "
        "working grid 2 x 2.5 x 3 mm; the image's voxels are 2 x 2.5 x 3 mm"
    }
    for f in range(2):
        alone = runner.invoke(main, ["denoise", str(tmp_path / "dyn"), "--frame", str(f), "-o",
                                     str(tmp_path / f"f{f}.nii.gz"), *base])  # fmt: skip
        assert alone.exit_code == 0, alone.output
        expected = read_volume(tmp_path / f"f{f}.nii.gz").data
        got = read_volume(tmp_path / "out", frame=f).data
        assert got.shape == (6, 32, 40)
        np.testing.assert_allclose(got, expected, atol=np.abs(expected).max() / 2**14)  # int16 storage


# ---------------------------------------------------------------- ECAT


def test_ecat_file_from_nibabel_test_data(tmp_path):
    """nibabel's own tiny ECAT 7 PET file: tgdpet's volume is what nibabel reports for it."""
    src = Path(data_path) / "tinypet.v"
    img = nib.ecat.load(str(src))
    copy = tmp_path / "TINYPET"  # found by its magic number, not its name
    shutil.copy(src, copy)
    for path in (src, copy):
        vol = read_volume(path)
        assert vol.units == "BQML"  # its data_units are Bq/cc
        np.testing.assert_allclose(vol.data, img.get_fdata()[..., 0].transpose(2, 1, 0), rtol=1e-6)
        np.testing.assert_allclose(vol.affine, img.affine)
    out = write_volume(vol.with_data(vol.data * 0.5), tmp_path / "half.nii.gz", like=vol)
    np.testing.assert_allclose(nib.load(out).get_fdata(), img.get_fdata()[..., 0] * 0.5, rtol=1e-6)


@pytest.mark.parametrize("size", [8, 100, 600, 1600])
def test_a_damaged_ecat_file_is_one_sentence_and_a_tree_goes_on_without_it(tmp_path, size):
    """Truncated at any point (header block, matrix directory, pixels), the file is refused in one line, and
    a study tree holding it describes the others and skips it."""
    src = Path(data_path) / "tinypet.v"
    tree = tmp_path / "tree"
    tree.mkdir()
    shutil.copy(src, tree / "ok.v")
    (tree / "bad.v").write_bytes(src.read_bytes()[:size])
    with pytest.raises(TgdpetError, match="is a damaged ECAT file") as err:
        read_volume(tree / "bad.v")
    assert "\n" not in str(err.value)
    from tgdpet.io.inspect import inspect_inputs

    found = {Path(info["path"]).name: info for info in inspect_inputs([tree])}
    assert found["ok.v"]["readable"] and not found["bad.v"]["readable"]
