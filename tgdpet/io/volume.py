"""The in-memory PET volume every tgdpet module passes around.

A :class:`Volume` holds the voxels in the toolkit's order ``(z, y, x)`` as
float32, the NIfTI-style affine (voxel ``(x, y, z, 1)`` -> RAS+ mm), the
intensity units, and enough of its source (the NIfTI header, or the DICOM
slice headers without pixel data) to write a result back "like" the input:
same header codes, same patient, study and frame of reference.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset

from ..errors import TgdpetError

#: Largest volume tgdpet reads or writes (4 GiB of float32): a header claiming
#: more is refused before anything is allocated. Whole-body PET is ~10^8 voxels.
MAX_VOXELS = 2**30

#: Keys of :attr:`Volume.meta` that SUV and the DICOM writer understand, with the
#: DICOM attribute each one comes from (used to name what is missing).
META_TAGS = {
    "patient_weight_kg": "PatientWeight (0010,1030)",
    "injected_dose_bq": "RadionuclideTotalDose (0018,1074)",
    "half_life_s": "RadionuclideHalfLife (0018,1075)",
    "injection_datetime": "RadiopharmaceuticalStartDateTime (0018,1078) or RadiopharmaceuticalStartTime (0018,1072)",
    "series_datetime": "SeriesDate (0008,0021) and SeriesTime (0008,0031)",
    "decay_correction": "DecayCorrection (0054,1102)",
    "corrected_image": "CorrectedImage (0028,0051)",
    "frame_duration_s": "ActualFrameDuration (0018,1242)",
}


@dataclass
class Volume:
    """A 3-D PET image with its geometry, units and source.

    Attributes:
        data: voxel values, float32, shape ``(z, y, x)`` (slice, row, column).
        affine: 4x4 float64 mapping voxel ``(x, y, z, 1)`` to RAS+ millimetres.
        units: intensity units: ``"BQML"`` (Bq/mL), ``"SUV"`` (SUV body weight,
            DICOM ``GML``), ``"CNTS"``, or another DICOM Units term.
        source_format: ``"nifti"``, ``"dicom"`` or ``None`` (made in memory).
        nifti_header: the source NIfTI header (kept so outputs keep its codes).
        dicom_headers: one source DICOM dataset per z index, without pixel data.
        source_paths: the file(s) read: one NIfTI file, or one DICOM file per z.
        meta: acquisition facts when known; keys are those of :data:`META_TAGS`
            (weight in kg, dose in Bq, half-life in s, naive ``datetime`` values).
    """

    data: np.ndarray
    affine: np.ndarray
    units: str = "BQML"
    source_format: str | None = None
    nifti_header: nib.Nifti1Header | nib.Nifti2Header | None = None
    dicom_headers: tuple[Dataset, ...] = ()
    source_paths: tuple[Path, ...] = ()
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data = np.ascontiguousarray(self.data, dtype=np.float32)
        self.affine = np.array(self.affine, dtype=np.float64)
        if self.data.ndim != 3:
            raise ValueError(f"Volume.data must be 3-D (z, y, x), got shape {self.data.shape}")
        if self.affine.shape != (4, 4):
            raise ValueError(f"Volume.affine must be 4x4, got shape {self.affine.shape}")
        if self.dicom_headers and len(self.dicom_headers) != self.data.shape[0]:
            raise ValueError("Volume.dicom_headers must hold one dataset per slice")
        self.dicom_headers = tuple(self.dicom_headers)
        self.source_paths = tuple(Path(p) for p in self.source_paths)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(z, y, x)`` voxel counts."""
        return tuple(int(n) for n in self.data.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along ``(x, y, z)``, the affine's column lengths."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    def with_data(self, data: np.ndarray, *, units: str | None = None) -> Volume:
        """A copy holding ``data`` (same shape) and the same geometry, source and meta.

        This is how a processed image (a denoised volume) stays writable "like"
        its input without the caller touching headers.
        """
        data = np.asarray(data)
        if data.shape != self.data.shape:
            raise ValueError(f"new data has shape {data.shape}, the volume has {self.data.shape}")
        return dataclasses.replace(self, data=data, units=units or self.units, meta=dict(self.meta))


def check_voxel_count(shape: tuple[int, ...], where: object) -> None:
    """Refuse a header that claims more voxels than tgdpet will allocate."""
    n = int(np.prod([int(s) for s in shape], dtype=np.float64))
    if n > MAX_VOXELS:
        raise TgdpetError(
            f"{where} declares {n:,} voxels ({' x '.join(str(s) for s in shape)}), more than the "
            f"{MAX_VOXELS:,} tgdpet reads; the header is probably damaged, re-export the image."
        )


def out_of_memory(shape: tuple[int, ...], where: object) -> TgdpetError:
    """The error for a volume within :data:`MAX_VOXELS` that still does not fit in memory.

    That is the user's data meeting their machine (or the process's memory
    limit), not a bug, so it is said in one sentence rather than a traceback.
    """
    gib = float(np.prod(shape, dtype=np.float64)) * 4 / 2**30
    return TgdpetError(
        f"{where} needs {gib:.1f} GiB of memory for its {' x '.join(str(s) for s in shape)} voxels, more than "
        "this machine could give; free memory or use a machine with more."
    )


def allocate(shape: tuple[int, ...], where: object) -> np.ndarray:
    """An uninitialised float32 array for a volume of ``shape``, or :func:`out_of_memory`'s error."""
    try:
        return np.empty(shape, np.float32)
    except MemoryError:
        raise out_of_memory(shape, where) from None


def check_finite(data: np.ndarray, where: object, allow_nonfinite: bool) -> None:
    """Refuse NaN/Inf voxels, which would silently poison normalisation and training."""
    if allow_nonfinite:
        return
    bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if bad:
        raise TgdpetError(
            f"{where} holds {bad:,} NaN or infinite voxels; replace them (e.g. by 0, in the software that made "
            "the image) and save the image again."
        )
