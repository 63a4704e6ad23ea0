"""The process plan computed from config/arms.yaml: what `fleet sim` and arms.launch.py start."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from fleet.ops.plan import (CONFIG_DIR, PlanError, camera_flags, fleet_camera, fleet_image_size,
                            load_arms, node_plan)


def test_default_config_plans_a_sim_arm_and_robot_node_per_arm() -> None:
    arms = load_arms(CONFIG_DIR / "arms.yaml", count=3)
    assert [a.name for a in arms] == ["arm1", "arm2", "arm3"]
    assert len({a.seed for a in arms}) == 3, "each simulated arm needs its own seed"
    nodes = node_plan(arms)
    assert [n.label for n in nodes] == ["arm1/sim_arm", "arm1/robot_node", "arm2/sim_arm",
                                        "arm2/robot_node", "arm3/sim_arm", "arm3/robot_node"]
    sim = nodes[0]
    argv = sim.argv("python")
    assert argv[:3] == ["python", "-m", "sim_bridge.node"]
    ros = argv[3:]
    assert ros[0] == "--ros-args"
    assert "__ns:=/arm1" in ros and "/clock:=/arm1/clock" in ros
    assert "split:='train'" in ros and "image_width:=128" in ros
    # the robot_node of the arm gets the same camera size (one setting for both nodes)
    robot = nodes[1].argv("python")
    assert "image_width:=128" in robot and "image_height:=128" in robot
    assert fleet_image_size(arms) == 128
    with pytest.raises(PlanError, match="same"):
        fleet_image_size([arms[0], replace(arms[1], image_size=64)])


def test_camera_setting_reaches_the_sim_arm_and_the_learner_flags(tmp_path: Path) -> None:
    """One camera model per fleet: arms.yaml's camera_* go to every sim arm as parameters and
    to the learner as flags (the grasp-point network samples I_0 through it)."""
    path = tmp_path / "arms.yaml"
    path.write_text("arms: {names: [a1, a2], defaults: {camera_fov_deg: 31, "
                    "camera_eye: [0.1, -0.4, 0.8]}}")
    arms = load_arms(path)
    sim = node_plan(arms)[0].argv("python")
    assert "camera_fov_deg:=31.0" in sim and "camera_eye:=[0.1,-0.4,0.8]" in sim
    assert not any(a.startswith("camera_target") for a in sim), "unset: the node's default"
    camera = fleet_camera(arms)
    assert camera == {"camera_eye": [0.1, -0.4, 0.8], "camera_fov_deg": 31.0}
    assert camera_flags(camera) == ["--camera-eye", "0.1", "-0.4", "0.8",
                                    "--camera-fov-deg", "31.0"]
    with pytest.raises(PlanError, match="same"):
        fleet_camera([arms[0], replace(arms[1], camera_fov_deg=45.0)])
    path.write_text("arms: {names: [a1], defaults: {camera_eye: [0.1, 0.2]}}")
    with pytest.raises(PlanError, match=r"camera_eye must be \[x, y, z\]"):
        node_plan(load_arms(path))


def test_real_arms_have_no_sim_and_no_clock_remap() -> None:
    nodes = node_plan(load_arms(CONFIG_DIR / "arms.yaml", names=["left", "right"], sim=False))
    assert [n.label for n in nodes] == ["left/robot_node", "right/robot_node"]
    assert all(not n.remappings for n in nodes)


@pytest.mark.parametrize("text, message", [
    ("arms: {names: []}", "arms.names is empty"),
    ("arms: {names: [a1], defaults: {colour: red}}", "unknown arm settings"),
    ("arms: {names: [arm-1]}", "must be a ROS name"),
    ("arms: {names: [a1, a1]}", "unique"),
])
def test_bad_config_is_explained(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "arms.yaml"
    path.write_text(text)
    with pytest.raises(PlanError, match=message):
        node_plan(load_arms(path))


def test_missing_config_names_the_default(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="no such arms file"):
        load_arms(tmp_path / "nope.yaml")


def test_fleet_sim_passes_exploration_weight_average_and_camera(tmp_path: Path) -> None:
    """What `fleet sim` would start: robots explore as config/robot_node.yaml says unless
    --exploration-policy is given; the learner gets --ema-decay, --q-view, --workers and the
    arms file's camera."""
    from fleet.ops.sim_fleet import SimFleetConfig, children

    arms = tmp_path / "arms.yaml"
    arms.write_text("arms: {names: [arm1], defaults: {camera_fov_deg: 40}}")

    def argv(name: str, **over) -> list[str]:
        cfg = SimFleetConfig(arms=1, config=arms, data_dir=tmp_path / "run", **over)
        return next(c.argv for c in children(cfg) if c.name == name)

    assert not any("exploration_policy" in a for a in argv("arm1/robot_node"))
    assert "exploration_policy:='aimed_descent'" in argv("arm1/robot_node",
                                                         exploration_policy="aimed_descent")
    learner = argv("learner", learner_ema_decay=0.995)
    assert learner[learner.index("--camera-fov-deg") + 1] == "40.0"
    assert learner[learner.index("--ema-decay") + 1] == "0.995"
    assert learner[learner.index("--q-view") + 1] == "gripper"  # qtopt's default view
    image = argv("learner", learner_method="qtopt", learner_q_view="image")
    assert image[image.index("--q-view") + 1] == "image"
    assert learner[learner.index("--workers") + 1] == "1"  # one Bellman updater by default
    two = argv("learner", learner_method="qtopt", learner_workers=2)
    assert two[two.index("--workers") + 1] == "2"
    assert "--step-cost" not in two  # the learner's own default unless asked
    cheap = argv("learner", learner_method="qtopt", learner_step_cost=0.01)
    assert cheap[cheap.index("--step-cost") + 1] == "0.01"


def test_robot_params_from_the_command_line_reach_every_robot_node(tmp_path: Path) -> None:
    """`fleet sim --robot-param NAME=VALUE` (and learning_run's, fleet eval's): read as YAML,
    passed to each arm's robot_node after its params file, so they win over it."""
    from fleet.ops.sim_fleet import SimFleetConfig, children, robot_params

    over = robot_params(["exploration_share=0.5", "max_steps=9", "exploration_policy=random"])
    assert over == {"exploration_share": 0.5, "max_steps": 9, "exploration_policy": "random"}
    arms = tmp_path / "arms.yaml"
    arms.write_text("arms: {names: [arm1, arm2]}")
    cfg = SimFleetConfig(arms=2, config=arms, data_dir=tmp_path / "run", robot_params=over)
    for spec in (c for c in children(cfg) if c.name.endswith("/robot_node")):
        args = spec.argv
        assert "exploration_share:=0.5" in args and "max_steps:=9" in args
        assert args.index("max_steps:=9") > args.index("--params-file")
    with pytest.raises(SystemExit, match="NAME=VALUE"):
        robot_params(["exploration_share"])
