"""What the network is fed: intensity normalisation and 2.5D slice stacks, one definition for training and denoising.

Intensity: PET values (Bq/mL or SUV) differ by orders of magnitude between
studies, tracers and doses. The network works on a dose- and weight-free
scale: every volume is divided by :func:`intensity_scale` of the network's
*input* (the noisy image), and the output multiplied back. The same rule is
used in training (both input and target divided by the input's scale) and in
denoising, and it is recorded in every model file as ``normalization``
(:data:`NORMALIZATION`), so a model trained under another rule is refused
rather than silently mis-scaled.

Slices: a 2.5D network sees ``in_slices`` adjacent slices around the one it
denoises; :func:`stack_indices` says which, the edge slices repeated.
"""

from __future__ import annotations

import numpy as np
import torch

from .errors import TgdpetError

#: The intensity normalisation this tgdpet applies, as model files record it.
NORMALIZATION = {"method": "object_mean", "threshold": 0.05, "percentile": 90.0}


def _values(volume: np.ndarray | torch.Tensor) -> np.ndarray:
    x = volume.detach().float().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    return x.astype(np.float32, copy=False)


def _percentile_of_sorted(values: np.ndarray, q: float) -> float:
    """numpy's default (linear) percentile of an already sorted 1-D array."""
    pos = q / 100.0 * (values.size - 1)
    lo = int(np.floor(pos))
    hi = min(lo + 1, values.size - 1)
    return float(values[lo] + (pos - lo) * (values[hi] - values[lo]))


def _object_threshold_and_mean(volume: np.ndarray | torch.Tensor) -> tuple[float, float]:
    """The object threshold (see :func:`object_threshold`) and the mean of the voxels above it."""
    x = _values(volume)
    values = np.sort(x[np.isfinite(x) & (x > 0)]).astype(np.float64)
    if values.size == 0:
        raise TgdpetError(
            "the image has no positive voxels, so tgdpet finds no object to normalise by; "
            "check that it is a PET image in activity units (Bq/mL, SUV or counts)."
        )
    t, q = NORMALIZATION["threshold"], NORMALIZATION["percentile"]
    start, level = 0, _percentile_of_sorted(values, q)
    while True:  # each pass drops the voxels below t * level: the level only rises, and stops exactly
        start = int(np.searchsorted(values, t * level, side="right"))
        new_level = _percentile_of_sorted(values[start:], q)
        if new_level <= level:
            break
        level = new_level
    return t * level, float(values[start:].mean())


def object_threshold(volume: np.ndarray | torch.Tensor) -> float:
    """The activity above which a voxel belongs to the imaged object (a body, a head, a phantom).

    The threshold is ``t * h`` (``t`` = 5 %), ``h`` being the 90th percentile
    *of the object itself*: the least fixed point of ``h = P90({x > t h})``
    above the 90th percentile of all positive voxels, found by iterating up
    (each step drops voxels below the threshold, so ``h`` only rises, and the
    iteration stops exactly). Zero padding is never among the positive
    voxels, and air below the final threshold leaves the fixed point, so the
    result depends on the object, not on how much empty space was stored
    around it (tgdpet 0.1 took a percentile of the whole field of view, which
    fell with every row of padding). A hot organ moves ``h`` only if it fills
    over 10 % of the object; positive air noise, only if it outnumbers the
    object's voxels about tenfold.

    Raises:
        TgdpetError: no voxel is positive, so there is no object to find.
    """
    return _object_threshold_and_mean(volume)[0]


def intensity_scale(volume: np.ndarray | torch.Tensor) -> float:
    """Mean uptake of the imaged object: the mean of the voxels above :func:`object_threshold`.

    Robust to the hottest voxels, independent of the empty space around the
    object (padding, a large field of view), and nearly the same at every
    count level of a study (a mean, unlike a weighted median, is not biased
    by noise), so all count levels of a study land on one scale.
    """
    return _object_threshold_and_mean(volume)[1]


def body_mask(volume: np.ndarray) -> np.ndarray:
    """Voxels of the imaged object (above :func:`object_threshold`), the same rule as :func:`intensity_scale`."""
    x = np.asarray(volume)
    return x > object_threshold(x)


def stack_indices(centres: np.ndarray | int, depth: int, in_slices: int) -> np.ndarray:
    """Slice indices of the ``in_slices`` stack around each centre, edge slices replicated.

    ``stack_indices([0, 5], 6, 3)`` is ``[[0, 0, 1], [4, 5, 5]]``: at the
    ends of the volume the missing neighbours repeat the edge slice, the
    project-wide convention (docs/architecture.md).
    """
    half = in_slices // 2
    offsets = np.arange(-half, half + 1)
    return np.clip(np.asarray(centres)[..., None] + offsets, 0, depth - 1)
