"""Reading ECAT 7 PET files (``*.v``, CTI/Siemens HR+ and HRRT era) through nibabel.

nibabel applies each frame's scale factor and the main header's calibration
factor, and gives the affine; tgdpet takes one frame as a :class:`Volume`.
ECAT cannot be written: results of an ECAT input are written as NIfTI.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.wrapstruct import WrapStructError

from ..errors import TgdpetError
from .volume import Volume, check_voxel_count, out_of_memory

#: What every ECAT 7 file starts with (the main header's magic number).
ECAT_MAGIC = b"MATRIX7"

#: ECAT ``data_units`` strings -> tgdpet units.
_UNITS = {"bq/cc": "BQML", "bq/ml": "BQML", "ecat counts": "CNTS", "counts": "CNTS"}


def is_ecat(path: Path) -> bool:
    """True for an ECAT 7 file, told by its magic number rather than its name."""
    try:
        with open(path, "rb") as f:
            return f.read(len(ECAT_MAGIC)) == ECAT_MAGIC
    except OSError:
        return False


#: What nibabel raises on a damaged or truncated ECAT file (a short header block, a buffer too small for the
#: declared matrix, ...): every one is the file's fault, said in one sentence.
_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, IndexError, TypeError, WrapStructError)


def _damaged(path: Path, err: BaseException) -> TgdpetError:
    reason = " ".join(str(err).split())  # nibabel's messages run over several lines
    return TgdpetError(f"{path} is a damaged ECAT file ({reason}); copy it again or re-export it.")


def read_ecat(path: Path, frame: int | None = None) -> Volume:
    """One frame of an ECAT 7 file (the only one, or ``frame``) as a :class:`Volume` in its calibrated units."""
    try:
        holder = nib.FileHolder(filename=str(path))  # nib.ecat.load would insist on a .v name
        img = nib.ecat.EcatImage.from_file_map({"image": holder, "header": holder})
        shape = tuple(int(s) for s in img.shape)
    except _READ_ERRORS as e:
        raise _damaged(path, e) from None
    frames = shape[3] if len(shape) == 4 else 1
    if frame is None and frames > 1:
        raise TgdpetError(f"{path} holds {frames} time frames; pick one with --frame N, 0 <= N < {frames}.")
    index = frame or 0
    if not 0 <= index < frames:
        raise TgdpetError(f"frame {index} does not exist in {path}, which has {frames} frame(s); use 0 to {frames - 1}.")
    check_voxel_count(shape[:3], path)
    try:
        xyz = img.get_fdata()[..., index] if len(shape) == 4 else img.get_fdata()
        affine = img.get_frame_affine(index) if len(shape) == 4 else img.affine
    except _READ_ERRORS as e:
        raise _damaged(path, e) from None
    except MemoryError:
        raise out_of_memory(shape[:3][::-1], path) from None
    units_text = img.header["data_units"].item().decode("latin-1").strip("\x00 ").lower()
    return Volume(
        data=np.ascontiguousarray(xyz.transpose(2, 1, 0), dtype=np.float32),
        affine=affine,
        units=_UNITS.get(units_text, units_text.upper() or "BQML"),
        source_format="ecat",
        source_paths=(path,),
    )
