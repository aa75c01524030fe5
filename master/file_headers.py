"""Headers of the video files the master serves: Content-Type by extension, RFC 6266 Content-Disposition,
and the one byte range a request may ask for."""

from __future__ import annotations

import mimetypes
import re
import urllib.parse

_VIDEO_TYPES = {
    ".mp4": "video/mp4",
    ".m4v": "video/mp4",
    ".mkv": "video/x-matroska",
    ".webm": "video/webm",
    ".mov": "video/quicktime",
    ".avi": "video/x-msvideo",
    ".ts": "video/mp2t",
    ".m2ts": "video/mp2t",
    ".mpg": "video/mpeg",
    ".mpeg": "video/mpeg",
    ".flv": "video/x-flv",
    ".wmv": "video/x-ms-wmv",
    ".ogv": "video/ogg",
}
_UNSAFE_IN_QUOTED = re.compile(r'[^\x20-\x7e]|["\\%]')


def content_type_for(name: str) -> str:
    suffix = name[name.rfind("."):].lower() if "." in name else ""
    return _VIDEO_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"


def attachment_disposition(name: str) -> str:
    """``attachment; filename="<ASCII fallback>"; filename*=UTF-8''<percent-encoded>`` (RFC 6266 §4.3).

    Control characters (CR, LF, ...) never reach the header: the fallback replaces them and the
    extended form percent-encodes them, so a file name cannot inject headers.
    """
    fallback = _UNSAFE_IN_QUOTED.sub("_", name) or "download"
    encoded = urllib.parse.quote(name, safe="")
    if fallback == name:
        return f'attachment; filename="{fallback}"'
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


class RangeNotSatisfiable(Exception):
    pass


def parse_byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The (first, last) byte of a single ``Range: bytes=...`` request, or None to send the whole file.

    Multiple ranges and other units are ignored (RFC 9110 §14.2 lets a server do so).
    Raises RangeNotSatisfiable when the one range asked for lies outside the file.
    """
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    spec = header[len("bytes="):].strip()
    first, sep, last = spec.partition("-")
    if not sep or not (first.isdigit() or last.isdigit()) or (first and not first.isdigit()) or (
            last and not last.isdigit()):
        return None
    if not first:  # suffix range: the last N bytes
        length = int(last)
        if length == 0 or size == 0:
            raise RangeNotSatisfiable()
        return max(0, size - length), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        raise RangeNotSatisfiable()
    return start, end
