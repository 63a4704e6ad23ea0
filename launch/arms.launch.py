"""`ros2 launch fleet arms.launch.py`: one robot_node per arm (and a sim_bridge arm per arm with
sim:=true), from the same plan as `fleet sim` (fleet/ops/plan.py, tested there).

This file is a thin mapping of that plan onto launch_ros Node actions: launch and launch_ros have
no wheels, so these few lines are the only part not exercised by the test suite.

    ros2 launch fleet arms.launch.py arms:=left,right server:=tcp://10.0.0.5:5555 sim:=false
"""
import os
from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from fleet.ops.plan import load_arms, node_plan


def _nodes(context):
    share = get_package_share_directory("fleet")
    config_dir = os.path.join(share, "config")
    arg = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    names = [a for a in arg("arms").split(",") if a] or None
    extra = {"server_address": arg("server")} if arg("server") else {}
    arms = load_arms(arg("config") or os.path.join(config_dir, "arms.yaml"), names=names,
                     sim=arg("sim").lower() in ("true", "1", "yes"))
    return [Node(package="fleet", executable=n.executable, name=n.node_name,
                 namespace=n.namespace, parameters=[*map(str, n.params_files), n.parameters],
                 remappings=n.remappings, output="screen")
            for n in node_plan(arms, config_dir=Path(config_dir),
                               extra_robot_params=extra)]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("config", default_value="",
                              description="arms plan YAML (default: share/fleet/config/arms.yaml)"),
        DeclareLaunchArgument("arms", default_value="",
                              description="comma-separated arm ids (default: from the plan)"),
        DeclareLaunchArgument("server", default_value="",
                              description="data server address, e.g. tcp://10.0.0.5:5555"),
        DeclareLaunchArgument("sim", default_value="false",
                              description="true: start a simulated arm beside each robot_node"),
        OpaqueFunction(function=_nodes),
    ])
