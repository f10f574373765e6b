"""``n2n-online``: adapt a model to one study with Noise2Noise pairs, then denoise that study.

Online learning (paper Sect. 3.2): the study's data are split into two
disjoint halves of equal counts. The network is fine-tuned (TGD by default,
phi = 0.4) with half 1 as input and half 2 as target, and half 2 as input and
half 1 as target (MSE). Each pair is normalised like any training pair, by
the intensity scale of its input half.

The full study. Reconstructed activity images (Bq/mL, SUV) of a half-count
acquisition still estimate the full activity, only with more noise, so the
full-count image is the **mean** of the halves, not their sum (the sum is
what count images would need). Without ``--full`` the mean is denoised.
Denoising is scale-free (intensities are divided by their own scale and
multiplied back), so for count images the denoised mean is exactly half the
denoised sum; pass ``--full`` to denoise the real full image in its own
units. The output is written like ``--full`` (or half 1): same grid, header
and, for DICOM, the same patient and study.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..checkpoint import load_model, save_model
from ..data import NORMALIZATION, Study, body_mask
from ..errors import TgdpetError
from ..files import check_can_write
from ..runtime import resolve_device
from .config import N2NConfig
from .ddp import DistEnv
from .loop import Echo, FitResult, Outputs, fit
from .workflows import build_method, patch_dataset, prepare_model


@dataclass
class N2NResult:
    """What ``n2n_online`` produced."""

    output: Path
    model_path: Path | None
    fit: FitResult


def n2n_online(
    model_path: str | os.PathLike,
    half1: str | os.PathLike,
    half2: str | os.PathLike,
    output: str | os.PathLike,
    cfg: N2NConfig,
    *,
    full: str | os.PathLike | None = None,
    save_model_path: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress_bar: bool = True,
    echo: Echo | None = None,
    command: str = "tgdpet n2n-online",
) -> N2NResult:
    """Fine-tune ``model_path`` on the halves of one study (half1 <-> half2), denoise the full study into ``output``.

    ``save_model_path`` also keeps the adapted model (with its TGD masks
    appended to the model's ``masks_history``).
    """
    from ..infer import Denoiser
    from ..io import read_volume, write_volume
    from ..io.orientation import to_canonical

    output = check_can_write(output, overwrite)
    if save_model_path is not None:
        save_model_path = check_can_write(save_model_path, overwrite)
    device = resolve_device(cfg.device)
    h1, h2 = read_volume(half1), read_volume(half2)
    if h1.shape != h2.shape:
        raise TgdpetError(
            f"the halves are on different grids ({h1.shape} and {h2.shape}, z y x); pass two halves of one study."
        )
    target = read_volume(full) if full is not None else h1.with_data((h1.data + h2.data) / np.float32(2))
    c1, c2 = to_canonical(h1).data, to_canonical(h2).data  # the frame the network works in
    body = body_mask((c1 + c2) / 2)  # less noisy than either half
    studies = [
        Study.from_arrays("half1->half2", c2, [c1], body=body),
        Study.from_arrays("half2->half1", c1, [c2], body=body),
    ]
    record = load_model(model_path, device)
    record.check_normalization(str(model_path))
    model = prepare_model(record.model, cfg, device)
    patches = patch_dataset(studies, model, cfg, DistEnv())
    method = build_method(model, cfg, patches=patches, device=device)
    result = fit(model, method, patches, cfg, device=device, outputs=Outputs(), progress_bar=progress_bar, echo=echo)
    method.close()
    precision = "fp32" if cfg.amp is False else "auto"
    denoised = Denoiser(model, device=device, precision=precision).denoise_volume(target, progress=progress_bar)
    write_volume(target.with_data(denoised), output, like=target, overwrite=overwrite)
    if save_model_path is not None:
        save_model(
            save_model_path,
            model,
            preset=record.preset,
            normalization=NORMALIZATION,
            provenance={
                "workflow": "n2n-online",
                "command": command,
                "base_model": str(Path(model_path).resolve()),
                "halves": [str(Path(half1).resolve()), str(Path(half2).resolve())],
                "full": str(Path(full).resolve()) if full is not None else "mean of the halves",
                "config": cfg.to_dict(),
                "method": result.method,
                "steps": result.progress.step,
                "patches_seen": result.progress.patches_seen,
                "wall_time_s": round(result.progress.elapsed_s, 3),
                "device": str(device),
                "tgdpet_version": __version__,
            },
            **method.record(record.masks_history),
        )
    return N2NResult(output=output, model_path=save_model_path, fit=result)
