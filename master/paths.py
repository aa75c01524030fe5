"""Confine client-given paths to the storage root."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from master.errors import bad_request


def resolve_in_root(root: Path, relative: object, field: str) -> Path:
    """Return the absolute path of ``relative`` under ``root``; refuse anything that could leave it.

    Refused: non-strings, empty, NUL bytes, absolute paths, ``..`` components, and paths whose
    resolved form (following symlinks) is outside the root.
    """
    if not isinstance(relative, str) or not relative.strip():
        raise bad_request("invalid_path", f"{field} must be a non-empty relative path")
    if "\x00" in relative or len(relative) > 4096:
        raise bad_request("invalid_path", f"{field} contains a NUL byte or is too long")
    pure = PurePosixPath(relative)
    if pure.is_absolute() or relative.startswith("~"):
        raise bad_request("invalid_path", f"{field} must be relative to the storage root")
    if ".." in pure.parts:
        raise bad_request("invalid_path", f"{field} must not contain '..'")
    real_root = root.resolve()
    candidate = (real_root / pure).resolve()
    if candidate != real_root and real_root not in candidate.parents:
        raise bad_request("invalid_path", f"{field} leaves the storage root (through a symlink)")
    if candidate == real_root:
        raise bad_request("invalid_path", f"{field} must name a file, not the storage root")
    return candidate


def storage_relative(root: Path, absolute: Path) -> str:
    return os.path.relpath(absolute, root.resolve())


def require_file(path: Path, field: str) -> int:
    """Size of the regular file at ``path``; 400 when it is missing or not a file."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise bad_request("source_not_found", f"{field} does not exist in storage") from None
    if not path.is_file():
        raise bad_request("invalid_path", f"{field} is not a regular file")
    return st.st_size



def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
