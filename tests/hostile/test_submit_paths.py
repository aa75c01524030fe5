"""Hostile paths at submit time: JSON submit, multipart submit (output_path field), tus source upload.

Symlink loops, names longer than NAME_MAX, paths longer than PATH_MAX, an output whose parent is a
file, NUL and control characters, ``..``, absolute paths, backslashes, lone surrogates, symlinks out
of the root, FIFOs and folders as sources: each is a 400 at submit time, and nothing is created.
"""

from __future__ import annotations

import base64
import json
import os

import pytest

from tests.hostile.support import call, check_refusal, check_unchanged, multipart, snapshot

pytestmark = pytest.mark.integration


@pytest.fixture
def layout(master, tmp_path):
    root = master.root
    (root / "loop").symlink_to("loop")
    (root / "ping").symlink_to("pong")
    (root / "pong").symlink_to("ping")
    (root / "in" / "loop.mp4").symlink_to("loop.mp4")
    os.mkfifo(root / "in" / "pipe.mp4")
    (root / "out").mkdir()
    (root / "out" / "notes.txt").write_text("a file, not a folder")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.mp4").write_bytes(b"secret")
    (root / "escape").symlink_to(tmp_path / "outside")
    return master


SRC = "in/movie.mp4"
OUT = "out/new.mp4"
# (id, source_path, output_path, expected code)
CASES = [
    ("output-through-symlink-loop", SRC, "loop/x.mp4", "invalid_path"),
    ("output-through-two-link-loop", SRC, "ping/x.mp4", "invalid_path"),
    ("output-is-symlink-loop", SRC, "loop", "invalid_path"),
    ("source-is-symlink-loop", "in/loop.mp4", OUT, "invalid_path"),
    ("source-through-symlink-loop", "loop/movie.mp4", OUT, "invalid_path"),
    ("output-name-256-bytes", SRC, "out/" + "a" * 252 + ".mp4", "invalid_path"),
    ("output-name-256-bytes-utf8", SRC, "out/" + "é" * 126 + ".mp4", "invalid_path"),
    ("output-folder-name-300", SRC, "out/" + "d" * 300 + "/x.mp4", "invalid_path"),
    ("source-name-300", "in/" + "s" * 300 + ".mp4", OUT, "invalid_path"),
    ("output-path-over-PATH_MAX", SRC, "x/" * 2100 + "a.mp4", "invalid_path"),
    ("output-parent-is-a-file", SRC, "in/movie.mp4/x.mp4", "invalid_path"),
    ("output-grandparent-is-a-file", SRC, "out/notes.txt/deeper/x.mp4", "invalid_path"),
    ("source-parent-is-a-file", "in/movie.mp4/x.mp4", OUT, "source_not_found"),
    ("output-nul", SRC, "out/x\x00.mp4", "invalid_path"),
    ("source-nul", "in/movie.mp4\x00.txt", OUT, "invalid_path"),
    ("output-newline", SRC, "out/x\n.mp4", "invalid_path"),
    ("output-escape-sequence", SRC, "out/\x1b[2J.mp4", "invalid_path"),
    ("output-dotdot", SRC, "../x.mp4", "invalid_path"),
    ("output-dotdot-inside", SRC, "out/../../x.mp4", "invalid_path"),
    ("output-dotdot-back-in", SRC, "out/../out/x.mp4", "invalid_path"),
    ("source-dotdot", "../storage/in/movie.mp4", OUT, "invalid_path"),
    ("output-absolute", SRC, "/tmp/x.mp4", "invalid_path"),
    ("output-double-slash", SRC, "//tmp/x.mp4", "invalid_path"),
    ("source-absolute", "/etc/passwd", OUT, "invalid_path"),
    ("output-tilde", SRC, "~/x.mp4", "invalid_path"),
    ("output-backslash", SRC, "out\\x.mp4", "invalid_path"),
    ("output-backslash-dotdot", SRC, "..\\..\\x.mp4", "invalid_path"),
    ("output-windows-drive", SRC, "C:\\out\\x.mp4", "invalid_path"),
    ("source-backslash", "in\\movie.mp4", OUT, "invalid_path"),
    ("output-lone-surrogate", SRC, "out/\ud800.mp4", "invalid_path"),
    ("source-lone-surrogate", "in/\udcff.mp4", OUT, "invalid_path"),
    ("output-through-symlink-out-of-root", SRC, "escape/x.mp4", "invalid_path"),
    ("source-through-symlink-out-of-root", "escape/secret.mp4", OUT, "invalid_path"),
    ("source-is-a-fifo", "in/pipe.mp4", OUT, "invalid_path"),
    ("source-is-a-folder", "in", OUT, "invalid_path"),
    ("output-is-a-folder", SRC, "out", "invalid_path"),
    ("output-is-the-root", SRC, ".", "invalid_path"),
    ("output-is-the-source", SRC, "./in//movie.mp4", "invalid_path"),
    ("output-no-extension", SRC, "out/x", "invalid_path"),
    ("output-empty", SRC, "", "invalid_path"),
    ("source-whitespace", "   ", OUT, "invalid_path"),
]


@pytest.mark.parametrize("source, output, code", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_path_in_json_submit(layout, source, output, code):
    before = snapshot(layout)
    body = json.dumps({"source_path": source, "output_path": output, "profile": "h264-720p"}).encode()
    answer = call(layout, "POST", "/api/jobs", data=body, headers={"Content-Type": "application/json"})
    body = check_refusal(answer, 400, code)
    assert str(layout.root.parent) not in body["message"], f"message names a server path: {body['message']!r}"
    check_unchanged(layout, before)


def test_unicode_output_is_accepted(layout):
    answer = call(layout, "POST", "/api/jobs", json={"source_path": SRC, "output_path": "out/été 🎬 ☃.mp4",
                                                      "profile": "h264-720p", "id": "uni"})
    assert answer.status == 201, answer.describe()
    assert json.loads(answer.body)["output_path"] == "out/été 🎬 ☃.mp4"


# the output_path cases that also reach the multipart submit and the tus source upload
OUTPUT_CASES = [c for c in CASES if c[1] == SRC and c[0] not in ("output-is-the-source", "output-empty")]


@pytest.mark.parametrize("output, code", [c[2:] for c in OUTPUT_CASES], ids=[c[0] for c in OUTPUT_CASES])
def test_hostile_output_in_multipart_submit(layout, output, code):
    before = snapshot(layout)
    try:
        field = output.encode("utf-8")
    except UnicodeEncodeError:
        field = output.encode("utf-8", "surrogateescape") if "\udcff" in output else b"out/\xed\xa0\x80.mp4"
    body, content_type = multipart([("profile", None, b"h264-720p"), ("output_path", None, field),
                                    ("video", "clip.mp4", os.urandom(20_000))])
    answer = call(layout, "POST", "/api/jobs", data=body, headers={"Content-Type": content_type})
    check_refusal(answer, 400, (code, "invalid_field", "invalid_multipart"))
    check_unchanged(layout, before)


@pytest.mark.parametrize("output, code", [c[2:] for c in OUTPUT_CASES], ids=[c[0] for c in OUTPUT_CASES])
def test_hostile_output_in_tus_source_upload(layout, output, code):
    before = snapshot(layout)
    try:
        raw = output.encode("utf-8")
    except UnicodeEncodeError:
        raw = b"out/\xed\xa0\x80.mp4"  # what a client encoding a lone surrogate would send
    metadata = ",".join(f"{k} {base64.b64encode(v).decode()}" for k, v in
                        {"profile": b"h264-720p", "output_path": raw, "filename": b"clip.mp4"}.items())
    answer = call(layout, "POST", "/api/uploads", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "1000",
                                                            "Upload-Metadata": metadata})
    check_refusal(answer, 400, (code, "invalid_metadata"))
    check_unchanged(layout, before)
