"""Datasets for training: manifests, intensity normalisation and 2.5D patches.

Intensity: PET values (Bq/mL or SUV) differ by orders of magnitude between
studies, tracers and doses. The network works on a dose- and weight-free
scale: every volume is divided by :func:`intensity_scale` of the network's
*input* (the noisy image), and the output multiplied back. The same rule is
used in training (both input and target divided by the input's scale) and in
denoising, and it is recorded in every model file as ``normalization``.
"""

from __future__ import annotations

import numpy as np
import torch

NORMALIZATION = {"method": "body_mean", "threshold": 0.05, "percentile": 99.5}


def intensity_scale(volume: np.ndarray | torch.Tensor) -> float:
    """Mean uptake inside the body: the mean of voxels above 5 % of the 99.5th percentile.

    Robust to the few hottest voxels (bladder, lesions) and to the empty air
    around the patient, and nearly the same at every count level of a study,
    so all count levels of a study land on one scale.
    """
    x = volume.detach().float().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return 1.0
    hi = float(np.percentile(x, NORMALIZATION["percentile"]))
    if hi <= 0:
        return 1.0
    body = x[x > NORMALIZATION["threshold"] * hi]
    scale = float(body.mean()) if body.size else hi
    return scale if scale > 0 else 1.0
