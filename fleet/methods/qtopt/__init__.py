"""QT-Opt (Kalashnikov et al. 2018): closed-loop, off-policy Q-learning with CEM maximisation.

gripper_network.py: Q(s, a) read from the RGB(-D) patch of the newest frame where the step
leads (the default view); network.py: Q(s, a) over the whole frame, and the builder that picks
a network by the bundle's `view`; encoding.py: the state and action encodings both take;
policy.py: CEM over the motion and the close action scored on its own, every step; bellman.py:
clipped double-Q Bellman targets from two target networks (the Bellman updaters' work, in the
data workers or the trainer); learner.py: cross-entropy on them, Polyak-averaged and lagged
target networks, trained on every transition any policy recorded.
"""
from fleet.registry import Method, register

register(Method.in_package(__name__, architecture="qtopt_q_cnn", policy_kind="qtopt",
                           description="QT-Opt: closed-loop Q-learning, CEM over Q(s, a) "
                                       "every step"))
