"""`fleet keys`: the key layout, the allow-list, and the errors a user can make."""
from __future__ import annotations

import stat
import subprocess
import sys

import pytest

from fleet.server.keys import (ClientKeys, KeyFileError, RobotAuthenticator, create_robot_key,
                               list_robots)
from server_helpers import REPO


def fleet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fleet.cli", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=60)


def test_keys_create_and_list_through_the_cli(tmp_path):
    keys = tmp_path / "keys"
    r = fleet("keys", "create", "--name", "arm1", "--name", "arm2", "--dir", str(keys))
    assert r.returncode == 0, r.stderr
    assert (keys / "server.key").exists() and (keys / "server.key_secret").exists()
    assert sorted(p.name for p in (keys / "robots").iterdir()) == ["arm1.key", "arm2.key"]
    for robot in ("arm1", "arm2"):
        secret = keys / "secrets" / f"{robot}.key_secret"
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        assert "secret-key" not in (keys / "robots" / f"{robot}.key").read_text()
    assert stat.S_IMODE((keys / "server.key_secret").stat().st_mode) == 0o600
    r = fleet("keys", "list", "--dir", str(keys))
    assert r.returncode == 0 and "arm1" in r.stdout and "arm2" in r.stdout
    assert "2 robot(s) admitted" in r.stdout
    server_secret = (keys / "server.key_secret").read_bytes()
    fleet("keys", "create", "--name", "arm3", "--dir", str(keys))
    assert (keys / "server.key_secret").read_bytes() == server_secret  # never regenerated


def test_user_errors_get_a_message_and_exit_2(tmp_path):
    keys = tmp_path / "keys"
    assert fleet("keys", "create", "--name", "arm1", "--dir", str(keys)).returncode == 0
    again = fleet("keys", "create", "--name", "arm1", "--dir", str(keys))
    assert again.returncode == 2 and "already has a key" in again.stderr
    bad = fleet("keys", "create", "--name", "../evil", "--dir", str(keys))
    assert bad.returncode == 2 and "not allowed" in bad.stderr
    serve = fleet("serve", "--data", str(tmp_path / "d"), "--keys", str(tmp_path / "nokeys"))
    assert serve.returncode == 2 and "fleet keys create" in serve.stderr


def test_allow_list_maps_keys_to_robot_ids(tmp_path):
    k1 = create_robot_key(tmp_path, "arm1")
    create_robot_key(tmp_path, "arm2")
    (tmp_path / "robots" / "junk.key").write_text("not a certificate")
    assert [k.robot_id for k in list_robots(tmp_path)] == ["arm1", "arm2"]
    import zmq

    auth = RobotAuthenticator(zmq.Context.instance(), tmp_path)
    assert auth.callback("fleet", k1.public_key) is True
    assert auth.callback("fleet", b"x" * 40) is False
    from zmq.utils import z85

    assert auth.curve_user_id(z85.decode(k1.public_key)) == "arm1"
    create_robot_key(tmp_path, "arm3")
    assert auth.reload(force=False) and auth.robot_ids() == ["arm1", "arm2", "arm3"]
    assert not auth.reload(force=False)  # unchanged directory: not re-read


def test_client_keys_from_dir_and_missing_files(tmp_path):
    create_robot_key(tmp_path, "arm1")
    keys = ClientKeys.from_dir(tmp_path, "arm1")
    assert len(keys.public) == 40 and len(keys.secret) == 40 and len(keys.server_public) == 40
    with pytest.raises(KeyFileError, match="fleet keys"):
        ClientKeys.from_dir(tmp_path, "arm7")
