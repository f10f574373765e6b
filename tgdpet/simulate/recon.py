"""Ordinary-Poisson OSEM with the paper's two reconstruction protocols, v1 and v2, and three more.

Model of the mean prompts of a ``tau``-second scan, per slice:

    ybar = tau * (efficiency * H A x + scatter_estimate + randoms)

with ``A`` the Joseph projector, ``H`` the protocol's resolution model and
``efficiency`` the attenuation and sensitivity (see :mod:`.scanner`). The
update for subset ``S`` is

    x <- x / (A_S^T H efficiency_S tau) * A_S^T H (efficiency_S * y_S / (ybar_S / tau))

and the images come out in Bq/mL. The resolution model is applied in
sinogram space: an isotropic Gaussian blurs a parallel projection like a
1D Gaussian of the same width along the radial bins, and axially it acts
per bin across slices, so ``H`` costs a fraction of an image-space blur.

The protocols mimic the paper's two scanner software versions:

- v1: resolution over-estimated (8 mm PSF modelled for a 5.5 mm scanner),
  scatter under-estimated (x0.8), 4 mm post-filter: smooth images with
  coarse, strongly correlated noise and a positive bias that grows with BMI.
- v2: the true 5.5 mm PSF, exact scatter, 3 mm post-filter: finer noise.

A correct PSF model alone makes the noise coarser, not finer, so v1's
coarser texture comes from the over-estimated PSF and the wider filter.

``nopsf``, ``sharp`` and ``smooth`` span what clinics reconstruct with
(with and without resolution modelling, 2-6 iterations, 2-6 mm post-filters),
so a model can be trained, and measured, across noise textures.

Speed: the sparse products dominate; they ran fastest with about 100-200
dense columns (slices) per product on 2 CPU cores, so volumes are
reconstructed in batches of that many slices (more on a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .filters import blur_along, gaussian_blur3d
from .grid import Grid
from .projector import Projector
from .scanner import CountRates


@dataclass(frozen=True)
class Protocol:
    """One reconstruction protocol: resolution model, scatter estimate, iterations, post-filter."""

    name: str
    psf_fwhm_mm: float
    scatter_scale: float
    post_filter_fwhm_mm: float
    iterations: int = 4
    subsets: int = 8
    description: str = ""


PROTOCOLS: dict[str, Protocol] = {
    "v1": Protocol(
        "v1", 8.0, 0.8, 4.0, description="PSF over-estimated (8 mm), scatter x0.8, 4 mm post-filter: coarse noise"
    ),
    "v2": Protocol("v2", 5.5, 1.0, 3.0, description="PSF as simulated (5.5 mm), exact scatter, 3 mm post-filter"),
    # Clinical variety around them (what issue 27 asks a built-in model to cover):
    "nopsf": Protocol(
        "nopsf", 0.0, 1.0, 5.0, iterations=3, subsets=8,
        description="no resolution modelling, exact scatter, 3 iterations, 5 mm post-filter: classic OSEM",
    ),
    "sharp": Protocol(
        "sharp", 5.5, 1.0, 2.0, iterations=6, subsets=8,
        description="PSF as simulated (5.5 mm), exact scatter, 6 iterations, 2 mm post-filter: fine, strong noise",
    ),
    "smooth": Protocol(
        "smooth", 5.5, 1.0, 6.0, iterations=2, subsets=8,
        description="PSF as simulated (5.5 mm), exact scatter, 2 iterations, 6 mm post-filter: smooth",
    ),
    # Not in the built-in model's training data: the new reconstruction of the adaptation study
    # (docs/builtin-model.md, "Adapting the built-in model to your scanner").
    "nofilter": Protocol(
        "nofilter", 0.0, 1.0, 0.0, iterations=4, subsets=8,
        description="no resolution modelling, exact scatter, 4 iterations, no post-filter: pixel-scale grain",
    ),
}  # fmt: skip

#: Dense columns (slices) per sparse product: ~150 was fastest on 2 CPU cores; GPUs like many more.
_COLUMNS = {"cpu": 192, "cuda": 8192}


def _columns(sinogram: torch.Tensor) -> torch.Tensor:
    """``(z, angle, bin)`` -> ``(angle * bin, z)``: the layout the sparse products take."""
    z = sinogram.shape[0]
    return sinogram.permute(1, 2, 0).reshape(-1, z)


class _Model:
    """``H`` and its adjoint (the same: symmetric kernels, zero padding) on subset sinograms."""

    def __init__(self, protocol: Protocol, grid: Grid, n_bins: int):
        self.fwhm = protocol.psf_fwhm_mm
        self.grid = grid
        self.n_bins = n_bins

    def __call__(self, q: torch.Tensor, n_volumes: int) -> torch.Tensor:
        """Blur ``(rows, n_volumes * z)`` radially (within each angle) and axially (within each volume)."""
        rows, cols = q.shape
        z = cols // n_volumes
        q = blur_along(q.view(rows // self.n_bins, self.n_bins, cols), 1, self.fwhm, self.grid.pixel_mm)
        q = blur_along(q.reshape(rows, n_volumes, z), 2, self.fwhm, self.grid.slice_mm)
        return q.reshape(rows, cols)


def reconstruct(
    counts: Sequence[torch.Tensor],
    seconds: Sequence[float],
    rates: CountRates,
    protocol: Protocol,
    projector: Projector,
    grid: Grid,
) -> list[torch.Tensor]:
    """OSEM images (Bq/mL, ``(z, y, x)``) of prompt sinograms ``counts`` of ``seconds``-long scans.

    All sinograms must belong to the study whose expected ``rates`` are given (they share its
    attenuation, scatter and randoms); each is reconstructed independently.
    """
    if len(counts) != len(seconds):
        raise ValueError("give one scan duration per sinogram.")
    device = rates.efficiency.device
    z = grid.slices
    model = _Model(protocol, grid, projector.n_bins)
    subsets = projector.subsets(protocol.subsets)
    fov = grid.fov_mask(device).reshape(-1, 1).float()

    efficiency = _columns(rates.efficiency)
    additive = _columns(protocol.scatter_scale * rates.scatter + rates.randoms)
    per_subset = []
    for s in subsets:
        eff, add = efficiency[s.rows], additive[s.rows]
        sens = s.matrix_t @ model(eff, 1)
        inv_sens = torch.where(sens > 0, 1.0 / sens.clamp_min(1e-30), torch.zeros_like(sens)) * fov
        per_subset.append((s, eff, add, inv_sens))
    # forward model of a uniform image, for a count-matched uniform starting image
    uniform = model(projector.matrix @ fov.expand(-1, z).contiguous(), 1) * efficiency

    batch = max(1, _COLUMNS.get(device.type, 192) // z)
    images = []
    for start in range(0, len(counts), batch):
        chunk = counts[start : start + batch]
        tau = torch.tensor(list(seconds[start : start + batch]), dtype=torch.float32, device=device)
        images.extend(_osem(chunk, tau, per_subset, uniform, additive, fov, model, protocol, grid))
    return images


def _osem(counts, tau, per_subset, uniform, additive, fov, model, protocol: Protocol, grid: Grid):
    """Reconstruct one batch of volumes together: columns ordered (volume, slice)."""
    b, z, n_pix = len(counts), grid.slices, grid.size**2
    y = torch.stack([_columns(c) for c in counts], dim=1)  # (rows, b, z)
    net = (y - tau.view(1, -1, 1) * additive.unsqueeze(1)).clamp_min(0).sum(dim=(0, 2))
    start = (net / (tau * uniform.sum())).clamp_min(1e-6)  # > 0, or the multiplicative updates stay at 0
    x = (fov.unsqueeze(1) * start.view(1, -1, 1)).expand(n_pix, b, z).contiguous()
    y_sub = [y[s.rows] for s, *_ in per_subset]
    inv_tau = (1.0 / tau).view(1, -1, 1)
    for _ in range(protocol.iterations):
        for (s, eff, add, inv_sens), ys in zip(per_subset, y_sub):
            q = model(s.matrix @ x.view(n_pix, b * z), b).view(-1, b, z)
            ratio = eff.unsqueeze(1) * ys / (eff.unsqueeze(1) * q + add.unsqueeze(1))
            back = s.matrix_t @ model(ratio.view(-1, b * z), b)
            x.mul_(back.view(n_pix, b, z)).mul_(inv_sens.unsqueeze(1)).mul_(inv_tau)
    volumes = x.permute(1, 2, 0).reshape(b, z, grid.size, grid.size)
    smooth = gaussian_blur3d(volumes, protocol.post_filter_fwhm_mm, grid.voxel_mm, padding="replicate")
    mask = fov.view(1, 1, grid.size, grid.size)
    return list((smooth * mask).clamp_min(0).unbind(0))
