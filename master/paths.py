"""Confine client-given paths to the storage root.

Every refusal is an ``ApiError`` (400 ``invalid_path``, or ``source_not_found``): no string a client
can send makes these functions raise anything else (symlink loops, over-long names, bytes that are
not UTF-8 and the like included), and no message names a directory outside the storage root.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path, PurePosixPath

from master.errors import INVALID_PATH, SOURCE_NOT_FOUND, ApiError

NAME_MAX = 255  # bytes in one path component (Linux, and every filesystem the master runs on)
PATH_MAX = 4096  # bytes in a whole path, as Linux counts them
_CONTROL = {chr(c) for c in range(0x20)} | {"\x7f"}

# what the filesystem says about a client's path → why we refuse it
_REFUSED = {
    errno.ELOOP: "goes through a symbolic link loop",
    errno.ENAMETOOLONG: "is too long for the filesystem",
    errno.EACCES: "is not accessible to the master",
    errno.EPERM: "is not accessible to the master",
}


def resolve_in_root(root: Path, relative: object, field: str) -> Path:
    """Return the absolute path of ``relative`` under ``root``; refuse anything that could leave it.

    Refused (400 ``invalid_path``): non-strings, empty, NUL or other control characters, backslashes,
    strings that are not valid Unicode (lone surrogates), absolute paths, ``~``, ``..`` components,
    a component over ``NAME_MAX`` bytes or a path over ``PATH_MAX`` bytes, symlink loops, and paths
    whose resolved form (following symlinks) is outside the root or is the root itself.
    """
    if not isinstance(relative, str) or not relative.strip():
        raise INVALID_PATH.error(f"{field} must be a non-empty relative path")
    if "\x00" in relative:
        raise INVALID_PATH.error(f"{field} contains a NUL byte")
    if any(ch in _CONTROL for ch in relative):
        raise INVALID_PATH.error(f"{field} contains a control character")
    try:
        encoded = relative.encode("utf-8")
    except UnicodeEncodeError:
        raise INVALID_PATH.error(f"{field} is not valid Unicode (lone surrogate)") from None
    if len(encoded) > PATH_MAX:
        raise INVALID_PATH.error(f"{field} is longer than {PATH_MAX} bytes")
    if "\\" in relative:
        raise INVALID_PATH.error(f"{field} must use '/' between folders, not '\\'")
    pure = PurePosixPath(relative)
    if pure.is_absolute() or relative.startswith("~"):
        raise INVALID_PATH.error(f"{field} must be relative to the storage root")
    if ".." in pure.parts:
        raise INVALID_PATH.error(f"{field} must not contain '..'")
    if any(len(part.encode("utf-8")) > NAME_MAX for part in pure.parts):
        raise INVALID_PATH.error(f"{field} has a file or folder name longer than {NAME_MAX} bytes")
    real_root = root.resolve()
    try:
        candidate = (real_root / pure).resolve()
    except RuntimeError:  # Python < 3.13: "Symlink loop from ..."
        raise INVALID_PATH.error(f"{field} goes through a symbolic link loop") from None
    except OSError as exc:
        raise _refused(exc, field) from None
    if candidate != real_root and real_root not in candidate.parents:
        raise INVALID_PATH.error(f"{field} leaves the storage root (through a symlink)")
    if candidate == real_root:
        raise INVALID_PATH.error(f"{field} must name a file, not the storage root")
    if len(os.fsencode(candidate)) > PATH_MAX:  # a short name whose symlinks expand past the limit
        raise INVALID_PATH.error(f"{field} is too long once its symbolic links are followed")
    return candidate


def storage_relative(root: Path, absolute: Path) -> str:
    return os.path.relpath(absolute, root.resolve())


def require_file(path: Path, field: str) -> int:
    """Size of the regular file at ``path``; 400 when it is missing, not a file, or unreachable."""
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        raise SOURCE_NOT_FOUND.error(f"{field} does not exist in storage") from None
    except OSError as exc:
        raise _refused(exc, field) from None
    if not stat.S_ISREG(st.st_mode):
        raise INVALID_PATH.error(f"{field} is not a regular file")
    return st.st_size


def check_output_parent(path: Path, field: str = "output_path", root: Path | None = None) -> None:
    """400 ``invalid_path`` unless every existing ancestor of ``path`` is a directory.

    For submission: an output whose parent (or grandparent...) is a regular file could never be
    written, so the job is refused now rather than failing its upload later. ``path`` is what
    ``resolve_in_root`` returned; ``root`` (optional) stops the walk at the storage root.
    Folders that do not exist yet are fine: they are created when the output is stored.
    """
    stop = root.resolve() if root is not None else None
    for ancestor in path.parents:
        if stop is not None and ancestor == stop:
            return
        try:
            st = os.stat(ancestor)
        except (FileNotFoundError, NotADirectoryError):
            continue  # not there yet (or under a file, which the walk up will find)
        except OSError as exc:
            raise _refused(exc, field) from None
        if stat.S_ISDIR(st.st_mode):
            return  # the nearest existing ancestor is a folder, so every one above it is too
        where = ancestor.name if stop is None else storage_relative(stop, ancestor)
        raise INVALID_PATH.error(f"{field} cannot be created: {where!r} is a file, not a folder")


def _refused(exc: OSError, field: str) -> ApiError:
    reason = _REFUSED.get(exc.errno, f"cannot be used ({exc.strerror or exc.__class__.__name__})")
    return INVALID_PATH.error(f"{field} {reason}")


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
