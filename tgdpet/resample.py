"""Denoising an image on a working grid other than its own: coarser for fine voxels, finer at the model's.

A DnCNN learns noise in voxel units: a network trained on 4 mm voxels meets,
at 2 mm, noise grains twice as many voxels wide and leaves most of them
(docs/builtin-model.md measures it). PET noise, though, lives at the scale of
the scanner's resolution (5-7 mm FWHM with the post-filter), not the voxel's,
so nearly all of its power is below the frequencies a 4 mm grid can hold.
:func:`denoise_on_grid` therefore, along each axis finer than the working grid,

1. averages the input onto the coarser grid (each coarse voxel the exact
   volume-weighted mean of the fine voxels it covers, so every region keeps
   its activity),
2. lets the network estimate the noise there,
3. takes that noise estimate back onto the input's grid by kriging
   (:func:`upsampling_matrix`): the field that best explains the coarse
   estimate and re-averages to exactly it, and subtracts it from the input.

What the coarse grid cannot represent (edges, the finest detail of small
lesions) stays in the image untouched, so resolution is the input's; only the
noise the network finds is removed. Along an axis coarser than the working
grid it runs the other way: the image is kriged up, and the noise estimate
averaged back onto the input's voxels, again exactly.

Which grid suits an image depends on its reconstruction, not only on its
voxels: the noise grain is set by the scanner's resolution, the post-filter
and resolution modelling, so a reconstruction without PSF has a finer grain
(in mm) than one with it. Averaged onto 4 mm voxels a fine grain looks
smoother than anything the model was trained on, and the network leaves it;
at the model's own voxel size a grain finer than its training noise is best
met on a grid a step finer, where it looks coarser. :func:`denoise_on_best_grid`
therefore denoises on a few grids (:func:`working_spacings`) and keeps the
result that removed the most: a network removes the noise whose grain it
knows and leaves what it does not, so the grid where it removes most is the
one where the image's noise looks most like its training noise. Where a
finer grid removes nearly as much (:data:`NEAR_MOST`), it is kept instead:
the noise left is about the same and lesions, more voxels across there,
keep more of their uptake (docs/builtin-model.md measures both).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

#: An axis is resampled when the finer of its two spacings is below this share of the coarser.
RESAMPLE_BELOW = 0.85

#: Working grids are at most this factor apart, and the finer grid tried at the model's voxel size is this much finer.
GRID_STEP = 1.25

#: Grids whose change to the image is within this share of the largest count as removing as much;
#: the finest of them is kept (:func:`denoise_on_best_grid`).
NEAR_MOST = 0.05


def grid_count(n: int, voxel_mm: float, grid_mm: float) -> int:
    """Voxels of the working grid along an axis: the same extent in steps close to ``grid_mm``."""
    return max(1, int(round(n * voxel_mm / grid_mm)))


def averaging_matrix(n_fine: int, n_coarse: int) -> np.ndarray:
    """``(n_coarse, n_fine)``: each coarse voxel the overlap-weighted mean of the fine voxels it covers.

    Both grids span the same extent; fine voxel ``j`` covers ``[j, j + 1)`` and
    coarse voxel ``i`` covers ``[i, i + 1) * n_fine / n_coarse`` in fine units.
    Rows sum to 1 (a uniform image stays uniform), columns to
    ``n_coarse / n_fine`` (every fine voxel counts equally).
    """
    step = n_fine / n_coarse
    lo = np.arange(n_coarse)[:, None] * step
    j = np.arange(n_fine)[None, :]
    overlap = np.clip(np.minimum(lo + step, j + 1) - np.maximum(lo, j), 0.0, None)
    return (overlap / step).astype(np.float32)


#: The kriged field's assumed correlation: Gaussian with this FWHM, in voxels of the coarser grid
#: (see :func:`upsampling_matrix`).
FIELD_FWHM_COARSE_VOXELS = 1.0


def upsampling_matrix(n_fine: int, n_coarse: int, fwhm_fine: float) -> np.ndarray:
    """``(n_fine, n_coarse)``: ordinary kriging of a fine field from its coarse-voxel means.

    The network's noise estimate on the coarse grid is a set of voxel *means*
    (:func:`averaging_matrix` ``A``), not point samples. Interpolating them as
    points (cubic, tgdpet <= 0.2) returns a field whose coarse means are
    smaller than the estimate's, so part of the noise the network found stays
    in the image (2.7 mm study, 4 mm model: liver CoV 0.53x cubic, 0.48x this
    way; docs/builtin-model.md). Kriging asks instead for the best linear
    estimate of a field with Gaussian correlation of FWHM ``fwhm_fine`` (fine
    voxels) given its means: ``U = C A^T (A C A^T)^-1`` plus the ordinary
    kriging term that makes every row sum to 1. Hence ``A @ U`` is the identity
    (the estimate re-averages to exactly the network's) and a uniform field
    stays uniform, at the edges too. The result barely depends on the assumed
    width (FWHM 1 and 1.5 model voxels gave the same figures to 0.001x).
    """
    a = averaging_matrix(n_fine, n_coarse).astype(np.float64)
    x = np.arange(n_fine, dtype=np.float64)
    sigma = fwhm_fine / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    # Covariance of white noise blurred by a Gaussian of ``sigma``: a Gaussian of variance 2 sigma^2.
    cov_fine = np.exp(-((x[:, None] - x[None, :]) ** 2) / (4.0 * sigma**2))
    cross = cov_fine @ a.T  # fine voxel against coarse mean
    solved = np.linalg.solve(a @ cross, np.column_stack([cross.T, np.ones(n_coarse)]))
    simple, k_inv_ones = solved[:, :-1].T, solved[:, -1]
    lagrange = (1.0 - simple.sum(axis=1)) / k_inv_ones.sum()
    return (simple + lagrange[:, None] * k_inv_ones[None, :]).astype(np.float32)


def _apply(volume: np.ndarray, matrices: Sequence[np.ndarray | None]) -> np.ndarray:
    """Apply one matrix per axis (None: leave the axis as it is), axis by axis."""
    out = volume
    for axis, m in enumerate(matrices):
        if m is not None:
            out = np.moveaxis(np.tensordot(m, out, axes=([1], [axis])), 0, axis)
    return np.ascontiguousarray(out, dtype=np.float32)


def resampled_axes(voxel_mm: Sequence[float], model_mm: Sequence[float]) -> tuple[bool, ...]:
    """Which axes of ``(z, y, x)`` are finer than the model's and are denoised on a coarser grid."""
    return tuple(v < RESAMPLE_BELOW * m for v, m in zip(voxel_mm, model_mm))


def _axis_maps(n: int, voxel_mm: float, grid_mm: float) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Along one axis, the matrices onto the working grid and back (None, None where it is the input's own).

    Coarser: the exact average there, kriging back. Finer: kriging there, the
    exact average back. Either way the way back after the way there is the
    identity on the coarser grid (``A @ U = I``).
    """
    if voxel_mm < RESAMPLE_BELOW * grid_mm:
        m = grid_count(n, voxel_mm, grid_mm)
        return averaging_matrix(n, m), upsampling_matrix(n, m, FIELD_FWHM_COARSE_VOXELS * grid_mm / voxel_mm)
    if grid_mm < RESAMPLE_BELOW * voxel_mm:
        m = grid_count(n, voxel_mm, grid_mm)
        return upsampling_matrix(m, n, FIELD_FWHM_COARSE_VOXELS * voxel_mm / grid_mm), averaging_matrix(m, n)
    return None, None


def denoise_on_grid(
    volume_zyx: np.ndarray,
    voxel_mm: Sequence[float],
    grid_mm: Sequence[float],
    denoise: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """``denoise`` a volume on a working grid of about ``grid_mm`` voxels and take its noise estimate back.

    ``voxel_mm`` and ``grid_mm`` are ``(z, y, x)`` in mm; an axis changes only
    where the two differ by more than :data:`RESAMPLE_BELOW`. Returns
    ``input - back(working - denoise(working))`` as float32, the input's
    shape, where ``working`` is the input on the working grid; with no axis
    to resample, just ``denoise(volume)``. A network that changes nothing
    returns the input exactly, and one that subtracts a constant subtracts it
    from the input.
    """
    maps = [_axis_maps(n, v, w) for n, v, w in zip(volume_zyx.shape, voxel_mm, grid_mm)]
    if all(there is None for there, _ in maps):
        return denoise(volume_zyx)
    volume = np.asarray(volume_zyx, np.float32)
    working = _apply(volume, [there for there, _ in maps])
    noise = working - denoise(working)
    return volume - _apply(noise, [back for _, back in maps])


def working_spacings(voxel_mm: Sequence[float], model_mm: Sequence[float]) -> list[tuple[float, ...]]:
    """The voxel sizes ``(z, y, x)`` to try denoising on: the input's own, the model's, and steps between.

    Steps are geometric and at most :data:`GRID_STEP` apart along the axis
    that is finest against the model; every resampled axis moves by the same
    share of its way from the input's voxel to the model's. An axis keeps the
    input's spacing where a step is too close to it to resample
    (:func:`resampled_axes`). An input with no axis finer than the model's
    has two candidates: its own grid and one :data:`GRID_STEP` finer on every
    axis, where a grain finer than the model's training noise looks like it
    (at 4 mm, the noise of reconstructions without PSF or with a light
    filter; docs/builtin-model.md).
    """
    axes = resampled_axes(voxel_mm, model_mm)
    if not any(axes):
        return [tuple(float(v) for v in voxel_mm), tuple(float(v) / GRID_STEP for v in voxel_mm)]
    ratio = max(m / v for v, m, r in zip(voxel_mm, model_mm, axes) if r)
    steps = max(1, math.ceil(math.log(ratio) / math.log(GRID_STEP) - 1e-9))
    spacings: list[tuple[float, ...]] = []
    for k in range(steps + 1):
        step = [v * (m / v) ** (k / steps) if r else v for v, m, r in zip(voxel_mm, model_mm, axes)]
        # An axis too close to the input's voxels to be resampled (RESAMPLE_BELOW) stays as it is.
        moved = resampled_axes(voxel_mm, step)
        spacing = tuple(float(w) if m else float(v) for v, w, m in zip(voxel_mm, step, moved))
        if spacing not in spacings:
            spacings.append(spacing)
    return spacings


def denoise_on_best_grid(
    volume_zyx: np.ndarray,
    voxel_mm: Sequence[float],
    model_mm: Sequence[float],
    denoise: Callable[[np.ndarray], np.ndarray],
) -> tuple[np.ndarray, tuple[float, ...]]:
    """:func:`denoise_on_grid` on every grid of :func:`working_spacings`; the finest that removed about the most,
    and its voxel size ``(z, y, x)``, so that a user can be told which grid the result came from.

    "Removed" is the mean squared change over the whole volume. Every
    candidate is the same network and the same exact resampling, so they
    differ only in how well the image's noise grain, on that grid, matches the
    grains the network learned. Grids whose change is within
    :data:`NEAR_MOST` of the largest count as removing as much, and the finest
    of them is kept: there a lesion spans the most voxels, and the network
    keeps more of it (docs/builtin-model.md measures both). No grid coarser
    than both the model's and the input's own is tried, so structures never
    look smaller to the network than on one of those.
    Costs the network's time on every candidate grid: for a 2 mm whole-body
    volume and a 4 mm model, five grids, 16 times the 4 mm grid's alone; at
    4 mm two, about 3 times (README, "Voxel size").
    """
    volume = np.asarray(volume_zyx, np.float32)
    near: list[tuple[float, tuple[float, ...], np.ndarray]] = []  # (change, grid, result) within NEAR_MOST of the most
    for spacing in working_spacings(voxel_mm, model_mm):
        out = denoise_on_grid(volume, voxel_mm, spacing, denoise)
        near.append((float(np.mean(np.square(volume - out), dtype=np.float64)), spacing, out))
        most = max(change for change, _, _ in near)
        near = [r for r in near if r[0] >= (1.0 - NEAR_MOST) * most]  # only these can still be kept
    _, spacing, out = min(near, key=lambda r: math.prod(r[1]))
    return out, spacing


__all__ = [
    "GRID_STEP",
    "NEAR_MOST",
    "RESAMPLE_BELOW",
    "averaging_matrix",
    "denoise_on_best_grid",
    "denoise_on_grid",
    "FIELD_FWHM_COARSE_VOXELS",
    "grid_count",
    "resampled_axes",
    "upsampling_matrix",
    "working_spacings",
]
