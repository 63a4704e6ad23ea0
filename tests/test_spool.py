"""The spool: durable one-file-per-attempt storage of records.encode() frames."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from fleet.wire.records import decode
from robot_node.spool import (MAGIC, Spool, SpoolError, pack_frames, unpack_frames)
from robot_test_helpers import make_attempt
from fleet.wire.records import encode


def test_roundtrip_frames_unchanged(tmp_path):
    spool = Spool(tmp_path / "spool", 10 << 20)
    attempt = make_attempt(steps=3)
    frames = encode(attempt)
    entry = spool.put(attempt.attempt_id, frames)
    assert spool.read(entry.name) == frames
    assert decode(spool.read(entry.name)).attempt_id == attempt.attempt_id
    assert spool.used_bytes == entry.size == (tmp_path / "spool" / entry.name).stat().st_size
    assert len(spool) == 1


def test_entries_oldest_first_and_survive_reopen(tmp_path):
    spool = Spool(tmp_path, 10 << 20)
    ids = []
    for _ in range(4):
        a = make_attempt(steps=1)
        spool.put(a.attempt_id, encode(a))
        ids.append(a.attempt_id)
    reopened = Spool(tmp_path, 10 << 20)
    assert [decode(reopened.read(e.name)).attempt_id for e in reopened.entries()] == ids


def test_remove_only_what_is_named(tmp_path):
    spool = Spool(tmp_path, 10 << 20)
    a, b = make_attempt(), make_attempt()
    ea, eb = spool.put(a.attempt_id, encode(a)), spool.put(b.attempt_id, encode(b))
    spool.remove(ea.name)
    assert [e.name for e in spool.entries()] == [eb.name]
    assert spool.used_bytes == eb.size


def test_damaged_file_is_detected(tmp_path):
    spool = Spool(tmp_path, 10 << 20)
    a = make_attempt(steps=2)
    entry = spool.put(a.attempt_id, encode(a))
    path = tmp_path / entry.name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SpoolError, match="checksum"):
        spool.read(entry.name)
    spool.quarantine(entry.name)
    assert len(spool) == 0 and (tmp_path / (entry.name + ".corrupt")).exists()


@pytest.mark.parametrize("cut", [0, 5, 20, -1])
def test_truncated_data_is_rejected(cut):
    data = pack_frames([b"header", b"\xff\xd8jpeg"])
    with pytest.raises(SpoolError):
        unpack_frames(data[:cut] if cut >= 0 else data[:-1])


def test_leftover_temporaries_are_removed_at_start(tmp_path):
    (tmp_path / ".0001-x.attempt.tmp").write_bytes(MAGIC + b"half")
    spool = Spool(tmp_path, 10 << 20)
    assert spool.removed_temporaries == 1 and len(spool) == 0
    assert not list(tmp_path.iterdir())


def test_has_room_respects_the_limit(tmp_path):
    a = make_attempt(steps=2)
    size = len(pack_frames(encode(a)))
    spool = Spool(tmp_path, 2 * size + 10)
    spool.put(a.attempt_id, encode(a))
    assert spool.has_room(size)
    spool.put(a.attempt_id + "b", encode(a))
    assert not spool.has_room(size)


def test_unwritable_directory_says_what_to_do(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(SpoolError, match="spool_dir"):
        Spool(blocker / "spool", 1000)


def test_kill_during_writes_leaves_only_complete_files(tmp_path):
    """A writer killed with SIGKILL mid-stream leaves only files that decode."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(os.path.dirname(__file__))!r})
        from robot_test_helpers import make_attempt
        from fleet.wire.records import encode
        from robot_node.spool import Spool
        spool = Spool({str(tmp_path)!r}, 1 << 30)
        print("ready", flush=True)
        while True:
            a = make_attempt(steps=20, image_size=96)
            spool.put(a.attempt_id, encode(a))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"ready"
        import time
        deadline = time.monotonic() + 10
        while len(list(tmp_path.glob("*.attempt"))) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait()
    spool = Spool(tmp_path, 1 << 30)
    assert len(spool) >= 5
    for entry in spool.entries():
        assert len(decode(spool.read(entry.name)).steps) == 20
    assert not list(tmp_path.glob("*.tmp"))
