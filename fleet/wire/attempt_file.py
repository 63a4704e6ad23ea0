"""The file form of one attempt: `fleet.wire.records.encode()`'s frames, length-prefixed and
checksummed. robot_node's spool writes it; `fleet eval` and anyone else read it with this module
(fleet never imports robot_node, so the format lives here, once).

Layout (little endian):

    b"FLSPOOL1"                     8-byte magic (format version 1)
    u32 n                           number of frames
    n x (u64 length, bytes)         the frames, unchanged: [msgpack header, jpeg, jpeg, ...]
    32 bytes                        SHA-256 of everything before it
"""
from __future__ import annotations

import hashlib
import struct
from typing import Sequence

MAGIC = b"FLSPOOL1"
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_DIGEST = 32


class AttemptFileError(ValueError):
    """The bytes are not an intact attempt file; the message says what is wrong."""


def pack_frames(frames: Sequence[bytes]) -> bytes:
    """The file's bytes for these frames."""
    parts = [MAGIC, _U32.pack(len(frames))]
    for frame in frames:
        parts += [_U64.pack(len(frame)), bytes(frame)]
    body = b"".join(parts)
    return body + hashlib.sha256(body).digest()


def unpack_frames(data: bytes, source: str = "attempt file") -> list[bytes]:
    """Inverse of pack_frames; raises AttemptFileError naming `source` and the problem."""
    if len(data) < len(MAGIC) + _U32.size + _DIGEST or not data.startswith(MAGIC):
        raise AttemptFileError(f"{source}: not an attempt file (bad magic or truncated)")
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise AttemptFileError(f"{source}: checksum mismatch (file damaged)")
    (count,) = _U32.unpack_from(body, len(MAGIC))
    offset = len(MAGIC) + _U32.size
    frames = []
    for i in range(count):
        if offset + _U64.size > len(body):
            raise AttemptFileError(f"{source}: frame {i} header runs past the end")
        (length,) = _U64.unpack_from(body, offset)
        offset += _U64.size
        if offset + length > len(body):
            raise AttemptFileError(f"{source}: frame {i} runs past the end")
        frames.append(body[offset:offset + length])
        offset += length
    if offset != len(body):
        raise AttemptFileError(f"{source}: {len(body) - offset} stray bytes after the last frame")
    return frames
