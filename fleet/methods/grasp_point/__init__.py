"""The grasp-point method (the default; after Pinto & Gupta 2016): p(success | I_0, x, y, yaw).

network.py: a CNN on gripper-aligned patches of the pre-grasp RGB-D image, resampled through the
camera model; policy.py: CEM over top-down grasps on I_0, then the scripted descent;
learner.py: BCE on one example per attempt (I_0, where the gripper closed, label).
"""
from fleet.registry import Method, register

register(Method.in_package(__name__, architecture="grasp_point_cnn", policy_kind="grasp_point",
                           description="grasp-point network over RGB-D patches, open-loop "
                                       "top-down grasp"))
