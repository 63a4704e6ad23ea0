"""QT-Opt (Kalashnikov et al. 2018): closed-loop, off-policy Q-learning with CEM maximisation.

network.py: Q(s, a) over the newest RGB(-D) frame, the gripper's opening and height, and one
step's action (motion, close); policy.py: CEM over the motion and the close action scored on
its own, every step; bellman.py: clipped double-Q Bellman targets from two target networks (the
Bellman updaters' work, in the data workers or the trainer); learner.py: cross-entropy on them,
Polyak-averaged and lagged target networks, trained on every transition any policy recorded.
"""
from fleet.registry import Method, register

register(Method.in_package(__name__, architecture="qtopt_q_cnn", policy_kind="qtopt",
                           description="QT-Opt: closed-loop Q-learning, CEM over Q(s, a) "
                                       "every step"))
