"""robot_node's health as data: one `NodeStatus` snapshot, rendered as a
diagnostic_msgs/DiagnosticStatus (diagnostic_updater conventions: name "<node>: <task>",
hardware_id = the arm id, level OK/WARN/ERROR with a one-line message, key/value details) and
as the compact JSON the fleet monitor reads from the `status` topic.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

#: Node states (the `state` field): what the node is doing between and during attempts.
STATES = ("starting", "collecting", "idle", "paused", "estopped", "stopping")


@dataclass
class NodeStatus:
    arm_id: str
    state: str = "starting"
    phase: str = "idle"
    attempts: int = 0
    successes: int = 0
    failures: int = 0
    aborted: int = 0
    last_abort_reason: str = ""
    spool_backlog: int = 0
    spool_bytes: int = 0
    spool_max_bytes: int = 0
    policy_version: int = 0
    policy_kind: str = ""
    attempts_per_min: float = 0.0
    ground_truth_agree: int = 0
    ground_truth_known: int = 0
    paused_reason: str = ""
    estop_sources: dict[str, bool] = field(default_factory=dict)
    watchdog: str = ""
    uploaded: int = 0
    upload_error: str = ""

    @property
    def success_rate(self) -> float:
        ran = self.successes + self.failures
        return self.successes / ran if ran else 0.0

    def level_and_message(self) -> tuple[int, str]:
        """diagnostic_msgs levels: 0 OK, 1 WARN, 2 ERROR."""
        if self.state == "estopped":
            on = [k for k, v in self.estop_sources.items() if v]
            return 2, f"e-stop engaged ({', '.join(on) or 'latched'})"
        if self.watchdog:
            return 2, f"watchdog: {self.watchdog}"
        if self.state == "paused":
            return 1, f"paused: {self.paused_reason}"
        if self.upload_error:
            return 1, f"upload: {self.upload_error}"
        return 0, (f"{self.state}: {self.attempts} attempts, {self.successes} successes, "
                   f"{self.aborted} aborted, policy v{self.policy_version}")

    def to_json(self) -> str:
        d = asdict(self)
        d["success_rate"] = round(self.success_rate, 4)
        d["attempts_per_min"] = round(self.attempts_per_min, 2)
        return json.dumps(d, sort_keys=True)


def diagnostic_array(status: NodeStatus, node_name: str, stamp: Any) -> Any:
    """A DiagnosticArray holding this node's one status (imports ROS messages lazily)."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    level, message = status.level_and_message()
    values = {k: v for k, v in json.loads(status.to_json()).items() if k != "estop_sources"}
    values["estop"] = ",".join(k for k, v in status.estop_sources.items() if v) or "released"
    array = DiagnosticArray()
    array.header.stamp = stamp
    array.status = [DiagnosticStatus(
        level=bytes([level]), name=f"{node_name}: grasp collection",
        message=message, hardware_id=status.arm_id,
        values=[KeyValue(key=k, value=str(v)) for k, v in sorted(values.items())])]
    return array
