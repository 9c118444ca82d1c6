"""Experience producers as Ray actors: env rollouts, traffic clients, replay shards.

Actors get a replay writer and a policy source, never a learner handle; they
import only `core`.
"""
