"""Learning methods, one subpackage each, registered by name (fleet/registry.py).

Each method folder holds `network.py` (the network a policy bundle carries), `policy.py` (what
a robot runs with it) and `learner.py` (its training step), and its `__init__.py` registers
them under one name. Only learner.py may import the learner's machinery: robots import a
method's network and policy, never its training code. Nothing outside this folder names a
method. Beside them, the building blocks several methods share: layers.py (conv trunks and
heads) and patches.py (gripper-aligned patches and depth as height, through the camera model).
May import: fleet.registry, fleet.policy, fleet.learner, fleet.store, fleet.wire.
"""
