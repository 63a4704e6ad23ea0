"""The recorder: attempts built step by step, JPEG images, the label kept apart from truth."""
from __future__ import annotations

import numpy as np
import pytest

from fleet.wire.records import decode, encode
from robot_node.recorder import AttemptRecorder, RecorderError, decode_jpeg, encode_jpeg
from robot_test_helpers import gradient_image


def test_jpeg_roundtrip_keeps_the_picture_and_colour_order():
    img = gradient_image(64)
    img[:8, :8] = (255, 0, 0)  # a red corner must stay red (RGB, not BGR)
    back = decode_jpeg(encode_jpeg(img, 95))
    assert back.shape == img.shape
    assert np.abs(back.astype(int) - img.astype(int)).mean() < 4
    assert back[2, 2, 0] > 200 and back[2, 2, 2] < 60


def test_quality_changes_the_size():
    img = gradient_image(128)
    assert len(encode_jpeg(img, 30)) < len(encode_jpeg(img, 95))


@pytest.mark.parametrize("bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 3), np.float32),
                                 np.zeros((8, 8, 4), np.uint8)])
def test_bad_images_are_refused_with_a_reason(bad):
    with pytest.raises(RecorderError, match="HxWx3 uint8"):
        encode_jpeg(bad, 90)


def test_attempt_records_every_step_and_decodes():
    rec = AttemptRecorder(robot_id="arm7", policy_version=3, policy_kind="cem", jpeg_quality=80)
    for i in range(4):
        rec.add_step(gradient_image(64, seed=i), (0.5, 0.0, 0.3 - 0.05 * i, 0, 0, 0, 1),
                     (0.0, 0.0, -0.05, 0.1), 0.08, 100.0 + 0.1 * i)
    truth = {"any_lifted": True, "objects": []}
    attempt = rec.finish("success", (0.5, 0.0, 0.1, 0, 0, 0, 1), 0.021, truth, scene={"x": 1})
    back = decode(encode(attempt))
    assert back.robot_id == "arm7" and back.policy_version == 3 and back.policy_kind == "cem"
    assert len(back.steps) == 4 and back.steps[3].motion == (0.0, 0.0, -0.05, 0.1)
    assert back.steps[2].ee_pose[2] == pytest.approx(0.2)
    assert back.label is True and back.ground_truth == truth  # truth beside the label
    assert back.image_height == back.image_width == 64
    assert back.extra["scene"] == {"x": 1}
    assert back.ended_at >= back.started_at


def test_aborted_attempt_has_no_label():
    rec = AttemptRecorder(robot_id="arm1", policy_version=0, policy_kind="random")
    attempt = rec.finish("aborted", (0, 0, 0, 0, 0, 0, 1), 0.0, None, abort_reason="timeout")
    back = decode(encode(attempt))
    assert back.label is None and back.extra["abort_reason"] == "timeout"


def test_depth_is_recorded_as_a_png_of_millimetres_on_every_step():
    from fleet.wire.depth_image import decode_depth_png

    rec = AttemptRecorder(robot_id="arm1", policy_version=0, policy_kind="scripted")
    depth = np.full((64, 64), 0.95, np.float32)
    depth[:4, :4] = 0.0  # no return stays 0
    depth[10, 10] = np.nan
    for i in range(3):
        rec.add_step(gradient_image(64, seed=i), (0.5, 0.0, 0.3, 0, 0, 0, 1), (0, 0, -0.05, 0),
                     0.08, 100.0 + 0.1 * i, depth=depth - 0.01 * i)
    back = decode(encode(rec.finish("failure", (0.5, 0.0, 0.1, 0, 0, 0, 1), 0.0)))
    assert back.has_depth and all(s.depth_png[:8] == b"\x89PNG\r\n\x1a\n" for s in back.steps)
    mm = [decode_depth_png(s.depth_png) for s in back.steps]
    assert all(m.shape == (64, 64) and m.dtype == np.uint16 for m in mm)
    assert [int(m[32, 32]) for m in mm] == [950, 940, 930]
    assert (mm[0][:4, :4] == 0).all() and mm[0][10, 10] == 0
    # Without depth: no PNG, as before (record version 1).
    plain = AttemptRecorder(robot_id="arm1", policy_version=0, policy_kind="scripted")
    plain.add_step(gradient_image(64), (0.5, 0.0, 0.3, 0, 0, 0, 1), (0, 0, 0, 0), 0.08, 1.0)
    assert plain.steps[0].depth_png is None


def test_depth_of_another_size_or_on_only_some_steps_is_refused():
    rec = AttemptRecorder(robot_id="arm1", policy_version=0, policy_kind="scripted")
    pose, motion = (0.5, 0.0, 0.3, 0, 0, 0, 1), (0, 0, 0, 0)
    with pytest.raises(RecorderError, match="colour image's size"):
        rec.add_step(gradient_image(64), pose, motion, 0.08, 1.0,
                     depth=np.ones((32, 64), np.float32))
    assert not rec.steps
    rec.add_step(gradient_image(64), pose, motion, 0.08, 1.0, depth=np.ones((64, 64), np.float32))
    with pytest.raises(RecorderError, match="every step"):
        rec.add_step(gradient_image(64), pose, motion, 0.08, 1.1)
    assert len(rec.steps) == 1
