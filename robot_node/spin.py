"""Spinning a node's executor on a background thread, for nodes whose main thread does the
work (the grasp loop, the camera's capture loop) while callbacks, parameter services and
subscriptions are served beside it."""
from __future__ import annotations

import threading

from rclpy.executors import ExternalShutdownException, Executor, SingleThreadedExecutor
from rclpy.node import Node


def spin_in_background(node: Node, name: str) -> tuple[Executor, threading.Thread]:
    """Start spinning `node` on a daemon thread; returns the executor (shut it down to stop)
    and the thread. rclpy's shutdown from a signal ends the spin quietly."""
    executor = SingleThreadedExecutor()
    executor.add_node(node)

    def spin() -> None:
        try:
            executor.spin()
        except ExternalShutdownException:
            pass

    thread = threading.Thread(target=spin, name=name, daemon=True)
    thread.start()
    return executor, thread
