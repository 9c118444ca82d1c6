"""What every key of the previous config shape is called now: the map the preset test reads.

The previous shape had one top-level section per loop kind (`feedback:`, `rl:`, `mlm:`,
`novelty:`) and `loops: [kind, ...]`; now each loop is `loops.<name>` with its `kind`, its keys
grouped by concern.  RENAMES maps an old key (under its kind's section) to its place inside the
loop; DERIVED ones have no key of their own any more.  Replay tables are named after their loop:
a table a loop used gets that loop's name for it, and a table no loop used is not declared.
"""

from __future__ import annotations

from typing import Any

RENAMES: dict[str, dict[str, str]] = {
    "feedback": {
        "policy_id": "policy_id",
        "encoder_registry": "model.encoder_registry", "encoder_policy": "model.encoder_policy",
        "encoder_version": "model.encoder_version", "pretrained_dir": "model.pretrained_dir",
        "vocab_size": "model.vocab_size", "max_len": "model.max_len", "model": "model",
        "data": "data", "traffic": "traffic", "gate": "gate", "adapt": "adapt",
        "feedback_table": "tables.feedback", "text_table": "tables.text",
        **{k: f"learning.{k}" for k in (
            "lr", "weight_decay", "grad_clip", "bf16", "batch_size", "rehearsal", "reservoir_size", "reward_as_label",
            "pg_weight", "max_importance_weight", "baseline_init", "baseline_decay", "max_backlog", "wide_catch_up",
            "candidate_every", "skip_when_gate_busy", "report_every", "checkpoint_every", "curve_rows")},
        **{k: f"serving.{k}" for k in ("num_replicas", "max_queued_requests", "max_batch_size",
                                       "batch_wait_timeout_s", "max_text_chars", "feedback_ttl_s")},
        "stop_accuracy": "stop_accuracy",
    },
    "rl": {
        **{k: k for k in ("policy_id", "env_id", "algo", "hidden", "seed", "drift", "adapt", "gate", "traffic")},
        "table": "tables.transitions",
        **{k: f"acting.{k}" for k in ("num_actors", "num_envs", "steps_per_write", "min_steps_per_write",
                                      "epsilon", "actor_num_cpus")},
        **{k: f"learning.{k}" for k in ("lr", "batch_size", "gamma", "n_step", "double_q", "huber_delta",
                                        "target_update_every", "grad_clip", "qtable_alpha", "updates_per_report",
                                        "publish_every", "checkpoint_every", "max_updates")},
        "eval_episodes": "eval.episodes",
        **{k: f"eval.{k}" for k in ("confirm_episodes", "solve_return", "stop_when_solved")},
    },
    "mlm": {},  # every key keeps its name (filled in below)
    "novelty": {},
}
# Keys with no place of their own now: the loop's name is its key under `loops`; a novelty loop
# names the feedback loop it watches, whose policy id and text table it reads.
DERIVED = {"feedback": {"name"}, "rl": {"name"}, "mlm": {"name"}, "novelty": {"name", "policy_id", "table"}}
# Keys inside a loop's `gate` that the RL gate's own section called by another name (one gate
# section now serves every kind: an RL canary counts requests, one an episode).
GATE_RENAMES = {"rl": {"ope.episodes": "ope.size", "ope.min_episodes": "ope.min_rows",
                       "canary.min_episodes": "canary.min_requests", "canary.max_episodes": "canary.max_requests"}}
# Keys the previous shape did not have, in every loop and in a kind's loop: the gate section every
# kind shares gives each kind the keys only the other kind's gate had.
NEW_KEYS = {"kind", "serving.route_prefix", "watch", "learning.first_candidate", "start_after", "gate.ope.max_weight"}
# the generator's gate keys, which every gate section carries
NEW_KEYS |= {f"gate.bounds.{k}" for k in ("max_kl", "max_repetition", "repetition_n", "max_length", "min_length",
                                          "reference_version")}
NEW_KEYS |= {f"gate.samples.{k}" for k in ("n", "max_new_tokens", "temperature", "top_p", "seed")}
# the rollback guard's paired test, and the per-group stage's section
NEW_KEYS |= {"gate.rollback_min_rows"} | {f"gate.groups.{k}" for k in ("tolerance", "alpha", "correction", "min_rows",
                                                                         "feedback_rows")}
NEW_BY_KIND = {
    "feedback": {"gate.ope.min_ess", "gate.ope.rule", "gate.return_range", "model.wide_pair_norm",
                 "model.wide_overlap_bins", "model.encoder_loop"}
                | {f"learning.memory.{k}" for k in ("buffer", "era_rows", "distill", "distill_temperature")}
                | {f"adapt.refusals.{k}" for k in ("streak", "drift_events", "max_levels", "rehearsal_step",
                                                   "max_rehearsal", "distill_step", "max_distill")},
    "rl": {f"gate.{k}" for k in ("test", "alpha", "min_gain", "bootstrap_samples", "drift_guard", "window",
                                 "rollback_margin", "min_clients", "max_client_share")}
          | {f"gate.ope.{k}" for k in ("fraction", "method", "rule")}
          | {f"gate.shadow.{k}" for k in ("fraction", "min_rows", "max_s", "method", "level", "bootstrap_samples")}
          | {"adapt.reference_episodes", "adapt.reference_share"}
          # client episodes through the API (docs/client-rl.md)
          | {"experience"} | {f"clients.{k}" for k in ("episode_ttl_s", "max_open_episodes", "max_steps_per_s",
                                                      "holdout", "commit_interval_s")},
    "mlm": {"publish_min_gain"},
}
# Loops a preset holds that the previous version did not: the text presets pretrain their encoder
# beside the classifier when there is none (a fresh clone)
NEW_LOOPS = {"sentiment_mlm", "pairs_mlm"}
# Values one preset changed on purpose since: (before, now) by flattened key.  make run's gate judges
# on half the held-out set, so that a 2-core laptop sees the first promotion in two minutes; the drift
# preset's gate judges each domain on its own too (the `groups` stage).  The pair preset: the wide
# part alone, at a smaller step (a random encoder's logits, summed or gated, and AdaGrad at 0.5 on
# replayed pairs kept it below the per-side baseline), and the encoder's part back beside it (gated) once
# the pair preset pretrains its encoder in the run; two learners on 2 cores: 4 logical CPUs.
PRESET_CHANGED = {"default": {"loops.sentiment.data.max_heldout": (1000, 500)},
                  "sentiment": {"cluster.num_cpus": (None, 4)},
                  "drift_text": {"loops.sentiment.gate.stages": (["heldout"], ["heldout", "groups"])},
                  "pairs": {"loops.pairs.model.combine": ("sum", "gate"), "loops.pairs.model.wide_lr": (0.5, 0.01),
                            "cluster.num_cpus": (None, 4)}}
# Table names a loop's section held, by role.
TABLE_KEYS = {"feedback": {"feedback_table": "feedback", "text_table": "text"}, "rl": {"table": "transitions"}}
TABLE_SUFFIX = {"feedback": "", "text": "-text", "transitions": ""}


def migrate(old: dict[str, Any]) -> dict[str, Any]:
    """`old` (a resolution of the previous shape) as the new shape says it."""
    new = {k: v for k, v in old.items() if k not in ("loops", "mlm", "rl", "feedback", "novelty", "replay")}
    tables: dict[str, str] = {}  # old table name -> new
    loops: dict[str, Any] = {}
    for kind in old["loops"]:
        section = old[kind]
        name = section["name"]
        for key, role in TABLE_KEYS.get(kind, {}).items():
            if section[key] is not None:
                tables[section[key]] = name + TABLE_SUFFIX[role]
        loop: dict[str, Any] = {"kind": kind}
        for key, value in section.items():
            if key in DERIVED[kind]:
                continue
            place = RENAMES[kind].get(key, key)
            if key in TABLE_KEYS.get(kind, {}) and value is not None:
                value = tables[value]
            if key == "gate" and kind in GATE_RENAMES:
                value = _renamed(value, GATE_RENAMES[kind])
            _put(loop, place, value)
        if kind == "novelty":
            watched = next(n for n, l in loops.items() if l["kind"] == "feedback" and l["policy_id"] == section["policy_id"])
            assert loops[watched]["tables"]["text"] == tables[section["table"]]
            loop["watch"] = watched
        loops[name] = loop
    new["replay"] = {k: v for k, v in old["replay"].items() if k != "tables"}
    new["replay"]["tables"] = {tables[t]: v for t, v in old["replay"]["tables"].items() if t in tables}
    new["loops"] = loops
    return new


def _renamed(tree: dict[str, Any], renames: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flatten(tree).items():
        _put(out, renames.get(key, key), value)
    return out


def _put(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    if isinstance(value, dict) and isinstance(tree.get(last), dict):
        tree[last].update(value)
    else:
        tree[last] = value


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: tree}
