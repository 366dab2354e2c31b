"""Generate a small music library MPD can play: FLAC files with real Vorbis-comment tags.

Pure Python, no encoder needed: each track is a sine tone written as an uncompressed
(VERBATIM subframe) 16-bit mono FLAC stream at 8 kHz, a few seconds long, with TITLE,
ARTIST, ALBUM, TRACKNUMBER, GENRE and DATE tags. STREAMINFO carries the exact sample
count, so MPD reports the exact duration. Every file is a few tens of kilobytes.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["DEFAULT_TRACKS", "Track", "flac_bytes", "write_library"]

SAMPLE_RATE: Final = 8000
_BLOCK: Final = 4096
_BITS: Final = 16


@dataclass(frozen=True, slots=True)
class Track:
    """One generated track.

    Attributes:
        file: Path relative to the music directory (the MPD URI).
        title: TITLE tag.
        artist: ARTIST tag.
        album: ALBUM tag.
        track: TRACKNUMBER tag.
        seconds: Duration.
        frequency: Tone frequency in Hz.
    """

    file: str
    title: str
    artist: str
    album: str
    track: int
    seconds: float
    frequency: float


DEFAULT_TRACKS: Final = (
    Track("amora-dev/01-morning-signal.flac", "Morning Signal", "The Loopbacks", "Amora Dev Tones", 1, 4.0, 220.0),
    Track("amora-dev/02-retained-light.flac", "Retained Light", "Quiet Broker", "Amora Dev Tones", 2, 3.0, 277.2),
    Track("amora-dev/03-last-will.flac", "Last Will", "Ada & the Keepalives", "Amora Dev Tones", 3, 5.0, 329.6),
    Track("amora-dev/04-qos-two.flac", "QoS Two", "Exactly Once", "Amora Dev Tones", 4, 2.5, 392.0),
    Track("amora-dev/05-bridge-song.flac", "Bridge Song", "Standby Choir", "Amora Dev Tones", 5, 3.5, 440.0),
)  # fmt: skip


def _crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _crc16_table() -> tuple[int, ...]:
    table = []
    for i in range(256):
        crc = i << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
        table.append(crc)
    return tuple(table)


_CRC16: Final = _crc16_table()


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC16[(crc >> 8) ^ byte]
    return crc


def _utf8_number(n: int) -> bytes:
    """FLAC's UTF-8-like coding of the frame number."""
    if n < 0x80:
        return bytes([n])
    if n < 0x800:
        return bytes([0xC0 | (n >> 6), 0x80 | (n & 0x3F)])
    if n < 0x10000:
        return bytes([0xE0 | (n >> 12), 0x80 | ((n >> 6) & 0x3F), 0x80 | (n & 0x3F)])
    return bytes([0xF0 | (n >> 18), 0x80 | ((n >> 12) & 0x3F), 0x80 | ((n >> 6) & 0x3F), 0x80 | (n & 0x3F)])


def _frame(number: int, samples: list[int]) -> bytes:
    size = len(samples)
    # Block size code 12 = 4096; 7 = "16-bit (size-1) follows the header" (the last block).
    size_code = 12 if size == _BLOCK else 7
    header = bytes([0xFF, 0xF8, (size_code << 4) | 0x4, (0x0 << 4) | (0x4 << 1)])
    # ^ sync + fixed blocksize; sample-rate code 4 = 8 kHz; mono; sample size code 4 = 16 bits
    header += _utf8_number(number)
    if size_code == 7:
        header += struct.pack(">H", size - 1)
    header += bytes([_crc8(header)])
    body = header + b"\x02" + struct.pack(f">{size}h", *samples)  # subframe: VERBATIM
    return body + struct.pack(">H", _crc16(body))


def _metadata_block(kind: int, data: bytes, *, last: bool) -> bytes:
    return bytes([(0x80 if last else 0) | kind]) + len(data).to_bytes(3, "big") + data


def flac_bytes(track: Track) -> bytes:
    """Encode ``track`` as a complete FLAC file."""
    total = round(track.seconds * SAMPLE_RATE)
    amplitude = 0.3 * (2 ** (_BITS - 1) - 1)
    step = 2 * math.pi * track.frequency / SAMPLE_RATE
    pcm = [round(amplitude * math.sin(step * i)) for i in range(total)]
    streaminfo = struct.pack(">HH", _BLOCK, _BLOCK) + (0).to_bytes(3, "big") * 2
    # 20 bits sample rate, 3 bits channels-1, 5 bits bits-per-sample-1, 36 bits total samples
    packed = (SAMPLE_RATE << 44) | (0 << 41) | ((_BITS - 1) << 36) | total
    streaminfo += packed.to_bytes(8, "big") + bytes(16)  # MD5 unknown: all zero is allowed
    comments = [
        f"TITLE={track.title}",
        f"ARTIST={track.artist}",
        f"ALBUM={track.album}",
        f"TRACKNUMBER={track.track}",
        "GENRE=Test Tone",
        "DATE=2026",
    ]
    vendor = b"amora-devtools"
    vorbis = struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", len(comments))
    for comment in comments:
        raw = comment.encode()
        vorbis += struct.pack("<I", len(raw)) + raw
    out = bytearray(b"fLaC")
    out += _metadata_block(0, streaminfo, last=False)
    out += _metadata_block(4, vorbis, last=True)
    for number, start in enumerate(range(0, total, _BLOCK)):
        out += _frame(number, pcm[start : start + _BLOCK])
    return bytes(out)


def write_library(music_dir: Path, tracks: tuple[Track, ...] = DEFAULT_TRACKS) -> tuple[Track, ...]:
    """Write ``tracks`` under ``music_dir`` (skipping files that already exist); return them."""
    for track in tracks:
        path = music_dir / track.file
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_bytes(flac_bytes(track))
            tmp.replace(path)
    return tracks
