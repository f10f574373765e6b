"""The scanner: expected count rates of a phantom, Poisson prompts, and list-mode-like splits.

Forward model per slice (2D parallel beam), sinograms ``(z, angle, bin)``:

    trues   = efficiency * A (PSF * activity)
    scatter = a broad blur of the trues, scaled to the body's scatter fraction
    randoms = flat, a fixed fraction of all prompts
    prompts ~ Poisson(seconds * (trues + scatter + randoms))

``efficiency`` holds everything multiplicative per bin: the scanner's
sensitivity, the bin's geometry, and the attenuation ``exp(-A mu)``. The
count scale is defined per millimetre of radial bin and of slice and per
unit angle, so the number of counts a body gives does not depend on the
grid it is sampled on. The PSF is a 3D Gaussian (5.5 mm FWHM, axially too:
without axial blur adjacent-slice noise would be uncorrelated, unlike real
3D PET). Prompts stay unsubtracted; scatter and randoms go into the
reconstruction's additive term (subtracting them gives negative counts).

Shorter scans are made like list-mode subsampling: binomial thinning of a
Poisson(l) sinogram with probability p is Poisson(p l). Disjoint parts of
one scan (Noise2Noise halves, i.i.d. realisations) come from sequential
binomials and are independent Poisson sinograms that sum to the scan;
thinning the same scan twice would give overlapping, correlated "realisations".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .filters import blur_along, exact_sum, gaussian_blur3d
from .phantom import Phantom
from .projector import Projector

#: Fraction of emissions whose photon pair is detected as a true coincidence when nothing
#: attenuates (a 2D-geometry-like sensitivity): 60 s then gives ~55 k trues in a 4 mm liver slice
#: of the reference body (BMI 23.7), about the noise of a clinical 1-2 min bed.
SENSITIVITY = 6.2e-3


@dataclass(frozen=True)
class ScannerModel:
    """Physics of the simulated scanner."""

    psf_fwhm_mm: float = 5.5
    randoms_fraction: float = 0.25
    scatter_fwhm_mm: float = 150.0
    sensitivity: float = SENSITIVITY


def scatter_fraction(body_scale: float) -> float:
    """Scatter / (trues + scatter): 30 / 35 / 45 % for body scales 0.85 / 1.0 / 1.3, linear between."""
    return min(0.7, max(0.1, 0.35 + (body_scale - 1.0) / 3.0))


@dataclass
class CountRates:
    """Expected counts per second of one study, sinograms ``(z, angle, bin)`` on one device."""

    efficiency: torch.Tensor  # counts/s per (Bq/mL x mm) of PSF-blurred line integral
    trues: torch.Tensor
    scatter: torch.Tensor
    randoms: torch.Tensor

    @property
    def prompts(self) -> torch.Tensor:
        return self.trues + self.scatter + self.randoms


def count_rates(phantom: Phantom, projector: Projector, model: ScannerModel = ScannerModel()) -> CountRates:
    """Expected trues, scatter and randoms per second for ``phantom`` (see the module docstring)."""
    grid = phantom.grid
    attenuation = torch.exp(-projector.forward(phantom.mu))
    geometry = grid.pixel_mm * grid.slice_mm / projector.n_angles / 1000.0  # mL per mm^3
    efficiency = model.sensitivity * geometry * attenuation
    # Poisson draws follow, so every step gives the same bits on any thread count (filters' docstring).
    blurred = gaussian_blur3d(phantom.activity, model.psf_fwhm_mm, grid.voxel_mm, reproducible=True)
    trues = efficiency * projector.forward(blurred)

    broad = blur_along(trues, -1, model.scatter_fwhm_mm, grid.pixel_mm, reproducible=True)
    broad = blur_along(broad, 0, model.scatter_fwhm_mm, grid.slice_mm, reproducible=True)
    total_trues = exact_sum(trues)
    sf = scatter_fraction(phantom.spec.body_scale)
    scatter = broad * (sf / (1.0 - sf) * total_trues / exact_sum(broad))

    rf = model.randoms_fraction
    level = rf / (1.0 - rf) * (total_trues + exact_sum(scatter)) / trues.numel()
    randoms = torch.full_like(trues, level)
    return CountRates(efficiency=efficiency, trues=trues, scatter=scatter, randoms=randoms)


def acquire(rate: torch.Tensor, seconds: float, generator: torch.Generator) -> torch.Tensor:
    """Poisson prompts of a ``seconds``-long scan (float32 counts)."""
    return torch.poisson(rate * seconds, generator=generator)


def thin(counts: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Keep each count with probability ``fraction``: a shorter scan from the same list mode."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"a thinning fraction must lie in [0, 1], got {fraction}.")
    return torch.binomial(counts, torch.full_like(counts, fraction), generator=generator)


def split(counts: torch.Tensor, fractions: Sequence[float], generator: torch.Generator) -> list[torch.Tensor]:
    """Disjoint parts holding ``fractions`` of the counts, by sequential binomials.

    Part i takes ``f_i / (1 - f_1 - ... - f_{i-1})`` of what the earlier parts left, which
    makes the parts independent Poisson sinograms of means ``f_i x mean``. With fractions
    summing to 1 the parts add up to ``counts`` exactly (the last part is the remainder).
    """
    total = float(sum(fractions))
    if any(f <= 0 for f in fractions) or total > 1.0 + 1e-9:
        raise ValueError(f"split fractions must be positive and sum to at most 1, got {list(fractions)}.")
    left, taken, parts = counts, 0.0, []
    for i, f in enumerate(fractions):
        if i == len(fractions) - 1 and abs(total - 1.0) < 1e-9:
            parts.append(left)
            break
        part = thin(left, min(1.0, f / (1.0 - taken)), generator)
        parts.append(part)
        left = left - part
        taken += f
    return parts
