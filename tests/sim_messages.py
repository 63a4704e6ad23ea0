"""Command messages for the sim arm, built the way a controller client builds them (shared by
the sim node's process tests and its message-rule tests)."""
from __future__ import annotations

from geometry_msgs.msg import PoseStamped, TwistStamped

from sim_bridge.messages import top_down_quaternion


def twist(linear, yaw_rate=0.0, angular_xy=(0.0, 0.0), frame="base_link", stamp=None):
    msg = TwistStamped()
    msg.header.frame_id = frame
    if stamp is not None:
        msg.header.stamp = stamp
    msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = (float(v) for v in linear)
    msg.twist.angular.x, msg.twist.angular.y = (float(v) for v in angular_xy)
    msg.twist.angular.z = float(yaw_rate)
    return msg


def pose_target(xyz, yaw=0.0, frame="base_link"):
    msg = PoseStamped()
    msg.header.frame_id = frame
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in xyz)
    o = msg.pose.orientation
    o.x, o.y, o.z, o.w = top_down_quaternion(yaw)
    return msg
