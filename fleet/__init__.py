"""fleet: the central side of a self-teaching fleet of grasping arms, and what robots share.

Rooms, one subpackage each (docs/architecture.md draws them and the data flowing through):
wire (the wire format), store (the episode store), server (the data server), client (the
upload client), policy (the policy side robots share), methods (one folder per learning
method, found through registry.py), learner (the learner's machinery), ops (plan,
supervisor, `fleet sim`), monitor (status, dashboard, metrics), evaluation (`fleet eval`);
cli.py is the `fleet` command. Each room's __init__ says what it may import; tests/
test_layout.py holds them to it. Imports no ROS 2 and no PyBullet: it runs on a GPU box that
has only PyTorch and pyzmq.
"""
__version__ = "0.1.0"
