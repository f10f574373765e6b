"""Model files and resumable training state. Nothing here ever unpickles.

A **model file** is a safetensors file: the tensors of ``model.state_dict()``
(weights and BatchNorm buffers) plus one metadata entry, ``"tgdpet"``, that
holds JSON::

    {"format": "tgdpet-model", "format_version": 1,
     "architecture": {...DnCNNConfig.to_dict()...}, "preset": "paper" | null,
     "normalization": {...}, "masks": {"0": [0, 1, ...], ...} | null,
     "masks_history": [{...}, ...], "provenance": {...},
     "tgdpet_version": "...", "torch_version": "..."}

so a model file alone rebuilds the network, says how to scale intensities,
and records which kernels TGD retrained. ``masks`` are the masks of the
latest TGD round that produced these weights (null for a model never
TGD-fine-tuned) and ``masks_history`` those of every round, oldest first
(TGD^n: n entries, the last equal to ``masks``).

Loading checks everything it can from the header (size, format, tensor
names and shapes against the architecture) before reading any tensor, so a
damaged or foreign file costs nothing and fails with one clear sentence.

**Training state** (optimizer state, RNG states, counters) is written with
``torch.save`` and read with ``torch.load(weights_only=True)``, which only
rebuilds tensors and plain Python values. :func:`capture_rng_state` stores
the RNG states in that form (numpy's key array as a list of ints).
"""

from __future__ import annotations

import json
import math
import os
import random
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch

from . import __version__
from .inputs import NORMALIZATION
from .errors import TgdpetError
from .files import atomic_file
from .models import DnCNN, DnCNNConfig
from .tgd import Masks, check_masks, masks_to_lists

FORMAT = "tgdpet-model"
FORMAT_VERSION = 1
STATE_FORMAT = "tgdpet-training-state"
STATE_FORMAT_VERSION = 1

# safetensors' own limit on the JSON header; larger claims are refused unread.
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
# The JSON type of each optional metadata entry that loading reads (null: absent).
_META_TYPES = {"preset": str, "normalization": dict, "masks_history": list, "provenance": dict, "tgdpet_version": str}


@dataclass
class ModelRecord:
    """A loaded model file: the network (in eval mode) and everything recorded with it."""

    model: DnCNN
    config: DnCNNConfig
    preset: str | None
    masks: Masks | None
    masks_history: list[Masks]
    provenance: dict = field(default_factory=dict)
    normalization: dict = field(default_factory=lambda: dict(NORMALIZATION))
    version: str = __version__  # tgdpet version that wrote the file

    def check_normalization(self, name: str) -> None:
        """Refuse a model trained with another intensity normalisation than this tgdpet applies.

        Denoising with it would be silently mis-scaled, and fine-tuning it would
        re-save it labelled with the current normalisation, hiding the mismatch.
        """
        if self.normalization != NORMALIZATION:
            raise TgdpetError(
                f"{name} was trained with intensity normalisation {self.normalization} (tgdpet {self.version}), but "
                f"this tgdpet applies {NORMALIZATION}; retrain the model with this tgdpet, or run it with tgdpet "
                f"{self.version}."
            )


def _unwrap(model: torch.nn.Module) -> DnCNN:
    """The DnCNN inside a DistributedDataParallel or torch.compile wrapper."""
    model = getattr(model, "module", model)
    model = getattr(model, "_orig_mod", model)
    if not isinstance(model, DnCNN):
        raise TypeError(f"save_model expects a tgdpet DnCNN, got {type(model).__name__}.")
    return model


def save_model(
    path: str | os.PathLike,
    model: torch.nn.Module,
    *,
    preset: str | None = None,
    masks: dict | None = None,
    masks_history: list[dict] | None = None,
    provenance: dict | None = None,
    normalization: dict | None = None,
) -> Path:
    """Write ``model`` and its record to ``path`` atomically (replacing an existing file).

    ``masks_history`` defaults to ``[masks]`` when only ``masks`` is given.
    ``provenance`` is any JSON-serialisable dict (non-JSON values are written
    as their ``str``). Callers decide about overwriting (see
    :func:`tgdpet.files.check_can_write`).
    """
    net = _unwrap(model)
    if masks_history is None:
        masks_history = [masks] if masks is not None else []
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": net.config.to_dict(),
        "preset": preset,
        "normalization": dict(normalization if normalization is not None else NORMALIZATION),
        "masks": masks_to_lists(check_masks(net, masks)) if masks is not None else None,
        "masks_history": [masks_to_lists(check_masks(net, m)) for m in masks_history],
        "provenance": dict(provenance or {}),
        "tgdpet_version": __version__,
        "torch_version": torch.__version__,
    }
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in net.state_dict().items()}
    dest = Path(path)
    with atomic_file(dest) as tmp:
        safetensors.torch.save_file(tensors, tmp, metadata={"tgdpet": json.dumps(meta, default=str)})
    return dest


def _what_it_is(path: Path) -> str:
    """What a file that is not a safetensors model is, from its first bytes, for the refusal to name."""
    with open(path, "rb") as f:
        head = f.read(352)
    if head[344:348] in (b"n+1\0", b"ni1\0") or head[4:8] in (b"n+2\0", b"ni2\0"):
        return "a NIfTI image"
    if head[:2] == b"\x1f\x8b":
        return "a gzip file (a .nii.gz image?)"
    if head[128:132] == b"DICM":
        return "a DICOM file"
    return "damaged or in another format"


def _read_header(path: Path) -> dict:
    """The safetensors JSON header of ``path``, after checking it fits the file; refuses non-safetensors files."""
    if not path.is_file():
        raise TgdpetError(f"model file {path} does not exist; check the path.")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise TgdpetError(f"{path} is not a tgdpet model file: it is only {size} bytes long.")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(size - 8, _MAX_HEADER_BYTES):
            if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch.save zip, or a bare pickle
                raise TgdpetError(
                    f"{path} is a PyTorch pickle checkpoint, which tgdpet refuses to load because unpickling can "
                    "run code; if you trust it, load it in Python with torch.load(..., weights_only=True), put the "
                    "weights in a tgdpet.models.DnCNN and write it with tgdpet.checkpoint.save_model."
                )
            kind = _what_it_is(path)
            if not kind.startswith("damaged"):
                raise TgdpetError(f"{path} is {kind}, not a tgdpet model file; pass a model written by tgdpet train.")
            raise TgdpetError(
                f"{path} is not a complete safetensors model file (its header claims {header_len} bytes, the file "
                f"has {size}); the file is truncated or in another format."
            )
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except (UnicodeDecodeError, ValueError):
        raise TgdpetError(
            f"{path} is {_what_it_is(path)}, not a tgdpet model file (its safetensors header is not readable); "
            "pass a model written by tgdpet train, or copy the model file again."
        ) from None
    _check_data_extent(path, header, data_bytes=size - 8 - header_len)
    return header


def _tensor_extent(info: Any) -> tuple[int, int] | None:
    """``(begin, end)`` of a tensor's bytes when its header entry is self-consistent, else None."""
    try:
        begin, end = (int(v) for v in info["data_offsets"])
        nbytes = math.prod(int(s) for s in info["shape"]) * _DTYPE_BYTES[info["dtype"]]
    except (KeyError, TypeError, ValueError):
        return None
    return (begin, end) if 0 <= begin <= end and end - begin == nbytes else None


def _check_data_extent(path: Path, header: dict, data_bytes: int) -> None:
    """Refuse a header whose tensors do not tile the rest of the file exactly, end to end (truncation, damage).

    Overlapping or gapped tensors are refused here, in a sentence: safetensors refuses them too, when it reads
    them, with an error of its own.
    """
    extents = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        extent = _tensor_extent(info)
        if extent is None:
            raise TgdpetError(f"{path} has a damaged safetensors header (tensor {name!r}); re-save the model.")
        extents.append(extent)
    end = 0
    for begin, stop in sorted(extents):
        if begin != end:
            raise TgdpetError(
                f"{path} has a damaged safetensors header (its tensors overlap or leave gaps); copy the model file "
                "again or re-save the model."
            )
        end = stop
    if end != data_bytes:
        raise TgdpetError(
            f"{path} is truncated or damaged: its header describes {end} bytes of tensors but the file holds "
            f"{data_bytes}; copy the model file again."
        )


def _tgdpet_metadata(path: Path, header: dict) -> dict:
    """The tgdpet metadata of a header, with the type of every entry loading relies on checked."""
    metadata = header.get("__metadata__") or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise TgdpetError(
            f"{path} has a damaged safetensors header (its metadata is not a map of strings); copy the model file "
            "again or re-save the model."
        )
    raw = metadata.get("tgdpet")
    if raw is None:
        raise TgdpetError(
            f"{path} is a safetensors file but not a tgdpet model (it has no tgdpet metadata); use a model written "
            "by tgdpet train or tgdpet.checkpoint.save_model."
        )
    try:
        meta = json.loads(raw)
    except ValueError:
        raise TgdpetError(f"{path} has unreadable tgdpet metadata; re-save the model with tgdpet.") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise TgdpetError(f"{path} is not a tgdpet model file (its metadata format is not {FORMAT!r}).")
    if meta.get("format_version") != FORMAT_VERSION:
        raise TgdpetError(
            f"{path} has model format version {meta.get('format_version')!r}, but this tgdpet ({__version__}) "
            f"reads version {FORMAT_VERSION}; use a tgdpet release that matches the file."
        )
    for key, kind in _META_TYPES.items():
        if meta.get(key) is not None and not isinstance(meta[key], kind):
            raise TgdpetError(
                f"{path} has damaged tgdpet metadata ({key!r} is a {type(meta[key]).__name__}, not a "
                f"{kind.__name__}); the file was edited or is not a tgdpet model, re-save the model with tgdpet."
            )
    return meta


def _check_tensors_match(path: Path, header: dict, model: DnCNN) -> None:
    """Compare tensor names and shapes in the header with what the recorded architecture needs."""
    expected = model.state_dict()
    stored = {k: v for k, v in header.items() if k != "__metadata__"}
    missing = sorted(set(expected) - set(stored))
    unexpected = sorted(set(stored) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise TgdpetError(
            f"{path} does not match its recorded architecture (tensors {detail}); the file is damaged or was "
            "edited, re-save the model."
        )
    for name, t in expected.items():
        shape = tuple(stored[name]["shape"])
        if shape != tuple(t.shape) or (t.is_floating_point() and stored[name]["dtype"] not in _FLOAT_DTYPES):
            raise TgdpetError(
                f"{path} does not match its recorded architecture: tensor {name} is {stored[name]['dtype']} "
                f"{list(shape)}, expected a {list(t.shape)} tensor; the file is damaged or was edited."
            )


def _masks_from_json(path: Path, model: DnCNN, value: Any) -> Masks:
    try:
        if not isinstance(value, dict):
            raise ValueError("masks must be a JSON object")
        return check_masks(model, value)
    except (ValueError, TypeError) as e:
        raise TgdpetError(f"{path} has TGD masks that do not fit its network ({e}); re-save the model.") from None


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> ModelRecord:
    """Read a tgdpet model file into a :class:`ModelRecord`; the model is on ``device``, in eval mode."""
    path = Path(path)
    header = _read_header(path)
    meta = _tgdpet_metadata(path, header)
    try:
        config = DnCNNConfig.from_dict(meta["architecture"])
    except (KeyError, TypeError, ValueError) as e:
        raise TgdpetError(f"{path} records an invalid architecture ({e}); re-save the model.") from None
    with torch.device("meta"):  # shapes only: a forged architecture allocates nothing
        _check_tensors_match(path, header, DnCNN(config, init=False))
    model = DnCNN(config, init=False)
    tensors = safetensors.torch.load_file(path)
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise TgdpetError(
                f"{path} holds NaN or infinite values in {name}: the file is damaged or the training run that "
                "wrote it diverged; copy it again, or use an earlier checkpoint of that run."
            )
    model.load_state_dict(tensors)
    model.to(device).eval()
    masks = meta.get("masks")
    return ModelRecord(
        model=model,
        config=config,
        preset=meta.get("preset"),
        masks=_masks_from_json(path, model, masks) if masks is not None else None,
        masks_history=[_masks_from_json(path, model, m) for m in meta.get("masks_history") or []],
        provenance=dict(meta.get("provenance") or {}),
        normalization=dict(meta.get("normalization") or NORMALIZATION),
        version=str(meta.get("tgdpet_version", "unknown")),
    )


# --------------------------------------------------------------------------- training state


def capture_rng_state() -> dict:
    """Python, numpy and torch (CPU and every CUDA device) RNG states, as values ``weights_only`` loading accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, keys.tolist(), int(pos), int(has_gauss), float(cached)),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    """Undo :func:`capture_rng_state`: later random draws repeat those after the capture."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(path: str | os.PathLike, state: dict) -> Path:
    """Write resumable training state atomically; refuse values that ``weights_only`` loading could not read.

    ``state`` may hold tensors, optimizer/scheduler ``state_dict()`` s,
    :func:`capture_rng_state` output, and plain Python values (numbers,
    strings, lists, tuples, dicts, None). The file is read back before it
    replaces ``path``, so an unloadable state never overwrites a good one.
    """
    dest = Path(path)
    payload = {"format": STATE_FORMAT, "format_version": STATE_FORMAT_VERSION, "state": state}
    with atomic_file(dest) as tmp:
        torch.save(payload, tmp)
        try:
            torch.load(tmp, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any refusal means the state would not resume
            raise TypeError(
                f"training state holds values that cannot be loaded safely (use tensors and plain Python values): {e}"
            ) from None
    return dest


def load_training_state(path: str | os.PathLike) -> dict:
    """Read a state written by :func:`save_training_state` (tensors land on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise TgdpetError(f"training state {path} does not exist; check the --resume path.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - torch raises many types for foreign or damaged files
        raise TgdpetError(
            f"{path} is not a readable tgdpet training state (damaged, truncated, or holding objects tgdpet refuses "
            "to unpickle); resume from another state or start afresh."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != STATE_FORMAT:
        raise TgdpetError(f"{path} is not a tgdpet training state; pass the training_state file of a tgdpet run.")
    if payload.get("format_version") != STATE_FORMAT_VERSION:
        raise TgdpetError(
            f"{path} has training-state version {payload.get('format_version')!r}, but this tgdpet reads version "
            f"{STATE_FORMAT_VERSION}; start the run afresh."
        )
    return payload["state"]
