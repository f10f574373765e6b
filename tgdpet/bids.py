"""PET-BIDS datasets: every PET image of a dataset in, a BIDS derivative dataset out.

A BIDS dataset (https://bids-specification.readthedocs.io, PET since 1.6) keeps
each PET image as ``sub-<label>/[ses-<label>/]pet/<entities>_pet.nii[.gz]``
with a ``_pet.json`` sidecar that says what the image is: ``Units``, and the
timing of its frames (``FrameTimesStart``, ``FrameDuration``; one of each
for a static image). :func:`find_pet_images` finds the images and reads
their sidecars, skipping with a reason what is not PET (``anat/``, blood
data, ...) and refusing an image whose sidecar contradicts it (another
number of frames, other units than the file records) or lacks what tgdpet
needs. :func:`denoise_dataset` writes the results as a derivative dataset
(by default ``<dataset>/derivatives/tgdpet``): the same subject and session
folders, each file named with ``desc-denoised``, a sidecar that keeps the
source's fields and adds what was done, a ``dataset_description.json`` with
``GeneratedBy``, and ``tgdpet-report.json`` as for study trees.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from . import __version__
from .batch import Written, report_record
from .errors import TgdpetError
from .files import atomic_file, check_can_write

#: The BIDS version the derivative datasets tgdpet writes follow.
BIDS_VERSION = "1.9.0"
#: The derivative pipeline's folder name under ``derivatives/`` and the ``desc`` entity of its images.
PIPELINE, DESC = "tgdpet", "denoised"
#: Sidecar Units tgdpet denoises, by the name tgdpet's images use (activity concentration).
UNITS = {"bq/ml": "BQML", "suv": "SUV", "g/ml": "SUV"}
#: Top-level folders that hold no raw data (BIDS: derivatives, sourcedata, code; and hidden ones).
_NOT_RAW = ("derivatives", "sourcedata", "code")
_NIFTI = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
_DESC = re.compile(r"_desc-[A-Za-z0-9]+")

Denoise = Callable[[Path, Path, str, Sequence[float]], Written]


@dataclass(frozen=True)
class PetImage:
    """One PET image of a dataset, with what its sidecar says tgdpet needs."""

    path: Path
    relative: Path  # to the dataset's root
    sidecar: dict[str, Any]
    units: str  # tgdpet's name: BQML or SUV
    frame_starts_s: tuple[float, ...]
    frame_durations_s: tuple[float, ...]


def is_bids_dataset(path: str | os.PathLike) -> bool:
    """A folder with a ``dataset_description.json`` and at least one ``sub-*`` folder."""
    root = Path(path)
    return (root / "dataset_description.json").is_file() and any(
        p.is_dir() and p.name.startswith("sub-") for p in root.iterdir()
    )


def _seconds(sidecar: dict, key: str, image: Path, frames: int) -> tuple[float, ...]:
    value = sidecar.get(key)
    values = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    if not isinstance(values, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise TgdpetError(f"{image.name}: its sidecar lacks {key} (seconds, one per frame), which PET-BIDS requires; "
                          "add it to the _pet.json.")  # fmt: skip
    if len(values) != frames:
        raise TgdpetError(
            f"{image.name} holds {frames} frame(s) but its sidecar's {key} lists {len(values)}; the sidecar "
            "belongs to another image or is out of date: fix it."
        )
    return tuple(float(v) for v in values)


def read_pet_image(root: Path, image: Path, frames: int, file_units: str | None) -> PetImage:
    """An image and its sidecar, checked against each other (``frames`` and ``file_units`` are the file's own).

    Raises:
        TgdpetError: no readable sidecar, Units missing or not activity concentration, frame timing missing
            or of another length than the image, or Units other than the file records.
    """
    sidecar_path = image.with_name(_NIFTI.sub("", image.name) + ".json")
    try:
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TgdpetError(
            f"{image.name} has no sidecar {sidecar_path.name}, which PET-BIDS requires; add it."
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TgdpetError(f"{sidecar_path.name} is not readable JSON ({e}); fix the sidecar.") from None
    if not isinstance(sidecar, dict):
        raise TgdpetError(f"{sidecar_path.name} must hold a JSON object of fields; fix the sidecar.")
    raw_units = str(sidecar.get("Units", ""))
    units = UNITS.get(raw_units.strip().lower())
    if units is None:
        raise TgdpetError(
            f"{image.name}: its sidecar gives Units {raw_units or 'none'!r}; tgdpet denoises activity concentration "
            "(Bq/mL or SUV): convert the image and set Units."
        )
    if file_units is not None and file_units != units:
        raise TgdpetError(
            f"{image.name} records its values as {file_units} but its sidecar says {raw_units}; one of them is "
            "wrong: fix the sidecar or the image."
        )
    starts = _seconds(sidecar, "FrameTimesStart", image, frames)
    durations = _seconds(sidecar, "FrameDuration", image, frames)
    if any(d <= 0 for d in durations):
        raise TgdpetError(f"{image.name}: its sidecar's FrameDuration holds a frame of 0 s or less; fix it.")
    return PetImage(image, image.relative_to(root), sidecar, units, starts, durations)


def _datatype(root: Path, path: Path) -> str | None:
    """The BIDS datatype folder a file lies in (``pet``, ``anat``, ...), or None outside ``sub-*/[ses-*/]X/``."""
    parts = path.relative_to(root).parts
    if len(parts) >= 3 and parts[0].startswith("sub-"):
        return parts[2] if len(parts) >= 4 and parts[1].startswith("ses-") else parts[1]
    return None


def find_images(root: str | os.PathLike) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The dataset's PET images (``*_pet.nii[.gz]`` in ``pet/`` folders) and every other image, with why it is
    skipped; derivatives, sourcedata, code and hidden folders are not raw data and are not searched."""
    root = Path(root)
    pet, skipped = [], []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] in _NOT_RAW or any(p.startswith(".") for p in rel.parts) or not _NIFTI.search(path.name):
            continue
        datatype = _datatype(root, path)
        stem = _NIFTI.sub("", path.name)
        if datatype == "pet" and stem.endswith("_pet"):
            pet.append(path)
        elif datatype == "pet":
            skipped.append((path, f"not a PET image (suffix _{stem.rsplit('_', 1)[-1]})"))
        else:
            skipped.append((path, f"not PET (datatype {datatype or 'none: outside sub-*/[ses-*/]<datatype>/'})"))
    return pet, skipped


def derivative_name(image: Path) -> str:
    """The result's file name: the source's entities with ``desc-denoised`` just before the suffix."""
    stem = _DESC.sub("", _NIFTI.sub("", image.name))
    body, _, suffix = stem.rpartition("_")
    ext = _NIFTI.search(image.name).group(0)  # type: ignore[union-attr]
    return f"{body}_desc-{DESC}_{suffix}{ext}"


def derivative_sidecar(image: PetImage, run: dict[str, Any], written: Written) -> dict[str, Any]:
    """The result's sidecar: every source field, the source named as BIDS URI, and how it was made (the
    working grid of each frame in mm, x y z, as :class:`~tgdpet.batch.Written` has it)."""
    model = run.get("model", {})
    return {
        **image.sidecar,
        "Sources": [f"bids:raw:{image.relative.as_posix()}"],
        "Description": "Denoised by tgdpet (a 2.5D DnCNN), every frame on its own; values in the source's units.",
        "TgdpetModel": model.get("name"),
        "TgdpetModelSHA256": model.get("sha256"),
        "TgdpetVersion": __version__,
        "TgdpetPrecision": run.get("precision"),
        "TgdpetDevice": run.get("device"),
        "TgdpetWorkingGrids": written.record()["working_grids_mm"],
    }


def dataset_description(source: Path, run: dict[str, Any]) -> dict[str, Any]:
    """The derivative dataset's ``dataset_description.json`` (BIDS: Name, BIDSVersion, DatasetType,
    GeneratedBy; the raw dataset as ``SourceDatasets``)."""
    try:
        raw = json.loads((source / "dataset_description.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raw = {}
    name = raw.get("Name") if isinstance(raw, dict) else None
    return {
        "Name": f"{name or source.name}, denoised by tgdpet",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": PIPELINE,
            "Version": __version__,
            "Description": f"tgdpet denoise with {run.get('model', {}).get('name', 'a model')} "
                           f"({run.get('precision')}, {run.get('device')})",
        }],  # fmt: skip
        "SourceDatasets": [{"URL": f"bids:raw:{source.resolve().as_posix()}"}],
    }


def _write_json(path: Path, content: dict) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def denoise_dataset(
    root: str | os.PathLike,
    out_root: str | os.PathLike,
    denoise: Denoise,
    read: Callable[[Path], tuple[int, str | None]],
    *,
    overwrite: bool = False,
    echo: Callable[[str], None] = print,
    run: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Denoise every PET image of the dataset at ``root`` into the derivative dataset ``out_root``.

    Args:
        denoise: ``denoise(image, output, units, frame_durations_s) -> Written`` for one image.
        read: ``read(image) -> (frames, units the file records or None)``, from its header.
        run: what denoises (model, device, precision), for the sidecars and the report.

    Images tgdpet cannot use are skipped with a reason (in the report and on ``echo``); the others go on.
    Returns the report written to ``out_root/tgdpet-report.json``.
    """
    root, out_root = Path(root), Path(out_root)
    run = run or {}
    check_can_write(out_root, overwrite)
    images, skipped = find_images(root)
    entries = [{"input": str(p.resolve()), "status": "skipped", "reason": why} for p, why in skipped]
    for path, why in skipped:
        echo(f"skipped: {path.relative_to(root)} ({why})")
    if not images:
        raise TgdpetError(f"{root} holds no PET image (sub-*/[ses-*/]pet/*_pet.nii[.gz]); check it is a PET-BIDS "
                          "dataset.")  # fmt: skip
    out_root.mkdir(parents=True, exist_ok=overwrite)
    for path in images:
        entry: dict[str, Any] = {"input": str(path.resolve())}
        try:
            image = read_pet_image(root, path, *read(path))
            dest = out_root / image.relative.parent / derivative_name(path)
            dest.parent.mkdir(parents=True, exist_ok=True)
            written = denoise(path, dest, image.units, image.frame_durations_s)
            sidecar = written.path.with_name(_NIFTI.sub("", written.path.name) + ".json")
            _write_json(sidecar, derivative_sidecar(image, run, written))
            entry.update(status="denoised", **written.record(), frames=len(image.frame_durations_s))
            echo(f"denoised: {image.relative} -> {written.path.relative_to(out_root)} ({written.note()})")
        except TgdpetError as e:
            entry.update(status="skipped", reason=str(e))
            echo(f"skipped: {path.relative_to(root)} ({e})")
        entries.append(entry)
    _write_json(out_root / "dataset_description.json", dataset_description(root, run))
    report = report_record(root, run, entries)
    _write_json(out_root / "tgdpet-report.json", report)
    with atomic_file(out_root / ".bidsignore") as tmp:  # the report is tgdpet's, not a BIDS file
        tmp.write_text("tgdpet-report.json\n")
    return report
