"""The repo is both a pip package (pyproject.toml) and a ROS 2 ament_python package (package.xml,
setup.py, setup.cfg, resource/fleet). These tests keep the two views from drifting apart and keep
the layout rules of DESIGN.md (who may import whom) true."""
from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_package_xml_matches_pyproject() -> None:
    project = _pyproject()["project"]
    pkg = ET.parse(ROOT / "package.xml").getroot()
    assert pkg.findtext("name") == project["name"] == "fleet"
    assert pkg.findtext("version") == project["version"]
    assert pkg.find("export/build_type").text == "ament_python"


def test_ament_resource_marker_and_setup_cfg() -> None:
    assert (ROOT / "resource" / "fleet").is_file()
    cfg = (ROOT / "setup.cfg").read_text()
    assert "install_scripts=$base/lib/fleet" in cfg
    assert "script_dir=$base/lib/fleet" in cfg


def test_version_single_source() -> None:
    import fleet

    assert fleet.__version__ == _pyproject()["project"]["version"]


def test_setup_py_installs_ros_share_files(tmp_path: Path) -> None:
    """What colcon's ament_python build does: setup.py install with a prefix. The launch and
    config files, package.xml and the ament index marker must land in share/."""
    prefix = tmp_path / "install"
    proc = subprocess.run(
        [sys.executable, "setup.py", "-q", "build", "--build-base", str(tmp_path / "build"),
         "install", "--prefix", str(prefix), "--single-version-externally-managed",
         "--record", str(tmp_path / "record.txt")],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    share = prefix / "share"
    assert (share / "ament_index/resource_index/packages/fleet").is_file()
    assert (share / "fleet/package.xml").is_file()
    assert (share / "fleet/config/fastdds-loopback.xml").is_file()
    assert any((share / "fleet/config").glob("*.yaml"))
    assert (prefix / "lib/fleet/sim_arm").is_file(), "ROS executables belong in lib/fleet"


def test_launch_dir_is_not_a_python_package() -> None:
    assert not (ROOT / "launch" / "__init__.py").exists(), "it would shadow ROS 2's launch"


def _imports(package: str) -> set[str]:
    names: set[str] = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    return names


ROS = {"rclpy", "sensor_msgs", "std_msgs", "geometry_msgs", "std_srvs", "trajectory_msgs",
       "diagnostic_msgs", "rosgraph_msgs", "builtin_interfaces"}


def test_dependencies_point_one_way() -> None:
    fleet_imports = _imports("fleet")
    assert not fleet_imports & (ROS | {"pybullet", "pybullet_data", "robot_node", "sim_bridge"})
    assert not _imports("robot_node") & {"pybullet", "pybullet_data", "sim_bridge"}
    assert not _imports("sim_bridge") & {"fleet", "robot_node"}


def test_fleet_imports_without_ros_or_pybullet() -> None:
    """fleet must run on a GPU box with only torch and pyzmq: importing all of it must not pull
    in rclpy or pybullet."""
    mods = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts)
                  for p in (ROOT / "fleet").rglob("*.py")
                  if p.stem not in ("__init__", "__main__"))
    assert len(mods) > 50  # every module of every room
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}: importlib.import_module(m)\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('rclpy', 'pybullet', 'sim_bridge', 'robot_node')]\n"
        "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
