"""Atomic outputs: a file or folder appears complete under its name, or not at all.

Writers write into a hidden temporary sibling in the same directory (so the
final ``os.replace`` is a rename on one filesystem), fsync, then rename. A
crash or ``kill -9`` leaves at most a ``.tmp-*`` sibling, never a half-written
output under the real name. Such leftovers are hidden, never read back by
tgdpet (its readers skip hidden entries) and safe to delete.

The temporary files are created private (``mkstemp`` makes them 0600) and get
the permissions an ordinary ``open()`` would give (0666 or 0777 less the
umask) before they are renamed: outputs are shared like any other file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import TgdpetError


def check_can_write(path: str | os.PathLike, overwrite: bool) -> Path:
    """Refuse to clobber an existing output unless ``overwrite``; check the parent exists."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise TgdpetError(f"{p} already exists; pass --overwrite to replace it or choose another output name.")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise TgdpetError(f"the output folder {parent} does not exist; create it first.")
    return p


def _umask() -> int:
    """The process umask (reading it means setting it; the restrictive stand-in is never looser)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed to ``path``.

    ``suffix`` lets writers that pick a format from the name (``.nii.gz``) see it.
    """
    dest = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{dest.name}-", suffix=suffix, dir=dest.parent or ".")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # After the writer: some (safetensors) replace the temporary file with a new, private one.
        os.chmod(tmp_path, 0o666 & ~_umask())
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, dest)
        _fsync_dir(dest.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it replaces ``path`` in one rename.

    With ``overwrite`` an existing folder is moved aside first and removed only
    after the new one is in place.
    """
    dest = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent or "."))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        old = None
        if dest.exists():
            if not overwrite:
                raise TgdpetError(f"{dest} already exists; pass --overwrite to replace it.")
            old = dest.with_name(f".old-{dest.name}-{os.getpid()}")
            os.replace(dest, old)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
