"""NIfTI in and out.

nibabel gives arrays ``(x, y, z[, t])`` in Fortran order; tgdpet's ``(z, y, x)``
C-order array is the same memory, so reading is a transpose and writing is a
transposed view. Outputs keep the source header (intent, units, descrip
history...) and its qform/sform codes, and are always float32 with
``scl_slope = 1, scl_inter = 0``: nibabel itself would write NaN there, which
some older readers turn into an all-NaN image.
"""

from __future__ import annotations

import re
import zlib
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.openers import ImageOpener
from nibabel.spatialimages import HeaderDataError
from nibabel.volumeutils import array_to_file

from ..errors import TgdpetError
from ..files import atomic_file
from .volume import Volume, check_voxel_count, out_of_memory

NIFTI_SUFFIXES = (".nii", ".nii.gz")

#: DEFLATE never compresses better than ~1032:1, so a .nii.gz cannot hold more
#: voxel bytes than this many times its own size.
_MAX_DEFLATE_RATIO = 1100

_UNITS_NOTE = re.compile(r"units=([A-Za-z0-9]+)")

_READ_ERRORS = (ImageFileError, HeaderDataError, OSError, EOFError, ValueError, zlib.error)

#: Millimetres per spatial unit of the NIfTI header (xyzt_units); "unknown" is read as mm, as every tool does.
_MM_PER_UNIT = {"unknown": 1.0, "mm": 1.0, "meter": 1000.0, "micron": 0.001}


def is_nifti_name(path: str | Path) -> bool:
    """True for ``*.nii`` and ``*.nii.gz`` (case-insensitive)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _damaged(path: Path, err: BaseException) -> TgdpetError:
    return TgdpetError(f"{path} is not a readable NIfTI file ({err}); check it was copied completely, or re-export it.")


def _check_size(path: Path, header: nib.Nifti1Header, shape: tuple[int, ...]) -> None:
    """Refuse a header whose voxels cannot fit in the file, before anything is allocated."""
    needed = int(np.prod(shape, dtype=np.float64)) * header.get_data_dtype().itemsize
    size = path.stat().st_size
    if str(path).lower().endswith(".gz"):
        if needed > _MAX_DEFLATE_RATIO * size:
            raise TgdpetError(
                f"{path} declares {needed:,} bytes of voxels, more than a {size:,}-byte .nii.gz can hold; "
                "the header is damaged, re-export the image."
            )
    elif needed + int(header.get_data_offset()) > size:
        raise TgdpetError(
            f"{path} is truncated: its header declares {needed:,} bytes of voxels but the file holds {size:,} bytes; "
            "copy it again or re-export it."
        )


def _pick_frame(path: Path, shape: tuple[int, ...], frame: int | None) -> tuple[int, ...]:
    """Check dimensionality and the frame asked for; return the 3-D shape that will be read."""
    if len(shape) < 3:
        raise TgdpetError(f"{path} is a {len(shape)}-D image {shape}; tgdpet needs a 3-D volume.")
    if len(shape) > 4:
        raise TgdpetError(
            f"{path} is a {len(shape)}-D image {shape}; tgdpet reads 3-D volumes or one frame of a 4-D series."
        )
    if min(shape) < 1:
        raise TgdpetError(f"{path} declares an empty image {shape}; the header is damaged, re-export the image.")
    frames = shape[3] if len(shape) == 4 else 1
    if frame is None:
        if frames > 1:
            raise TgdpetError(
                f"{path} is 4-D with {frames} frames; pick one with --frame N, 0 <= N < {frames} (tgdpet denoise "
                "and inspect), or save the frame to use as a 3-D image."
            )
    elif not 0 <= frame < frames:
        raise TgdpetError(
            f"frame {frame} does not exist in {path}, which has {frames} frame(s); use 0 to {frames - 1}."
        )
    return shape[:3]


def _check_voxel_size(path: Path, header: nib.Nifti1Header, affine: np.ndarray) -> None:
    """Refuse a file that does not say how large its voxels are.

    ``header`` must be the file's header as stored: when neither qform nor
    sform is set, nibabel replaces a zero pixdim by 1 mm with only a log
    message, and the image would be denoised as 1 mm voxels.
    """
    no_transform = int(header["qform_code"]) == 0 and int(header["sform_code"]) == 0
    pixdim = [float(v) for v in header["pixdim"][1:4]]
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    bad_pixdim = no_transform and not all(np.isfinite(v) and v > 0 for v in pixdim)
    if bad_pixdim or not np.isfinite(affine).all() or not (spacing > 1e-6).all():
        where = "pixdim " + " x ".join(f"{v:g}" for v in pixdim) + (" and no qform or sform" if no_transform else "")
        raise TgdpetError(
            f"{path} records no usable voxel size ({where}); re-export the image with its voxel size in mm "
            "(or set it, e.g. with fslchpixdim)."
        )


def _affine_mm(path: Path, header: nib.Nifti1Header, affine: np.ndarray) -> np.ndarray:
    """The affine in mm: nibabel returns it in the header's spatial unit, which may be metres or microns."""
    unit = header.get_xyzt_units()[0]
    if unit not in _MM_PER_UNIT:
        raise TgdpetError(f"{path} gives its spatial unit as {unit!r}; re-export it in mm, m or microns.")
    scaled = affine.copy()
    scaled[:3, :] *= _MM_PER_UNIT[unit]
    return scaled


def _stored_header(path: Path) -> nib.Nifti1Header | nib.Nifti2Header | None:
    """The header exactly as stored (no fixes applied), or ``None`` when it is not a NIfTI-1/2 header."""
    for cls in (nib.Nifti1Header, nib.Nifti2Header):
        try:
            with ImageOpener(str(path), "rb") as f:
                header = cls.from_fileobj(f, check=False)
        except _READ_ERRORS:
            continue
        if header["magic"].tobytes().rstrip(b"\0") in (b"n+1", b"ni1", b"n+2", b"ni2"):
            return header
    return None


def read_nifti(path: Path, frame: int | None = None) -> Volume:
    """Read a 3-D NIfTI file (or one frame of a 4-D one) into a :class:`Volume`."""
    stored = _stored_header(path)
    if stored is not None:  # refused before nibabel silently turns a zero voxel size into 1 mm
        _check_voxel_size(path, stored, stored.get_best_affine())
    try:
        img = nib.load(str(path))
    except _READ_ERRORS as e:
        raise _damaged(path, e) from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise TgdpetError(f"{path} is not a NIfTI image; give a .nii or .nii.gz file.")
    header = img.header
    _check_voxel_size(path, header, img.affine)
    if header.get_data_dtype().kind not in "iuf":
        raise TgdpetError(
            f"{path} stores its voxels as {header.get_data_dtype()}, not as real numbers; tgdpet reads PET images "
            "stored as integers or floating point, re-export the image that way."
        )
    shape = tuple(int(s) for s in header.get_data_shape())
    shape3 = _pick_frame(path, shape, frame)
    check_voxel_count(shape3, path)
    _check_size(path, header, shape)
    try:
        xyz = np.asarray(img.dataobj[..., frame or 0] if len(shape) == 4 else img.dataobj)
        data = np.array(xyz.transpose(2, 1, 0), dtype=np.float32, order="C", copy=True)
    except _READ_ERRORS as e:
        raise _damaged(path, e) from None
    except MemoryError:
        raise out_of_memory(shape3[::-1], path) from None
    note = _UNITS_NOTE.search(header["descrip"].tobytes().decode("latin-1"))
    return Volume(
        data=data,
        affine=_affine_mm(path, header, img.affine),
        units=note.group(1).upper() if note else "BQML",
        source_format="nifti",
        nifti_header=header.copy(),
        source_paths=(path,),
    )


def _output_header(volume: Volume, like: Volume | None, description: str) -> nib.Nifti1Header | nib.Nifti2Header:
    """The header to write: the source's (codes, units, intent kept) or a new one."""
    source = volume.nifti_header if volume.nifti_header is not None else (like.nifti_header if like else None)
    if source is None:
        hdr = nib.Nifti1Header()
        hdr.set_xyzt_units("mm", "sec")
        qcode = scode = 1  # scanner coordinates
    else:
        hdr = source.copy()  # NIfTI-1 stays NIfTI-1, NIfTI-2 stays NIfTI-2
        qcode, scode = int(source["qform_code"]), int(source["sform_code"])
        hdr.set_xyzt_units("mm", source.get_xyzt_units()[1])  # the affine below is in mm (read_nifti)
    same_place = source is not None and source.get_xyzt_units()[0] in ("mm", "unknown") and np.allclose(
        volume.affine, source.get_best_affine(), rtol=0.0, atol=1e-4
    )
    step = float(hdr["pixdim"][4])  # set_data_shape resets the time step; write_nifti_frames needs the source's
    hdr.set_data_shape(volume.data.shape[::-1])
    hdr["pixdim"][4] = step if np.isfinite(step) and step > 0 else 1.0
    hdr.set_data_dtype(np.float32)
    hdr.set_sform(volume.affine, code=scode)
    if not same_place:  # else the source's qform is kept as it was, even where it disagrees with its sform
        hdr.set_qform(volume.affine, code=qcode)
    hdr.set_slope_inter(1.0, 0.0)
    hdr["cal_min"] = hdr["cal_max"] = 0.0  # the source's display range no longer applies
    hdr["vox_offset"] = 0  # recomputed from the extensions on write
    note = f"; units={volume.units}"
    hdr["descrip"] = (description.encode("ascii", "replace")[: 79 - len(note)] + note.encode()).decode()
    return hdr


def write_nifti(volume: Volume, path: Path, *, like: Volume | None, description: str) -> None:
    """Write ``volume`` as float32 NIfTI (gzipped for ``.nii.gz``), atomically.

    The units travel in ``descrip`` (``...; units=BQML``) because NIfTI has no
    field for activity units; :func:`read_nifti` reads them back.
    """
    hdr = _output_header(volume, like, description)
    suffix = ".nii.gz" if str(path).lower().endswith(".gz") else ".nii"
    with atomic_file(path, suffix=suffix) as tmp:
        with ImageOpener(str(tmp), "wb") as f:
            hdr.write_to(f)
            xyz = volume.data.transpose(2, 1, 0)  # a view: (z, y, x) C-order is (x, y, z) F-order
            array_to_file(xyz, f, hdr.get_data_dtype(), offset=int(hdr["vox_offset"]), order="F")


def nifti_units_note(path: Path) -> str | None:
    """The units a NIfTI file records in tgdpet's ``descrip`` note (``units=SUV``), or None when it has none."""
    try:
        header = nib.load(str(path)).header
    except _READ_ERRORS as e:
        raise _damaged(path, e) from None
    note = _UNITS_NOTE.search(header["descrip"].tobytes().decode("latin-1"))
    return note.group(1).upper() if note else None


def nifti_frame_count(path: Path) -> int:
    """How many time frames a NIfTI file holds (1 for a 3-D image), from its header alone."""
    try:
        shape = nib.load(str(path)).header.get_data_shape()
    except _READ_ERRORS as e:
        raise _damaged(path, e) from None
    return int(shape[3]) if len(shape) == 4 else 1


def write_nifti_frames(frames: Sequence[Volume], path: Path, *, like: Volume | None, description: str) -> None:
    """Write equally shaped frames as one 4-D float32 NIfTI (time last), atomically, with the source's header.

    The source header's time step and units are kept (``pixdim[4]``, ``xyzt_units``); frame timing beyond
    that lives where the source kept it (a BIDS sidecar, say).
    """
    first = frames[0]
    if any(f.data.shape != first.data.shape for f in frames):
        raise TgdpetError("the frames of a dynamic image must all have one shape; this is a bug, please report it.")
    hdr = _output_header(first, like, description)
    z, y, x = first.data.shape
    step = float(hdr["pixdim"][4])  # the source's (_output_header): set_data_shape resets it
    hdr.set_data_shape((x, y, z, len(frames)))
    hdr["pixdim"][4] = step
    suffix = ".nii.gz" if str(path).lower().endswith(".gz") else ".nii"
    with atomic_file(path, suffix=suffix) as tmp:
        with ImageOpener(str(tmp), "wb") as f:
            hdr.write_to(f)
            xyzt = np.stack([fr.data.transpose(2, 1, 0) for fr in frames], axis=-1)
            array_to_file(xyzt, f, hdr.get_data_dtype(), offset=int(hdr["vox_offset"]), order="F")
