"""Write dashboards/evolve.json, the Grafana dashboard of Evolve's metrics: `python dashboards/build.py`.

One panel per metric; the expressions use the names Ray's Prometheus export gives
(`ray_` + the metric name; counters end in `_total`, histograms in `_bucket`).
The datasource is a variable, as in Ray's own dashboards, so the file imports into
the Grafana that Ray's dashboard integration provisions.
"""

import json
from pathlib import Path

from cluster.run_status import METRICS, REPLAY_METRIC

# the metrics the loop's actors export themselves: (name, kind, description with unit, legend)
ACTOR_METRICS = [
    ("evolve_publish_latency_s", "histogram", "publish -> every subscriber running it (seconds)", "{{policy}} p95"),
    ("evolve_policy_live_version", "gauge", "live policy version at the publisher (version number)", "{{policy}}"),
    ("evolve_rollout_env_steps", "counter", "env steps per second over all rollout actors (steps/s)", "{{actor}}"),
    ("evolve_rollout_episode_return", "gauge", "mean return of recent episodes per rollout actor (episode return)", "{{actor}}"),
    ("evolve_replay_inserts", "counter", "rows inserted per second (rows/s)", "{{table}}"),
    ("evolve_replay_samples", "counter", "rows sampled per second (rows/s)", "{{table}}"),
    ("evolve_replay_size", "gauge", "live rows per table and shard (rows)", "{{table}} {{shard}}"),
    ("evolve_learner_updates_per_s", "gauge", "DQN / Q learner updates per second (updates/s)", "{{loop}}"),
]


def expr(name: str, kind: str) -> str:
    if kind == "counter":
        return f"sum(rate(ray_{name}_total[$window])) by (table, actor)"
    if kind == "histogram":
        return f"histogram_quantile(0.95, sum(rate(ray_{name}_bucket[$window])) by (le, policy))"
    return f"ray_{name}"


def panel(i: int, title: str, description: str, query: str, legend: str) -> dict:
    return {
        "id": i + 1, "type": "timeseries", "title": title, "description": description,
        "datasource": "${datasource}",
        "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8},
        "targets": [{"refId": "A", "expr": query, "legendFormat": legend, "datasource": "${datasource}"}],
        "fieldConfig": {"defaults": {}, "overrides": []}, "options": {"legend": {"displayMode": "list"}},
    }


def dashboard() -> dict:
    rows = [(name, "gauge", description, "{{run}} {{loop}}") for name, (_, description) in METRICS.items()]
    rows.append((REPLAY_METRIC[0], "gauge", REPLAY_METRIC[1], "{{run}} {{table}}"))
    rows += ACTOR_METRICS
    panels = [panel(i, name.removeprefix("evolve_").replace("_", " "), description, expr(name, kind), legend)
              for i, (name, kind, description, legend) in enumerate(rows)]
    return {
        "title": "Evolve loops", "uid": "evolve-loops", "schemaVersion": 27, "version": 1, "editable": True,
        "time": {"from": "now-30m", "to": "now"}, "refresh": "10s", "tags": ["evolve", "ray"],
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus", "hide": 0,
             "current": {"selected": False}},
            {"name": "window", "type": "interval", "query": "30s,1m,5m", "hide": 0,
             "current": {"selected": True, "text": "1m", "value": "1m"}},
        ]},
        "panels": panels,
    }


if __name__ == "__main__":
    out = Path(__file__).with_name("evolve.json")
    out.write_text(json.dumps(dashboard(), indent=2) + "\n")
    print(f"wrote {out} ({len(dashboard()['panels'])} panels)")
