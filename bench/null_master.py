#!/usr/bin/env python3
"""``converter-master`` whose received bodies go to /dev/null unhashed: the software overhead alone (up_raw).

bench/transfer.py runs it for the ``up_raw`` row, which the issue defines as "to a null sink, verification
off". Everything else is the real master: Tornado, the upload handlers, the store, the commit (of an
empty file). Only the writer that the handlers get from ``Services.receive_writer`` is swapped.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from converter_common.background_file_writer import BatchWriter  # noqa: E402
from master.main import main  # noqa: E402


class NullWriter(BatchWriter):
    """The master's BatchWriter, writing into /dev/null and hashing nothing."""

    def __init__(self, _fd: int, _hashers, **options) -> None:
        self._null = os.open(os.devnull, os.O_WRONLY)
        super().__init__(self._null, (), **{**options, "direct": False})

    def _release(self, then_close: object) -> None:
        super()._release(then_close)
        os.close(self._null)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], receive_writer=NullWriter))
