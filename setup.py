"""colcon's ament_python build runs this file; pip reads pyproject.toml.

Name, version, dependencies and entry points come from pyproject.toml (setuptools reads its
[project] table here too), so nothing is stated twice. This file adds only what a ROS 2 package
must install besides Python modules: the ament index marker, package.xml, launch and config
files into share/fleet.
"""
from glob import glob

from setuptools import setup

PACKAGE = "fleet"

setup(
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
    ],
)
