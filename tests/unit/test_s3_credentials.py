"""Where the master finds the keys it signs bucket requests with: the configured file, else the AWS chain."""

from __future__ import annotations

import pytest

from master.config import S3Config
from master.sigv4 import Credentials
from master.storage import s3_credentials


def credentials_file(path, body: str):
    path.write_text(body)
    path.chmod(0o600)
    return path


def test_the_configured_file_comes_first(tmp_path):
    path = credentials_file(tmp_path / "keys", "[default]\naws_access_key_id = A\naws_secret_access_key = S\n")
    environ = {"AWS_ACCESS_KEY_ID": "env", "AWS_SECRET_ACCESS_KEY": "env"}
    assert s3_credentials(S3Config(credentials_file=path), environ) == Credentials("A", "S")


def test_the_environment_keys_come_next_with_a_session_token():
    environ = {"AWS_ACCESS_KEY_ID": "A", "AWS_SECRET_ACCESS_KEY": "S", "AWS_SESSION_TOKEN": "T"}
    assert s3_credentials(S3Config(), environ) == Credentials("A", "S", "T")


def test_then_the_shared_file_and_its_profile(tmp_path):
    path = credentials_file(tmp_path / "shared", "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n"
                            "[farm]\naws_access_key_id = F\naws_secret_access_key = FS\naws_session_token = FT\n")
    environ = {"AWS_SHARED_CREDENTIALS_FILE": str(path)}
    assert s3_credentials(S3Config(), environ) == Credentials("D", "DS")
    assert s3_credentials(S3Config(), {**environ, "AWS_PROFILE": "farm"}) == Credentials("F", "FS", "FT")


def test_no_keys_anywhere_is_a_one_line_error(tmp_path):
    with pytest.raises(ValueError, match="no credentials") as error:
        s3_credentials(S3Config(), {"AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "absent")})
    assert "\n" not in str(error.value)


def test_a_profile_missing_from_the_file_names_it(tmp_path):
    path = credentials_file(tmp_path / "shared", "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n")
    with pytest.raises(ValueError, match=r"\[nightly\]"):
        s3_credentials(S3Config(), {"AWS_SHARED_CREDENTIALS_FILE": str(path), "AWS_PROFILE": "nightly"})
