"""The fleet monitor against a real run: a real `fleet serve`, real upload clients with known
outcomes and heartbeats, a real `fleet monitor` process; `fleet status` as a subprocess; its
/api/status and Prometheus /metrics read over HTTP. Plus the rate arithmetic on known samples."""
from __future__ import annotations

import os
import subprocess
import sys
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fleet.monitor.monitor import Monitor, MonitorConfig, RobotHistory, Sample, robot_row
from monitor_helpers import (LEARNER_METRICS, OFFLINE_AFTER, REPO, ROBOTS, SERVED_VERSION,
                             api_status, expected, monitored_fleet)


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


def _status(url: str) -> dict:
    return api_status(url)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The known fleet and a monitor on it (see monitor_helpers.monitored_fleet)."""
    with monitored_fleet(tmp_path_factory.mktemp("monitor")) as fleet:
        yield fleet


@pytest.mark.slow  # shares a module fixture that takes ~10 s
def test_api_status_has_the_known_numbers_per_robot(run):
    snap = _status(run.monitor.url)
    rows = {r["robot_id"]: r for r in snap["robots"]}
    assert set(rows) == {r.robot_id for r in ROBOTS}, "the monitor's own key is no robot"
    for robot in ROBOTS:
        row, want = rows[robot.robot_id], expected(robot)
        if want["attempts"]:
            assert {k: row[k] for k in want} == want, robot.robot_id
            assert row["success_rate"] == pytest.approx(
                want["successes"] / (want["successes"] + want["failures"]))
        else:  # heard from, nothing stored: no counters, shown as unknown, not as 0
            assert row["attempts"] is None and row["success_rate"] is None
        assert row["policy_version"] == robot.policy_version
        assert row["host"] == robot.host, "the host its HELLO said; None when it sent none"
        assert row["state"] == (robot.state or "offline")
        if robot.state is not None:
            assert (row["spool_attempts"], row["spool_bytes"]) == robot.spool
            assert row["last_seen_age_s"] < OFFLINE_AFTER
    assert rows["arm1"]["attempts_per_hour_5m"] > 0  # its late batch came while polled
    assert rows["arm2"]["attempts_per_hour_5m"] == 0  # nothing new since the monitor began
    assert rows["arm1"]["bytes_stored"] > 0
    assert snap["policy"]["served_version"] == SERVED_VERSION
    assert snap["learner"]["version"] == SERVED_VERSION
    assert snap["learner"]["metrics"] == LEARNER_METRICS
    assert snap["totals"]["attempts"] == sum(expected(r)["attempts"] for r in ROBOTS)
    assert _get(run.monitor.url + "/healthz") == b"ok\n"


@pytest.mark.slow  # shares a module fixture that takes ~10 s
def test_metrics_have_per_robot_labels_with_the_right_values(run):
    text = _get(run.monitor.url + "/metrics").decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}

    def value(metric, /, **labels):
        return samples[(metric, tuple(sorted(labels.items())))]

    for robot in ROBOTS:
        rid, want = robot.robot_id, expected(robot)
        if want["attempts"]:
            assert value("fleet_monitor_attempts_total", robot=rid, outcome="success") \
                == want["successes"]
            assert value("fleet_monitor_attempts_total", robot=rid, outcome="failure") \
                == want["failures"]
            assert value("fleet_monitor_attempts_total", robot=rid, outcome="aborted") \
                == want["aborted"]
        assert value("fleet_monitor_policy_version", robot=rid) == robot.policy_version
        assert value("fleet_monitor_robot_state", robot=rid, state=robot.state or "offline") == 1
        assert value("fleet_monitor_robot_state", robot=rid, state="error") == 0
    assert value("fleet_monitor_spool_attempts", robot="arm2") == 5
    assert value("fleet_monitor_success_ratio", robot="arm1") == pytest.approx(12 / 16)
    assert value("fleet_monitor_attempts_per_hour", robot="arm1", window="5m") > 0
    assert ("fleet_monitor_attempts_total", (("outcome", "success"), ("robot", "arm3"))) \
        not in samples, "unknown counts are left out, not exported as 0"
    assert value("fleet_monitor_served_policy_version") == SERVED_VERSION
    assert value("fleet_monitor_learner_metric", name="val_auc") == LEARNER_METRICS["val_auc"]
    assert value("fleet_monitor_server_up") == 1


@pytest.mark.slow  # shares a module fixture that takes ~10 s
def test_fleet_status_prints_the_table(run):
    env = dict(os.environ, COLUMNS="200")
    out = subprocess.run(
        [sys.executable, "-m", "fleet.cli", "status", "--server", run.server.endpoint, "--keys",
         str(run.server.keys), "--sample", "0.5", "--offline-after", str(OFFLINE_AFTER),
         "--learner-dir", str(run.learner_dir)],
        capture_output=True, text=True, timeout=60, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr
    cells = {}
    for line in out.stdout.splitlines():
        parts = [p.strip() for p in line.split("│")]
        if len(parts) > 3 and parts[1].startswith("arm"):
            cells[parts[1]] = parts[1:-1]
    assert set(cells) == {r.robot_id for r in ROBOTS}, out.stdout
    assert cells["arm1"][:2] == ["arm1", "collecting"]
    assert cells["arm1"][4:8] == ["16", "12", "75.0%", "v3"]
    assert cells["arm2"][1] == "e-stopped" and cells["arm2"][4:7] == ["5", "1", "25.0%"]
    assert cells["arm3"][1] == "idle" and cells["arm3"][4] == "—"
    assert cells["arm4"][1] == "offline" and cells["arm4"][7] == "v1"
    assert cells["arm2"][9].startswith("5 (120.0 KB)")
    assert (cells["arm1"][11], cells["arm2"][11], cells["arm3"][11]) == \
        ("lab-pc-2", "—", "ray-node-5f2c9a")
    assert f"served policy v{SERVED_VERSION}" in out.stdout
    assert "learner v3" in out.stdout and "val_auc 0.871" in out.stdout


def test_fleet_status_says_when_the_server_does_not_answer(tmp_path):
    from monitor_helpers import make_keys
    from server_helpers import free_port

    keys = make_keys(tmp_path / "keys", "monitor")
    out = subprocess.run(
        [sys.executable, "-m", "fleet.cli", "status", "--server",
         f"tcp://127.0.0.1:{free_port()}", "--keys", str(keys), "--timeout", "1"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env=dict(os.environ, COLUMNS="200"))
    assert out.returncode == 1 and "NOT ANSWERING" in out.stdout, out.stdout + out.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "fleet.cli", "status", "--keys", str(tmp_path / "nokeys")],
        capture_output=True, text=True, timeout=60, cwd=REPO)
    assert missing.returncode == 2 and "fleet keys create" in missing.stderr


def test_rates_come_from_the_difference_of_polls():
    young, cfg = RobotHistory(min_span=10.0), MonitorConfig()
    young.add(Sample(0, 0, 0, 0), cfg)
    assert young.rate(300) is None  # no difference before two polls
    young.add(Sample(1, 4, 4, 0), cfg)
    assert young.rate(300) is None  # nor while the history is shorter than min_span
    young.add(Sample(10, 4, 4, 0), cfg)
    assert young.rate(300) == pytest.approx(4 * 3600 / 10)
    h = RobotHistory()
    for t, attempts, ok in ((0, 0, 0), (600, 100, 50), (3000, 300, 150), (3300, 310, 151)):
        h.add(Sample(t, attempts, ok, attempts - ok), cfg)
    assert h.rate(300) == pytest.approx(10 * 3600 / 300)  # last 5 min: 10 attempts
    assert h.rate(3600) == pytest.approx(310 * 3600 / 3300)  # young history: what it has
    assert h.window_success(300) == pytest.approx(0.1)
    h.add(Sample(3900, 320, 152, 168), cfg)  # the 1 h window now starts at t=300: base t=0
    assert h.rate(3600) == pytest.approx(320 * 3600 / 3900)
    h.add(Sample(7000, 320, 152, 168), cfg)  # old samples fall out: bounded memory
    assert [s.t for s in h.samples] == [3300, 3900, 7000]  # 3300: where 1 h differences start
    assert h.rate(300) == 0.0 and h.window_success(300) is None


def test_a_reply_without_the_newer_fields_degrades_to_unknown():
    row = robot_row("old", {"attempts": 3}, {}, None, now=1000.0, offline_after=30.0)
    assert row["state"] == "offline" and row["success_rate"] is None
    assert row["spool_attempts"] is None and row["policy_version"] is None
    m = Monitor(MonitorConfig())
    m.ingest({"robots": {"old": {"attempts": 3, "last_seen": 1e12}}}, now=1e12)
    snap = m.snapshot()
    assert snap["policy"] is None and snap["robots"][0]["state"] is None
    assert snap["robots"][0]["attempts"] == 3
