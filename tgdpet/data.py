"""Datasets for training: manifests, intensity normalisation and 2.5D patches.

Intensity: PET values (Bq/mL or SUV) differ by orders of magnitude between
studies, tracers and doses. The network works on a dose- and weight-free
scale: every volume is divided by :func:`intensity_scale` of the network's
*input* (the noisy image), and the output multiplied back. The same rule is
used in training (both input and target divided by the input's scale) and in
denoising, and it is recorded in every model file as ``normalization``.

Memory: training keeps every volume of the chosen split in memory as float32
(a 128x128x184 study with six count levels and its target is about 100 MB;
a 192x192x400 one about 400 MB). That suits the dataset sizes TGD is meant
for (a handful of studies for fine-tuning, tens for training); larger data
needs more RAM, not a different code path.

Patches (noise-adaptive training, paper Sect. 3.1): every count level of a
study is paired with the same target. A patch is a stack of ``in_slices``
adjacent slices (replicated at the ends of the volume, like in denoising),
``patch_size`` square, cut at the same place from an input and the target.
Its centre voxel is drawn uniformly among the study's *body* voxels, so
patches of empty air (which teach the network nothing) are not drawn.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import TgdpetError

NORMALIZATION = {"method": "body_mean", "threshold": 0.05, "percentile": 99.5}

SPLITS = ("train", "val", "test")
MANIFEST_FORMAT = "tgdpet-manifest"
MANIFEST_VERSION = 1


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


def body_mask(volume: np.ndarray) -> np.ndarray:
    """Voxels above 5 % of the 99.5th percentile: the body, by the same rule as :func:`intensity_scale`.

    Falls back to every voxel when nothing qualifies (an empty image), so
    patch sampling never runs out of centres.
    """
    x = np.asarray(volume)
    hi = float(np.percentile(x, NORMALIZATION["percentile"]))
    mask = x > NORMALIZATION["threshold"] * hi if hi > 0 else np.zeros(x.shape, dtype=bool)
    return mask if mask.any() else np.ones(x.shape, dtype=bool)


def stack_indices(centres: np.ndarray | int, depth: int, in_slices: int) -> np.ndarray:
    """Slice indices of the ``in_slices`` stack around each centre, edge slices replicated.

    ``stack_indices([0, 5], 6, 3)`` is ``[[0, 0, 1], [4, 5, 5]]``: at the
    ends of the volume the missing neighbours repeat the edge slice, the
    project-wide convention (docs/architecture.md).
    """
    half = in_slices // 2
    offsets = np.arange(-half, half + 1)
    return np.clip(np.asarray(centres)[..., None] + offsets, 0, depth - 1)


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
    may fall (by default :func:`body_mask` of the target, the least noisy image).
    """

    id: str
    target: np.ndarray
    inputs: list[np.ndarray]
    scales: list[float]
    body: np.ndarray

    @classmethod
    def from_arrays(
        cls, id: str, target: np.ndarray, inputs: list[np.ndarray], body: np.ndarray | None = None
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
        return cls(id=id, target=target, inputs=arrays, scales=[intensity_scale(x) for x in arrays], body=mask)

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.target.shape  # type: ignore[return-value]


def load_studies(manifest: Manifest, split: str) -> list[Study]:
    """Read every volume of one split into memory (float32) via :func:`tgdpet.io.read_volume`."""
    from .io import read_volume  # the image readers pull in pydicom and nibabel; load them only when used

    return [
        Study.from_arrays(
            entry.id,
            read_volume(entry.target).data,
            [read_volume(p).data for p in entry.inputs],
        )
        for entry in manifest.split(split)
    ]


# --------------------------------------------------------------------------- patches


class PatchDataset(torch.utils.data.Dataset):
    """Random 2.5D training patches, deterministic given (seed, rank, epoch, index).

    Item ``i`` of epoch ``e`` is drawn with its own generator seeded by
    ``(seed, rank, e, i)``: the same patches come out whatever the number of
    DataLoader workers, an interrupted run resumed at epoch ``e`` sees the
    very patches it would have seen, and every DDP rank draws its own.

    An item is ``(input, target)``, two float32 tensors of shape
    ``(in_slices, patch_size, patch_size)``, both divided by the input's
    intensity scale. The centre voxel is uniform over all studies' body
    voxels (bigger studies give more patches); the count level is uniform
    among the study's inputs. With ``flips`` each patch is flipped along x
    and y and its stack reversed along z, each with probability 1/2.
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
    ) -> None:
        if not studies:
            raise TgdpetError("there are no training studies to draw patches from; check the manifest's splits.")
        for s in studies:
            if min(s.shape[1:]) < patch_size:
                raise TgdpetError(
                    f"study {s.id!r} has slices of {s.shape[1]}x{s.shape[2]}, smaller than the "
                    f"{patch_size}x{patch_size} patches asked for; choose a smaller --patch-size."
                )
        self.studies = studies
        self.patch_size = int(patch_size)
        self.in_slices = int(in_slices)
        self.length = int(length)
        self.seed = int(seed)
        self.rank = int(rank)
        self.flips = bool(flips)
        self.epoch = 0
        # Body voxels per slice, cumulated over slices then studies: one
        # integer draw picks study, slice and voxel uniformly over all of them.
        self._slice_cum = [np.cumsum(s.body.reshape(s.shape[0], -1).sum(axis=1)) for s in studies]
        self._study_cum = np.cumsum([c[-1] for c in self._slice_cum])

    def set_epoch(self, epoch: int) -> None:
        """Choose which epoch's patches ``__getitem__`` returns."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def _centre(self, rng: np.random.Generator) -> tuple[int, int, int, int]:
        u = int(rng.integers(self._study_cum[-1]))
        s = int(np.searchsorted(self._study_cum, u, side="right"))
        u -= int(self._study_cum[s - 1]) if s else 0
        cum = self._slice_cum[s]
        z = int(np.searchsorted(cum, u, side="right"))
        u -= int(cum[z - 1]) if z else 0
        flat = int(np.flatnonzero(self.studies[s].body[z])[u])
        y, x = divmod(flat, self.studies[s].shape[2])
        return s, z, y, x

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, self.rank, self.epoch, int(index)])
        s, z, y, x = self._centre(rng)
        study = self.studies[s]
        k = int(rng.integers(len(study.inputs)))
        depth, height, width = study.shape
        p = self.patch_size
        y0 = min(max(y - p // 2, 0), height - p)
        x0 = min(max(x - p // 2, 0), width - p)
        zs = stack_indices(z, depth, self.in_slices)
        scale = np.float32(study.scales[k])
        inp = study.inputs[k][zs, y0 : y0 + p, x0 : x0 + p] / scale
        tgt = study.target[zs, y0 : y0 + p, x0 : x0 + p] / scale
        if self.flips:
            axes = tuple(a for a, flip in zip((0, 1, 2), rng.integers(2, size=3)) if flip)
            if axes:
                inp, tgt = np.flip(inp, axes), np.flip(tgt, axes)
        return torch.from_numpy(np.ascontiguousarray(inp)), torch.from_numpy(np.ascontiguousarray(tgt))
