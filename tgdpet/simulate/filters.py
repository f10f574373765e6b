"""Gaussian blurs along array axes, used for the PSF, scatter and post-filters.

A blur along one axis of length ``n`` is an ``n x n`` matrix product: on a
CPU that ran several times faster than a one-channel ``conv1d`` (which
oneDNN handles poorly), and on a GPU it is a plain batched matmul. Weights
are the Gaussian integrated over each voxel (differences of the error
function) rather than sampled at voxel centres, so a PSF narrower than a
voxel still blurs by the right amount instead of collapsing to a delta.

``padding="zeros"`` (what lies beyond the array is empty) gives a symmetric
matrix, so the blur is its own adjoint, as the reconstruction's system model
needs. ``"replicate"`` (the edge value continues) keeps the end slices of a
post-filtered image at their level.
"""

from __future__ import annotations

import functools
import math

import torch

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


@functools.lru_cache(maxsize=64)
def blur_matrix(
    n: int, fwhm_mm: float, spacing_mm: float, padding: str = "zeros", device: str = "cpu"
) -> torch.Tensor:
    """``M[i, j]``: weight of input sample ``j`` in output sample ``i`` (float32, ``(n, n)``)."""
    sigma = fwhm_mm / FWHM_PER_SIGMA / spacing_mm
    if sigma <= 0:
        return torch.eye(n, device=device)
    i = torch.arange(n, dtype=torch.float64).view(-1, 1)
    j = torch.arange(n, dtype=torch.float64).view(1, -1)

    def cdf(u: torch.Tensor) -> torch.Tensor:
        return 0.5 * (1.0 + torch.erf(u / (sigma * math.sqrt(2.0))))

    m = cdf(j - i + 0.5) - cdf(j - i - 0.5)
    if padding == "replicate":  # the mass falling beyond an edge stays on the edge sample
        m[:, 0] += cdf(-0.5 - i[:, 0])
        m[:, -1] += 1.0 - cdf(n - 0.5 - i[:, 0])
    elif padding != "zeros":
        raise ValueError(f"unknown padding {padding!r}; use 'zeros' or 'replicate'.")
    return m.to(device=device, dtype=torch.float32)


def blur_along(x: torch.Tensor, dim: int, fwhm_mm: float, spacing_mm: float, padding: str = "zeros") -> torch.Tensor:
    """Blur ``x`` along one dimension with a Gaussian of ``fwhm_mm`` (samples ``spacing_mm`` apart)."""
    dim = dim % x.ndim
    m = blur_matrix(x.shape[dim], float(fwhm_mm), float(spacing_mm), padding, str(x.device))
    if dim == x.ndim - 1:
        return x @ m.T
    return (m @ x.movedim(dim, -2)).movedim(-2, dim)


def gaussian_blur3d(
    volume: torch.Tensor, fwhm_mm: float, voxel_mm: tuple[float, float, float], padding: str = "zeros"
) -> torch.Tensor:
    """Isotropic 3D Gaussian of ``fwhm_mm`` on the last three dimensions ``(z, y, x)`` of ``volume``."""
    out = volume
    for axis, spacing in zip((-3, -2, -1), voxel_mm):
        out = blur_along(out, axis, fwhm_mm, spacing, padding)
    return out
