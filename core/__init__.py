"""Evolve's shared kernel: config models, record schemas, the policy registry.

Everything here is plain Python (no Ray) so actors, learners and serving can
meet through it and unit tests can drive it without a cluster.
"""
