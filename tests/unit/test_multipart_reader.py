"""FilePartReader: a multipart body whose file bytes skip the parser gives the parser's own result, byte for byte.

The oracle is streaming-form-data fed the whole body the usual way. Bodies are built to be hard on the
boundary search: file bytes drawn mostly from the boundary's own characters (so its beginnings turn up
everywhere, also at the ends of the writer's buffers, which are 4 KiB here), strings that are the boundary
but for the last character, fields before and after the file, and pieces of every size.
"""

import asyncio
import random

import pytest
from streaming_form_data import StreamingFormDataParser

from converter_common.background_file_writer import BatchWriter
from master.handlers.multipart import BatchFileSink, FilePartReader, TextField

BOUNDARY = "b0und"
HEADERS = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
BATCH = 4096


def part(name: str, value: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"


def body(file_data: bytes, before: dict[str, bytes] = {}, after: dict[str, bytes] = {}) -> bytes:
    return (b"".join(part(k, v) for k, v in before.items()) + part("video", file_data, "a.mkv")
            + b"".join(part(k, v) for k, v in after.items()) + f"--{BOUNDARY}--\r\n".encode())


def hostile_bytes(rng: random.Random, size: int) -> bytes:
    """Mostly CR, LF, '-' and the boundary's letters, with near-boundaries and blank lines dropped in."""
    alphabet = b"\r\n-" + BOUNDARY.encode()
    out = bytearray(rng.choice(alphabet) if rng.random() < 0.7 else rng.randrange(256) for _ in range(size))
    for _ in range(size // 500):
        near = rng.choice([b"\r\n--" + BOUNDARY.encode() + b"X", b"\r\n--" + BOUNDARY[:-1].encode(), b"\r\n\r\n",
                           b"\r\n--"])
        at = rng.randrange(max(1, size - len(near)))
        out[at:at + len(near)] = near
    needle = b"\r\n--" + BOUNDARY.encode()
    at = out.find(needle)
    while at >= 0:  # a whole boundary would end the part: keep only those followed by a character that does not
        end = at + len(needle)
        out[end:end + 1] = b"X"
        at = out.find(needle, end)
    return bytes(out[:size])


def parsed_by_the_library(data: bytes, names: list[str]) -> dict[str, bytes]:
    parser = StreamingFormDataParser(headers=HEADERS)
    got: dict[str, bytearray] = {}
    for name in names:
        target = TextField(name)
        parser.register(name, target)
        got[name] = target
    video = TextField("video")
    video.on_data_received = lambda chunk: video._data.extend(chunk)  # no length limit for the oracle
    parser.register("video", video)
    parser.data_received(data)
    return {"video": bytes(video._data), **{name: bytes(field._data) for name, field in got.items()}}


def received_in_place(tmp_path, data: bytes, names: list[str], pieces) -> tuple[dict[str, bytes], int]:
    """The body through FilePartReader, ``pieces`` giving each receive's size; what each part held and how
    many bytes the parser saw."""
    path = tmp_path / "file"
    parser = StreamingFormDataParser(headers=HEADERS)
    seen = 0
    feed = parser.data_received

    def counting(chunk: bytes) -> None:
        nonlocal seen
        seen += len(chunk)
        feed(chunk)

    parser.data_received = counting
    fields = {name: TextField(name) for name in names}
    for name, field in fields.items():
        parser.register(name, field)

    async def run() -> None:
        with open(path, "wb", buffering=0) as f:
            sink = BatchFileSink(f.fileno(), direct=False, writer=lambda fd, hashers, **kw: BatchWriter(
                fd, hashers, **{**kw, "batch_bytes": BATCH, "max_in_flight_bytes": 2 * BATCH}))
            parser.register("video", sink)
            reader = FilePartReader(parser, sink, BOUNDARY.encode())
            position = 0
            while position < len(data):
                with await reader.space() as space:
                    count = min(len(space), next(pieces), len(data) - position)
                    space[:count] = data[position:position + count]
                reader.received(count)
                position += count
            await sink.writer.afinish()
            assert sink.finished

    asyncio.run(run())
    return {"video": path.read_bytes(), **{name: bytes(field._data) for name, field in fields.items()}}, seen


def random_pieces(rng: random.Random):
    while True:
        yield rng.choice([1, 2, 3, 7, 100, 1000, 4096, 5000, 65536, rng.randrange(1, 20000)])


@pytest.mark.parametrize("seed", range(40))
def test_hostile_file_bytes_come_out_as_the_library_parses_them(tmp_path, seed):
    rng = random.Random(seed)
    names = ["profile", "output_path"]
    data = body(hostile_bytes(rng, rng.randrange(0, 60_000)), before={"profile": b"h264-720p"},
                after={"output_path": b"out/a.mp4"})
    got, _ = received_in_place(tmp_path, data, names, random_pieces(rng))
    assert got == parsed_by_the_library(data, names)


@pytest.mark.parametrize("piece", [1, 3, 4096, 65536])
def test_a_large_file_part_mostly_skips_the_parser(tmp_path, piece):
    rng = random.Random(piece)
    file_data = rng.randbytes(300_000)
    got, seen = received_in_place(tmp_path, body(file_data), [], iter(lambda: piece, None))
    assert got["video"] == file_data
    # the headers and the ending, one scratch buffer's worth of the data, 4 KiB after each buffer that ended
    # in a CR (1 in 256 buffers: a few of these 4 KiB ones)
    assert seen < 65_536 + 12 * 4096


@pytest.mark.parametrize("tail", [b"\r", b"\r\n", b"\r\n-", b"\r\n--", b"\r\n--b0un"])
def test_a_buffer_ending_in_what_could_begin_a_boundary(tmp_path, tail):
    """The last bytes of a full buffer look like a boundary's start: the parser decides, the file is whole."""
    prefix = part("video", b"", "a.mkv")[:-2]  # everything before the data
    for shift in range(0, 8):
        file_data = bytes(BATCH * 3 - len(tail) + shift) + tail + b"after"
        data = body(file_data)
        got, _ = received_in_place(tmp_path, data, [], iter(lambda: 65536, None))
        assert got["video"] == file_data, (shift, len(prefix))
