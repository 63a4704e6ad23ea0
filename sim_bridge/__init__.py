"""sim_bridge: a PyBullet arm that looks to ROS 2 exactly like a real arm driver plus a camera
driver, and a Gymnasium view of the same simulator core. Knows nothing of learning."""
