"""Learning methods, one subpackage each, found by name through the registry (registry.py).

Each method folder holds `network.py` (the network a policy bundle carries), `policy.py` (what
a robot runs with it) and `learner.py` (its training step), and its `__init__.py` registers
them under one name. May import: fleet.policy, fleet.learner (learner.py only), fleet.store
and fleet.wire (for the records it trains on). Nothing outside this folder names a method.
"""
