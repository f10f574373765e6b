"""PET-BIDS datasets: every PET image of a dataset in, a BIDS derivative dataset out.

A BIDS dataset (https://bids-specification.readthedocs.io, PET since 1.6) keeps
each PET image as ``sub-<label>/[ses-<label>/]pet/<entities>_pet.nii[.gz]``
with a ``_pet.json`` sidecar that says what the image is: ``Units``, and the
timing of its frames (``FrameTimesStart``, ``FrameDuration``; one of each
for a static image). The sidecar may be split over the folders above the
image, as BIDS' inheritance principle allows (:func:`sidecar_paths`).
:func:`find_images` finds the images, following symlinked folders as
DataLad datasets have them; :func:`read_pet_image` reads their sidecars,
skipping with a reason what is not PET (``anat/``, blood data, ...) and
refusing an image whose sidecar contradicts it (another number of frames,
other units than the file records) or lacks what tgdpet needs.
:func:`denoise_dataset` writes the results as a derivative dataset (by
default ``<dataset>/derivatives/tgdpet``, ``derivatives/`` made if the raw
dataset has none): the same subject and session folders, each file named
with ``desc-<source desc>denoised``, a sidecar that keeps the source's fields
and adds what was done, a ``dataset_description.json`` with ``GeneratedBy``
and the raw dataset linked, and ``tgdpet-report.json`` as for study trees.
The derivative dataset is built in a hidden sibling folder and renamed into
place whole, so an interrupted run leaves nothing under its name, and
``--overwrite`` replaces an earlier one whole, only if tgdpet wrote all of it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from . import __version__
from .batch import REPORT_NAME, Written, report_record
from .errors import TgdpetError
from .files import atomic_dir, atomic_file, check_can_write, check_writable_folder
from .io import check_output_name
from .io.nifti import is_nifti_name

#: The BIDS version the derivative datasets tgdpet writes follow.
BIDS_VERSION = "1.9.0"
#: The derivative pipeline's folder name under ``derivatives/`` and the ``desc`` entity of its images.
PIPELINE, DESC = "tgdpet", "denoised"
#: Sidecar Units tgdpet denoises, by the name tgdpet's images use (activity concentration).
UNITS = {"bq/ml": "BQML", "suv": "SUV", "g/ml": "SUV"}
#: Top-level folders that hold no raw data (BIDS: derivatives, sourcedata, code; and hidden ones).
_NOT_RAW = ("derivatives", "sourcedata", "code")
_NIFTI = re.compile(r"\.nii(\.gz)?$", re.IGNORECASE)
_DESC = re.compile(r"_desc-([A-Za-z0-9]+)")
#: What tgdpet writes in a derivative dataset: the files at its top, and in ``pet/`` folders its images and sidecars.
_TOP_FILES = ("dataset_description.json", REPORT_NAME, ".bidsignore")
_OUTPUT = re.compile(rf"^sub-[^_/]+_.*desc-[A-Za-z0-9]*{DESC}_pet(\.nii|\.nii\.gz|\.json)$")
#: Names DataLad and git-annex users get told to fetch a file's content with.
_FETCH = "fetch it (datalad get or git annex get) and run again"

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


def check_described(path: str | os.PathLike) -> None:
    """Refuse a folder laid out as PET-BIDS but without ``dataset_description.json``: read as a study tree, its
    sidecars would be ignored and its results named like raw images."""
    root = Path(path)
    if not root.is_dir() or (root / "dataset_description.json").exists():
        return
    layout = (*root.glob("sub-*/pet/*_pet.nii*"), *root.glob("sub-*/ses-*/pet/*_pet.nii*"))
    if any(_NIFTI.search(p.name) for p in layout):
        raise TgdpetError(f"{root} looks like a PET-BIDS dataset but has no dataset_description.json; add one "
                          "(BIDS requires it), so that tgdpet reads its sidecars and writes a derivative dataset.")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite(value: Any) -> bool:
    """No NaN or infinity anywhere in a JSON value: Python reads them, but JSON has none, so no sidecar may."""
    if isinstance(value, dict):
        return all(_is_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_is_finite(v) for v in value)
    return not isinstance(value, float) or math.isfinite(value)


def _seconds(sidecar: dict, key: str, image: Path, frames: int) -> tuple[float, ...]:
    if key not in sidecar:
        raise TgdpetError(f"{image.name}: its sidecar lacks {key} (seconds, one per frame), which PET-BIDS requires; "
                          "add it to the _pet.json.")  # fmt: skip
    values = sidecar[key] if isinstance(sidecar[key], list) else [sidecar[key]]
    wrong = [v for v in values if not _is_number(v)]
    if wrong:
        raise TgdpetError(f"{image.name}: its sidecar's {key} must be numbers (seconds, one per frame), not "
                          f"{wrong[0]!r}; fix the _pet.json.")  # fmt: skip
    if len(values) != frames:
        raise TgdpetError(
            f"{image.name} holds {frames} frame(s) but its sidecar's {key} lists {len(values)}; the sidecar "
            "belongs to another image or is out of date: fix it."
        )
    return tuple(float(v) for v in values)


def _entities(stem: str) -> tuple[set[str], str]:
    """A BIDS name's ``key-value`` entities and its suffix: ``sub-01_trc-FDG_pet`` -> ({sub-01, trc-FDG}, pet)."""
    body, _, suffix = stem.rpartition("_")
    return set(body.split("_")) - {""}, suffix


def sidecar_paths(root: Path, image: Path) -> list[Path]:
    """The ``_pet.json`` files that apply to ``image``, the dataset's root first (BIDS' inheritance principle).

    One applies when it lies in the image's folder or a folder above it, up to the root, and its entities are
    a subset of the image's: a dataset may give fields common to many images once. Several in one folder are
    taken the less specific first when each one's entities hold the previous one's; otherwise which one wins is
    undefined, and the image is refused.
    """
    entities, suffix = _entities(_NIFTI.sub("", image.name))
    found, folder = [], root
    for part in ("", *image.relative_to(root).parts[:-1]):
        folder = folder / part
        named = [p for p in folder.iterdir() if p.name.endswith(f"_{suffix}.json") and not p.name.startswith(".")]
        here = [(own, p) for p in named if (own := _entities(p.name[: -len(".json")])[0]) <= entities]
        here.sort(key=lambda pair: (len(pair[0]), pair[1].name))
        for (a, path_a), (b, path_b) in zip(here, here[1:]):
            if not a <= b:
                raise TgdpetError(f"{image.name}: {path_a.name} and {path_b.name} in {folder} both apply to it and "
                                  "neither is more specific, so which one's fields win is undefined; merge them.")
        found += [p for _, p in here]
    return found


def _read_sidecar(path: Path) -> dict[str, Any]:
    try:
        sidecar = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TgdpetError(f"{path.name} is a symbolic link whose content is not present; {_FETCH}.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TgdpetError(f"{path.name} is not readable JSON ({e}); fix the sidecar.") from None
    if not isinstance(sidecar, dict):
        raise TgdpetError(f"{path.name} must hold a JSON object of fields; fix the sidecar.")
    return sidecar


def read_pet_image(root: Path, image: Path, frames: int, file_units: str | None) -> PetImage:
    """An image and its sidecar, checked against each other (``frames`` and ``file_units`` are the file's own).

    The sidecar is every applicable ``_pet.json`` merged, the deeper one's fields winning (:func:`sidecar_paths`).

    Raises:
        TgdpetError: no readable sidecar, a value JSON cannot hold (NaN, infinity), Units missing or not
            activity concentration, frame timing missing, not numbers or of another length than the image, or
            Units other than the file records.
    """
    paths = sidecar_paths(root, image)
    if not paths:
        raise TgdpetError(
            f"{image.name} has no sidecar (neither {_NIFTI.sub('', image.name)}.json beside it nor a _pet.json "
            "it inherits from a folder above), which PET-BIDS requires; add it."
        )
    sidecar: dict[str, Any] = {}
    for path in paths:
        sidecar.update(_read_sidecar(path))
    bad = next((key for key, value in sidecar.items() if not _is_finite(value)), None)
    if bad is not None:
        raise TgdpetError(f"{image.name}: its sidecar's {bad} holds a non-finite value (NaN or Infinity), which JSON "
                          "does not allow; fix the _pet.json.")  # fmt: skip
    raw_units = str(sidecar.get("Units", ""))
    units = UNITS.get(raw_units.strip().lower())
    if units is None:
        raise TgdpetError(
            f"{image.name}: its sidecar gives Units {raw_units or 'none'!r}, but tgdpet reads only Bq/mL and SUV "
            "(g/mL) images; convert it to Bq/mL (multiply kBq/mL by 1e3, MBq/mL by 1e6) and set Units."
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


def _datatype(rel: Path) -> str | None:
    """The BIDS datatype folder a file lies in (``pet``, ``anat``, ...), or None outside ``sub-*/[ses-*/]X/``."""
    parts = rel.parts
    if len(parts) >= 3 and parts[0].startswith("sub-"):
        return parts[2] if len(parts) >= 4 and parts[1].startswith("ses-") else parts[1]
    return None


def _raw_files(root: Path) -> Iterator[Path]:
    """Every file of the raw data under ``root``, following symlinked folders (a DataLad dataset or a hand-made
    one links subjects in; ``Path.rglob`` would skip them) and entering no folder twice, so a link loop ends.
    Derivatives, sourcedata, code and hidden folders are not raw data."""
    seen = {os.path.realpath(root)}
    for folder, dirs, files in os.walk(root, followlinks=True):
        here = Path(folder)
        kept = []
        for name in sorted(dirs):
            real = os.path.realpath(here / name)
            if not name.startswith(".") and not (here == root and name in _NOT_RAW) and real not in seen:
                seen.add(real)
                kept.append(name)
        dirs[:] = kept
        yield from (here / name for name in files if not name.startswith("."))


def find_images(root: str | os.PathLike) -> tuple[list[Path], list[tuple[Path, str]]]:
    """The dataset's PET images (``*_pet.nii[.gz]`` in ``pet/`` folders) and every other image, with why it is
    skipped; derivatives, sourcedata, code and hidden folders are not raw data and are not searched."""
    root = Path(root)
    pet, skipped = [], []
    for path in sorted(p for p in _raw_files(root) if _NIFTI.search(p.name)):
        datatype = _datatype(path.relative_to(root))
        stem = _NIFTI.sub("", path.name)
        if datatype == "pet" and stem.endswith("_pet"):
            pet.append(path)
        elif datatype == "pet":
            skipped.append((path, f"not a PET image (suffix _{stem.rsplit('_', 1)[-1]})"))
        else:
            skipped.append((path, f"not PET (datatype {datatype or 'none: outside sub-*/[ses-*/]<datatype>/'})"))
    return pet, skipped


def derivative_name(image: Path) -> str:
    """The result's file name: the source's entities with ``desc-denoised`` just before the suffix, the source's
    own desc kept in front (``desc-nac`` -> ``desc-nacdenoised``) so that no two sources share a result."""
    stem = _NIFTI.sub("", image.name)
    desc = _DESC.search(stem)
    body, _, suffix = _DESC.sub("", stem).rpartition("_")
    ext = _NIFTI.search(image.name).group(0)  # type: ignore[union-attr]
    return f"{body}_desc-{desc.group(1) if desc else ''}{DESC}_{suffix}{ext}"


def check_distinct_outputs(root: Path, images: Sequence[Path]) -> None:
    """Refuse two images whose results would share a name or a sidecar (``X_pet.nii`` and ``X_pet.nii.gz``)
    before anything is denoised: one result would silently replace the other."""
    seen: dict[Path, Path] = {}
    for image in images:
        rel = image.relative_to(root)
        name = rel.parent / _NIFTI.sub("", derivative_name(image))
        key = Path(name.as_posix().lower())  # case-insensitive file systems hold one of the two
        if key in seen:
            raise TgdpetError(f"{seen[key].relative_to(root)} and {rel} would both be written as {name}.nii[.gz] "
                              "and .json; keep one of them in the dataset.")  # fmt: skip
        seen[key] = image


def derivative_sidecar(image: PetImage, run: dict[str, Any], written: Written) -> dict[str, Any]:
    """The result's sidecar: every source field (inherited ones included), the source named as BIDS URI, and how
    it was made (the working grid of each frame in mm, x y z, as :class:`~tgdpet.batch.Written` has it)."""
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


def raw_link(source: Path, out_root: Path) -> str:
    """Where the derivative dataset finds the raw one (its ``DatasetLinks`` entry ``raw``): a relative path when it
    lies inside it, so the pair can move together, else the raw dataset's absolute ``file:`` URI."""
    raw, out = source.resolve(), out_root.resolve()
    return Path(os.path.relpath(raw, out)).as_posix() if raw in out.parents else raw.as_uri()


def dataset_description(source: Path, out_root: Path, run: dict[str, Any]) -> dict[str, Any]:
    """The derivative dataset's ``dataset_description.json`` (BIDS: Name, BIDSVersion, DatasetType,
    GeneratedBy; the raw dataset as ``SourceDatasets``, named ``raw`` in ``DatasetLinks`` as BIDS requires of a
    dataset the sidecars' ``bids:raw:`` URIs name)."""
    try:
        raw = json.loads((source / "dataset_description.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raw = {}
    name = raw.get("Name") if isinstance(raw, dict) else None
    return {
        "Name": f"{name or source.name}, denoised by tgdpet",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "DatasetLinks": {"raw": raw_link(source, out_root)},
        "GeneratedBy": [{
            "Name": PIPELINE,
            "Version": __version__,
            "Description": f"tgdpet denoise with {run.get('model', {}).get('name', 'a model')} "
                           f"({run.get('precision')}, {run.get('device')})",
        }],  # fmt: skip
        "SourceDatasets": [{"URL": "bids:raw:"}],
    }


def _is_ours(rel: Path, is_dir: bool) -> bool:
    """Whether a path of a derivative dataset is named like what tgdpet writes there (:data:`_OUTPUT`)."""
    if not is_dir and len(rel.parts) == 1:
        return rel.name in _TOP_FILES
    if is_dir:
        subject, *rest = rel.parts
        rest = rest[1:] if rest and rest[0].startswith("ses-") else rest
        return subject.startswith("sub-") and rest in ([], ["pet"])
    return rel.parent.name == "pet" and _is_ours(rel.parent, True) and bool(_OUTPUT.match(rel.name))


def check_replaceable_derivative(out_root: Path) -> None:
    """Refuse to replace a derivative dataset that holds anything tgdpet did not write: ``--overwrite`` replaces
    it whole, and a user's own files (notes, another pipeline's results) would be lost."""
    if not out_root.is_dir():
        return
    foreign = []
    for folder, dirs, files in os.walk(out_root):
        here = Path(folder).relative_to(out_root)
        foreign += [here / d for d in dirs if not _is_ours(here / d, True)]
        foreign += [here / f for f in files if not _is_ours(here / f, False)]
        dirs[:] = [d for d in dirs if _is_ours(here / d, True)]
    if foreign:
        shown = ", ".join(p.as_posix() for p in sorted(foreign)[:3]) + (", ..." if len(foreign) > 3 else "")
        raise TgdpetError(f"{out_root} holds {len(foreign)} file(s) or folder(s) tgdpet did not write ({shown}); "
                          "--overwrite replaces the derivative dataset whole, so move them out or choose another "
                          "output.")  # fmt: skip


def _is_default_output(root: Path, out_root: Path) -> bool:
    return out_root.resolve() == (root / "derivatives" / PIPELINE).resolve()


def check_dataset_output(root: str | os.PathLike, out_root: str | os.PathLike, overwrite: bool) -> None:
    """Refuse, before any work, a derivative dataset that cannot be written or replaced, or two images whose
    results would share a name (:func:`check_distinct_outputs`).

    A raw dataset usually has no ``derivatives/`` folder yet: for the default output it is made with the results.
    """
    root, out = Path(root), Path(out_root)
    check_output_name(out)
    if is_nifti_name(out) or out.is_file():
        raise TgdpetError(f"{root} is a PET-BIDS dataset, so its results go to a derivative dataset folder, but {out} "
                          f"{'is a file' if out.is_file() else 'names a NIfTI file'}; name a folder.")  # fmt: skip
    if out.parent.exists() or not _is_default_output(root, out):
        check_can_write(out, overwrite)
    else:
        check_writable_folder(root)
    if overwrite:
        check_replaceable_derivative(out)
    check_distinct_outputs(root, find_images(root)[0])


def _write_json(path: Path, content: dict) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(content, indent=2, allow_nan=False) + "\n", encoding="utf-8")


@contextlib.contextmanager
def _made_parent(out_root: Path) -> Iterator[None]:
    """Make ``out_root``'s parent (a raw dataset's ``derivatives/``) if missing, and remove it again if the run
    leaves it empty (refused or interrupted): the raw dataset is then as it was."""
    made = not out_root.parent.exists()
    out_root.parent.mkdir(exist_ok=True)
    try:
        yield
    finally:
        if made:
            with contextlib.suppress(OSError):
                out_root.parent.rmdir()


def _denoise_image(
    root: Path, path: Path, out_root: Path, denoise: Denoise, read: Callable[[Path], tuple[int, str | None]],
    run: dict[str, Any],
) -> tuple[Path, Written, PetImage]:  # fmt: skip
    """Denoise one image and write its sidecar under ``out_root``: the result's path relative to it, the result,
    and the image as its sidecar describes it."""
    rel = path.relative_to(root)
    if not path.exists():  # os.walk lists a dangling link: a DataLad or git-annex file whose content is elsewhere
        raise TgdpetError(f"{rel} is a symbolic link whose content is not present; {_FETCH}.")
    image = read_pet_image(root, path, *read(path))
    dest = out_root / rel.parent / derivative_name(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    written = denoise(path, dest, image.units, image.frame_durations_s)
    _write_json(written.path.with_name(_NIFTI.sub("", written.path.name) + ".json"),
                derivative_sidecar(image, run, written))  # fmt: skip
    return written.path.relative_to(out_root), written, image


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
    The dataset is built in a hidden sibling of ``out_root`` and renamed into place at the end (with
    ``overwrite``, only then replacing the earlier one), so an interruption leaves nothing under its name.
    Inputs are recorded relative to ``root``: a DataLad file's resolved path is an annex object, not its name.
    Returns the report written to ``out_root/tgdpet-report.json``.
    """
    root, out_root = Path(root), Path(out_root)
    run = run or {}
    check_dataset_output(root, out_root, overwrite)
    images, skipped = find_images(root)
    entries = [{"input": p.relative_to(root).as_posix(), "status": "skipped", "reason": why} for p, why in skipped]
    for path, why in skipped:
        echo(f"skipped: {path.relative_to(root)} ({why})")
    if not images:
        raise TgdpetError(f"{root} holds no PET image (sub-*/[ses-*/]pet/*_pet.nii[.gz]); check it is a PET-BIDS "
                          "dataset.")  # fmt: skip
    final = out_root.resolve()
    with _made_parent(out_root), atomic_dir(out_root, overwrite=overwrite) as tmp:
        for path in images:
            entry: dict[str, Any] = {"input": path.relative_to(root).as_posix()}
            try:
                rel, written, image = _denoise_image(root, path, tmp, denoise, read, run)
                entry.update(status="denoised", **written.record(), frames=len(image.frame_durations_s))
                entry["output"] = str(final / rel)
                echo(f"denoised: {image.relative} -> {rel} ({written.note()})")
            except TgdpetError as e:
                entry.update(status="skipped", reason=str(e))
                echo(f"skipped: {path.relative_to(root)} ({e})")
            entries.append(entry)
        _write_json(tmp / "dataset_description.json", dataset_description(root, out_root, run))
        report = report_record(root, run, entries)
        _write_json(tmp / REPORT_NAME, report)
        with atomic_file(tmp / ".bidsignore") as ignore:  # the report is tgdpet's, not a BIDS file
            ignore.write_text(f"{REPORT_NAME}\n")
    return report
