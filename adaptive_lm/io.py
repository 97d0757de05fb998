"""Atomic file and folder writes: a kill at any moment leaves either the old content or the new,
never half of one. Files: write a temp file in the same folder, fsync, rename over. Folders:
build ``NAME.tmp-XXXX`` completely, then swap it in (the old folder is moved aside to
``NAME.old-XXXX`` and deleted only after the new one is in place; ``recover_folder`` puts it
back if a kill struck between the two renames, and readers call it first).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_output(path, *, force: bool = False, inputs=(), flag: str = "-o") -> Path:
    """Refuse, before any work, an output file that cannot or must not be written: its folder is
    missing or not a folder, it is a folder, it is one of ``inputs``, or it exists and not
    ``force`` (pass ``force=True`` for commands that overwrite by design). Returns it as a Path."""
    from .errors import UsageError
    path = Path(path)
    parent = path.resolve().parent
    if not parent.exists():
        raise UsageError(f"{flag} {path}: no such folder {parent}")
    if not parent.is_dir():
        raise UsageError(f"{flag} {path}: {parent} is not a folder")
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder: give a file name")
    if any(path.resolve() == Path(i).resolve() for i in inputs):
        raise UsageError(f"{flag} {path}: the output would overwrite the input")
    if path.is_symlink() and not path.exists():
        raise UsageError(f"{flag} {path} is a broken symbolic link: remove it or choose another name")
    if path.exists() and not path.is_file():
        raise UsageError(f"{flag} {path} is not a regular file: give a file name")
    if path.exists() and not force:
        raise UsageError(f"{path} exists: pass --force to overwrite it, or choose another {flag}")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{flag} {path}: the folder {parent} is not writable")
    return path


def check_output_folder(path, *, flag: str = "--out") -> Path:
    """Refuse, before any work, an output folder that is an existing file or whose parent is not a folder."""
    from .errors import UsageError
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file: give a folder")
    for up in [path.resolve(), *path.resolve().parents]:
        if up.exists():
            if not up.is_dir():
                raise UsageError(f"{flag} {path}: {up} is not a folder")
            if not os.access(up, os.W_OK):
                raise UsageError(f"{flag} {path}: the folder {up} is not writable")
            break
    return path


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically; an OS failure (unwritable place, a folder in the way)
    is one error line (AdaptiveLMError), with nothing left behind."""
    from .errors import AdaptiveLMError
    path = Path(path)
    try:
        _atomic_write(path, data)
    except OSError as e:
        raise AdaptiveLMError(f"cannot write {path} ({e.strerror or e})") from None


def _atomic_write(path: Path, data: bytes) -> None:
    if path.is_symlink() and path.is_file():      # a link to a regular file stays a link: its target is replaced
        path = Path(os.path.realpath(path))
    old = path.stat() if path.is_file() else None
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, old.st_mode & 0o777 if old else 0o666 & ~_umask())   # mkstemp makes 0600; keep an
        if old is not None:                                                 # overwritten file's mode (not
            with contextlib.suppress(OSError):                              # setuid) and, where allowed, group
                os.chown(tmp, -1, old.st_gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_folder(path, *, keep_others=None):
    """``with atomic_folder(p) as tmp: write files into tmp`` — on success tmp becomes p. What the old
    p held that tmp does not (files a user or another command put there) is deleted, or, with
    ``keep_others`` (a folder path), moved there."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    recover_folder(path)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.chmod(tmp, 0o777 & ~_umask())              # mkdtemp makes 0700; give the usual mode
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=path.name + ".old-", dir=path.parent))
        os.rmdir(old)
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        others = sorted(set(os.listdir(old)) - set(os.listdir(path)))
        if keep_others is not None and others:
            keep = Path(keep_others)
            keep.mkdir(parents=True, exist_ok=True)
            for name in others:
                os.replace(old / name, keep / name)
        shutil.rmtree(old, ignore_errors=True)


def recover_folder(path) -> bool:
    """If a kill struck between the two renames of ``atomic_folder`` (``NAME`` moved aside to
    ``NAME.old-*``, the new one not yet in place), put the previous complete folder back."""
    path = Path(path)
    if path.exists() or not path.parent.is_dir():
        return False
    olds = sorted(path.parent.glob(path.name + ".old-*"), key=lambda p: p.stat().st_mtime)
    if not olds:
        return False
    os.replace(olds[-1], path)
    return True


def read_json(path, error: type, *, missing: str = "no such file", bad: str = "is not JSON"):
    """The JSON in a file, or ``error`` (an exception class) with one clear line: missing file, or
    not JSON (the parser's reason appended)."""
    p = Path(path)
    if p.is_dir():
        raise error(f"{p} is a folder, not a file")
    if not p.is_file():
        raise error(f"{p}: {missing}")
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{p} {bad} ({e})") from None
