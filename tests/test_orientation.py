"""The result must not depend on how a volume is stored or framed.

Every stored variant here is made by hand from one canonical volume (voxel
x to the patient's left, y posterior, z superior) with numpy flips,
rotations and transposes, and its affine is worked out from where the
variant's voxels came from, independently of tgdpet's orientation code. The
denoised variant, undone by the same numpy operation, must equal the
denoised canonical volume.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest
from helpers import in_plane_mean, trained_like_model

from tgdpet.denoise import denoise_volume
from tgdpet.errors import TgdpetError
from tgdpet.infer import Denoiser
from tgdpet.io import Volume, read_volume, write_volume
from tgdpet.io.orientation import from_canonical, to_canonical

#: Canonical (L, P, S) affine: x runs to the patient's left (RAS x falls), y posterior, z superior.
SPACING = (2.0, 2.5, 3.0)
CANONICAL_AFFINE = np.array(
    [[-SPACING[0], 0, 0, 40.0], [0, -SPACING[1], 0, 55.0], [0, 0, SPACING[2], -20.0], [0, 0, 0, 1]]
)


def canonical_phantom(shape=(12, 40, 36), margin=10, seed=0) -> np.ndarray:
    """An asymmetric body: a smooth random ellipse with hot spots, zero outside, ``margin`` voxels of air in-plane."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[0 : shape[0], 0 : shape[1], 0 : shape[2]].astype(np.float64)
    cy, cx = shape[1] / 2 + 1.5, shape[2] / 2 - 2.0
    ry, rx = shape[1] / 2 - margin, shape[2] / 2 - margin
    inside = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1.0
    body = 1000.0 + 300.0 * x / shape[2] + 200.0 * z / shape[0] + rng.gamma(20.0, 10.0, size=shape)
    body += 4000.0 * np.exp(-((y - cy + 4) ** 2 + (x - cx - 5) ** 2) / 4.0)
    return np.where(inside, body, 0.0).astype(np.float32)


def stored_variant(canonical: np.ndarray, op: Callable[[np.ndarray], np.ndarray]) -> Volume:
    """``op(canonical)`` with the affine that keeps every voxel at its world position.

    ``op`` is applied to arrays of canonical voxel indices too: the stored
    voxel at index ``v`` holds canonical voxel ``M v``, read off those
    arrays at the origin and one step along each stored axis.
    """
    grids = np.mgrid[0 : canonical.shape[0], 0 : canonical.shape[1], 0 : canonical.shape[2]]  # z, y, x
    moved = [op(g) for g in grids]
    data = op(canonical)

    def canonical_xyz(k: int, j: int, i: int) -> np.ndarray:
        return np.array([moved[2][k, j, i], moved[1][k, j, i], moved[0][k, j, i], 1.0])

    origin = canonical_xyz(0, 0, 0)
    m = np.eye(4)
    m[:, 3] = origin
    m[:3, 0] = (canonical_xyz(0, 0, 1) - origin)[:3]
    m[:3, 1] = (canonical_xyz(0, 1, 0) - origin)[:3]
    m[:3, 2] = (canonical_xyz(1, 0, 0) - origin)[:3]
    return Volume(data=np.ascontiguousarray(data), affine=CANONICAL_AFFINE @ m)


#: Ways a scanner or converter may store the same patient, as numpy operations on (z, y, x).
VARIANTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "columns flipped (RPS)": lambda a: a[:, :, ::-1],
    "rows flipped (LAS)": lambda a: a[:, ::-1, :],
    "feet first": lambda a: a[::-1],
    "rotated 90": lambda a: np.rot90(a, 1, axes=(1, 2)),
    "rotated 180": lambda a: np.rot90(a, 2, axes=(1, 2)),
    "rotated 270": lambda a: np.rot90(a, 3, axes=(1, 2)),
    "rows and columns swapped": lambda a: a.transpose(0, 2, 1),
    "sagittal slices": lambda a: a.transpose(2, 1, 0),
    "coronal slices, all flipped": lambda a: a.transpose(1, 0, 2)[::-1, ::-1, ::-1],
}


@pytest.fixture(scope="module")
def denoiser() -> Denoiser:
    return Denoiser(trained_like_model(), device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def canonical() -> np.ndarray:
    return canonical_phantom()


def _rel_rms(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a[mask] - b[mask]) ** 2)) / np.sqrt(np.mean(b[mask] ** 2)))


@pytest.mark.parametrize("name", VARIANTS)
def test_every_storage_gives_the_same_result(denoiser, canonical, name):
    op = VARIANTS[name]
    expected = denoiser(canonical)
    variant = stored_variant(canonical, op)
    got, _ = denoise_volume(denoiser, variant)
    assert got.shape == variant.shape
    np.testing.assert_array_equal(got, op(expected))  # same network input: bit-identical


@pytest.mark.parametrize("name", ["columns flipped (RPS)", "rotated 90", "sagittal slices"])
def test_the_network_itself_depends_on_storage(denoiser, canonical, name):
    """Why the canonical frame is needed: the same array denoised as stored differs by far more than rounding."""
    op = VARIANTS[name]
    naive = denoiser(np.ascontiguousarray(op(canonical)))
    expected = op(denoiser(canonical))
    assert _rel_rms(naive, expected, op(canonical) > 0) > 1e-3


def test_round_trip_restores_the_stored_order(canonical):
    for op in VARIANTS.values():
        variant = stored_variant(canonical, op)
        canon = to_canonical(variant)
        np.testing.assert_array_equal(canon.data, canonical)
        np.testing.assert_allclose(canon.affine, CANONICAL_AFFINE, atol=1e-9)
        np.testing.assert_array_equal(from_canonical(canon.data, variant), variant.data)


def test_oblique_axes_go_to_the_closest_and_45_degrees_is_refused(canonical):
    tilt = np.eye(4)
    c, s = np.cos(np.radians(10)), np.sin(np.radians(10))
    tilt[1:3, 1:3] = [[c, -s], [s, c]]  # a 10-degree gantry tilt about x
    tilted = Volume(data=canonical, affine=tilt @ CANONICAL_AFFINE)
    np.testing.assert_array_equal(to_canonical(tilted).data, canonical)
    c = s = np.sqrt(0.5)
    diagonal = np.eye(4)
    diagonal[0:2, 0:2] = [[c, -s], [s, c]]
    with pytest.raises(TgdpetError, match="45 degrees"):
        to_canonical(Volume(data=canonical, affine=diagonal @ CANONICAL_AFFINE))


def test_object_in_a_large_empty_field_denoises_as_when_cropped(denoiser):
    """A head-sized object padded into a whole-body field: same result inside the object as the tight frame.

    The crop keeps 10 voxels of air in-plane, more than the tiny network's 8-layer
    reach, and 2 empty slices above and below, so the network sees the same
    neighbourhood of every object voxel in both frames.
    """
    cropped = np.pad(canonical_phantom(shape=(8, 36, 32)), ((2, 2), (0, 0), (0, 0)))
    large = np.pad(cropped, ((30, 25), (60, 45), (70, 50)))
    inside = (slice(30, 30 + cropped.shape[0]), slice(60, 60 + cropped.shape[1]), slice(70, 70 + cropped.shape[2]))
    out_cropped = denoiser(cropped)
    out_large = denoiser(large)[inside]
    body = cropped > 0
    assert _rel_rms(out_large, out_cropped, body) < 1e-6
    assert _rel_rms(out_cropped, cropped, body) > 0.05  # the network did change the image


def test_dicom_series_and_flipped_nifti_of_one_scan_agree(tmp_path, denoiser, canonical):
    """The same scan as a DICOM series and as a NIfTI with rows flipped (another converter's habit)."""
    volume = Volume(data=canonical, affine=CANONICAL_AFFINE)
    write_volume(volume, tmp_path / "series")
    write_volume(stored_variant(canonical, VARIANTS["rows flipped (LAS)"]), tmp_path / "scan.nii.gz")
    from_dicom = read_volume(tmp_path / "series")
    from_nifti = read_volume(tmp_path / "scan.nii.gz")
    out_dicom, _ = denoise_volume(denoiser, from_dicom)
    out_nifti, _ = denoise_volume(denoiser, from_nifti)
    # Compare at the same world positions: the DICOM reader stores canonical order, the NIfTI rows flipped.
    np.testing.assert_allclose(from_dicom.affine, CANONICAL_AFFINE, atol=1e-4)
    body = canonical > 0
    assert _rel_rms(out_dicom, out_nifti[:, ::-1, :], body) < 1e-3  # DICOM stores int16 with per-slice slopes


def test_tta_is_the_mean_over_the_eight_in_plane_symmetries(canonical):
    plain = Denoiser(trained_like_model(), device="cpu", precision="fp32")
    tta = Denoiser(trained_like_model(), device="cpu", precision="fp32", tta=True)
    np.testing.assert_allclose(tta(canonical), in_plane_mean(plain, canonical), rtol=1e-5, atol=1e-3)
    flipped = np.ascontiguousarray(canonical[:, ::-1])
    np.testing.assert_allclose(tta(flipped)[:, ::-1], tta(canonical), rtol=1e-5, atol=1e-3)


def test_cli_tta_writes_the_augmented_result_in_the_stored_order(tmp_path, canonical):
    from click.testing import CliRunner

    from tgdpet.checkpoint import save_model
    from tgdpet.cli import main

    model = save_model(tmp_path / "tiny.safetensors", trained_like_model(), preset="tiny")
    variant = stored_variant(canonical, VARIANTS["rotated 90"])
    path = write_volume(variant, tmp_path / "scan.nii.gz")
    args = ["denoise", str(path), "--model", str(model), "--device", "cpu", "--precision", "fp32", "--tta",
            "--no-progress"]  # fmt: skip
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    written = read_volume(tmp_path / "scan_denoised.nii.gz")
    tta = Denoiser(trained_like_model(), device="cpu", precision="fp32", tta=True)
    expected = VARIANTS["rotated 90"](tta(canonical))
    body = VARIANTS["rotated 90"](canonical) > 0
    assert _rel_rms(written.data, expected, body) < 1e-6
    plain = VARIANTS["rotated 90"](Denoiser(trained_like_model(), device="cpu", precision="fp32")(canonical))
    assert _rel_rms(written.data, plain, body) > 1e-4  # the augmentation really ran
