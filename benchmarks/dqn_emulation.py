"""Learner updates to solve CartPole for an RL preset, over many seeds, without Ray.

    .venv/bin/python benchmarks/dqn_emulation.py --seeds 8 --json
    .venv/bin/python benchmarks/dqn_emulation.py --seeds 8 --set loops.cartpole.acting.min_steps_per_write=256

A whole `evolve run` takes minutes and its time to solve varies several-fold
between runs, so comparing presets that way needs more runs than anyone makes.
This replays the loop's data flow in one process, with the real parts that
decide what is learned: a `RolloutWorker` (same vector env, epsilon schedule,
n-step rows), a `DQNObjective` (same update) and an in-memory `ReplayTable` (a
shard's table: same sampler, same rate limiter), paced the way the running loop is:

* the actor writes `min_steps_per_write` vector steps (`steps_per_write` when
  that is unset: here the limiter always paces the actor, so its adaptive add
  size sits at the floor) with the latest published version (the learner
  publishes every `learning.publish_every` updates), then its add waits until the
  limiter admits it; meanwhile the learner samples uniformly
  (`batch_size` rows) from what is in the table;
* every second published version is played greedily for `eval.episodes`
  episodes; the first with a mean return >= 475 ends the seed.

Not emulated: timing (a run's time to solve is roughly its start-up plus the
updates divided by the real learner's update rate) and the two shards: one
in-memory `ReplayTable` (the shards' own table class, sampler and rate limiter)
stands for both.  Uniform tables only: prioritized sampling would
also need the client's importance weights and priority updates.  Each seed
runs in its own process (`--jobs`, default 2), one torch thread each.  The last
line is one JSON object: per-seed updates and env steps to solve (null when not
solved within `--max-updates`) and their median (unsolved counted as the cap).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_seed(config: dict[str, Any], seed: int, max_updates: int) -> dict[str, Any]:
    import gymnasium as gym
    import torch

    from actors.rollout import RolloutWorker
    from core.config.replay import TableSection
    from core.replay.table import ReplayTable
    from core.config.rl import RLSection
    from core.models.q import obs_width, spec_for_env
    from learners.dqn import DQNObjective
    from learners.objective import WorkerContext
    from learners.q_learning import QSetup
    from learners.replay_source import transitions_to_tensors

    torch.set_num_threads(1)
    # a pool process runs several seeds in turn: without this the actor's first (random) policy
    # would come from whatever torch's generator holds after the seed before, so a seed's result
    # would depend on which seeds ran before it in the same process
    torch.manual_seed(seed)
    rl = RLSection.model_validate({**config["rl"], "seed": seed})
    tcfg = config["replay"]["tables"][rl.table]
    batch_size = rl.learning.batch_size
    spec = spec_for_env(rl.env_id, rl.algo, rl.hidden)
    writer, source = _LastBatch(), _Pending()
    actor = RolloutWorker(rl, spec, "emulated", writer, source, seed=seed)
    learner = DQNObjective()
    learner.setup(QSetup(rl=rl, spec=spec.to_dict(), loop="emulated"), WorkerContext())
    table = ReplayTable(rl.table, TableSection.model_validate({**tcfg, "obs_dim": tcfg.get("obs_dim") or obs_width(spec)}), seed=seed)  # in memory: no directory
    limiter = table.limiter
    eval_env = gym.make_vec(rl.env_id, num_envs=rl.eval.episodes, vectorization_mode="sync")
    threshold = rl.eval.solve_return or gym.spec(rl.env_id).reward_threshold
    best = 0.0
    steps_per_add = rl.acting.min_steps_per_write or rl.acting.steps_per_write
    while learner.updates < max_updates:
        actor.run(steps_per_add)
        # the learner trains until the limiter admits this add (or it may not sample more)
        while not limiter.can_insert(table.size) and limiter.can_sample(batch_size, table.size):
            learner.step(transitions_to_tensors(table.sample(batch_size, timeout_s=0)))
            if learner.updates % rl.learning.publish_every:
                continue
            source.pending = (learner.updates // rl.learning.publish_every, learner.weights())
            if learner.updates % (2 * rl.learning.publish_every) == 0:
                ret = _greedy_return(eval_env, learner.model, seed=learner.updates)
                best = max(best, ret)
                if ret >= threshold:
                    return {"seed": seed, "updates": learner.updates, "env_steps": actor.env_steps, "best": ret}
        table.add(writer.batch, timeout_s=0)  # admitted: the loop above ran until it was
    return {"seed": seed, "updates": None, "env_steps": None, "best": best}


class _LastBatch:
    def __init__(self):
        self.batch = None

    def add(self, table: str, batch: Any) -> None:
        self.batch = batch


class _Pending:
    """A policy source: the version the learner published last, once."""

    def __init__(self):
        self.pending = None

    def poll(self):
        update, self.pending = self.pending, None
        return update

    def ack(self, version: int) -> None:
        pass


def _greedy_return(env: Any, model: Any, seed: int) -> float:
    import numpy as np
    import torch

    obs, _ = env.reset(seed=seed)
    total, done = np.zeros(env.num_envs), np.zeros(env.num_envs, bool)
    with torch.no_grad():
        while not done.all():
            obs, reward, term, trunc, _ = env.step(model(torch.as_tensor(obs, dtype=torch.float32)).argmax(1).numpy())
            total += reward * ~done
            done |= term | trunc
    return float(total.mean())


def main() -> None:
    from core.config.loader import load_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "cartpole.yaml"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--max-updates", type=int, default=30_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cfg = load_config(args.config, args.set)
    (name, rl), *_ = cfg.loops_of("rl").items()  # the config's first rl loop
    if rl.algo != "dqn":
        raise SystemExit(f"{args.config}: loops.{name}.algo is {rl.algo!r}; this emulates the DQN learner")
    if cfg.replay.tables[rl.table].sampler != "uniform":
        raise SystemExit(f"{args.config}: replay.tables.{rl.table}.sampler must be uniform here")
    config = {"rl": rl.model_dump(mode="json"), "replay": cfg.replay.model_dump(mode="json")}
    with ProcessPoolExecutor(args.jobs) as pool:
        results = list(pool.map(run_seed, [config] * args.seeds, range(args.seeds), [args.max_updates] * args.seeds))
    for r in results:
        print(f"[dqn_emulation] seed {r['seed']}: updates {r['updates']}, env steps {r['env_steps']}, "
              f"best eval {r['best']:.1f}", file=sys.stderr)
    capped = [r["updates"] if r["updates"] is not None else args.max_updates for r in results]
    print(json.dumps({
        "overrides": args.set, "seeds": args.seeds, "max_updates": args.max_updates,
        "solved": sum(r["updates"] is not None for r in results),
        "median_updates_to_solve": statistics.median(capped),
        "updates_to_solve": [r["updates"] for r in results],
        "env_steps_to_solve": [r["env_steps"] for r in results],
    }))


if __name__ == "__main__":
    main()
