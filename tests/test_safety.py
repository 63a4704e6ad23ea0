"""Safety pieces without ROS: workspace clipping, twist splitting, the e-stop latch, watchdog."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from robot_node.safety import EStop, Watchdog, Workspace, split_motion

WS = Workspace((0.40, -0.15, 0.027), (0.70, 0.15, 0.40))
finite = st.floats(-1e6, 1e6, allow_nan=False)
anything = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=300, deadline=None)
@given(pos=st.tuples(st.floats(0.40, 0.70), st.floats(-0.15, 0.15), st.floats(0.027, 0.40)),
       motion=st.tuples(anything, anything, anything, anything))
def test_clipped_motion_never_leaves_the_workspace(pos, motion):
    m = WS.clip_motion(pos, motion)
    assert all(math.isfinite(v) for v in m)
    assert WS.contains([p + d for p, d in zip(pos, m[:3])])


def test_motion_inside_is_untouched_and_outside_is_cut():
    pos = (0.55, 0.0, 0.2)
    assert WS.clip_motion(pos, (0.01, -0.02, 0.03, 0.5)) == pytest.approx((0.01, -0.02, 0.03, 0.5))
    m = WS.clip_motion(pos, (10.0, -10.0, -10.0, 0.0))
    assert m[:3] == pytest.approx((0.15, -0.15, 0.027 - 0.2))


def test_from_outside_the_only_way_is_back_in():
    m = WS.clip_motion((0.9, 0.0, 0.2), (0.1, 0.0, 0.0, 0.0))
    assert m[0] == pytest.approx(0.70 - 0.9)


@settings(max_examples=200, deadline=None)
@given(motion=st.tuples(finite, finite, finite, finite))
def test_split_motion_respects_limits_and_adds_up(motion):
    motion = tuple(v / 1e5 for v in motion)  # up to 10 m
    twists = split_motion(motion, 0.1, 0.5, 2.0)
    for v in twists:
        assert math.sqrt(v[0] ** 2 + v[1] ** 2 + v[2] ** 2) <= 0.5 + 1e-9
        assert abs(v[3]) <= 2.0 + 1e-9
    total = np.sum(np.array(twists) * 0.1, axis=0)
    assert np.allclose(total, motion, atol=1e-9)


def test_estop_latches_until_every_source_releases():
    halts = []
    e = EStop(on_engage=lambda: halts.append(1))
    assert not e.engaged
    e.set("/estop", True)
    assert e.engaged and halts == [1]
    e.set("estop", True)
    e.set("/estop", False)
    assert e.engaged  # the arm's own e-stop still holds
    e.set("estop", False)
    assert not e.engaged and e.changed.is_set()


def test_watchdog_trips_on_camera_and_policy_stalls_only_when_active():
    now = [0.0]
    w = Watchdog(camera_stall=1.0, policy_stall=0.5, clock=lambda: now[0])
    now[0] = 10.0
    assert w.check() is None  # idle: not watched
    w.set_active(True)
    now[0] = 10.5
    w.image_seen()
    assert w.check() is None
    now[0] = 11.6
    assert "camera" in w.check() and "camera" in w.tripped
    w.set_active(True)  # still the same attempt: the trip stays
    assert w.tripped
    w.set_active(False)
    w.set_active(True)  # next attempt: fresh window
    assert w.tripped is None and w.check() is None
    w.decision_started()
    now[0] = 11.9
    assert w.check() is None
    now[0] = 12.2
    w.image_seen()
    assert "policy" in w.check()
    w.set_active(False)
    w.decision_ended()


def _pose_with_yaw(yaw):
    return (0.55, 0.0, 0.2, 0.0, 0.0, math.sin(yaw / 2), math.cos(yaw / 2))


def test_yaw_is_kept_within_its_limits():
    m = WS.clip_motion(_pose_with_yaw(1.0), (0.0, 0.0, 0.0, 100.0))
    assert 1.0 + m[3] == pytest.approx(math.pi / 2)
    m = WS.clip_motion(_pose_with_yaw(-1.0), (0.0, 0.0, 0.0, -0.2))
    assert m[3] == pytest.approx(-0.2)
