"""Levine et al. 2016: a grasp success network g(I_t, v) and CEM servoing on it, every step.

network.py: g(I, v), the motion tiled over a conv feature map; policy.py: CEM over v with the
paper's close/raise heuristics; learner.py: BCE on every step (I_t, p_T - p_t, label).
"""
from fleet.registry import Method, register

register(Method.in_package(__name__, architecture="grasp_success_cnn", policy_kind="cem",
                           description="Levine et al. 2016: closed-loop servoing on a grasp "
                                       "success network"))
