"""Dynamic FDG studies: one phantom whose regions follow their own time-activity curves, framed and reconstructed.

The static phantom is the FDG distribution 60 min after injection. A dynamic
study scales each labelled region by a curve ``f(t)`` that equals 1 at
60 min, so its last frames look like the static studies the models were
trained on and its first ones do not:

- blood (aorta, heart, catheter): Feng's FDG plasma input function, a
  bolus 30 s after injection peaking at about 9x the 60 min level, then
  washout;
- tissue that takes FDG up and keeps it (liver, spleen, kidney, lean tissue,
  bone, bowel, lung, fat): ``1 - exp(-t / tau)`` with its own ``tau``;
- lesions (the tumour, other lesions): uptake that keeps rising (FDG
  trapped), Patlak-like: proportional to the integral of the blood curve;
- the bladder: filling linearly from empty.

Each frame's activity is the time average of the curves over the frame.
Counts are Poisson draws of the expected rates times the frame's duration
(images are decay-corrected and the counts carry no decay, so a frame's
noise follows its duration and its activity only). Every frame is
reconstructed twice: from its counts (the image) and from its expected counts
(the noise-free reconstruction, the same resolution and partial-volume loss
without noise): the reference a denoiser's bias is measured against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .phantom import LABEL_CODES, Phantom
from .projector import Projector
from .recon import PROTOCOLS, reconstruct
from .scanner import ScannerModel, acquire, count_rates

#: Seconds after injection the static phantom stands for (its curves are 1 there).
STATIC_TIME_S = 3600.0
#: A 62-minute FDG protocol: 6 x 10 s, 4 x 30 s, 4 x 60 s, 5 x 300 s, 3 x 600 s.
FRAME_DURATIONS_S: tuple[float, ...] = (10.0,) * 6 + (30.0,) * 4 + (60.0,) * 4 + (300.0,) * 5 + (600.0,) * 3
#: Uptake time constants (s) of the tissues that keep FDG.
TISSUE_TAU_S = {"liver": 300.0, "spleen": 400.0, "kidney": 200.0, "body": 900.0, "bone": 1200.0, "bowel": 900.0,
                "lung": 600.0}  # fmt: skip
BLOOD = ("aorta", "heart")
LESIONS = ("lesion", "other_lesion")


#: Feng et al.'s FDG plasma input function (1993): amplitudes (per minute for the first) and rates (1/min),
#: with the bolus arriving this many minutes after injection.
FENG_A = (851.1225, 21.8798, 20.8113)
FENG_L = (-4.133859, -0.1191, -0.0104)
FENG_DELAY_MIN = 0.5


def _feng(t_s: np.ndarray) -> np.ndarray:
    m = np.maximum(np.asarray(t_s, dtype=np.float64) / 60.0 - FENG_DELAY_MIN, 0.0)
    (a1, a2, a3), (l1, l2, l3) = FENG_A, FENG_L
    value = (a1 * m - a2 - a3) * np.exp(l1 * m) + a2 * np.exp(l2 * m) + a3 * np.exp(l3 * m)
    return np.where(m > 0, value, 0.0)


def blood_curve(t: np.ndarray) -> np.ndarray:
    """Relative blood concentration ``t`` seconds after injection: 0 until the bolus arrives, a peak about
    9x the 60-minute level some 15 s later, then washout; 1 at :data:`STATIC_TIME_S`."""
    return _feng(t) / _feng(np.array(STATIC_TIME_S))


def region_curve(region: str, t: np.ndarray) -> np.ndarray:
    """``f(t)`` of a labelled region, 1 at :data:`STATIC_TIME_S` (module docstring)."""
    t = np.asarray(t, dtype=np.float64)
    if region in BLOOD or region == "catheter":
        return blood_curve(t)
    if region in LESIONS:  # trapped: the integral of the blood curve, 1 at the static time
        return _blood_integral(t) / _blood_integral(np.array(STATIC_TIME_S))
    if region == "bladder":
        return np.clip(t / STATIC_TIME_S, 0.0, None)
    tau = TISSUE_TAU_S.get(region, TISSUE_TAU_S["body"])
    return (1.0 - np.exp(-t / tau)) / (1.0 - np.exp(-STATIC_TIME_S / tau))


def _blood_integral(t: np.ndarray) -> np.ndarray:
    grid = np.linspace(0.0, float(np.max(t)), 4001)
    steps = np.diff(grid) * (blood_curve(grid[1:]) + blood_curve(grid[:-1])) / 2  # the trapezoid rule
    cumulative = np.concatenate([[0.0], np.cumsum(steps)])
    return np.interp(t, grid, cumulative)


def frame_mean(region: str, start_s: float, duration_s: float) -> float:
    """The time average of a region's curve over one frame."""
    t = np.linspace(start_s, start_s + duration_s, 65)
    f = region_curve(region, t)
    return float(np.sum((f[1:] + f[:-1]) / 2 * np.diff(t)) / duration_s)  # the trapezoid rule


def frame_starts(durations: tuple[float, ...]) -> tuple[float, ...]:
    """Frame start times (s after injection) of back-to-back frames starting at injection."""
    return tuple(float(s) for s in np.concatenate([[0.0], np.cumsum(durations)[:-1]]))


@dataclass
class DynamicStudy:
    """A dynamic study: per frame the image, its noise-free reconstruction and the true activity (Bq/mL)."""

    starts_s: tuple[float, ...]
    durations_s: tuple[float, ...]
    images: list[torch.Tensor] = field(repr=False)
    noise_free: list[torch.Tensor] = field(repr=False)
    truth: list[torch.Tensor] = field(repr=False)


def frame_activity(phantom: Phantom, start_s: float, duration_s: float) -> torch.Tensor:
    """The phantom's activity averaged over one frame: each labelled region scaled by its curve's mean."""
    scale = torch.zeros_like(phantom.activity)
    for name, code in LABEL_CODES.items():
        scale = torch.where(phantom.labels == code, frame_mean(name, start_s, duration_s), scale)
    return phantom.activity * scale


def simulate_dynamic(
    phantom: Phantom,
    projector: Projector,
    protocol: str,
    generator: torch.Generator,
    durations_s: tuple[float, ...] = FRAME_DURATIONS_S,
    starts_s: tuple[float, ...] | None = None,
) -> DynamicStudy:
    """Frame, count and reconstruct ``phantom`` over ``durations_s`` with one reconstruction ``protocol``.

    ``starts_s`` (seconds after injection) default to back-to-back frames from the injection; a static scan
    is one frame starting at :data:`STATIC_TIME_S`.
    """
    starts = starts_s if starts_s is not None else frame_starts(durations_s)
    images, noise_free, truth = [], [], []
    for start, seconds in zip(starts, durations_s):
        activity = frame_activity(phantom, start, seconds)
        framed = Phantom(activity, phantom.mu, phantom.labels, phantom.grid, phantom.spec, phantom.weight_kg,
                         phantom.bqml_per_suv)  # fmt: skip
        rates = count_rates(framed, projector, ScannerModel())
        counts = acquire(rates.prompts, seconds, generator)
        image, clean = reconstruct([counts, rates.prompts * seconds], [seconds, seconds], rates,
                                   PROTOCOLS[protocol], projector, phantom.grid)  # fmt: skip
        images.append(image)
        noise_free.append(clean)
        truth.append(activity)
    return DynamicStudy(starts, tuple(durations_s), images, noise_free, truth)
