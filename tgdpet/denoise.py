"""Denoising files: a model file and PET images in, denoised images out, the way ``tgdpet denoise`` does it.

:mod:`tgdpet.infer` denoises arrays and knows nothing of files. This module
adds what files need, in the order it happens: which model (the built-in one
by default, :func:`load_denoiser`), where each output goes
(:func:`default_output_path`), refusing a bad output before any work
(:func:`check_denoise_output`), the canonical frame and the voxel size
(:func:`denoise_volume`), the warning when an image lies outside what the
model knows (:func:`domain_warnings`), and the writing (:func:`denoise_file`).
:func:`denoise_inputs` is the whole command: single files and series
(dynamic ones frame by frame, :func:`denoise_frames`), study trees
(:mod:`tgdpet.batch`) or PET-BIDS datasets (:mod:`tgdpet.bids`), every
output refused or accepted before the first is written.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from .batch import Written, denoise_tree, is_study_tree, model_note, run_record
from .bids import PIPELINE, check_dataset_output, check_described, denoise_dataset, is_bids_dataset
from .builtin import resolve_model
from .checkpoint import load_model
from .domain import domain_of, frame_warning
from .errors import TgdpetError
from .files import check_can_write
from .infer import Denoiser
from .inputs import intensity_scale
from .io import (
    Volume,
    check_output_name,
    check_replaceable_output,
    frame_count,
    read_volume,
    write_frames,
    write_volume,
)
from .io.ecat import is_ecat
from .io.nifti import is_nifti_name, nifti_units_note
from .io.orientation import canonical_voxel_mm, from_canonical, to_canonical

Echo = Callable[[str], None]


def load_denoiser(model_path: str | Path | None = None, **options) -> Denoiser:
    """A :class:`~tgdpet.infer.Denoiser` for a model file or a built-in model's name (default: the built-in model).

    ``options`` are :class:`~tgdpet.infer.Denoiser`'s; the domain comes from the file. Refuses a model trained
    with another intensity normalisation than the one this tgdpet applies, since its output would be silently
    mis-scaled.
    """
    path = resolve_model(model_path)
    record = load_model(path, device="cpu")
    record.check_normalization(str(path))
    return Denoiser(record.model, domain=domain_of(record.provenance), **options)


def denoise_volume(
    denoiser: Denoiser, volume: Volume, *, progress: bool = False
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Denoise a volume in the canonical frame, whatever its storage order; the result in its storage order,
    and the working grid's voxel size in mm along the canonical x, y, z (:class:`~tgdpet.batch.Written`).

    The same anatomy stored flipped, rotated, feet-first or with its axes
    permuted gives the same network input, so the same result. The voxel size
    goes with it, so that finer voxels than the model's are denoised on a
    coarser grid (:class:`~tgdpet.infer.Denoiser`).
    """
    canonical = to_canonical(volume)
    voxel_mm = canonical.spacing[::-1]
    denoised, grid_zyx = denoiser.denoise_with_grid(canonical.data, voxel_mm=voxel_mm, progress=progress)
    return from_canonical(denoised, volume), grid_zyx[::-1]


def domain_warnings(denoiser: Denoiser, volume: Volume) -> list[str]:
    """One sentence per way ``volume`` lies outside what the denoiser's model was trained on (none if unknown)."""
    if denoiser.domain is None:
        return []
    return denoiser.domain.warnings(canonical_voxel_mm(volume), volume.units)


def default_output_path(input_path: str | Path, out_dir: str | Path | None = None) -> Path:
    """Where ``tgdpet denoise`` writes by default: ``<stem>_denoised.nii.gz``, ``<folder>_denoised/`` for DICOM
    (and study trees), ``<dataset>/derivatives/tgdpet`` for a PET-BIDS dataset.

    ECAT inputs, which tgdpet does not write, get ``<stem>_denoised.nii.gz`` too.

    Next to the input, or in ``out_dir``. A DICOM series may be named by its
    folder or by one of its files; either way the output is a sibling folder.
    """
    src = Path(input_path)
    if is_bids_dataset(src):  # a derivative dataset, inside the dataset as BIDS has it
        return Path(out_dir) / PIPELINE if out_dir is not None else src / "derivatives" / PIPELINE
    if src.is_file() and is_ecat(src):  # ECAT is read, never written: its result is NIfTI
        out = src.with_name(f"{src.stem}_denoised.nii.gz")
    elif is_nifti_name(src):
        name = src.name[: -len(".nii.gz")] if src.name.lower().endswith(".gz") else src.stem
        out = src.with_name(f"{name}_denoised.nii.gz")
    else:
        series = src if src.is_dir() else src.parent
        out = series.resolve().with_name(f"{series.resolve().name}_denoised")
    return Path(out_dir) / out.name if out_dir is not None else out


def check_output_format(input_path: str | Path, output_path: str | Path) -> None:
    """Refuse a DICOM output for a NIfTI or ECAT input: results keep the input's format.

    A name without an extension is a DICOM series folder; writing a NIfTI
    image there would invent a patient and a study for it.
    """
    src, out = Path(input_path), Path(output_path)
    if src.is_file() and (is_nifti_name(src) or is_ecat(src)) and not is_nifti_name(out):
        suggested = f"{out.name}.nii.gz" if out.name else default_output_path(src).name  # "-o ." has no name
        raise TgdpetError(
            f"{src.name} is {'a NIfTI' if is_nifti_name(src) else 'an ECAT'} file, so its result is NIfTI: name the "
            f"output {suggested} (a name without an extension is a DICOM series folder, for DICOM inputs)."
        )


def check_outside_series(input_path: str | Path, output_path: str | Path) -> None:
    """Refuse an output inside a DICOM input's folder: the folder would then hold two series, the input changed."""
    src = Path(input_path)
    if src.is_file() and (is_nifti_name(src) or is_ecat(src)):
        return
    folder = (src if src.is_dir() else src.parent).resolve()
    if folder in Path(output_path).resolve().parents:
        raise TgdpetError(
            f"{output_path} lies inside the folder of the input series ({folder}), which would then hold a second "
            "series; choose an output outside it."
        )


def check_folder_output(input_path: str | Path, output_path: str | Path, overwrite: bool) -> None:
    """A study tree's or BIDS dataset's results go to a folder: refuse a file name, or a file already there."""
    out = Path(output_path)
    check_output_name(out)
    if is_nifti_name(out) or (out.exists() and not out.is_dir()):
        raise TgdpetError(
            f"{input_path} is a study tree or dataset, so its results go to a folder with a report, but {out} "
            f"{'is a file' if out.is_file() else 'names a NIfTI file'}; name a folder (a name without an extension)."
        )
    check_can_write(out, overwrite)


def check_denoise_output(input_path: str | Path, output_path: str | Path, overwrite: bool) -> None:
    """Everything about an output that can be refused before denoising: name, format, clash, folder, ownership."""
    check_output_name(output_path)
    check_output_format(input_path, output_path)
    check_outside_series(input_path, output_path)
    check_can_write(output_path, overwrite)
    if overwrite:
        check_replaceable_output(output_path)


def denoise_file(
    denoiser: Denoiser,
    input_path: str | Path,
    output_path: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = False,
    frame: int | None = None,
    warn: Echo | None = None,
    frame_durations_s: Sequence[float] | None = None,
    units: str | None = None,
    made_by: str = "",
) -> Written:
    """Denoise a NIfTI file or DICOM series and write the result in the same format, geometry and metadata;
    what was written, and on which working grid (:class:`~tgdpet.batch.Written`).

    A DICOM result says in its DerivationDescription what made it (``made_by``, e.g. the model and its hash,
    :func:`tgdpet.batch.model_note`) and on which working grid, so both travel with the images into a PACS.

    ``units`` and ``frame_durations_s`` say what the file itself may not (a BIDS sidecar's Units and
    FrameDuration): the result is labelled in those units, and short frames are warned about.

    A 4-D NIfTI file or a dynamic DICOM series is denoised frame by frame into one output of its kind
    (:func:`denoise_frames`), unless
    ``frame`` picks one time frame (of a dynamic NIfTI, DICOM or ECAT input; :func:`tgdpet.io.read_volume`).
    ``warn`` receives one sentence per way the image lies outside the model's training range.

    The output is refused before any work if it exists (without ``overwrite``)
    and is written atomically, so a failure leaves nothing under its name; the
    input is never modified.
    """
    check_denoise_output(input_path, output_path, overwrite)
    if frame is None and frame_count(input_path) > 1:
        return denoise_frames(denoiser, input_path, output_path, overwrite=overwrite, progress=progress, warn=warn,
                              durations_s=frame_durations_s, units=units, made_by=made_by)  # fmt: skip
    volume = _labelled(read_volume(input_path, frame=frame), units)
    if warn is not None:
        for message in domain_warnings(denoiser, volume):
            warn(f"{Path(input_path).name}: {message}")
    with _naming(input_path):
        denoised, grid_mm = denoise_volume(denoiser, volume, progress=progress)
    made = Written.of(output_path, volume, [grid_mm])
    write_volume(volume.with_data(denoised), output_path, like=volume, overwrite=overwrite,
                 derivation=made.derivation(made_by))  # fmt: skip
    return made


def _labelled(volume: Volume, units: str | None) -> Volume:
    return volume if units is None else volume.with_data(volume.data, units=units)


@contextlib.contextmanager
def _naming(input_path: str | Path, frame: int | None = None) -> Iterator[None]:
    """Prefix a refusal from the network stage (nothing to normalise by, say) with the input, and frame, it is about:
    among several inputs or frames, a sentence that names neither leaves the user guessing."""
    try:
        yield
    except TgdpetError as e:
        where = Path(input_path).name + (f", frame {frame}" if frame is not None else "")
        raise TgdpetError(f"{where}: {e}") from None


def is_empty_frame(volume: Volume) -> bool:
    """A frame with no activity at all (no positive voxel), as a dynamic scan's frames before injection are."""
    return not bool((volume.data > 0).any())


def check_inputs(inputs: Sequence[str | Path], frame: int | None = None) -> None:
    """Read every image input as :func:`denoise_file` will and refuse now what it would refuse later (damaged,
    NaN voxels, nothing to normalise by), so that one bad input among several leaves no output at all."""
    for path in inputs:
        n = 1 if frame is not None else frame_count(path)
        for k in [frame] if n == 1 else range(n):
            volume = read_volume(path, frame=k)
            if n == 1 or not is_empty_frame(volume):
                with _naming(path, k if n > 1 else None):
                    intensity_scale(volume.data)


def denoise_frames(
    denoiser: Denoiser,
    input_path: str | Path,
    output_path: str | Path,
    *,
    overwrite: bool = False,
    progress: bool = False,
    warn: Echo | None = None,
    durations_s: Sequence[float] | None = None,
    units: str | None = None,
    made_by: str = "",
) -> Written:
    """Denoise every frame of a 4-D NIfTI file or a dynamic DICOM series, each on its own, into one 4-D NIfTI
    file or one dynamic DICOM series (each frame's timing kept).

    Each frame gets the domain warnings, and, given the frames' durations (a BIDS sidecar's FrameDuration, or
    a DICOM frame's ActualFrameDuration), a warning when it is shorter than the shortest scan the model was
    trained on
    (:func:`tgdpet.domain.frame_warning`). One frame is read at a time; the result is written once, whole.
    """
    n = frame_count(input_path)
    if durations_s is not None and len(durations_s) != n:
        raise TgdpetError(
            f"{Path(input_path).name} has {n} frames but {len(durations_s)} frame durations were given; "
            "they must match."
        )
    name, frames, grids, first = Path(input_path).name, [], [], None
    for k in range(n):
        volume = _labelled(read_volume(input_path, frame=k), units)
        first = first or volume
        messages = domain_warnings(denoiser, volume) if k == 0 else []
        duration = durations_s[k] if durations_s is not None else volume.meta.get("frame_duration_s")  # DICOM's own
        short = frame_warning(denoiser.domain, k, duration)
        for message in messages + ([short] if short else []):
            if warn is not None:
                warn(f"{name}: {message}")
        if is_empty_frame(volume):  # nothing to denoise, nor to normalise by: kept as it is
            if warn is not None:
                warn(f"{name}: frame {k} holds no activity (no positive voxel); it is kept as it is.")
            frames.append(volume)
            grids.append(Written.of(output_path, volume, []).voxel_mm)
            continue
        with _naming(input_path, k):
            denoised, grid_mm = denoise_volume(denoiser, volume, progress=progress)
        frames.append(volume.with_data(denoised))
        grids.append(grid_mm)
    made = Written.of(output_path, first, grids)
    write_frames(frames, output_path, like=first, overwrite=overwrite, derivation=made.derivation(made_by))
    return made


def plan_outputs(inputs: Sequence[str], out: str | None, out_dir: str | None) -> list[Path]:
    """The output of each input (``out`` for a single one, else :func:`default_output_path`), or why not."""
    if out and (len(inputs) > 1 or out_dir):
        raise TgdpetError("-o/--out names the output of a single input; use --out-dir for several inputs.")
    for path in inputs:
        if not Path(path).exists():
            raise TgdpetError(f"{path} does not exist; check the path.")
    outputs = [Path(out)] if out else [default_output_path(p, out_dir) for p in inputs]
    if len({o.resolve() for o in outputs}) < len(outputs):
        raise TgdpetError(
            "two inputs would be written to the same output name; denoise them into separate --out-dir folders."
        )
    return outputs


def denoise_inputs(
    inputs: Sequence[str],
    *,
    out: str | None = None,
    out_dir: str | None = None,
    model_path: str | None = None,
    frame: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
    echo: Echo = print,
    warn: Echo = print,
    **options,
) -> int:
    """``tgdpet denoise``: every input (a NIfTI/ECAT file, a DICOM series, or a study tree) denoised and written.

    ``options`` are the :class:`~tgdpet.infer.Denoiser`'s (device, precision, batch_slices, compile, tta).
    Every output is checked before the first is written, and ``out_dir`` is created only once the inputs and the
    model have been accepted. ``echo`` receives what was written, ``warn`` the domain warnings. Returns how many
    images of study trees were skipped (each with its reason in the tree's report).
    """
    outputs = plan_outputs(inputs, out, out_dir)
    denoiser = load_denoiser(model_path, **options)  # a bad model is named before any clash with earlier outputs
    if out_dir and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise TgdpetError(f"--out-dir {out_dir} is a file; name a folder.")
    new_out_dir = bool(out_dir) and not Path(out_dir).exists()
    for src in inputs:  # PET-BIDS without its dataset_description.json is no study tree: its sidecars matter
        check_described(src)
    kinds = ["bids" if is_bids_dataset(src) else "tree" if is_study_tree(src) else "file" for src in inputs]
    for src, dest, kind in zip(inputs, outputs, kinds):  # refuse before denoising anything, not after the first
        if new_out_dir:
            check_output_name(dest)
        elif kind == "bids":  # a raw dataset's missing derivatives/ is made for the default output
            check_dataset_output(src, dest, overwrite)
        elif kind != "file":
            check_folder_output(src, dest, overwrite)
        else:
            check_denoise_output(src, dest, overwrite)
    if new_out_dir:
        try:
            Path(out_dir).mkdir(parents=True)
        except OSError as e:
            raise TgdpetError(
                f"cannot create --out-dir {out_dir} ({e.strerror}); choose a folder you can write to."
            ) from None
    if len(inputs) > 1:  # one bad input among several: refused before any is written
        check_inputs([src for src, kind in zip(inputs, kinds) if kind == "file"], frame)
    skipped, run = 0, run_record(denoiser, model_path)
    model = model_note(run)
    for src, dest, kind in zip(inputs, outputs, kinds):
        if kind == "bids":  # every PET image, a derivative dataset
            report = denoise_dataset(
                src, dest, lambda i, o, units, durations: denoise_file(
                    denoiser, i, o, overwrite=overwrite, warn=lambda m: warn(f"warning: {m}"), units=units,
                    frame_durations_s=durations, made_by=model),
                lambda path: (frame_count(path), nifti_units_note(path)),
                overwrite=overwrite, echo=echo, run=run,
            )  # fmt: skip
            echo(f"Denoised {report['denoised']} and skipped {report['skipped']} image(s); wrote {dest}/.")
            skipped += report["skipped"]
            continue
        if kind == "tree":  # every PET series in it, and a report
            report = denoise_tree(
                src, dest, lambda i, o: denoise_file(denoiser, i, o, overwrite=overwrite, frame=frame, made_by=model),
                frame=frame, overwrite=overwrite, echo=echo, run=run,
                check=lambda volume: domain_warnings(denoiser, volume),
            )  # fmt: skip
            echo(f"Denoised {report['denoised']} and skipped {report['skipped']} image(s); wrote {dest}/.")
            skipped += report["skipped"]
            continue
        written = denoise_file(
            denoiser, src, dest, overwrite=overwrite, progress=progress, frame=frame,
            warn=lambda message: warn(f"warning: {message}"), made_by=model,
        )  # fmt: skip
        echo(f"Wrote {written.path} ({written.note()}).")
    return skipped
