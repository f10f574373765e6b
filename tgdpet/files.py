"""Atomic outputs: a file or folder appears complete under its name, or not at all.

Writers write into a hidden temporary sibling in the same directory (so the
final ``os.replace`` is a rename on one filesystem), fsync, then rename. A
crash or ``kill -9`` leaves at most a ``.tmp-*`` sibling, never a half-written
output under the real name. Such leftovers are hidden, never read back by
tgdpet (its readers skip hidden entries) and safe to delete; the temporary's
name records host and process, and the next write of the same output deletes
the leftovers of processes that are gone.

The temporary files are created private (``mkstemp`` makes them 0600) and get
the permissions an ordinary ``open()`` would give (0666 or 0777 less the
umask) before they are renamed: outputs are shared like any other file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from .errors import TgdpetError

#: Failures of the machine rather than of tgdpet: said in one sentence, like a user error.
_ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EACCES: "permission denied",
    errno.EPERM: "the operation is not permitted",
    errno.EROFS: "the file system is read-only",
    errno.EIO: "an input/output error occurred",
}


def environment_error(e: OSError, where: Path) -> TgdpetError | None:
    """The one-sentence error for an OSError the machine caused while writing ``where``, else ``None``."""
    what = _ENVIRONMENT_ERRNOS.get(e.errno) if e.errno is not None else None
    if what is None:
        return None
    return TgdpetError(
        f"cannot write {where}: {what} ({e.strerror}); nothing was written under that name, "
        "free space or choose an output where you can write."
    )


def check_writable_folder(folder: Path) -> None:
    """Refuse a folder tgdpet could not write into, before any work: by trying, as permissions alone do not tell
    (root, read-only mounts, ACLs)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".tmp-tgdpet-probe-", dir=folder)
    except OSError as e:
        raise TgdpetError(
            f"cannot write into the folder {folder} ({e.strerror}); choose an output in a folder you can write to."
        ) from None
    os.close(fd)
    os.unlink(probe)


def check_not_current_folder(path: str | os.PathLike) -> None:
    """Refuse an output that is the current folder or holds it: replacing it would pull the folder out from under
    the user's shell (and ``Path('.')`` has no name to write a temporary sibling by)."""
    here = Path.cwd().resolve()
    target = Path(path).resolve()
    if target == here or target in here.parents:
        raise TgdpetError(
            f"the output {path} is the current folder or holds it, which an output replaces whole; "
            "name a new folder for it (e.g. out)."
        )


def is_empty_folder(path: str | os.PathLike) -> bool:
    """A folder holding nothing: made ready for an output (``mkdir out``), so filling it replaces nothing."""
    p = Path(path)
    return p.is_dir() and not any(p.iterdir())


def check_can_write(path: str | os.PathLike, overwrite: bool, folder: bool = False) -> Path:
    """Refuse to clobber an existing output unless ``overwrite``; check the parent exists and can be written.

    ``folder``: the output is a folder (:func:`atomic_dir`), and an empty one already there is taken as is.
    """
    p = Path(path)
    if p.exists() and not overwrite and not (folder and is_empty_folder(p)):
        raise TgdpetError(f"{p} already exists; pass --overwrite to replace it or choose another output name.")
    if p.exists():
        check_not_current_folder(p)
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise TgdpetError(f"the output folder {parent} does not exist; create it first.")
    check_writable_folder(parent)
    return p


def check_replaceable(folder: Path, ours: Callable[[Path], bool], what: str) -> None:
    """Refuse to replace a folder that holds anything but ``what`` tgdpet wrote (``ours`` tells them).

    ``--overwrite`` replaces an output folder whole; a folder that also holds
    someone's own files is not an earlier output, and deleting it would lose them.
    """
    if not folder.is_dir():
        return
    foreign = sorted(p.name for p in folder.iterdir() if not ours(p))
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise TgdpetError(
            f"{folder} holds {len(foreign)} file(s) that are not {what} ({shown}); --overwrite replaces only "
            "tgdpet's own outputs, so choose another output name."
        )


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


def _temp_prefix(dest: Path) -> str:
    """``.tmp-<name>-<host>.<pid>-``: whose temporary it is, so a later write can tell a killed writer's leftover."""
    return f".tmp-{dest.name}-{socket.gethostname()}.{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(dest: Path) -> None:
    """Delete the leftovers of earlier writes of ``dest`` whose process, on this machine, is gone (``kill -9``).

    Only temporaries of this very output name, written on this host, by a
    process that no longer exists: never another writer's work in progress.
    """
    pattern = re.compile(re.escape(f".tmp-{dest.name}-{socket.gethostname()}.") + r"(\d+)-")
    for entry in (dest.parent if str(dest.parent) else Path(".")).iterdir():
        match = pattern.match(entry.name)
        if match is None or _alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


@contextlib.contextmanager
def _said_once(dest: Path) -> Iterator[None]:
    """Turn an OSError the machine caused (full disk, no permission) into its one-sentence error."""
    try:
        yield
    except OSError as e:
        said = environment_error(e, dest)
        if said is None:
            raise
        raise said from e


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path to write; on success it is fsynced and renamed to ``path``.

    ``suffix`` lets writers that pick a format from the name (``.nii.gz``) see it.
    """
    dest = Path(path)
    with _said_once(dest):
        remove_stale_temporaries(dest)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(dest), suffix=suffix, dir=dest.parent or ".")
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
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        if isinstance(e, OSError) and (said := environment_error(e, dest)) is not None:
            raise said from e
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder to fill; on success it replaces ``path`` in one rename.

    With ``overwrite`` an existing folder (without it, an empty one) is moved
    aside first and removed only after the new one is in place.
    """
    check_not_current_folder(path)
    dest = Path(path)
    with _said_once(dest):
        remove_stale_temporaries(dest)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(dest), dir=dest.parent or "."))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        old = None
        if dest.exists():
            if not overwrite and not is_empty_folder(dest):
                raise TgdpetError(f"{dest} already exists; pass --overwrite to replace it.")
            old = dest.with_name(f".old-{dest.name}-{os.getpid()}")
            os.replace(dest, old)
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and (said := environment_error(e, dest)) is not None:
            raise said from e
        raise
