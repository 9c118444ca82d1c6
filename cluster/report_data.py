"""What a run report plots, read from a run directory's events: plain series, no plotting.

    events.jsonl --by_loop--> per loop: the events in order
                 --series-->  Series: named (x, y) lists and marked points (promotions, alarms, ...)

Every figure is optional: a series is built only from events the run wrote, so
a run that is still going (or a loop kind without a gate) gives fewer figures,
never an error.  Times are seconds since the run started.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterable

# gate outcomes marked on the held-out curve, and how the report names them
GATE_MARKS = {"promote": "promoted", "initial": "promoted", "refuse": "refused"}
# events of the adaptive layer (and of the RL drift watch) drawn on the loop's time axis
ALARM_EVENTS = ("adapt", "env_drift", "regression", "world_changed", "rollback_held", "rollback_refused", "group_change",
                "recovered", "canary_started", "canary_ended", "shadow_started", "shadow_ended")


@dataclasses.dataclass
class Marks:
    """Points to mark on a curve: x, y and a label each, by kind (promoted, refused, rollback, ...)."""

    points: dict[str, list[tuple[float, float | None, str]]] = dataclasses.field(default_factory=dict)

    def add(self, kind: str, x: float, y: float | None, label: str = "") -> None:
        self.points.setdefault(kind, []).append((x, y, label))

    def __bool__(self) -> bool:
        return any(self.points.values())


@dataclasses.dataclass
class Curve:
    x: list[float] = dataclasses.field(default_factory=list)
    y: list[float] = dataclasses.field(default_factory=list)

    def add(self, x: Any, y: Any) -> None:
        if _number(x) and _number(y):
            self.x.append(float(x))
            self.y.append(float(y))

    def __bool__(self) -> bool:
        return bool(self.x)


def run_start(events: list[dict[str, Any]]) -> float:
    """The run's t = 0, as the terminal's clock counts: a run progress event's time less its
    `elapsed_s`; before the first one, the first event's time."""
    for e in events:
        if e.get("loop") == "run" and e.get("event") == "progress" and _number(e.get("elapsed_s")) \
                and _number(e.get("time")):
            return e["time"] - e["elapsed_s"]
    times = [e["time"] for e in events if _number(e.get("time"))]
    return min(times) if times else 0.0


def by_loop(events: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        out.setdefault(str(e.get("loop", "?")), []).append(e)
    return out


def heldout_vs_feedback(events: list[dict[str, Any]]) -> tuple[Curve, Marks]:
    """Live held-out accuracy against joined feedback events, and every gate outcome at its place.
    The curve comes from the progress lines (what was live when); a gate decision carries its own
    feedback count and the candidate's accuracy."""
    curve, marks = Curve(), Marks()
    decided: set[tuple[str, object]] = set()  # the loop's bootstrap repeats the gate's first decision
    for e in events:
        kind = e.get("event")
        if kind == "progress":
            curve.add(e.get("feedback"), e.get("heldout_acc"))
        elif kind in ("gate_decision", "bootstrap") and e.get("decision") in GATE_MARKS \
                and (e["decision"], e.get("version")) not in decided:
            decided.add((e["decision"], e.get("version")))
            marks.add(GATE_MARKS[e["decision"]], e.get("events") or 0, e.get("heldout_accuracy"), f"v{e.get('version')}")
        elif kind == "rollback":
            marks.add("rollback", e.get("events") or 0, e.get("heldout_accuracy"), f"v{e.get('from')}->v{e.get('to')}")
    if not curve:  # a run cut short before its first progress line: the gate's own points
        for x, y, _ in marks.points.get("promoted", []):
            curve.add(x, y)
    return curve, marks


def eval_vs_env_steps(events: list[dict[str, Any]]) -> tuple[Curve, list[tuple[float, float, str]]]:
    """Greedy evaluation return against env steps (interpolated from the progress lines at the
    evaluation's time), each point labelled with the version evaluated."""
    steps = Curve()
    for e in events:
        if e.get("event") == "progress":
            steps.add(e.get("time"), e.get("env_steps"))
    curve, labels = Curve(), []
    for e in events:
        if e.get("event") == "eval" and _number(e.get("eval_return")):
            x = _interp(e.get("time"), steps) if steps else e.get("env_steps")
            if _number(x):
                curve.add(x, e["eval_return"])
                labels.append((float(x), float(e["eval_return"]), f"v{e.get('version')}"))
    return curve, labels


def learner_series(events: list[dict[str, Any]], t0: float) -> dict[str, Curve]:
    """Loss and updates/s against run time from the learner's progress records; updates/s is the
    step count's slope between consecutive records."""
    loss, rate = Curve(), Curve()
    last: tuple[float, float] | None = None
    for e in events:
        if e.get("event") != "learner" or not _number(e.get("time")):
            continue
        t = e["time"] - t0
        loss.add(t, e.get("loss"))
        if _number(e.get("step")):
            if last is not None and t > last[0] and e["step"] >= last[1]:
                rate.add(t, (e["step"] - last[1]) / (t - last[0]))
            last = (t, float(e["step"]))
    return {"loss": loss, "updates_per_s": rate}


def masked_accuracy(events: list[dict[str, Any]]) -> dict[str, Curve]:
    """MLM masked-token accuracy against learner steps: held-out (learner_eval) and training (learner)."""
    heldout, train = Curve(), Curve()
    for e in events:
        if e.get("event") == "learner_eval":
            heldout.add(e.get("step"), e.get("masked_accuracy"))
        elif e.get("event") == "learner" and "masked_per_s" in e:  # an MLM objective's window
            train.add(e.get("step"), e.get("accuracy"))
    return {"held-out": heldout, "training": train}


def perplexity(events: list[dict[str, Any]]) -> dict[str, Curve]:
    """A causal LM's held-out perplexity against learner steps, and the unigram perplexity of the
    same text (its `data` event) as a flat line over the same steps."""
    heldout, unigram = Curve(), Curve()
    base = next((e.get("unigram_perplexity") for e in events if e.get("event") == "data"), None)
    for e in events:
        if e.get("event") == "learner_eval":
            heldout.add(e.get("step"), e.get("perplexity"))
            if _number(base):
                unigram.add(e.get("step"), base)
    return {"held-out": heldout, "unigram": unigram}


def reward_and_kl(events: list[dict[str, Any]], t0: float) -> dict[str, Curve]:
    """A generator's rewards and KL against run time, from its progress events: live's mean judged
    reward on the held-out prompts, the users' judged reward of what they were served, live's KL
    to its reference."""
    curves = {"held-out reward": Curve(), "users' reward": Curve(), "kl": Curve()}
    for e in events:
        if e.get("event") == "progress" and _number(e.get("time")):
            t = e["time"] - t0
            curves["held-out reward"].add(t, e.get("reward"))
            curves["users' reward"].add(t, e.get("user_reward"))
            curves["kl"].add(t, e.get("kl"))
    return curves


def decision_reward(events: list[dict[str, Any]], t0: float) -> dict[str, Curve]:
    """A decision loop's users' recent reward against run time, the uniform policy's beside it,
    and the live version, from its progress events."""
    curves = {"users' reward": Curve(), "uniform": Curve(), "version": Curve()}
    for e in events:
        if e.get("event") == "progress" and _number(e.get("time")):
            t = e["time"] - t0
            for name, key in (("users' reward", "reward"), ("uniform", "uniform"), ("version", "version")):
                curves[name].add(t, e.get(key))
    return curves


def replay_series(events: list[dict[str, Any]], t0: float) -> dict[str, dict[str, Curve]]:
    """Per table: size, inserts/s and samples/s against run time."""
    out: dict[str, dict[str, Curve]] = {}
    for e in events:
        if e.get("event") != "progress" or not isinstance(e.get("tables"), dict) or not _number(e.get("time")):
            continue
        for table, info in e["tables"].items():
            curves = out.setdefault(table, {"size": Curve(), "inserts_per_s": Curve(), "samples_per_s": Curve()})
            for key, curve in curves.items():
                curve.add(e["time"] - t0, (info or {}).get(key))
    return out


def publish_latencies(events: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Publish -> every subscriber running it, seconds, per policy (the driver's `publish` events)."""
    out: dict[str, list[float]] = {}
    for e in events:
        if e.get("event") == "publish" and _number(e.get("latency_s")):
            out.setdefault(str(e.get("policy_id")), []).append(float(e["latency_s"]))
    return out


def timeline(events: list[dict[str, Any]], t0: float) -> tuple[dict[str, Curve], Marks]:
    """A loop's headline figure against run time, with its gate outcomes, drift alarms and
    adaptation actions on the same axis."""
    curves = {"held-out accuracy": Curve(), "online accuracy (first sight)": Curve(), "eval return": Curve()}
    marks = Marks()
    for e in events:
        if not _number(e.get("time")):
            continue
        t, kind = e["time"] - t0, e.get("event")
        if kind == "progress":
            curves["held-out accuracy"].add(t, e.get("heldout_acc"))
            curves["online accuracy (first sight)"].add(t, e.get("online_acc"))
        elif kind == "eval":
            curves["eval return"].add(t, e.get("eval_return"))
        elif kind == "gate_decision" and e.get("decision") in GATE_MARKS:
            marks.add(GATE_MARKS[e["decision"]], t, None, f"v{e.get('version')}")
        elif kind == "rollback":
            marks.add("rollback", t, None, f"v{e.get('from')}->v{e.get('to')}")
        elif kind == "adapt":
            action = e.get("action")
            label = str(e.get("signal") or e.get("detector") or "alarm")
            if action:
                marks.add("adaptation", t, None, label + ": " + ",".join(map(str, _as_list(action))))
            else:
                marks.add("alarm", t, None, label + (" (suppressed)" if e.get("suppressed") else ""))
        elif kind in ALARM_EVENTS:
            marks.add(kind, t, None, str(e.get("group") or e.get("version") or ""))
    return {k: c for k, c in curves.items() if c}, marks


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _interp(x: Any, curve: Curve) -> float | None:
    if not _number(x) or not curve:
        return None
    xs, ys = curve.x, curve.y
    if x <= xs[0]:
        return ys[0]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
