"""User paths that cannot be created or written: one place that turns `OSError` into `UserError`.

A run directory under a file, on a read-only or full file system, behind a symlink loop or
without permission is the user's to fix, so it must read as one message naming the path, what
is wrong and how to fix it (exit 2), never as a traceback. `user_path_error` does the mapping;
`ensure_dir`, `atomic_write_text`/`atomic_write_bytes` and the `writing` context use it, and the
CLI uses it as a last net for any other write that failed with one of these errors.

Artifact writes are atomic (a temporary file in the same folder, flushed, then `os.replace`):
a kill, a full disk or a failed write never leaves a torn file and never loses the previous one.
Why by hand: the standard library has the pieces (`os.replace`, `tempfile`) but no helper that
combines them with these error messages.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from protege.errors import UserError

# errno -> (what is wrong, how to fix it). These are problems of the user's paths or machine.
_FIXES: dict[int, tuple[str, str]] = {
    errno.EACCES: ("permission denied", "choose a folder you can write to, or fix its permissions (chmod/chown)"),
    errno.EPERM: ("operation not permitted", "choose a folder you can write to (not a system or special folder)"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder",
                    "move or rename that file, or choose another path"),
    errno.EISDIR: ("a folder is where a file is expected", "remove or rename that folder, or choose another path"),
    errno.EEXIST: ("a file already exists where a folder is expected",
                   "move or rename that file, or choose another path"),
    errno.EROFS: ("the file system is read-only", "choose a path on a writable disk"),
    errno.ENOSPC: ("no space left on the device", "free some space, or choose a path on another disk"),
    errno.EDQUOT: ("disk quota exceeded", "free some space, or choose a path on another disk"),
    errno.ELOOP: ("too many levels of symbolic links (a symlink loop)", "fix or remove the symlink"),
    errno.ENAMETOOLONG: ("the path is too long", "choose a shorter path"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.EFBIG: ("the file is too large for this file system", "choose a path on another disk"),
}
# Errors that always mean "the user's path or machine" (ENOENT can also be a bug: not in the CLI net).
USER_PATH_ERRNOS = frozenset(_FIXES) - {errno.ENOENT}


def user_path_error(err: OSError, path: str | Path | None = None, action: str = "write") -> UserError:
    """A UserError for an OSError on a user path: the path, what is wrong, and the fix."""
    where = path if path is not None else (err.filename or "?")
    what, fix = _FIXES.get(err.errno or -1, (err.strerror or str(err), "check the path and the disk"))
    detail = f" ({err.filename})" if err.filename and str(err.filename) != str(where) else ""
    return UserError(f"cannot {action} {where}: {what}{detail}", hint=f"Fix: {fix}.")


@contextmanager
def writing(path: str | Path, action: str = "write") -> Iterator[None]:
    """Run the block; an OSError inside becomes a UserError naming `path`."""
    try:
        yield
    except OSError as err:
        raise user_path_error(err, path, action) from None


def ensure_dir(path: str | Path) -> Path:
    """Create `path` (and parents) if needed and check that it is a writable folder."""
    p = Path(path)
    with writing(p, "create the folder"):
        p.mkdir(parents=True, exist_ok=True)
    if not os.access(p, os.W_OK | os.X_OK):
        # access(2) reports EROFS for read-only mounts and EACCES for permissions.
        ro = _is_read_only(p)
        err = OSError(errno.EROFS if ro else errno.EACCES, os.strerror(errno.EROFS if ro else errno.EACCES))
        raise user_path_error(err, p, "write to the folder")
    return p


def check_dir_creatable(path: str | Path) -> None:
    """Raise the UserError `ensure_dir` would, without creating anything.

    For checks before a run starts (before a teacher is asked or a model is loaded): the folder
    exists and is writable, or its nearest existing ancestor is a writable folder.
    """
    p = Path(path)
    for candidate in (p, *p.parents):
        try:
            is_dir = candidate.is_dir()
            exists = is_dir or candidate.exists() or candidate.is_symlink()
        except OSError as err:  # e.g. ELOOP
            raise user_path_error(err, candidate, "use the folder") from None
        if not exists:
            continue
        if not is_dir:
            if candidate.is_symlink():  # a dangling link or a link loop
                try:
                    candidate.stat()
                except OSError as err:
                    raise user_path_error(err, candidate, "use the folder") from None
            code = errno.EEXIST if candidate == p else errno.ENOTDIR
            raise user_path_error(OSError(code, os.strerror(code), str(candidate)), p, "create the folder")
        if not os.access(candidate, os.W_OK | os.X_OK):
            code = errno.EROFS if _is_read_only(candidate) else errno.EACCES
            raise user_path_error(OSError(code, os.strerror(code), str(candidate)), p, "create the folder")
        return


def _is_read_only(p: Path) -> bool:
    try:
        return bool(os.statvfs(p).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` atomically (temp file in the same folder, fsync, rename)."""
    p = Path(path)
    with writing(p):
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.exists() and not p.is_file():
            # A folder, a device (/dev/null), a pipe: a rename would replace it, so refuse.
            code = errno.EISDIR if p.is_dir() else errno.EEXIST
            raise UserError(f"cannot write {p}: it exists and is not a regular file "
                            f"({os.strerror(code).lower()})", hint="Fix: choose another path.")
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        try:
            # mkstemp makes the file 0600; give it the mode a plain open() would (or the replaced file's own).
            os.fchmod(fd, p.stat().st_mode & 0o7777 if p.exists() else 0o666 & ~_umask())
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    return p


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """`atomic_write_bytes` for text."""
    return atomic_write_bytes(path, text.encode(encoding))
