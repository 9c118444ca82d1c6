"""A learner that fails for good leaves its loop running, degraded (cluster/loop.py)."""

from types import SimpleNamespace

from cluster.loop import LoopBase
from core.config.evolve import EvolveConfig


class FailingLearner:
    """LearnerRun's surface: check() says the reason once, then failed stays set."""

    def __init__(self):
        self.failed = None
        self.checks = 0

    def check(self):
        self.checks += 1
        if self.checks == 2 and self.failed is None:
            self.failed = "demo learner failed: worker died"
            return self.failed
        return None

    def drain(self):
        return []


class Loop(LoopBase):
    uses_replay = False

    def figures(self):
        return {"updates": 7}


def test_a_failed_learner_degrades_the_loop_and_says_so_once():
    said = []
    ctx = SimpleNamespace(say=said.append)
    loop = Loop(EvolveConfig(), ctx, "demo")
    loop.learner = FailingLearner()
    assert loop.poll() == {"updates": 7} and not loop.degraded
    assert loop.poll() == {"updates": 7, "learner": "failed"} and loop.degraded
    assert loop.poll() == {"updates": 7, "learner": "failed"}  # polling goes on: serving stays up
    assert len(said) == 1 and "degraded" in said[0] and "worker died" in said[0]


def test_ray_train_gets_the_configured_failure_budget(tmp_path):
    from learners.train_loop import LoopSpec, fit

    spec = LoopSpec(objective_factory=lambda: None, objective_config=None, source=None)
    trainer = fit(spec, num_workers=1, use_gpu=False, cpus_per_worker=1, resources_per_worker={},
                  storage_path=str(tmp_path), name="demo", max_failures=EvolveConfig().learner.max_failures)
    assert trainer.run_config.failure_config.max_failures == 3
