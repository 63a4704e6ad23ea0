"""The learner's machinery, common to every method: it trains whatever the registry names.

config.py (`LearnerConfig`: every setting, one flag each), cli.py (`fleet learn`), loop.py (the
train/validate/publish cycle, DDP, signals), api.py (the `Learner` interface a method
implements), supervised.py (a base for BCE methods), dataset.py (store -> batches in worker
processes), handover.py and frame_cache.py (shared-memory batches, decoded frames),
checkpoint.py (resumable state), in_service.py (scoring the policy in service),
publish_rule.py (when a candidate is published). `python -m fleet.learner` runs it.
May import: fleet.registry, fleet.policy, fleet.store, fleet.wire.
"""
