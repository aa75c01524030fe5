"""master.object_store against a real S3 server (SeaweedFS): what the object-storage backend will rely on.

A worker sends a file as presigned part PUTs that carry each part's SHA-256; the store refuses a corrupted
part; after a cut the master learns which parts are stored; presigned GETs serve ranges; an expired URL is
refused in a way a client can tell; an aborted upload leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import requests

from tests.fixtures import free_port, wait_for
from master.object_store import (MIN_PART_SIZE, ObjectStore, ObjectStoreError, ObjectStoreUnavailable,
                                  S3Settings)

pytestmark = pytest.mark.integration


@pytest.fixture
def store(seaweedfs):
    return ObjectStore(S3Settings(endpoint=seaweedfs.endpoint, bucket=seaweedfs.bucket, access_key=seaweedfs.access_key,
                                  secret_key=seaweedfs.secret_key, prefix=seaweedfs.prefix(),
                                  presign_expiry=300, part_size=MIN_PART_SIZE))


def put_part(store: ObjectStore, key: str, upload_id: str, number: int, data: bytes, sent: bytes | None = None):
    part = store.presigned_part(key, upload_id, number, hashlib.sha256(data).digest())
    return requests.put(part.url, data=data if sent is None else sent, headers=part.headers, timeout=30)


def test_a_file_sent_as_checksummed_parts_is_stored_whole(store):
    key = store.key("out/a.mp4")
    parts = [os.urandom(MIN_PART_SIZE), os.urandom(1234)]
    upload_id = store.start_upload(key)
    for number, data in enumerate(parts, 1):
        assert put_part(store, key, upload_id, number, data).status_code == 200
    store.complete(key, upload_id, store.stored_parts(key, upload_id))
    assert requests.get(store.presigned_get(key), timeout=30).content == b"".join(parts)
    assert store.head(key).size == MIN_PART_SIZE + 1234
    assert store.open_uploads() == []


def test_the_store_refuses_a_corrupted_part_and_takes_it_resent(store):
    key = store.key("out/b.mp4")
    data = os.urandom(100_000)
    upload_id = store.start_upload(key)
    corrupted = bytearray(data)
    corrupted[5000] ^= 0x01
    refused = put_part(store, key, upload_id, 1, data, sent=bytes(corrupted))
    assert refused.status_code == 400 and "BadDigest" in refused.text
    assert store.stored_parts(key, upload_id) == []
    assert put_part(store, key, upload_id, 1, data).status_code == 200
    store.complete(key, upload_id, store.stored_parts(key, upload_id))
    assert requests.get(store.presigned_get(key), timeout=30).content == data


def test_a_part_sent_without_its_checksum_header_is_refused(store):
    key = store.key("out/c.mp4")
    upload_id = store.start_upload(key)
    part = store.presigned_part(key, upload_id, 1, hashlib.sha256(b"x" * 1000).digest())
    response = requests.put(part.url, data=b"x" * 1000, timeout=30)  # the header is part of the signature
    assert response.status_code == 403
    store.abort(key, upload_id)


def test_after_a_cut_the_stored_parts_say_what_is_left_to_send(store):
    key = store.key("out/d.mp4")
    parts = [os.urandom(MIN_PART_SIZE), os.urandom(MIN_PART_SIZE), os.urandom(10)]
    upload_id = store.start_upload(key)
    assert put_part(store, key, upload_id, 1, parts[0]).status_code == 200
    stored = store.stored_parts(key, upload_id)  # a new worker (or the same after a restart) asks
    assert [(p.number, p.size) for p in stored] == [(1, MIN_PART_SIZE)]
    for number in range(len(stored) + 1, len(parts) + 1):
        assert put_part(store, key, upload_id, number, parts[number - 1]).status_code == 200
    store.complete(key, upload_id, store.stored_parts(key, upload_id))
    assert hashlib.sha256(requests.get(store.presigned_get(key), timeout=30).content).digest() == \
        hashlib.sha256(b"".join(parts)).digest()


def test_a_presigned_get_serves_a_range_to_resume_from(store, seaweedfs):
    key = store.key("in/source.mkv")
    data = os.urandom(300_000)
    seaweedfs.client().put_object(Bucket=seaweedfs.bucket, Key=key, Body=data)
    response = requests.get(store.presigned_get(key), headers={"Range": "bytes=123456-"}, timeout=30)
    assert response.status_code == 206 and response.content == data[123456:]


def test_an_expired_url_is_refused_as_expired(seaweedfs):
    short = ObjectStore(S3Settings(endpoint=seaweedfs.endpoint, bucket=seaweedfs.bucket, access_key=seaweedfs.access_key,
                                   secret_key=seaweedfs.secret_key, presign_expiry=1))
    url = short.presigned_get(short.key("in/whatever.mkv"))
    refusal = wait_for(lambda: (r := requests.get(url, timeout=30)).status_code == 403 and r.text, 10, 0.2,
                       "the URL to expire")
    assert "expired" in refusal.lower()


def test_an_aborted_upload_leaves_nothing_behind(store):
    key = store.key("out/e.mp4")
    upload_id = store.start_upload(key)
    assert put_part(store, key, upload_id, 1, os.urandom(50_000)).status_code == 200
    store.abort(key, upload_id)
    store.abort(key, upload_id)  # twice is fine
    assert store.open_uploads() == []
    with pytest.raises(ObjectStoreError) as missing:
        store.head(key)
    assert not isinstance(missing.value, ObjectStoreUnavailable)


@pytest.mark.parametrize("path", ["../x", "/abs/x", "a/../../x", "a\\b", "a\nb", "", "~/x"])
def test_keys_follow_the_storage_path_rules(store, path):
    with pytest.raises(ValueError):
        store.key(path)


def test_keys_live_under_the_prefix(store):
    assert store.key("out/é x.mp4") == f"{store.settings.prefix}/out/é x.mp4"


def test_an_unreachable_store_is_unavailable_not_refused():
    store = ObjectStore(S3Settings(endpoint=f"http://127.0.0.1:{free_port()}", bucket="media", access_key="k",
                                   secret_key="s"))
    with pytest.raises(ObjectStoreUnavailable):
        store.head("in/x.mkv")
