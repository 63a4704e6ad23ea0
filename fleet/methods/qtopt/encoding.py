"""What Q(s, a) takes, as numbers: the qtopt method's state and action encodings, shared by its
two networks (network.py: the whole image; gripper_network.py: the gripper view), its policy,
its Bellman updaters and its learner. A bundle records them as strings in its input spec.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from fleet.policy.geometry import quaternion_yaw

#: The name under which bundles of this network are registered (fleet/methods/qtopt/__init__.py).
ARCHITECTURE_NAME = "qtopt_q_cnn"

ACTION_ENCODING = ("dx,dy,dz,sin(dyaw),cos(dyaw),close; base frame; translation divided by "
                   "motion_scale; close 1 = close the gripper here (the attempt ends), 0 = move")
REGRASP_ENCODING = (ACTION_ENCODING + "; toggle 1 = drive the gripper to its other state "
                    "instead of moving (close if open, open if closed; the attempt goes on)")
STATE_ENCODING = ("finger opening / opening_scale, tool-point z in base_link / height_scale, "
                  "tool-point x, y (m) and yaw (rad) in base_link")
#: Raw action width (dx, dy, dz, dyaw, close) and its encoded width; a network with `regrasp`
#: takes one more column, toggle (raw actions may then be 6 wide).
ACTION_DIMS, ENCODED_ACTION_DIMS, STATE_DIMS = 5, 6, 2


def encode_actions(actions: np.ndarray | torch.Tensor, motion_scale: float) -> torch.Tensor:
    """(N, 5) actions (dx, dy, dz, dyaw, close) or (N, 6) with toggle, in m, rad and 0/1 ->
    (N, 7) network input (toggle 0 when not given; a network without `regrasp` reads the first
    6 columns, so every network takes every encoding).

    Yaw enters as sin/cos, so +pi and -pi are the same motion to the network."""
    a = torch.as_tensor(actions, dtype=torch.float32)
    if a.ndim != 2 or a.shape[1] not in (ACTION_DIMS, ACTION_DIMS + 1):
        raise ValueError(f"actions must have shape (N, {ACTION_DIMS}) (dx, dy, dz, dyaw, "
                         f"close) or (N, {ACTION_DIMS + 1}) (..., toggle), got "
                         f"{tuple(a.shape)}")
    toggle = a[:, 5:6] if a.shape[1] > ACTION_DIMS else torch.zeros_like(a[:, 4:5])
    return torch.cat([a[:, :3] / motion_scale, torch.sin(a[:, 3:4]), torch.cos(a[:, 3:4]),
                      a[:, 4:5], toggle], 1)


def encode_states(openings: Any, ee_poses: Any, config: Any) -> torch.Tensor:
    """Finger openings (N,), m, and tool-point poses (N, 7) (x, y, z, qx, qy, qz, qw) ->
    (N, 5) network input: opening / opening_scale, z / height_scale, then x, y (m) and yaw
    (rad) as they are. The whole-image network reads the first two (STATE_DIMS); the
    gripper view (gripper_network.py) also where the gripper is."""
    poses = np.asarray(ee_poses, dtype=np.float64).reshape(-1, 7)
    o = torch.as_tensor(np.asarray(openings, np.float64).reshape(-1, 1) / config.opening_scale)
    h = torch.as_tensor(poses[:, 2:3] / config.height_scale)
    yaw = torch.as_tensor(quaternion_yaw(poses[:, 3:7])[:, None])
    return torch.cat([o, h, torch.as_tensor(poses[:, :2]), yaw], 1).float()


def input_spec(config: Any) -> dict[str, Any]:
    """What both Q-networks' bundles say about their inputs (each adds its own depth line and,
    the gripper view, its `view`): the camera frame and the encodings above."""
    return {"image_height": config.image_height, "image_width": config.image_width,
            "image_channels": 3, "image_encoding": "rgb8 / 255",
            "image": "I_t (the newest frame)", "state_encoding": STATE_ENCODING,
            "action_encoding": REGRASP_ENCODING if config.regrasp else ACTION_ENCODING,
            "motion_scale": config.motion_scale, "opening_scale": config.opening_scale,
            "height_scale": config.height_scale}
