"""The run report's figures: matplotlib on the Agg backend (no display), one PNG per figure.

Each function takes the plain series of `cluster.report_data` and returns a
`Figure` to save, or None when the run has nothing to draw for it.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only: a run on a server or in CI has no display

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from cluster.report_data import Curve, Marks  # noqa: E402

# one look per mark kind across every figure
MARK_STYLE = {
    "promoted": dict(marker="^", color="tab:green"),
    "refused": dict(marker="x", color="tab:red"),
    "rollback": dict(marker="v", color="tab:purple"),
    "alarm": dict(marker="o", color="tab:orange"),
    "adaptation": dict(marker="D", color="tab:brown"),
}
MAX_LABELS = 12  # version labels per figure; more overlap into an unreadable smear


def _figure(title: str, rows: int = 1) -> tuple[Figure, list]:
    fig, axes = plt.subplots(rows, 1, figsize=(8, 3.2 * rows), squeeze=False, sharex=rows > 1)
    fig.suptitle(title)
    return fig, [ax for (ax,) in axes]


def heldout(loop: str, curve: Curve, marks: Marks) -> Figure | None:
    if not curve and not marks:
        return None
    fig, (ax,) = _figure(f"{loop}: held-out accuracy of the live version")
    if curve:
        ax.step(curve.x, curve.y, where="post", color="tab:blue", label="live")
    for kind, points in marks.points.items():
        xs = [p[0] for p in points if p[1] is not None]
        ys = [p[1] for p in points if p[1] is not None]
        ax.scatter(xs, ys, label=f"{kind} ({len(points)})", zorder=3, **MARK_STYLE.get(kind, {}))
    ax.set_xlabel("feedback events joined")
    ax.set_ylabel("held-out accuracy")
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def eval_return(loop: str, curve: Curve, labels: list[tuple[float, float, str]]) -> Figure | None:
    if not curve:
        return None
    fig, (ax,) = _figure(f"{loop}: greedy evaluation return")
    ax.plot(curve.x, curve.y, marker="o", color="tab:blue")
    step = max(1, len(labels) // MAX_LABELS)
    for x, y, text in labels[::step]:
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize="x-small")
    ax.set_xlabel("env steps")
    ax.set_ylabel("mean return")
    ax.grid(alpha=0.3)
    return fig


def publish_latency(latencies: dict[str, list[float]]) -> Figure | None:
    if not any(latencies.values()):
        return None
    fig, (ax,) = _figure("publish latency: learner publish -> every subscriber running it")
    for policy, values in latencies.items():
        ax.hist(values, bins=min(30, max(5, len(values) // 2)), alpha=0.6, label=f"{policy} (n={len(values)})")
    ax.set_xlabel("seconds")
    ax.set_ylabel("publishes")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def replay(tables: dict[str, dict[str, Curve]]) -> Figure | None:
    if not any(c["size"] for c in tables.values()):
        return None
    fig, (sizes, rates) = _figure("replay tables", rows=2)
    for table, curves in tables.items():
        line, = sizes.plot(curves["size"].x, curves["size"].y, label=table)
        rates.plot(curves["inserts_per_s"].x, curves["inserts_per_s"].y, color=line.get_color(), label=f"{table} inserts/s")
        rates.plot(curves["samples_per_s"].x, curves["samples_per_s"].y, color=line.get_color(), linestyle="--",
                   label=f"{table} samples/s")
    sizes.set_ylabel("rows")
    rates.set_ylabel("rows / s")
    rates.set_xlabel("run time (s)")
    for ax in (sizes, rates):
        ax.legend(fontsize="x-small")
        ax.grid(alpha=0.3)
    return fig


def learner(loop: str, series: dict[str, Curve]) -> Figure | None:
    if not series["loss"]:
        return None
    fig, (loss, rate) = _figure(f"{loop}: learner", rows=2)
    loss.plot(series["loss"].x, series["loss"].y, color="tab:red")
    loss.set_ylabel("loss")
    rate.plot(series["updates_per_s"].x, series["updates_per_s"].y, color="tab:gray")
    rate.set_ylabel("updates / s")
    rate.set_xlabel("run time (s)")
    for ax in (loss, rate):
        ax.grid(alpha=0.3)
    return fig


def masked_accuracy(loop: str, series: dict[str, Curve]) -> Figure | None:
    if not any(series.values()):
        return None
    fig, (ax,) = _figure(f"{loop}: MLM masked-token accuracy")
    for name, curve in series.items():
        if curve:
            ax.plot(curve.x, curve.y, marker="." if name == "training" else "o", label=name)
    ax.set_xlabel("learner steps")
    ax.set_ylabel("masked accuracy")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def perplexity(loop: str, series: dict[str, Curve]) -> Figure | None:
    if not series["held-out"]:
        return None
    fig, (ax,) = _figure(f"{loop}: held-out perplexity")
    ax.plot(series["held-out"].x, series["held-out"].y, marker="o", label="model")
    if series["unigram"]:
        ax.plot(series["unigram"].x, series["unigram"].y, linestyle="--", color="tab:gray", label="unigram")
    ax.set_yscale("log")
    ax.set_xlabel("learner steps")
    ax.set_ylabel("perplexity")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def reward_and_kl(loop: str, series: dict[str, Curve]) -> Figure | None:
    if not series["held-out reward"]:
        return None
    fig, (reward, kl) = _figure(f"{loop}: judged reward and KL to the reference", rows=2)
    held, users = series["held-out reward"], series["users' reward"]
    reward.plot(held.x, held.y, drawstyle="steps-post", linewidth=2, label="held-out (live version)")
    if users:
        reward.plot(users.x, users.y, marker=".", alpha=0.7, label="users (what they were served)")
    reward.set_ylabel("mean reward")
    reward.legend(fontsize="small")
    kl.plot(series["kl"].x, series["kl"].y, drawstyle="steps-post", color="tab:purple")
    kl.set_ylabel("KL (per token)")
    kl.set_xlabel("run time (s)")
    for ax in (reward, kl):
        ax.grid(alpha=0.3)
    return fig


def decision_reward(loop: str, series: dict[str, Curve]) -> Figure | None:
    users = series["users' reward"]
    if not users:
        return None
    fig, (ax,) = _figure(f"{loop}: reward of the actions served")
    ax.plot(users.x, users.y, marker=".", label="users (recent decisions)")
    uniform = series["uniform"]
    if uniform:
        ax.plot(uniform.x, uniform.y, linestyle="--", color="grey", label="uniform random policy")
    shown = None
    for x, v in zip(series["version"].x, series["version"].y):
        if v != shown:  # where a new version went live
            ax.axvline(x, color="tab:green", alpha=0.3)
            ax.annotate(f"v{int(v)}", (x, 0.02), xycoords=("data", "axes fraction"), fontsize="x-small")
            shown = v
    ax.set_ylabel("mean reward")
    ax.set_xlabel("run time (s)")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def timeline(loop: str, curves: dict[str, Curve], marks: Marks) -> Figure | None:
    """Gate outcomes, drift alarms and adaptation actions as vertical lines over the loop's figures."""
    if not curves and not marks:
        return None
    fig, (ax,) = _figure(f"{loop}: gate, drift alarms and adaptation over time")
    for name, curve in curves.items():
        ax.plot(curve.x, curve.y, label=name)
    others = {}
    for kind, points in marks.points.items():
        style = MARK_STYLE.get(kind) or others.setdefault(kind, dict(color=f"C{len(others) + 3}"))
        for i, (x, _, _) in enumerate(points):
            ax.axvline(x, color=style["color"], alpha=0.5, linestyle=":" if kind in ("promoted", "refused") else "-",
                       label=f"{kind} ({len(points)})" if i == 0 else None)
    if marks:
        labelled = sorted((p for ps in marks.points.values() for p in ps), key=lambda p: p[0])
        step = max(1, len(labelled) // MAX_LABELS)
        for x, _, text in labelled[::step]:
            if text:
                ax.annotate(text, (x, 1.0), xycoords=("data", "axes fraction"), rotation=90, va="top",
                            fontsize="xx-small")
    ax.set_xlabel("run time (s)")
    ax.legend(fontsize="x-small", loc="lower right")
    ax.grid(alpha=0.3)
    return fig


def close(fig: Figure) -> None:
    plt.close(fig)
