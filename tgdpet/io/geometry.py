"""DICOM patient geometry (LPS) <-> the NIfTI-style RAS affine.

DICOM places pixel ``(column i, row j)`` of a slice at
``ImagePositionPatient + i * col_spacing * r + j * row_spacing * c`` in LPS mm,
where ``ImageOrientationPatient = (r, c)`` and ``PixelSpacing = (row_spacing,
col_spacing)`` (row spacing first). tgdpet's voxel ``(x, y, z)`` is
``(column, row, slice)``, so the affine's columns are ``r * col_spacing``,
``c * row_spacing``, the step between consecutive slice positions, and the
first slice's position; RAS is LPS with x and y negated.
"""

from __future__ import annotations

import numpy as np

#: LPS -> RAS (and back: it is its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def slice_normal(orientation: np.ndarray) -> np.ndarray:
    """Unit normal ``r x c`` of a slice plane: the axis slices are sorted along."""
    n = np.cross(orientation[:3], orientation[3:])
    return n / np.linalg.norm(n)


def affine_from_dicom(
    orientation: np.ndarray, pixel_spacing: np.ndarray, first_position: np.ndarray, step: np.ndarray
) -> np.ndarray:
    """RAS affine of a sorted slice stack.

    ``step`` is the LPS vector from one slice position to the next; using the
    measured vector (not normal * thickness) keeps gantry-tilted stacks right.
    """
    lps = np.eye(4)
    lps[:3, 0] = np.asarray(orientation[:3], float) * float(pixel_spacing[1])
    lps[:3, 1] = np.asarray(orientation[3:], float) * float(pixel_spacing[0])
    lps[:3, 2] = step
    lps[:3, 3] = first_position
    return LPS_TO_RAS @ lps


def dicom_plane_from_affine(affine: np.ndarray, n_slices: int) -> tuple[list[float], list[float], np.ndarray, float]:
    """DICOM plane attributes of every slice of a volume with this RAS affine.

    Returns ``ImageOrientationPatient`` (6 values), ``PixelSpacing`` (row,
    column), the LPS ``ImagePositionPatient`` of each slice ``(n, 3)`` and the
    slice spacing (for ``SliceThickness``). Reading these back with
    :func:`affine_from_dicom` gives the same affine whenever the stack is
    right-handed (the slice step points along ``r x c``, true for scanner data
    and RAS-style NIfTI); otherwise the reader stores the slices in the
    opposite order, which is the same image in space.
    """
    lps = LPS_TO_RAS @ np.asarray(affine, float)
    dx, dy = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    orientation = np.concatenate([lps[:3, 0] / dx, lps[:3, 1] / dy])
    positions = lps[:3, 3] + np.arange(n_slices)[:, None] * lps[:3, 2]
    return [float(v) for v in orientation], [float(dy), float(dx)], positions, float(np.linalg.norm(lps[:3, 2]))
