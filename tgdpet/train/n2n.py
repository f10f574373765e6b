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

Before any training, :func:`check_halves` refuses halves that cannot be two
halves of one scan (docs/n2n-halves.md has the measured thresholds),
:func:`check_full` a ``--full`` image off their grid, :func:`check_distinct_halves`
one image given twice, and :func:`check_outputs_spare_inputs` an output that
would replace an input.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import __version__
from ..batch import Written, model_note, run_record
from ..builtin import resolve_model
from ..checkpoint import load_model, save_model
from ..data import Study, detail_map
from ..inputs import NORMALIZATION, body_mask
from ..domain import Domain, domain_of, training_domain
from ..errors import TgdpetError
from ..files import check_can_write
from ..io.ecat import is_ecat
from ..io.nifti import is_nifti_name
from ..runtime import resolve_device
from ..config import N2NConfig
from .ddp import DistEnv
from .loop import Echo, FitResult, Outputs, fit
from .workflows import build_method, patch_dataset, prepare_model

if TYPE_CHECKING:
    from ..io import Volume


#: The halves are compared on means of BLOCK^3-voxel blocks: averaging removes
#: most of each half's own noise and keeps what two halves of one scan share,
#: the activity distribution, so low-count halves still correlate strongly.
BLOCK = 4
#: Pearson correlation of the block means inside the body below which the halves
#: are taken for two different scans. Measured on the simulator
#: (docs/n2n-halves.md, scripts/measure_halves.py): 60 s halves of one study
#: correlate at 0.970 or more (15 s halves of low- and normal-BMI studies at
#: 0.959 or more), 60 s images of two patients at 0.911 at most; 0.94 is midway.
MIN_HALVES_CORRELATION = 0.94
#: Largest ratio of the halves' mean uptake inside the body: equal-count halves
#: of one scan measured 1.007 at most; a half against a full image in counts,
#: or Bq/mL against SUV, is a factor 2 or more.
MAX_HALVES_MEAN_RATIO = 1.1


@dataclass(frozen=True)
class HalvesAgreement:
    """How alike two Noise2Noise halves are: what :func:`check_halves` decides on."""

    correlation: float  # Pearson, of BLOCK^3 block means inside the body of the halves' mean
    mean_ratio: float  # larger mean uptake over smaller, inside the same body, >= 1


def _block_means(x: np.ndarray) -> np.ndarray:
    """Means of BLOCK^3-voxel blocks (a remainder at the far edges is dropped; tiny volumes are kept whole)."""
    b = BLOCK if min(x.shape) >= 2 * BLOCK else 1
    z, y, w = (n // b * b for n in x.shape)
    return x[:z, :y, :w].reshape(z // b, b, y // b, b, w // b, b).mean(axis=(1, 3, 5))


def halves_agreement(h1: np.ndarray, h2: np.ndarray) -> HalvesAgreement:
    """Block-mean correlation and mean-uptake ratio of two same-shape halves inside the body of their mean."""
    body = body_mask((h1 + h2) / 2)
    inside = _block_means(body.astype(np.float32)) > 0.5
    a, b = _block_means(h1.astype(np.float64))[inside], _block_means(h2.astype(np.float64))[inside]
    correlation = float(np.corrcoef(a, b)[0, 1]) if a.size > 1 and a.std() > 0 and b.std() > 0 else 0.0
    lo, hi = sorted((float(h1[body].mean()), float(h2[body].mean())))
    return HalvesAgreement(correlation=correlation, mean_ratio=hi / lo if lo > 0 else float("inf"))


def check_halves(h1: Volume, h2: Volume, *, similarity: bool = True) -> None:
    """Refuse halves that cannot be two halves of one scan: another grid, another image, other counts.

    Noise2Noise needs two noisy copies of the same activity; two patients'
    images would make the network learn one anatomy from the other and
    hallucinate, without any sign in the output beyond a high loss. The
    grids always have to match; ``similarity=False`` skips the image checks.
    """
    if h1.shape != h2.shape:
        raise TgdpetError(
            f"the halves are on different grids ({h1.shape} and {h2.shape}, z y x); pass two halves of one study."
        )
    if not _same_position(h1, h2):
        raise TgdpetError(
            "the halves have the same size but different positions or voxel sizes (their affines differ); "
            "pass two halves reconstructed on one grid."
        )
    if not similarity:
        return
    agreement = halves_agreement(h1.data, h2.data)
    if agreement.correlation < MIN_HALVES_CORRELATION:
        raise TgdpetError(
            f"the halves do not look like one scan (correlation {agreement.correlation:.3f} inside the body, halves "
            f"of one scan give at least {MIN_HALVES_CORRELATION}); pass two halves of the same study, or "
            "--skip-halves-check if they are (very low-count halves can fall below)."
        )
    if agreement.mean_ratio > MAX_HALVES_MEAN_RATIO:
        raise TgdpetError(
            f"the halves differ in mean uptake by a factor {agreement.mean_ratio:.2f} (equal-count halves of one "
            f"scan differ by less than a factor {MAX_HALVES_MEAN_RATIO}); pass two equal-count halves in the same "
            "units."
        )


def _same_position(a: Volume, b: Volume) -> bool:
    """Same voxel positions and sizes, to 0.001 mm: reconstructions of one scan share their affine."""
    return bool(np.allclose(a.affine, b.affine, atol=1e-3))


def check_full(full: Volume, h1: Volume) -> None:
    """Refuse a ``--full`` image that is not on the halves' grid: it must be the study the halves were split from.

    The network adapts to the halves' voxels and anatomy; another study's image,
    or one reconstructed on another grid, would be denoised by a network taught
    on something else.
    """
    if full.shape != h1.shape:
        raise TgdpetError(
            f"--full is on another grid than the halves ({full.shape} and {h1.shape}, z y x); pass the full-count "
            "image of the halves' study, reconstructed on their grid."
        )
    if not _same_position(full, h1):
        raise TgdpetError(
            "--full has the halves' size but another position or voxel size (their affines differ); pass the "
            "full-count image of the halves' study, reconstructed on their grid."
        )


def check_distinct_halves(h1: Volume, h2: Volume) -> None:
    """Refuse one image given as both halves (one file twice, or two copies): the network would learn the identity.

    Identical images pass :func:`check_halves` (they correlate perfectly), yet
    Noise2Noise needs two independent noise draws of the activity.
    """
    if np.array_equal(h1.data, h2.data):
        raise TgdpetError(
            "the two halves are the same image; pass two disjoint half-count images of one scan (each reconstructed "
            "from its own half of the counts), not one image twice."
        )


def _area(path: Path, is_model: bool = False) -> tuple[Path, bool]:
    """The resolved path an input takes up, and whether it is a DICOM series' folder (all of which it takes up)."""
    if is_model or is_nifti_name(path) or (path.is_file() and is_ecat(path)):
        return path.resolve(), False
    return (path if path.is_dir() else path.parent).resolve(), True  # a folder, or one file of its series


def _overlap(target: Path, area: tuple[Path, bool]) -> str | None:
    """How writing ``target`` (resolved) would change ``area`` (see :func:`_area`), in words; ``None``: it would not."""
    place, is_folder = area
    if target == place:
        return "is"
    if is_folder and place in target.parents:
        return "lies inside the folder of"
    return None


def check_outputs_spare_inputs(inputs: dict[str, Path], output: Path, save_model_path: Path | None) -> None:
    """Refuse ``-o`` or ``--save-model`` where writing would replace or change an input, even with --overwrite.

    ``inputs`` maps the name the user knows each input by (``"MODEL"``,
    ``"HALF1"``, ...) to its path. Paths are compared resolved, so a symbolic
    link to an input is refused too; a DICOM series is its whole folder, which
    would otherwise gain a second series. Called before training, which takes long.
    """
    if save_model_path is not None and save_model_path.suffix != ".safetensors":
        raise TgdpetError(
            f"--save-model {save_model_path} does not end in .safetensors, yet the adapted model is written as a "
            "safetensors file; give it a name that ends in .safetensors."
        )
    writes = {"-o": output} if save_model_path is None else {"-o": output, "--save-model": save_model_path}
    for option, written in writes.items():
        for name, path in inputs.items():
            if (how := _overlap(written.resolve(), _area(path, is_model=name == "MODEL"))) is not None:
                raise TgdpetError(
                    f"{option} {written} {how} the input {name} ({path}), and inputs are never changed, even with "
                    f"--overwrite; choose another {option} name."
                )
    if save_model_path is None:
        return
    output_area = output.resolve(), not is_nifti_name(output)  # a DICOM output is a folder of its own
    if (how := _overlap(save_model_path.resolve(), output_area)) is not None:
        raise TgdpetError(
            f"--save-model {save_model_path} {how} the -o output {output}; choose another --save-model name."
        )


@dataclass
class N2NResult:
    """What ``n2n_online`` produced."""

    written: Written  # the denoised study, and the grid the adapted network ran on
    model_path: Path | None
    fit: FitResult


def _study_domain(base_provenance: dict, study: "Volume") -> Domain:
    """The fine-tuned model's range: its base's and the one study's."""
    from ..io.orientation import canonical_voxel_mm

    new = training_domain([canonical_voxel_mm(study)], [study.units])
    base = domain_of(base_provenance)
    return new if base is None else base.union(new)


def n2n_online(
    model_path: str | os.PathLike,
    half1: str | os.PathLike,
    half2: str | os.PathLike,
    output: str | os.PathLike,
    cfg: N2NConfig,
    *,
    full: str | os.PathLike | None = None,
    skip_halves_check: bool = False,
    save_model_path: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress_bar: bool = True,
    echo: Echo | None = None,
    command: str = "tgdpet n2n-online",
) -> N2NResult:
    """Fine-tune ``model_path`` on the halves of one study (half1 <-> half2), denoise the full study into ``output``.

    ``save_model_path`` also keeps the adapted model (with its TGD masks
    appended to the model's ``masks_history``). The halves must pass
    :func:`check_halves` unless ``skip_halves_check`` (their grids must match,
    and they must be two images, regardless).
    """
    from ..denoise import check_denoise_output, denoise_volume
    from ..infer import Denoiser
    from ..io import read_volume, write_volume
    from ..io.orientation import to_canonical

    device = resolve_device(cfg.device)
    h1, h2 = read_volume(half1), read_volume(half2)
    check_halves(h1, h2, similarity=not skip_halves_check)
    if full is not None:
        target = read_volume(full)
        check_full(target, h1)
    else:
        target = h1.with_data((h1.data + h2.data) / np.float32(2))
    c1, c2 = to_canonical(h1).data, to_canonical(h2).data  # the frame the network works in
    mean = (c1 + c2) / 2  # less noisy than either half: where the body and its detail are
    body = body_mask(mean)
    detail = detail_map(mean, body)
    studies = [
        Study.from_arrays("half1->half2", c2, [c1], body=body, detail=detail),
        Study.from_arrays("half2->half1", c1, [c2], body=body, detail=detail),
    ]
    model_path = resolve_model(model_path)  # a file, or a built-in model's name
    record = load_model(model_path, device)
    record.check_normalization(str(model_path))
    # After the inputs and the model: say what is wrong with them first. Before training: refuse before long work.
    output = Path(output)
    inputs = {"MODEL": model_path, "HALF1": Path(half1), "HALF2": Path(half2)}
    if full is not None:
        inputs["--full"] = Path(full)
    save_model_path = Path(save_model_path) if save_model_path is not None else None
    check_outputs_spare_inputs(inputs, output, save_model_path)  # before "exists": --overwrite would not help
    check_denoise_output(full if full is not None else half1, output, overwrite)  # the result keeps its format
    if save_model_path is not None:
        check_can_write(save_model_path, overwrite)
    check_distinct_halves(h1, h2)  # the last refusal: a wrong model or output is named first
    model = prepare_model(record.model, cfg, device)
    patches = patch_dataset(studies, model, cfg, DistEnv())
    method = build_method(model, cfg, patches=patches, device=device)
    result = fit(model, method, patches, cfg, device=device, outputs=Outputs(), progress_bar=progress_bar, echo=echo)
    method.close()
    precision = "fp32" if cfg.amp is False else "auto"
    denoiser = Denoiser(model, device=device, precision=precision)
    denoised, grid_mm = denoise_volume(denoiser, target, progress=progress_bar)
    written = Written.of(output, target, [grid_mm])
    made_by = f"{model_note(run_record(denoiser, model_path))} adapted to this study by n2n-online ({_how(result)})"
    # Without --full the result is made from both halves: a DICOM one references the slices of each.
    write_volume(target.with_data(denoised), output, like=target, overwrite=overwrite,
                 derivation=written.derivation(made_by), also_from=h2 if full is None else None)  # fmt: skip
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
                "domain": _study_domain(record.provenance, h1).to_json(),
                "halves": [str(Path(half1).resolve()), str(Path(half2).resolve())],
                "full": str(Path(full).resolve()) if full is not None else "mean of the halves",
                "config": cfg.to_dict(),
                "method": result.method,
                "steps": result.progress.step,
                "patches_seen": result.progress.patches_seen,
                "wall_time_s": round(result.progress.elapsed_s, 3),
                "device": str(device),
                "precision": result.precision,
                "tgdpet_version": __version__,
            },
            **method.record(record.masks_history),
        )
    return N2NResult(written=written, model_path=save_model_path, fit=result)


def _how(fit: FitResult) -> str:
    """The adaptation in words, e.g. ``tgd, phi 0.4, 1200 steps``: with the base model's hash, what a reader
    of the result needs to tell it from the base model's own ``denoise`` output."""
    method = fit.method["method"] + (f", phi {fit.method['phi']:g}" if "phi" in fit.method else "")
    steps = fit.progress.step
    return f"{method}, {steps} step{'s' * (steps != 1)}"
