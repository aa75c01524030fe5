import base64
import hashlib

import pytest

from converter_common.digest import parse_repr_digest, parse_upload_checksum, repr_digest

DIGEST = hashlib.sha256(b"x").digest()
B64 = base64.b64encode(DIGEST).decode()


def test_round_trip():
    assert parse_repr_digest(repr_digest(DIGEST)) == DIGEST


def test_sha256_member_among_others():
    assert parse_repr_digest(f"sha-512=:AAAA:, sha-256=:{B64}:") == DIGEST


def test_absent_header_or_member():
    assert parse_repr_digest(None) is None
    assert parse_repr_digest("sha-512=:AAAA:") is None


@pytest.mark.parametrize("bad", ["sha-256=:not base64!:", "sha-256=abc", "sha-256=:AAAA:"])
def test_malformed_sha256_member_is_an_error(bad):
    with pytest.raises(ValueError):
        parse_repr_digest(bad)


def test_tus_upload_checksum():
    assert parse_upload_checksum(f"sha256 {B64}") == ("sha256", DIGEST)
    with pytest.raises(ValueError):
        parse_upload_checksum("sha256")
