"""camera_node as a real process over DDS: a video file written here with cv2.VideoWriter plays
into camera/image_raw and camera/camera_info; a live (URL) source that drops is re-opened, then
given up on; a device that does not exist stops the node with exit 2 and what to check.

The camera model (calibration YAML, crop and resize of the intrinsics) is pure and checked
in-process against the pinhole projection itself.
"""
from __future__ import annotations

import functools
import http.server
import os
import signal
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from ros_processes import group_members, wait_for

from robot_node.camera_model import CameraError, OutputGeometry, load_calibration, pinhole

pytestmark = pytest.mark.ros

# BGR, as OpenCV writes them; the node must publish them as RGB.
RED, BLUE, GREEN, WHITE = (0, 0, 255), (255, 0, 0), (0, 255, 0), (255, 255, 255)
VIDEO_W, VIDEO_H = 80, 60


def write_video(path: Path, frames: int = 30) -> Path:
    """MJPG .avi: first half of the frames left RED | right BLUE, second half GREEN | WHITE."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, (VIDEO_W, VIDEO_H))
    assert writer.isOpened(), "OpenCV cannot write MJPG .avi here"
    for i in range(frames):
        frame = np.zeros((VIDEO_H, VIDEO_W, 3), np.uint8)
        left, right = (RED, BLUE) if i < frames // 2 else (GREEN, WHITE)
        frame[:, :VIDEO_W // 2], frame[:, VIDEO_W // 2:] = left, right
        writer.write(frame)
    writer.release()
    return path


def rgb_of(bgr: tuple) -> tuple:
    return tuple(reversed(bgr))


def halves(msg) -> tuple[np.ndarray, np.ndarray]:
    """Mean RGB of the left and right quarter-strips (away from the JPEG-blurred seam)."""
    img = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)
    q = msg.width // 4
    return img[:, :q].reshape(-1, 3).mean(0), img[:, -q:].reshape(-1, 3).mean(0)


def shows(msg, left_bgr: tuple, right_bgr: tuple, tol: float = 30.0) -> bool:
    left, right = halves(msg)
    return bool(np.abs(left - rgb_of(left_bgr)).max() < tol
                and np.abs(right - rgb_of(right_bgr)).max() < tol)


# ------------------------------------------------------------------------------- camera model


def test_calibration_yaml_is_cropped_and_scaled_exactly(tmp_path):
    k = [100.0, 0.0, 41.0, 0.0, 102.0, 29.0, 0.0, 0.0, 1.0]
    p = [100.0, 0.0, 41.0, -5.0, 0.0, 102.0, 29.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    calib = {"image_width": VIDEO_W, "image_height": VIDEO_H, "camera_name": "test",
             "camera_matrix": {"rows": 3, "cols": 3, "data": k},
             "distortion_model": "plumb_bob",
             "distortion_coefficients": {"rows": 1, "cols": 5, "data": [0.1, -0.2, 0, 0, 0.01]},
             "rectification_matrix": {"rows": 3, "cols": 3, "data": [1, 0, 0, 0, 1, 0, 0, 0, 1]},
             "projection_matrix": {"rows": 3, "cols": 4, "data": p}}
    path = tmp_path / "cal.yaml"
    path.write_text(yaml.safe_dump(calib))
    model = load_calibration(f"file://{path}")
    assert model.d == (0.1, -0.2, 0.0, 0.0, 0.01) and model.p == tuple(p)

    geometry = OutputGeometry.plan(VIDEO_W, VIDEO_H, 32, 32, crop_to_aspect=True)
    assert (geometry.x0, geometry.y0, geometry.crop_w, geometry.crop_h) == (10, 0, 60, 60)
    out = geometry.camera_model(model)
    # A point's pixel in the output must be (pixel in the capture - crop origin) * scale.
    s = 32 / 60
    for point in ([0.02, -0.01, 0.5], [-0.05, 0.03, 0.7]):
        for matrix, cols, src in ((out.k, 3, k), (out.p, 4, p)):
            X = np.array(point + ([1.0] if cols == 4 else []))
            u_in = np.array(src).reshape(3, cols) @ X
            u_out = np.array(matrix).reshape(3, cols) @ X
            expected = ((u_in[0] / u_in[2] - 10) * s, (u_in[1] / u_in[2]) * s)
            assert np.allclose((u_out[0] / u_out[2], u_out[1] / u_out[2]), expected)
    assert (out.width, out.height) == (32, 32) and out.d == model.d


def test_pinhole_and_bad_calibration_files(tmp_path):
    model = pinhole(80, 60, 90.0)
    assert model.k[0] == pytest.approx(40.0) and model.k[4] == pytest.approx(40.0)
    assert (model.k[2], model.k[5]) == (40.0, 30.0)
    bad = tmp_path / "bad.yaml"
    bad.write_text("image_width: 80\nimage_height: 60\ncamera_matrix: {data: [1, 2, 3]}\n")
    with pytest.raises(CameraError, match="camera_matrix.*3 values, expected 9"):
        load_calibration(str(bad))
    with pytest.raises(CameraError, match="cannot read"):
        load_calibration(str(tmp_path / "missing.yaml"))
    with pytest.raises(CameraError, match="only a path or a file:// URL"):
        load_calibration("package://fleet/cal.yaml")


# ------------------------------------------------------------------------------- over DDS


def test_video_file_publishes_rgb_images_and_camera_info(ros_processes, ros_node, tmp_path):
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    video = write_video(tmp_path / "pattern.avi")
    images = ros_node.subscribe(Image, "/cam1/camera/image_raw", qos_profile_sensor_data)
    infos = ros_node.subscribe(CameraInfo, "/cam1/camera/camera_info", qos_profile_sensor_data)
    proc = ros_processes.start_node("robot_node.camera_node", "camera", namespace="/cam1",
                                    params={"device": str(video), "fps": 60.0, "width": 32,
                                            "height": 32, "fov": 90.0, "frame_id": "cam_optical"})
    first = images.wait(30.0, what="an image from camera_node")
    assert (first.encoding, first.width, first.height, first.step) == ("rgb8", 32, 32, 96)
    assert first.header.frame_id == "cam_optical" and len(first.data) == 32 * 32 * 3
    # Both halves of the video, in RGB, left stays left; the video loops.
    images.wait(10.0, lambda m: shows(m, RED, BLUE), "a RED | BLUE frame")
    images.wait(10.0, lambda m: shows(m, GREEN, WHITE), "a GREEN | WHITE frame")
    assert not any(shows(m, BLUE, RED) for m in images.messages), "BGR published as RGB"

    info = infos.wait(5.0, what="camera_info")
    assert (info.width, info.height, info.header.frame_id) == (32, 32, "cam_optical")
    # 90 deg over the 80 px capture: f = 40 px; crop 60x60 at x=10, scale 32/60.
    s = 32 / 60
    assert np.allclose(info.k, [40 * s, 0, 16, 0, 40 * s, 16, 0, 0, 1])
    assert info.distortion_model == "plumb_bob" and list(info.d) == [0.0] * 5
    image_stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for m in images.messages}
    assert any((i.header.stamp.sec, i.header.stamp.nanosec) in image_stamps
               for i in infos.messages), "camera_info never carried an image's stamp"

    pubs = ros_node.node.get_publishers_info_by_topic("/cam1/camera/image_raw")
    assert len(pubs) == 1 and pubs[0].qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT
    assert pubs[0].qos_profile.durability == DurabilityPolicy.VOLATILE  # (depth is not
    # announced over discovery; it is qos_profile_sensor_data's 5)

    # The playback rate over a fresh stretch (not discovery's start, where a best-effort
    # subscriber drops frames), as the median frame interval (a loop's re-open is one gap).
    images.clear()
    wait_for(lambda: len(images) >= 21, timeout=10, what="21 more images")
    stamps = [m.header.stamp.sec + m.header.stamp.nanosec * 1e-9 for m in images.messages[-21:]]
    rate = 1.0 / float(np.median(np.diff(stamps)))
    assert 30 < rate < 75, f"played at {rate:.1f} Hz, asked 60"

    result = proc.stop()
    assert (result.signal, result.returncode) == (signal.SIGINT, 0), proc.log_text()
    assert "camera stopped after" in proc.log_text()


@pytest.mark.parametrize("device", ["/dev/video99", 99])  # a path, or `-p device:=99`
def test_missing_device_exits_2_saying_what_to_check(ros_processes, device):
    proc = ros_processes.start_node("robot_node.camera_node", "camera", namespace="/cam2",
                                    params={"device": device})
    proc.popen.wait(timeout=30)
    log = proc.log_text()
    assert proc.popen.returncode == 2, log
    assert "/dev/video99 does not exist" in log and "ls /dev/video*" in log
    assert "Traceback" not in log


def test_video_file_without_loop_exits_0_at_its_end(ros_processes, tmp_path):
    video = write_video(tmp_path / "short.avi", frames=10)
    proc = ros_processes.start_node("robot_node.camera_node", "camera", namespace="/cam5",
                                    params={"device": f"file://{video}", "loop": False,
                                            "fps": 50.0})
    proc.popen.wait(timeout=30)
    assert proc.popen.returncode == 0, proc.log_text()
    assert "after 10 frames published (loop is false)" in proc.log_text()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_live_source_is_reopened_then_given_up(ros_processes, ros_node, tmp_path):
    """A URL source (live) served by a real HTTP server: each end of stream is a failed read,
    re-opened; once the server is gone, the node exits 1 after max_reconnects attempts.
    Its camera_info comes from a calibration file made at twice the stream's size."""
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    write_video(tmp_path / "stream.avi", frames=10)
    calibration = tmp_path / "cal.yaml"
    calibration.write_text(yaml.safe_dump({
        "image_width": 2 * VIDEO_W, "image_height": 2 * VIDEO_H,
        "camera_matrix": {"rows": 3, "cols": 3, "data": [200, 0, 80, 0, 200, 60, 0, 0, 1]}}))
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/stream.avi"
    images = ros_node.subscribe(Image, "/cam3/camera/image_raw", qos_profile_sensor_data)
    infos = ros_node.subscribe(CameraInfo, "/cam3/camera/camera_info", qos_profile_sensor_data)
    proc = ros_processes.start_node("robot_node.camera_node", "camera", namespace="/cam3",
                                    params={"device": url, "max_reconnects": 3,
                                            "reconnect_delay": 0.3, "open_timeout": 2.0,
                                            "camera_info_url": f"file://{calibration}"})
    try:
        proc.wait_for_log("re-opened " + url, 30.0)
        before = len(images)
        wait_for(lambda: len(images) > before, 10.0, "an image after the re-open")
    finally:
        server.shutdown()
        server.server_close()
    proc.popen.wait(timeout=30)
    log = proc.log_text()
    assert proc.popen.returncode == 1, log
    assert "failed 4 times in a row; giving up (exit 1)" in log
    assert "Traceback" not in log
    assert all(m.width == 64 and m.height == 64 for m in images.messages)  # the default size
    # calibration halved to 80x60 (f 100, c 40,30), cropped at x=10 to 60x60, scaled 64/60
    assert "calibration is for 160x120 but the source delivers 80x60" in log
    s = 64 / 60
    info = infos.wait(5.0, what="camera_info")
    assert np.allclose(info.k, [100 * s, 0, 32, 0, 100 * s, 32, 0, 0, 1])
    assert info.p[3] == 0.0 and list(info.d) == [0.0] * 5


def cpu_seconds(pgid: int) -> float:
    """User + system CPU time of every live process in the group, from /proc."""
    total = 0
    for pid in group_members(pgid):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


@pytest.mark.slow
def test_cost_of_a_vga_stream_at_64x64(ros_processes, ros_node, tmp_path):
    """The figures in docs/real-robots.md (run with -s to see them): a 640x480 MJPG file at
    30 Hz, published at 64x64; node CPU, rate received, stamp-to-receipt latency."""
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    video = tmp_path / "vga.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 30, (640, 480))
    texture = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    for i in range(60):
        writer.write(np.roll(texture, 4 * i, axis=1))
    writer.release()
    latencies: list[float] = []

    def on_image(msg) -> None:
        now = ros_node.node.get_clock().now().nanoseconds
        latencies.append((now - msg.header.stamp.sec * 10**9 - msg.header.stamp.nanosec) / 1e6)

    ros_node.node.create_subscription(Image, "/cam4/camera/image_raw", on_image,
                                      qos_profile_sensor_data)
    proc = ros_processes.start_node("robot_node.camera_node", "camera", namespace="/cam4",
                                    params={"device": str(video), "fps": 30.0})
    wait_for(lambda: len(latencies) > 5, 30.0, "images from camera_node")
    latencies.clear()
    cpu0, t0 = cpu_seconds(proc.pgid), time.monotonic()
    time.sleep(5.0)
    cpu, elapsed, lat = cpu_seconds(proc.pgid) - cpu0, time.monotonic() - t0, sorted(latencies)
    rate = len(lat) / elapsed
    print(f"\n640x480 MJPG -> 64x64 at 30 Hz: node CPU {100 * cpu / elapsed:.0f}% of one core, "
          f"{rate:.1f} Hz received, stamp to receipt median {lat[len(lat) // 2]:.1f} ms, "
          f"p95 {lat[int(0.95 * len(lat))]:.1f} ms")
    assert rate > 15.0, f"only {rate:.1f} Hz of 30 received"
    assert cpu / elapsed < 0.9, "camera_node needs most of a core for 64x64 at 30 Hz"
