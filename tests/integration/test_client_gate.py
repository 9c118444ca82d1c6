"""The RL gate judging on client episodes: a canary on the episodes an external client plays.

One `evolve run` of the cartpole preset with `experience: clients` and `gate.stages: [canary]` whose
learner never submits (`publish_every` past the budget), so the candidates are the test's own: a
poisoned one (always pushes left) is aborted on the client's episodes, a copy of live is promoted.
The client is `evolve play` in its own process, 16 episodes at once.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
import ray

from cluster.gate_actor import gate_name
from core.models.q import spec_for_env
from core.models.q_policy import QPolicy
from core.storage.registry import PolicyRegistry
from tests.conftest import free_port
from tests.integration.helpers import REPO, CliProcess, serving, wait_until

pytestmark = pytest.mark.integration

BUDGET_S = 200
SPEC = spec_for_env("CartPole-v1", "dqn", [128, 128])


@pytest.fixture(scope="module")
def gated_clients(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("client-gate")
    http_port, dash_port = free_port(), free_port()
    proc = CliProcess(
        "run", "configs/cartpole.yaml", "--budget-s", str(BUDGET_S), "--run-dir", str(tmp / "run"),
        "--set", f"serving.http_port={http_port}", "--set", f"cluster.dashboard_port={dash_port}",
        "--set", "run.progress_interval_s=2", "--set", "loops.cartpole.experience=clients",
        "--set", "loops.cartpole.eval.stop_when_solved=false", "--set", "serving.exploration=epsilon",
        "--set", "loops.cartpole.gate.stages=[canary]", "--set", "loops.cartpole.gate.canary.fraction=0.5",
        "--set", "loops.cartpole.gate.canary.min_requests=10", "--set", "loops.cartpole.gate.canary.max_requests=30",
        "--set", "loops.cartpole.learning.publish_every=1000000",
        # live is the untrained first version (a few dozen steps an episode): a scale it spans
        "--set", "loops.cartpole.gate.return_range=[0,50]",
    )
    with serving(proc, timeout_s=120):
        base = f"http://127.0.0.1:{http_port}/v1/policies/cartpole"
        player = subprocess.Popen([sys.executable, "-m", "cluster.cli", "play", "CartPole-v1", "--url", base,
                                   "--num-envs", "16"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True)
        address = proc.wait_for_line("embedded at", timeout_s=5).split("embedded at")[1].strip()
        ray.init(address=address, namespace="evolve", log_to_driver=False)
        try:
            yield {"proc": proc, "run": tmp / "run", "player": player}
        finally:
            ray.shutdown()
            player.kill()


def _submit(weights) -> int:
    gate = ray.get_actor(gate_name("cartpole"))
    return ray.get(gate.publish.remote("cartpole", weights, {}, SPEC.to_dict()), timeout=60)


def _decided(registry, version):
    record = registry.get("cartpole", version).gate
    return record if record and record.get("decision") in ("promote", "refuse", "abort", "aborted") else None


def test_a_poisoned_candidate_is_aborted_on_client_episodes(gated_clients):
    weights = {k: np.zeros(tuple(v.shape), np.float32) for k, v in QPolicy(SPEC).model.state_dict().items()}
    last_bias = sorted(k for k in weights if k.endswith("bias"))[-1]
    weights[last_bias] = np.array([10.0, -10.0], np.float32)  # always left: the pole falls in ~9 steps
    version = _submit(weights)
    registry = PolicyRegistry(gated_clients["run"] / "registry")
    record = wait_until(lambda: _decided(registry, version), 150, f"the canary's verdict on v{version}")
    assert record["decision"] != "promote", record
    canary = [s for s in record["stages"] if s["stage"] == "canary"][0]
    print("poisoned canary:", json.dumps(canary)[:600])
    assert registry.latest("cartpole", "live").version != version


def test_a_copy_of_live_is_promoted_on_client_episodes(gated_clients):
    registry = PolicyRegistry(gated_clients["run"] / "registry")
    live = registry.latest("cartpole", "live").version
    loaded = registry.load("cartpole", live, as_numpy=True)
    version = _submit(dict(loaded.weights))
    record = wait_until(lambda: _decided(registry, version), 150, f"the canary's verdict on v{version}")
    assert record["decision"] == "promote", record
    assert registry.latest("cartpole", "live").version == version
    player = gated_clients["player"]
    assert player.poll() is None, player.stdout.read()[-2000:]  # the client played on through both
