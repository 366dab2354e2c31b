from __future__ import annotations

import struct

from amora_devtools.music import DEFAULT_TRACKS, SAMPLE_RATE, flac_bytes, write_library
from amora_devtools.music import _crc16 as crc16


def _blocks(data: bytes) -> tuple[list[tuple[int, bytes]], int]:
    assert data[:4] == b"fLaC"
    pos, blocks = 4, []
    while True:
        header = data[pos]
        length = int.from_bytes(data[pos + 1 : pos + 4], "big")
        blocks.append((header & 0x7F, data[pos + 4 : pos + 4 + length]))
        pos += 4 + length
        if header & 0x80:
            return blocks, pos


def _comments(block: bytes) -> dict[str, str]:
    vendor_len = struct.unpack_from("<I", block)[0]
    pos = 4 + vendor_len
    (count,) = struct.unpack_from("<I", block, pos)
    pos += 4
    out = {}
    for _ in range(count):
        (n,) = struct.unpack_from("<I", block, pos)
        key, _, value = block[pos + 4 : pos + 4 + n].decode().partition("=")
        out[key] = value
        pos += 4 + n
    return out


def test_tracks_are_distinct_and_short():
    assert len({t.title for t in DEFAULT_TRACKS}) == len(DEFAULT_TRACKS)
    assert len({t.artist for t in DEFAULT_TRACKS}) == len(DEFAULT_TRACKS)
    assert all(2 <= t.seconds <= 5 for t in DEFAULT_TRACKS)


def test_flac_has_streaminfo_and_tags():
    track = DEFAULT_TRACKS[0]
    blocks, _ = _blocks(flac_bytes(track))
    kinds = [kind for kind, _ in blocks]
    assert kinds == [0, 4]
    info = blocks[0][1]
    packed = int.from_bytes(info[10:18], "big")
    assert packed >> 44 == SAMPLE_RATE
    assert packed & ((1 << 36) - 1) == round(track.seconds * SAMPLE_RATE)
    tags = _comments(blocks[1][1])
    assert tags["TITLE"] == track.title
    assert tags["ARTIST"] == track.artist
    assert tags["TRACKNUMBER"] == str(track.track)


def test_first_frame_checksums_are_valid():
    data = flac_bytes(DEFAULT_TRACKS[1])
    _, audio = _blocks(data)
    frame_len = 4 + 1 + 1 + 1 + 2 * 4096 + 2  # header, frame no. 0, crc8, subframe, samples, crc16
    frame = data[audio : audio + frame_len]
    assert frame[:2] == b"\xff\xf8"
    assert crc16(frame[:-2]) == int.from_bytes(frame[-2:], "big")


def test_write_library_is_idempotent(tmp_path):
    write_library(tmp_path)
    first = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.flac")}
    write_library(tmp_path)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.flac")} == first
    assert len(first) == len(DEFAULT_TRACKS)
