"""robot_node: the ROS 2 node on every arm controller (grasp loop, policy runtime, safety,
recorder, spool, uploader). Knows ROS 2 and fleet's shared pieces; never PyBullet."""
