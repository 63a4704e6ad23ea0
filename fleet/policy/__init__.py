"""The policy side every robot shares: what a policy is, and how a trained one reaches a robot.

base.py (the `Policy` interface, `Observation`, `Decision`), cem.py (the cross-entropy
method), exploration.py (exploration policies, and the one table of their kinds), bundle.py
(the policy bundle format), factory.py (bundle -> servo policy, through the method registry),
folder.py (the learner's policies folder: written by the learner, watched by the server,
pinned by operators), geometry.py (the camera model and angles), images.py (frames as tensors).
May import: fleet.registry, fleet.store (durable writes only).
"""
