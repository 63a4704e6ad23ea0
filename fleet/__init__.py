"""fleet: the central side of a self-teaching fleet of grasping arms.

Server, store, learner, monitor and CLI, plus the pieces the robots share with them (wire
protocol, attempt records, policy bundle, grasp network, CEM). Imports no ROS 2 and no PyBullet:
it runs on a GPU box that has only PyTorch and pyzmq.
"""
__version__ = "0.1.0"
