"""Evaluation: `fleet eval`, success on objects never trained on, with 95% intervals.

evaluate.py (runs each policy through real simulated arms and robot_nodes), plot.py (the
report's table and chart).
May import: fleet.ops, fleet.policy, fleet.registry, fleet.wire.
"""
