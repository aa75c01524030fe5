"""Shared-storage mode: the one naming rule master and worker must agree on."""

from __future__ import annotations

from pathlib import PurePosixPath

SHARED_TEMP_PREFIX = ".converter-shared-"


def shared_temp_path(job_id: str, output_path: str) -> str:
    """Where a shared-storage worker writes a job's output before the master renames it into place:
    beside the output (same filesystem, so the rename is atomic), keeping its extension for FFmpeg."""
    output = PurePosixPath(output_path)
    return str(output.parent / f"{SHARED_TEMP_PREFIX}{job_id}{output.suffix}")
