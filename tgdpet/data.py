"""Datasets for training: manifests, studies in memory and 2.5D patches.

Intensity: every volume is divided by :func:`tgdpet.inputs.intensity_scale`
of the network's *input* (the noisy image), the rule denoising applies too
(:mod:`tgdpet.inputs`).

Memory: training keeps every volume of the chosen split in memory as float32
(a 128x128x184 study with six count levels and its target is about 100 MB;
a 192x192x400 one about 400 MB). That suits the dataset sizes TGD is meant
for (a handful of studies for fine-tuning, tens for training); larger data
needs more RAM, not a different code path.

Patches (noise-adaptive training, paper Sect. 3.1): every count level of a
study is paired with the same target. A patch is a stack of ``in_slices``
adjacent slices (replicated at the ends of the volume, like in denoising),
``patch_size`` square, cut at the same place from an input and the target.
Patches of empty air (which teach the network nothing) are never drawn. A
share ``structure_fraction`` of the centres is drawn with probability
proportional to the target's local *detail* (:func:`detail_map`: how far a
voxel stands out from its neighbourhood), the rest uniformly over the body.
Lesions cover a tiny share of a body, so with uniform centres a network sees
few of them, and MSE on mostly smooth tissue teaches it to flatten them;
detail-weighted centres put lesions, organ edges and small hot structures in
a good part of the patches without any labels (so it works on users' data).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from .errors import TgdpetError
from .files import atomic_file, check_can_write
from .inputs import body_mask, intensity_scale, stack_indices

if TYPE_CHECKING:
    from .io import Volume

SPLITS = ("train", "val", "test")
MANIFEST_FORMAT = "tgdpet-manifest"
MANIFEST_VERSION = 1


#: Half-width (voxels) of the neighbourhood :func:`detail_map` compares each voxel with.
DETAIL_RADIUS = 2


def detail_map(volume: np.ndarray, body: np.ndarray) -> np.ndarray:
    """How much each body voxel stands out from its neighbourhood: ``|x - mean of its 5x5x5 box|``, 0 outside the body.

    The box is edge-replicated at the volume's borders.

    Large on lesions (hot or cold), organ edges and small structures, near
    zero in uniform tissue; a label-free weight for drawing training patches.
    """
    x = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    return np.where(body, box_detail(x)[0, 0].numpy(), np.float32(0))


def box_detail(x: torch.Tensor) -> torch.Tensor:
    """``|x - mean of its box|`` with boxes ``2 * DETAIL_RADIUS + 1`` wide over the spatial axes, edges replicated.

    ``x`` is ``(N, C, H, W)`` (in-plane boxes, as the training loss uses) or
    ``(N, C, D, H, W)`` (cubes, as :func:`detail_map` uses).
    """
    spatial = x.dim() - 2
    pool = torch.nn.functional.avg_pool2d if spatial == 2 else torch.nn.functional.avg_pool3d
    padded = torch.nn.functional.pad(x, (DETAIL_RADIUS,) * (2 * spatial), mode="replicate")
    return (x - pool(padded, 2 * DETAIL_RADIUS + 1, stride=1)).abs()


# --------------------------------------------------------------------------- manifests


@dataclass(frozen=True)
class StudyEntry:
    """One study of a manifest, with its paths resolved against the manifest's folder."""

    id: str
    split: str
    target: Path
    inputs: tuple[Path, ...]
    labels: Path | None = None
    halves: tuple[Path, ...] = ()
    realisations: tuple[Path, ...] = ()
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """A validated dataset manifest (format in docs/architecture.md)."""

    path: Path
    studies: tuple[StudyEntry, ...]
    label_codes: dict = field(default_factory=dict)

    def files(self) -> list[Path]:
        """The manifest file and every image it names: what a command's outputs must never replace."""
        files = [self.path]
        for s in self.studies:
            files += [s.target, *s.inputs, *s.halves, *s.realisations, *([s.labels] if s.labels else [])]
        return files

    def split(self, name: str) -> list[StudyEntry]:
        """The studies of one split (``train``, ``val`` or ``test``), in manifest order."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; use one of {', '.join(SPLITS)}.")
        return [s for s in self.studies if s.split == name]


def _manifest_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "manifest.json"
    if not p.is_file():
        raise TgdpetError(
            f"no dataset manifest at {p}; pass a manifest.json file or a folder holding one "
            "(tgdpet simulate writes them, docs/architecture.md describes the format)."
        )
    return p


def _paths(value: object, root: Path, where: str, key: str) -> tuple[Path, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise TgdpetError(f"{where}: {key!r} must be a list of file paths; fix the manifest.")
    return tuple(root / v for v in value)


def _path(value: object, root: Path, where: str, key: str) -> Path:
    if not isinstance(value, str) or not value:
        raise TgdpetError(f"{where}: {key!r} must be a file path; fix the manifest.")
    return root / value


def _study_entry(raw: object, index: int, root: Path, manifest: Path) -> StudyEntry:
    """Check one study's keys and types; paths are resolved but not yet checked on disk."""
    where = f"{manifest}, study #{index + 1}"
    if not isinstance(raw, dict):
        raise TgdpetError(f"{where} is not a JSON object; every study needs 'id', 'target' and 'inputs'.")
    missing = [k for k in ("id", "target", "inputs") if k not in raw]
    if missing:
        raise TgdpetError(
            f"{where} lacks {', '.join(repr(k) for k in missing)}; every study needs 'id', 'target' and 'inputs'."
        )
    sid = raw["id"]
    if not isinstance(sid, str) or not sid:
        raise TgdpetError(f"{where}: 'id' must be a non-empty string; fix the manifest.")
    where = f"{manifest}, study {sid!r}"
    split = raw.get("split", "train")
    if split not in SPLITS:
        raise TgdpetError(f"{where} has unknown split {split!r}; use one of {', '.join(SPLITS)}.")
    inputs = _paths(raw["inputs"], root, where, "inputs")
    if not inputs:
        raise TgdpetError(f"{where} has no inputs; list at least one noisy image to pair with its target.")
    halves = _paths(raw["halves"], root, where, "halves") if "halves" in raw else ()
    if halves and len(halves) != 2:
        raise TgdpetError(f"{where} lists {len(halves)} halves; 'halves' must name exactly two images.")
    meta = raw.get("meta", {})
    if not isinstance(meta, dict):
        raise TgdpetError(f"{where}: 'meta' must be a JSON object; fix the manifest.")
    return StudyEntry(
        id=sid,
        split=split,
        target=_path(raw["target"], root, where, "target"),
        inputs=inputs,
        labels=_path(raw["labels"], root, where, "labels") if raw.get("labels") is not None else None,
        halves=halves,
        realisations=_paths(raw["realisations"], root, where, "realisations") if "realisations" in raw else (),
        meta=meta,
    )


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Read and check a manifest (file, or folder holding ``manifest.json``).

    Checks the JSON, the required keys and their types, unique study ids, the
    split names, and that every file the manifest names exists. It does not
    read any image (see :func:`load_studies`).
    """
    file = _manifest_file(path)
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TgdpetError(f"{file} is not valid JSON ({e}); fix or regenerate the manifest.") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("studies"), list):
        raise TgdpetError(f"{file} has no 'studies' list; see docs/architecture.md for the manifest format.")
    if raw.get("format", MANIFEST_FORMAT) != MANIFEST_FORMAT:
        raise TgdpetError(
            f"{file} has format {raw['format']!r}, not {MANIFEST_FORMAT!r}; pass a tgdpet dataset manifest."
        )
    if raw.get("version", MANIFEST_VERSION) != MANIFEST_VERSION:
        raise TgdpetError(
            f"{file} has manifest version {raw['version']!r}; this tgdpet reads version {MANIFEST_VERSION}."
        )
    if not raw["studies"]:
        raise TgdpetError(f"{file} lists no studies; add at least one study.")
    root = file.parent
    studies = tuple(_study_entry(s, i, root, file) for i, s in enumerate(raw["studies"]))
    seen: set[str] = set()
    for s in studies:
        if s.id in seen:
            raise TgdpetError(f"{file} lists study id {s.id!r} twice; study ids must be unique.")
        seen.add(s.id)
        named = (s.target, *s.inputs, *s.halves, *s.realisations) + ((s.labels,) if s.labels else ())
        for p in named:
            if not p.exists():
                raise TgdpetError(f"{file}, study {s.id!r}: {p} does not exist; fix the path in the manifest.")
    codes = raw.get("label_codes", {})
    if not isinstance(codes, dict):
        raise TgdpetError(f"{file}: 'label_codes' must be a JSON object mapping names to integers.")
    return Manifest(path=file, studies=studies, label_codes=codes)


# --------------------------------------------------------------------------- studies in memory


@dataclass
class Study:
    """Input volumes paired with one target, in memory, with what patch sampling needs.

    ``scales[k]`` is :func:`intensity_scale` of ``inputs[k]``: patches of that
    pair are divided by it, the target's too. ``body`` is where patch centres
    may fall (by default :func:`body_mask` of the target, the least noisy image);
    ``detail`` weights the structure-seeking centres (by default
    :func:`detail_map` of the target; pass one from a less noisy image when
    the target is itself noisy, as in Noise2Noise).
    """

    id: str
    target: np.ndarray
    inputs: list[np.ndarray]
    scales: list[float]
    body: np.ndarray
    detail: np.ndarray
    voxel_mm: tuple[float, float, float] | None = None  # (z, y, x) in the canonical frame, when read from a file
    units: str | None = None

    @classmethod
    def from_arrays(
        cls,
        id: str,
        target: np.ndarray,
        inputs: list[np.ndarray],
        body: np.ndarray | None = None,
        detail: np.ndarray | None = None,
    ) -> "Study":
        """Build a study from (z, y, x) arrays, checking that every input matches the target's shape."""
        target = np.ascontiguousarray(target, dtype=np.float32)
        arrays = [np.ascontiguousarray(x, dtype=np.float32) for x in inputs]
        for k, x in enumerate(arrays):
            if x.shape != target.shape:
                raise TgdpetError(
                    f"study {id!r}: input #{k + 1} has shape {x.shape} (z, y, x) but its target has "
                    f"{target.shape}; inputs and target must be on the same grid."
                )
        for name, x in [("target", target)] + [(f"input #{k + 1}", x) for k, x in enumerate(arrays)]:
            if not np.isfinite(x).all():
                raise TgdpetError(f"study {id!r}: the {name} holds NaN or infinite voxels; fix the image first.")
        mask = body_mask(target) if body is None else np.asarray(body, dtype=bool)
        weights = detail_map(target, mask) if detail is None else np.where(mask, detail, 0).astype(np.float32)
        scales = [intensity_scale(x) for x in arrays]
        return cls(id=id, target=target, inputs=arrays, scales=scales, body=mask, detail=weights)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.target.shape  # type: ignore[return-value]


def merge_manifests(sources: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Write one manifest at ``out`` listing the studies of every source manifest (e.g. one per protocol).

    Study ids become ``<source folder name>/<id>`` so they stay unique; paths are
    written relative to ``out``'s folder; ``meta`` is kept (its ``truth`` path
    rewritten too). Label codes must agree. Training on the result trains one
    model across all the sources, with each source's validation studies.
    """
    out = Path(out)

    def rel(p: Path) -> str:
        # Both ends resolved: a source reached through a symbolic link names its neighbours as "../labels",
        # which only the link's target has; taken literally, the ".." would climb out of the link instead.
        return os.path.relpath(os.path.realpath(p), os.path.realpath(out.parent))

    merged: list[dict] = []
    codes: dict = {}
    for source in sources:
        manifest = load_manifest(source)
        if codes and manifest.label_codes and manifest.label_codes != codes:
            raise TgdpetError(f"{manifest.path} codes its labels differently from the manifests before it.")
        codes = codes or dict(manifest.label_codes)
        tag = manifest.path.parent.name
        for e in manifest.studies:
            entry: dict = {"id": f"{tag}/{e.id}", "split": e.split, "target": rel(e.target),
                           "inputs": [rel(p) for p in e.inputs]}  # fmt: skip
            if e.labels is not None:
                entry["labels"] = rel(e.labels)
            if e.halves:
                entry["halves"] = [rel(p) for p in e.halves]
            if e.realisations:
                entry["realisations"] = [rel(p) for p in e.realisations]
            meta = dict(e.meta)
            if isinstance(meta.get("truth"), str):
                meta["truth"] = rel(manifest.path.parent / meta["truth"])
            entry["meta"] = meta
            merged.append(entry)
    raw = {"format": MANIFEST_FORMAT, "version": MANIFEST_VERSION, "label_codes": codes, "studies": merged}
    with atomic_file(check_can_write(out, overwrite=False)) as tmp:
        tmp.write_text(json.dumps(raw, indent=1) + "\n")
        load_manifest(tmp)  # what was written reads back (beside out, so its paths mean the same), or is not kept
    return out


def load_studies(manifest: Manifest, split: str) -> list[Study]:
    """Read every volume of one split into memory (float32), in the canonical frame (:func:`read_canonical`).

    Each input must lie on its target's grid and be in its units (:func:`read_on_target_grid`). Each study
    also keeps its target's voxel size and units: what a model trained on it records as its domain
    (:mod:`tgdpet.domain`).
    """
    from .io.orientation import to_canonical

    studies = []
    for entry in manifest.split(split):
        target = to_canonical(_read(entry.target))
        inputs = [read_on_target_grid(p, target, entry.id, f"input #{k + 1}") for k, p in enumerate(entry.inputs)]
        study = Study.from_arrays(entry.id, target.data, inputs)
        study.voxel_mm = tuple(round(s, 4) for s in target.spacing[::-1])  # type: ignore[assignment]
        study.units = target.units
        studies.append(study)
    return studies


#: How far (mm) an image's voxels may lie from its target's and still count as on the same grid.
GRID_TOLERANCE_MM = 1e-3


def read_on_target_grid(
    path: str | os.PathLike, target: Volume, study_id: str, what: str, *, same_units: bool = True
) -> np.ndarray:
    """The voxels of a study's image ``path`` in the canonical frame, refused unless they pair with ``target``'s.

    ``target`` is the study's target :class:`~tgdpet.io.Volume` in the canonical frame. Training and
    scoring compare images voxel by voxel, so an image of the same shape on another grid (other voxel
    size, shifted origin) or in other units (SUV against Bq/mL) would be trained on or scored silently
    wrong. ``same_units=False`` for a label map, whose values are codes.
    """
    from .io.orientation import to_canonical

    image = to_canonical(_read(path))
    where = f"study {study_id!r}: {what} ({path})"
    if image.shape != target.shape:
        raise TgdpetError(
            f"study {study_id!r}: {what} has shape {image.shape} (z, y, x) but its target has {target.shape}; "
            f"inputs and target must be on the same grid (resample {path} onto it)."
        )
    nz, ny, nx = image.shape
    corners = np.array([[x, y, z, 1.0] for x in (0, nx - 1) for y in (0, ny - 1) for z in (0, nz - 1)]).T
    offset = float(np.abs((image.affine - target.affine) @ corners).max())
    if offset > GRID_TOLERANCE_MM:
        raise TgdpetError(
            f"{where} has the target's shape but not its grid (its voxels lie up to {offset:.3g} mm away: another "
            "voxel size or position); resample it onto the target's grid or fix its header."
        )
    if same_units and image.units != target.units:
        raise TgdpetError(
            f"{where} is in {image.units} but its target is in {target.units}; convert it to the target's units."
        )
    return image.data


def _read(path: str | os.PathLike):
    from .io import read_volume  # the image readers pull in pydicom and nibabel; load them only when used

    return read_volume(path)


def read_canonical(path: str | os.PathLike) -> np.ndarray:
    """A volume's voxels in the canonical frame the network works in (:mod:`tgdpet.io.orientation`)."""
    from .io.orientation import to_canonical

    return to_canonical(_read(path)).data


# --------------------------------------------------------------------------- patches


class PatchDataset(torch.utils.data.Dataset):
    """Random 2.5D training patches, deterministic given (seed, rank, epoch, indices).

    Patches are drawn a batch at a time (:meth:`__getitems__`, which the
    DataLoader calls with each batch's indices): one generator seeded by
    ``(seed, rank, epoch, first index, batch length)`` draws every centre,
    count level and flip of the batch in a few vectorised calls. The training
    loop's batches are fixed runs of indices, so the same patches come out
    whatever the number of DataLoader workers, an interrupted run resumed at
    epoch ``e`` sees the very patches it would have seen, and every DDP rank
    draws its own. ``ds[i]`` is the batch ``[i]``.

    A batch is ``(inputs, targets)``, two float32 tensors of shape
    ``(n, in_slices, patch_size, patch_size)``, each patch divided by its
    input's intensity scale. With probability ``structure_fraction`` a centre
    voxel is drawn with probability proportional to its study's ``detail``
    divided by the study's mean input scale (detail in units of the study's
    mean uptake: a study in Bq/mL, or a lighter patient's with higher
    concentrations, does not take the structure-seeking patches of one in
    SUV), otherwise uniformly over all studies' body voxels (bigger studies
    give more patches); the count level is uniform among the study's inputs.
    With ``flips`` each patch is flipped along x and y and its stack reversed
    along z, each with probability 1/2.
    """

    def __init__(
        self,
        studies: list[Study],
        *,
        patch_size: int,
        in_slices: int,
        length: int,
        seed: int,
        rank: int = 0,
        flips: bool = True,
        structure_fraction: float = 0.0,
    ) -> None:
        if not studies:
            raise TgdpetError("there are no training studies to draw patches from; check the manifest's splits.")
        for s in studies:
            if min(s.shape[1:]) < patch_size:
                raise TgdpetError(
                    f"study {s.id!r} has slices of {s.shape[1]}x{s.shape[2]}, smaller than the "
                    f"{patch_size}x{patch_size} patches asked for; choose a smaller --patch-size."
                )
        if not 0.0 <= structure_fraction <= 1.0:
            raise TgdpetError(f"structure-fraction must lie in [0, 1], got {structure_fraction}.")
        self.studies = studies
        self.patch_size = int(patch_size)
        self.in_slices = int(in_slices)
        self.length = int(length)
        self.seed = int(seed)
        self.rank = int(rank)
        self.flips = bool(flips)
        self.structure_fraction = float(structure_fraction)
        self.epoch = 0
        # Candidate centres of all studies as one list of (study, flat voxel index),
        # with the cumulated detail weights over it: one uniform number then picks
        # a centre with one binary search.
        flats = [np.flatnonzero(s.body) for s in studies]
        self._study_of = np.concatenate([np.full(len(f), k, np.int32) for k, f in enumerate(flats)])
        self._flat = np.concatenate(flats)
        detail = np.concatenate(
            [(s.detail.ravel()[f] / np.mean(s.scales)).astype(np.float64) for s, f in zip(studies, flats)]
        )
        self._detail_cum = np.cumsum(detail) if detail.sum() > 0 else None
        self._levels = np.array([len(s.inputs) for s in studies])

    def set_epoch(self, epoch: int) -> None:
        """Choose which epoch's patches the dataset returns."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def centres(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` patch centres: study indices and ``(n, 3)`` voxel indices ``(z, y, x)``."""
        j = rng.integers(len(self._flat), size=n)
        if self._detail_cum is not None:
            structured = rng.random(n) < self.structure_fraction
            u = rng.random(int(structured.sum())) * self._detail_cum[-1]
            j[structured] = np.minimum(np.searchsorted(self._detail_cum, u, side="right"), len(self._flat) - 1)
        study = self._study_of[j]
        zyx = np.empty((n, 3), np.int64)
        for k in np.unique(study):
            sel = study == k
            zyx[sel] = np.stack(np.unravel_index(self._flat[j[sel]], self.studies[k].shape), axis=1)
        return study, zyx

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The patches of one batch (see the class docstring for how they are drawn)."""
        n = len(indices)
        if n == 0 or not all(0 <= int(i) < self.length for i in indices):
            raise IndexError(f"indices {indices} outside 0..{self.length - 1}")
        rng = np.random.default_rng([self.seed, self.rank, self.epoch, int(indices[0]), n])
        study, zyx = self.centres(rng, n)
        levels = (rng.random(n) * self._levels[study]).astype(np.int64)
        flips = rng.integers(2, size=(n, 3)).astype(bool) if self.flips else np.zeros((n, 3), bool)
        p = self.patch_size
        inputs = np.empty((n, self.in_slices, p, p), np.float32)
        targets = np.empty_like(inputs)
        for b in range(n):
            st = self.studies[study[b]]
            depth, height, width = st.shape
            z, y, x = zyx[b]
            y0 = min(max(y - p // 2, 0), height - p)
            x0 = min(max(x - p // 2, 0), width - p)
            zs = stack_indices(z, depth, self.in_slices)
            if flips[b, 0]:
                zs = zs[::-1]
            ys = slice(y0 + p - 1, y0 - 1 if y0 else None, -1) if flips[b, 1] else slice(y0, y0 + p)
            xs = slice(x0 + p - 1, x0 - 1 if x0 else None, -1) if flips[b, 2] else slice(x0, x0 + p)
            scale = np.float32(st.scales[levels[b]])
            np.divide(st.inputs[levels[b]][zs, ys, xs], scale, out=inputs[b])
            np.divide(st.target[zs, ys, xs], scale, out=targets[b])
        return torch.from_numpy(inputs), torch.from_numpy(targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.__getitems__([index])
        return x[0], y[0]

    @staticmethod
    def collate(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The DataLoader's ``collate_fn``: :meth:`__getitems__` already returns whole batches."""
        return batch
