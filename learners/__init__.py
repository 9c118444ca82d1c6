"""Ray Train learners, one objective per file, on one shared training loop.

Learners import only `core`; they read experience through the replay store
and publish weights through the policy registry.
"""
