"""The skip rule's probe (``converter_common.skip_rules``): ffprobe of a source's head, or of the source itself."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

from converter_common.skip_rules import SourceFacts, facts_from_ffprobe

log = logging.getLogger("converter.worker")


def probe_facts(ffprobe: str, path: Path, total_size: int) -> SourceFacts | None:
    """The source's video facts; None when ffprobe is missing or cannot tell (a head without the index): the
    rule then does not skip."""
    if shutil.which(ffprobe) is None:
        return None
    try:
        result = subprocess.run([ffprobe, "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
                                 str(path)], capture_output=True, text=True, timeout=60)
        data = json.loads(result.stdout or "{}") if result.returncode == 0 else {}
    except (OSError, subprocess.TimeoutExpired, ValueError) as exc:
        log.info("skip rule: cannot probe %s (%s)", path.name, exc)
        return None
    return facts_from_ffprobe(data, total_size)
