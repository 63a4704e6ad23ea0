"""Spinning a node's executor on a background thread, for nodes whose main thread does the
work (the grasp loop, the camera's capture loop) while callbacks, parameter services and
subscriptions are served beside it."""
from __future__ import annotations

import threading

import rclpy
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
        except Exception:
            # A signal's shutdown can land while the executor builds its wait set, which then
            # fails with "context is not valid" instead of ExternalShutdownException.
            if rclpy.ok():
                raise

    thread = threading.Thread(target=spin, name=name, daemon=True)
    thread.start()
    return executor, thread
