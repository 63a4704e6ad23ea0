"""The episode store's write-ahead log: checksummed attempt records, one fsync per batch.

Why a log in front of the Parquet shards: a Parquet file cannot be appended to, and the disk
here does only ~800 fsyncs/s, so the server cannot write a shard per attempt. Instead every
batch of attempts is appended to a log segment with ONE write and ONE fdatasync (group commit);
the store later rolls a sealed segment into an immutable shard (fleet/store/shards.py) and deletes
it.

Record format (little endian), repeated to the end of a segment file:

    magic   4 bytes  b"FWAL"
    length  u32      payload length in bytes
    crc32   u32      zlib.crc32 of the payload
    payload          msgpack [stored_at (float, unix s, server clock), [frame, frame, ...]]
                     where frames are exactly fleet.wire.records.encode(attempt)

A crash can only tear the last, unacknowledged batch (the server acks after the fsync), so on
recovery a bad record with no valid record after it is a torn tail and is truncated away. A bad
record followed by valid ones is corruption (a disk fault): it is skipped with an error and the
valid records after it are kept, because they may have been acknowledged.
"""
from __future__ import annotations

import logging
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import msgpack

log = logging.getLogger(__name__)

MAGIC = b"FWAL"
Buffer = Union[bytes, bytearray, memoryview]
_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024) if hasattr(os, "sysconf") else 1024
_HEADER = struct.Struct("<4sII")
#: Longest payload recovery believes; a longer length field is garbage, not a record.
MAX_RECORD_BYTES = 256 * 2**20
_SEGMENT_RE = re.compile(r"^wal-(\d{12})\.log$")


@dataclass
class WalRecord:
    """One attempt as logged: the server's receive time and the attempt's encoded frames."""

    stored_at: float
    frames: list[Buffer]  # views into the segment as read (bytes-like: no copy)
    offset: int  # byte offset of the record in its segment
    size: int  # bytes on disk, header included


def segment_name(seq: int) -> str:
    return f"wal-{seq:012d}.log"


def list_segments(wal_dir: Path) -> list[tuple[int, Path]]:
    """(sequence number, path) of every segment in the directory, oldest first."""
    found = []
    for p in wal_dir.iterdir():
        m = _SEGMENT_RE.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def record_parts(stored_at: float, frames: Sequence[Buffer]) -> list[Buffer]:
    """One record as the buffers to write in order, the frames themselves among them.

    Why not msgpack.packb: that copies every JPEG into the payload, and the batch was then
    joined into one blob, twice more; written with writev, the frames are never copied. The
    bytes are exactly msgpack's encoding of [stored_at, frames] (tests/test_store.py checks).
    """
    parts: list[Buffer] = [_PREFIX.pack(0x92, 0xCB, stored_at) + _array_header(len(frames))]
    for f in frames:
        parts.append(_bin_header(len(f)))
        parts.append(f)
    length = sum(map(len, parts))
    if length > MAX_RECORD_BYTES:  # recovery would take it for garbage: refuse it now
        raise ValueError(f"an attempt of {length / 2**20:.0f} MiB is over the store's "
                         f"limit of {MAX_RECORD_BYTES / 2**20:.0f} MiB per attempt")
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    parts.insert(0, _HEADER.pack(MAGIC, length, crc))
    return parts


def encode_record(stored_at: float, frames: Sequence[Buffer]) -> bytes:
    """One record as bytes (record_parts joined)."""
    return b"".join(record_parts(stored_at, frames))


_PREFIX = struct.Struct(">BBd")  # fixarray of 2, float64 marker, stored_at
_U32 = struct.Struct(">I")


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    return struct.pack(">BH", 0xDC, n) if n < 2**16 else struct.pack(">BI", 0xDD, n)


def _bin_header(n: int) -> bytes:
    if n < 2**8:
        return bytes((0xC4, n))
    return struct.pack(">BH", 0xC5, n) if n < 2**16 else struct.pack(">BI", 0xC6, n)


def _payload(payload: memoryview) -> tuple[float, list[Buffer]]:
    """[stored_at, frames] of a record's payload, the frames as views into it (no copy).

    What record_parts writes is parsed directly; anything else goes through msgpack (and
    raises if it is not msgpack of that shape).
    """
    n = len(payload)
    if n >= 11 and payload[0] == 0x92 and payload[1] == 0xCB:
        stored_at = _PREFIX.unpack_from(payload, 0)[2]
        pos, tag = 11, payload[10]
        if 0x90 <= tag <= 0x9F:
            count = tag & 0x0F
        elif tag == 0xDC and pos + 2 <= n:
            count, pos = struct.unpack_from(">H", payload, pos)[0], pos + 2
        elif tag == 0xDD and pos + 4 <= n:
            count, pos = struct.unpack_from(">I", payload, pos)[0], pos + 4
        else:
            count = -1
        frames: list[Buffer] = []
        while 0 <= len(frames) < count and pos < n:
            tag = payload[pos]
            if tag == 0xC5 and pos + 3 <= n:  # bin 16: what a JPEG of a small image is
                size, pos = (payload[pos + 1] << 8) | payload[pos + 2], pos + 3
            elif tag == 0xC4 and pos + 2 <= n:
                size, pos = payload[pos + 1], pos + 2
            elif tag == 0xC6 and pos + 5 <= n:
                size, pos = _U32.unpack_from(payload, pos + 1)[0], pos + 5
            else:
                break
            if pos + size > n:
                break
            frames.append(payload[pos:pos + size])
            pos += size
        if len(frames) == count and pos == n:
            return stored_at, frames
    stored_at, frames = msgpack.unpackb(payload, raw=False)
    return float(stored_at), [bytes(f) for f in frames]


def _parse_at(buf: memoryview, offset: int) -> tuple[float, list[Buffer], int] | None:
    """The record at offset as (stored_at, frames, size), or None if there is none valid."""
    if len(buf) - offset < _HEADER.size:
        return None
    magic, length, crc = _HEADER.unpack_from(buf, offset)
    end = offset + _HEADER.size + length
    if magic != MAGIC or length > MAX_RECORD_BYTES or end > len(buf):
        return None
    payload = buf[offset + _HEADER.size:end]
    if zlib.crc32(payload) != crc:
        return None
    try:
        stored_at, frames = _payload(payload)
    except Exception:  # a crc-valid record that does not decode is still garbage
        return None
    return float(stored_at), frames, end - offset


def scan(path: Path) -> tuple[list[WalRecord], int]:
    """Every valid record of a segment, and the offset just after the last one.

    Bytes after that offset are a torn tail, which the caller truncates. Reads the whole
    segment into memory: segments are bounded by StoreConfig.shard_max_bytes (plus one batch).
    """
    data = memoryview(path.read_bytes())
    records: list[WalRecord] = []
    offset = 0
    valid_end = 0
    while offset < len(data):
        parsed = _parse_at(data, offset)
        if parsed is not None:
            stored_at, frames, size = parsed
            records.append(WalRecord(stored_at, frames, offset, size))
            offset += size
            valid_end = offset
            continue
        resync = _next_valid(data, offset + 1)
        if resync is None:
            break  # a torn tail: nothing valid follows
        log.error("WAL %s: %d corrupt bytes at offset %d skipped (disk fault?); the records "
                  "after them are kept", path, resync - offset, offset)
        offset = resync
    return records, valid_end


def _next_valid(data: memoryview, start: int) -> int | None:
    raw = data.obj if isinstance(data.obj, bytes) else bytes(data)
    pos = raw.find(MAGIC, start)
    while pos != -1:
        if _parse_at(data, pos) is not None:
            return pos
        pos = raw.find(MAGIC, pos + 1)
    return None


class WalSegment:
    """The segment being appended to. Not thread-safe: the Store serialises calls."""

    def __init__(self, path: Path, seq: int) -> None:
        self.path = path
        self.seq = seq
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.size = os.fstat(self.fd).st_size
        self.records = 0
        self.fsyncs = 0
        self.first_record_at: float | None = None  # monotonic; set by the Store for rolling
        #: Set when a failed batch could not be cut back: nothing more may follow it here.
        self.broken = False

    def append(self, parts: list[Buffer], n_records: int) -> None:
        """Write the batch (record_parts of each record, in order) and make it durable with
        one fdatasync, or undo it and raise.

        On failure the file is cut back to its previous size, so a half-written batch can never
        sit in front of a later, acknowledged one.
        """
        nbytes = sum(map(len, parts))
        try:
            _write_all(self.fd, list(parts))
            os.fdatasync(self.fd)
            self.fsyncs += 1
        except OSError:
            self._truncate_back()
            raise
        self.size += nbytes
        self.records += n_records

    def _truncate_back(self) -> None:
        try:
            os.ftruncate(self.fd, self.size)
            os.fdatasync(self.fd)
        except OSError as exc:  # leaves a torn tail; recovery truncates it on the next open
            self.broken = True
            log.error("WAL %s: could not cut back a failed batch (%s); sealing it", self.path,
                      exc)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _write_all(fd: int, parts: list[Buffer]) -> None:
    """writev every buffer, at most IOV_MAX at a time, resuming after short writes."""
    i = 0
    while i < len(parts):
        chunk = parts[i:i + _IOV_MAX]
        written = os.writev(fd, chunk)
        for part in chunk:
            if written >= len(part):
                written -= len(part)
                i += 1
            else:  # a short write: the rest of this buffer goes first next time
                parts[i] = memoryview(part)[written:]
                break
