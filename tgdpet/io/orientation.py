"""One canonical frame for every volume that meets the network.

A CNN is not invariant to flips, rotations or axis order: the same patient
stored with its rows flipped, feet-first, or as a stack of sagittal slices
would be denoised differently if the network saw the array as stored. So
every volume is turned, by exact axis permutations and flips read from its
affine, into the frame the simulator (and so every tgdpet model) works in,
DICOM's standard axial display: voxel ``x`` runs to the patient's left,
``y`` posterior, ``z`` superior (axis codes ``L, P, S``). Slices are then
always axial, and the 2.5D stacks always neighbours along the body axis.
Results are turned back to the stored order, so outputs keep the input's
geometry. Permutations and flips move voxels without arithmetic: the same
anatomy stored any way gives bit-identical network inputs.

An oblique affine (gantry tilt, a rotated field of view) is mapped to the
closest axes; the voxels themselves are never resampled.
"""

from __future__ import annotations

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, io_orientation, ornt_transform

from ..errors import TgdpetError
from .volume import Volume

#: Voxel axes ``(x, y, z)`` of the canonical frame, as nibabel axis codes.
CANONICAL_AXES = ("L", "P", "S")

#: A voxel axis is mapped to its closest patient axis only when within 40 degrees of it:
#: nearer 45 degrees, two storages of nearly the same image could be turned differently.
MIN_AXIS_COSINE = float(np.cos(np.radians(40.0)))


def _to_canonical_ornt(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation transform from the affine's voxel axes to :data:`CANONICAL_AXES`."""
    affine = np.asarray(affine, float)
    ornt = io_orientation(affine)
    directions = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)
    if np.isnan(ornt).any() or any(
        abs(directions[int(world), axis]) < MIN_AXIS_COSINE for axis, (world, _) in enumerate(ornt)
    ):
        raise TgdpetError(
            "the image's voxel axes lie about 45 degrees from the patient's axes (more than 40 degrees from the "
            "closest), so tgdpet cannot tell which are its axial slices; reslice it to axial slices first."
        )
    return ornt_transform(ornt, axcodes2ornt(CANONICAL_AXES))


def _apply_zyx(data_zyx: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Apply a nibabel orientation transform (written for ``x, y, z`` order) to a ``z, y, x`` array."""
    return np.ascontiguousarray(apply_orientation(np.asarray(data_zyx).T, transform).T)


def to_canonical(volume: Volume) -> Volume:
    """``volume`` with its voxels and affine turned into the canonical frame.

    The result maps the same voxels to the same world positions; it carries
    no source headers, since its array no longer matches them (write results
    through :func:`from_canonical` and the original volume instead).
    """
    transform = _to_canonical_ornt(volume.affine)
    shape_xyz = volume.data.shape[::-1]
    affine = volume.affine @ inv_ornt_aff(transform, shape_xyz)
    return Volume(data=_apply_zyx(volume.data, transform), affine=affine, units=volume.units, meta=dict(volume.meta))


def canonical_voxel_mm(volume: Volume) -> tuple[float, float, float]:
    """The voxel size ``(z, y, x)`` in mm that the volume has in the canonical frame (slice thickness first)."""
    transform = _to_canonical_ornt(volume.affine)
    spacing = volume.spacing
    out = [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(transform):
        out[int(target)] = spacing[axis]
    return (out[2], out[1], out[0])


def from_canonical(data_zyx: np.ndarray, like: Volume) -> np.ndarray:
    """An array computed in ``like``'s canonical frame, turned back to ``like``'s stored voxel order."""
    transform = _to_canonical_ornt(like.affine)
    canonical_xyz = [0, 0, 0]
    for axis, (target, _) in enumerate(transform):
        canonical_xyz[int(target)] = like.data.shape[::-1][axis]
    if tuple(canonical_xyz[::-1]) != np.shape(data_zyx):
        raise ValueError(f"array of shape {np.shape(data_zyx)} is not on the canonical grid of a {like.shape} volume")
    return _apply_zyx(data_zyx, ornt_transform(axcodes2ornt(CANONICAL_AXES), io_orientation(like.affine)))


__all__ = ["CANONICAL_AXES", "canonical_voxel_mm", "from_canonical", "to_canonical"]
