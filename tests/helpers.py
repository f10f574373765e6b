"""Small synthetic PET volumes, NIfTI files and DICOM series for tests.

Import from any test module (pytest puts ``tests/`` on ``sys.path``)::

    from helpers import make_volume, write_test_series, write_test_nifti, tree_snapshot
"""

from __future__ import annotations

import datetime as dt
import gzip
import hashlib
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pydicom
import torch

from tgdpet.checkpoint import save_model
from tgdpet.inputs import intensity_scale
from tgdpet.io import Volume, write_volume
from tgdpet.models import DnCNN, build_model


#: What test images are described as (a scan's description, as scanners write one).
TEST_DESCRIPTION = "PET WB test scan"


def suv_meta(**overrides) -> dict:
    """Acquisition facts of a typical FDG scan (70 kg, 370 MBq, scan 60 min after injection)."""
    meta = {
        "patient_weight_kg": 70.0,
        "injected_dose_bq": 3.7e8,
        "half_life_s": 6586.2,
        "injection_datetime": dt.datetime(2024, 3, 5, 9, 0, 0),
        "series_datetime": dt.datetime(2024, 3, 5, 10, 0, 0),
        "decay_correction": "START",
        "corrected_image": ("ATTN", "DECY"),
        "frame_duration_s": 120.0,
    }
    meta.update(overrides)
    return meta


def make_volume(
    shape: tuple[int, int, int] = (8, 16, 16),
    spacing: tuple[float, float, float] = (2.0, 2.5, 3.0),
    origin: tuple[float, float, float] = (-15.0, -20.0, -10.0),
    *,
    units: str = "BQML",
    meta: dict | None = None,
    affine: np.ndarray | None = None,
) -> Volume:
    """A smooth positive activity volume in Bq/mL: gradients along every axis plus a hot blob.

    ``spacing`` and ``origin`` are along (x, y, z) in RAS mm (ignored when
    ``affine`` is given); every slice has a different maximum so per-slice
    DICOM scaling is exercised. ``meta`` defaults to :func:`suv_meta`.
    """
    z, y, x = np.mgrid[0 : shape[0], 0 : shape[1], 0 : shape[2]].astype(np.float64)
    centre = np.array(shape, float) / 2
    blob = np.exp(-((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2) / 8.0)
    data = 2000.0 + 150.0 * x + 60.0 * y + 400.0 * z + 20000.0 * blob
    if affine is None:
        affine = np.diag([*spacing, 1.0])
        affine[:3, 3] = origin
    return Volume(data=data.astype(np.float32), affine=affine, units=units, meta=suv_meta() if meta is None else meta)


def write_test_series(folder: str | Path, volume: Volume | None = None, **write_kwargs) -> list[Path]:
    """Write a DICOM PET series (from scratch unless the volume came from DICOM); return its files, sorted.

    Described as a scan, not as tgdpet's default "tgdpet denoised": batch denoising passes over its own results.
    """
    write_kwargs.setdefault("description", TEST_DESCRIPTION)
    write_volume(volume if volume is not None else make_volume(), folder, **write_kwargs)
    return sorted(Path(folder).iterdir())


def write_dynamic_series(
    static: list[Path], folder: str | Path, number: Callable[[pydicom.Dataset, int, int], None], frames: int = 2
) -> Path:
    """A dynamic series in ``folder``: the slice files ``static`` repeated as ``frames`` 60 s frames told apart by
    FrameReferenceTime, each slice numbered by ``number(ds, frame, slice)``; the folder."""
    folder = Path(folder)
    folder.mkdir()
    for f in range(frames):
        for k, path in enumerate(static):
            ds = pydicom.dcmread(path)
            ds.SOPInstanceUID = pydicom.uid.generate_uid()
            ds.FrameReferenceTime = str(60000 * f)
            ds.ActualFrameDuration = 60000
            ds.NumberOfTimeSlices = frames
            ds.SeriesType = ["DYNAMIC", "IMAGE"]
            number(ds, f, k)
            ds.save_as(folder / f"f{f}_{k}.dcm", enforce_file_format=True)
    return folder


def write_test_nifti(path: str | Path, volume: Volume | None = None, **write_kwargs) -> Path:
    """Write a NIfTI file (``.nii`` or ``.nii.gz``) of ``volume`` or :func:`make_volume`, described as a scan."""
    write_kwargs.setdefault("description", TEST_DESCRIPTION)
    return write_volume(volume if volume is not None else make_volume(), path, **write_kwargs)


def tree_snapshot(root: str | Path) -> dict[str, tuple[int, str]]:
    """Every file under ``root`` (hidden ones included) with its size and hash: compare before/after."""
    root = Path(root)
    return {
        str(p.relative_to(root)): (p.stat().st_size, hashlib.sha1(p.read_bytes()).hexdigest())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def trained_like_model(in_slices: int = 3, seed: int = 0) -> DnCNN:
    """A tiny DnCNN in eval mode whose BN statistics, biases and noise estimate are far from their initial values.

    The last conv is scaled up so the predicted noise is ~10-30 % of the
    image, as in a trained model; with the initial 1e-3 weights the network
    would be the identity and every comparison would pass trivially.
    """
    torch.manual_seed(seed)
    model = build_model("tiny", in_slices=in_slices)
    with torch.no_grad():
        for bn in model.bns:
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.3, 3.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
        for conv in model.convs:
            conv.bias.uniform_(-0.1, 0.1)
        torch.nn.init.kaiming_normal_(model.convs[-1].weight)
        model.convs[-1].weight.mul_(0.3)
    return model.eval()


def lying_nifti(path: Path, shape: tuple[int, ...]) -> Path:
    """A small NIfTI file whose header claims ``shape``."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.float32)
    hdr["vox_offset"] = 352
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(hdr.binaryblock + b"\0" * 4 + b"\0" * 4096)
    return path


def stats_model(seed: int = 0) -> DnCNN:
    """A tiny DnCNN with random biases and BatchNorm statistics, so that "unchanged" is a real claim."""
    torch.manual_seed(seed)
    model = build_model("tiny")
    with torch.no_grad():
        for conv in model.convs:
            conv.bias.uniform_(-0.1, 0.1)
        for bn in model.bns:
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
        model.convs[-1].weight.normal_(0, 0.1)
    return model


def random_batch(seed: int = 1, n: int = 4, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (3 slices) and noisy targets."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    return x, x + 0.1 * torch.randn(n, 3, size, size, generator=g)


def alternating_masks(model: DnCNN) -> dict[int, torch.Tensor]:
    """Every layer but the last has both retrained (even) and frozen (odd) channels."""
    masks = {i: torch.arange(c.out_channels) % 2 == 0 for i, c in enumerate(model.convs)}
    masks[len(model.convs) - 1] = torch.zeros(model.convs[-1].out_channels, dtype=torch.bool)
    return masks


def reference_denoise(model, volume: np.ndarray, normalize: bool = True) -> np.ndarray:
    """The definition: per slice, the centre of model(edge-replicated stack / s) * s, eager fp32."""
    s = intensity_scale(volume) if normalize else 1.0
    r = model.config.in_slices // 2
    padded = np.pad(volume, ((r, r), (0, 0), (0, 0)), mode="edge")
    out = np.empty_like(volume)
    with torch.no_grad():
        for k in range(volume.shape[0]):
            stack = torch.from_numpy(padded[k : k + 2 * r + 1] / s)[None]
            out[k] = model(stack)[0, r].numpy() * s
    return out


def identity_model(path: Path) -> Path:
    """A network whose noise estimate is exactly 0 (last conv zeroed), so it returns its input."""
    torch.manual_seed(0)
    model = build_model("tiny")
    with torch.no_grad():
        model.convs[-1].weight.zero_()
        model.convs[-1].bias.zero_()
    return save_model(path, model, preset="tiny")


def in_plane_mean(denoise, volume: np.ndarray) -> np.ndarray:
    """TTA by hand: ``denoise`` each of the 8 in-plane turns and transposes of a (z, y, x) volume, undo, average."""
    total = np.zeros(volume.shape)
    for k in range(4):
        for transpose in (False, True):
            turned = np.rot90(volume, k, axes=(1, 2))
            out = denoise(np.ascontiguousarray(turned.transpose(0, 2, 1) if transpose else turned))
            total += np.rot90(out.transpose(0, 2, 1) if transpose else out, -k, axes=(1, 2))
    return total / 8


def rel_rms(a: np.ndarray, b: np.ndarray) -> float:
    """Relative RMS difference of ``a`` from ``b``."""
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - b) ** 2) / np.mean(np.asarray(b, np.float64) ** 2)))
