"""Put a finished file at its final name only if nothing is there: never replace what another job wrote.

``renameat2(RENAME_NOREPLACE)`` moves the file in one step and fails with EEXIST when the name is taken;
where the kernel or filesystem refuses that call, a hard link (which also fails with EEXIST) and an unlink
of the temp name do the same, leaving at worst a temp name behind after a crash, which start-up removes.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)


def place_new(temp: Path, destination: Path) -> None:
    """Rename ``temp`` to ``destination``; ``FileExistsError`` (and ``temp`` left alone) when it exists."""
    if _renameat2 is not None:
        result = _renameat2(_AT_FDCWD, os.fsencode(temp), _AT_FDCWD, os.fsencode(destination), _RENAME_NOREPLACE)
        if result == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise OSError(code, os.strerror(code), str(destination))
    os.link(temp, destination)
    os.unlink(temp)
