"""SHA-256 digests: of files, and in RFC 9530 ``Repr-Digest`` / tus ``Upload-Checksum`` form."""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from pathlib import Path

_BYTE_SEQUENCE = re.compile(r"^:([^:]*):(?:;.*)?$")  # an RFC 8941 byte sequence, parameters ignored


def file_sha256(path: str | Path) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return hashlib.file_digest(f, "sha256").digest()


def repr_digest(digest: bytes) -> str:
    """``sha-256=:<base64>:``, the RFC 9530 dictionary member for SHA-256."""
    return f"sha-256=:{base64.b64encode(digest).decode()}:"


def parse_repr_digest(header: str | None) -> bytes | None:
    """The SHA-256 member of a ``Repr-Digest``/``Content-Digest`` field, or None if it has none.

    Raises ValueError when the member is there but is not a base64 SHA-256 digest.
    """
    if not header:
        return None
    for member in header.split(","):
        key, _, value = member.partition("=")
        if key.strip() == "sha-256":
            match = _BYTE_SEQUENCE.match(value.strip())
            if match is None:
                raise ValueError("sha-256 value must be a byte sequence :<base64>:")
            return _decode(match.group(1))
    return None


DIGEST_SIZES = {"sha1": 20, "sha256": 32}


def parse_upload_checksum(header: str) -> tuple[str, bytes]:
    """tus ``Upload-Checksum: <algorithm> <base64>`` → (algorithm, digest bytes); ValueError if malformed."""
    parts = header.strip().split(" ")
    if len(parts) != 2:
        raise ValueError("Upload-Checksum must be '<algorithm> <base64 digest>'")
    algorithm, encoded = parts
    try:
        digest = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("Upload-Checksum digest is not base64") from None
    algorithm = algorithm.lower()
    if algorithm in DIGEST_SIZES and len(digest) != DIGEST_SIZES[algorithm]:
        raise ValueError(f"an Upload-Checksum {algorithm} digest has {DIGEST_SIZES[algorithm]} bytes, not {len(digest)}")
    return algorithm, digest


def _decode(encoded: str) -> bytes:
    try:
        digest = base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise ValueError("digest is not base64") from None
    if len(digest) != hashlib.sha256().digest_size:
        raise ValueError("sha-256 digest must be 32 bytes")
    return digest
