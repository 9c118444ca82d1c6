"""The loop kinds a run knows: one declaration per kind, the only place that lists them.

    KINDS[kind] = LoopKind(
        section  the config section of one loop of this kind (loops.<name>, picked by `kind:`)
        loop     its loop class, "module:Class", imported only when a run names it
        tables   the replay tables it writes, by role: their kind, default name and settings
        figures  what it reports: the progress line, the `evolve status` row, the report's figures
    )

The config (core/config/evolve.py) reads `section` and `tables`; the driver,
the status board, the progress lines and the report (cluster/) read `loop` and
`figures`.  Adding a kind is its loop file, its section and its line here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Mapping, Union

from pydantic import Field

from core.config.base import LoopSection
from core.config.clm import CLMSection
from core.config.decisions import DecisionsSection
from core.config.feedback import FeedbackSection
from core.config.generate import GenerateSection
from core.config.mlm import MLMSection
from core.config.novelty import NoveltySection
from core.config.rl import RLSection


@dataclass(frozen=True)
class TableNeed:
    """One replay table a loop writes: its kind, its default name (<loop><suffix>), the settings it
    is declared with when `replay.tables` does not name it, and whether the loop may go without it."""

    kind: str
    suffix: str = ""
    settings: Mapping[str, Any] = field(default_factory=dict)
    optional: bool = False


@dataclass(frozen=True)
class Figures:
    """What a loop kind reports, by the names its `poll()` figures carry."""

    lead: tuple[str, ...] = ()  # progress-line figures that open the loop's line, in this order
    short: Mapping[str, str] = field(default_factory=dict)  # the progress line's name of a figure
    hidden: tuple[str, ...] = ()  # figures kept to events.jsonl, off the terminal
    status: Mapping[str, str] = field(default_factory=dict)  # `evolve status` row key -> the figure it shows
    rates: Mapping[str, str] = field(default_factory=dict)  # row key -> the counter it shows per second
    report: tuple[str, ...] = ()  # the report's figures for the loop (cluster/report.py)


@dataclass(frozen=True)
class LoopKind:
    name: str
    section: type[LoopSection]
    loop: str
    tables: Mapping[str, TableNeed] = field(default_factory=dict)
    figures: Figures = field(default_factory=Figures)


_COMMON = {"version": "v", "updates": "upd"}

KINDS: dict[str, LoopKind] = {kind.name: kind for kind in (
    LoopKind(
        "feedback", FeedbackSection, "cluster.loops.feedback:FeedbackLoop",
        tables={"feedback": TableNeed("feedback", settings={"capacity": 200_000}),
                "text": TableNeed("text", "-text", settings={"capacity": 200_000}, optional=True)},
        figures=Figures(
            # a grouped stream's continual figures (ACC, BWT, the stability gap) lead too: the line is cut at 100
            lead=("version", "heldout_acc", "online_acc", "ACC", "BWT", "stability_gap", "wait"),
            short={**_COMMON, "heldout_acc": "acc", "online_acc": "online1st", "predicts": "pred", "feedback": "fb",
                   "promoted": "prom", "refused": "ref", "stability_gap": "gap"},
            status={"version": "version", "heldout_acc": "heldout_acc", "updates": "updates", "loss": "loss"},
            rates={"feedback_per_s": "feedback"},
            report=("heldout", "learner", "timeline"),
        ),
    ),
    LoopKind(
        "rl", RLSection, "cluster.loops.rl:RLLoop",
        tables={"transitions": TableNeed("transitions")},
        figures=Figures(
            lead=("version", "eval_return"),
            short={**_COMMON, "eval_return": "ret", "env_steps": "steps", "steps_per_s": "steps/s",
                   "episodes": "eps", "train_return": "train_ret", "client_steps": "cl_steps",
                   "client_episodes": "cl_eps", "client_return": "cl_ret", "client_open": "cl_open"},
            hidden=("steps_per_add",),
            status={"version": "version", "eval_return": "eval_return", "updates": "updates", "loss": "loss"},
            rates={"env_steps_per_s": "env_steps"},
            report=("eval_return", "learner", "timeline"),
        ),
    ),
    LoopKind(
        "mlm", MLMSection, "cluster.loops.mlm:MLMLoop",
        figures=Figures(
            lead=("heldout_acc",),
            short={"heldout_acc": "acc"},
            status={"heldout_acc": "heldout_acc", "updates": "step", "loss": "loss"},
            report=("learner", "masked_accuracy"),
        ),
    ),
    LoopKind(
        "clm", CLMSection, "cluster.loops.clm:CLMLoop",
        figures=Figures(
            lead=("ppl", "unigram_ppl"),
            short={"unigram_ppl": "unigram"},
            status={"ppl": "ppl", "updates": "step", "loss": "loss"},
            report=("learner", "perplexity"),
        ),
    ),
    LoopKind(
        "generate", GenerateSection, "cluster.loops.generate:GenerateLoop",
        tables={"completions": TableNeed("completions", settings={"capacity": 100_000})},
        figures=Figures(
            lead=("version", "reward", "kl", "user_reward"),
            short={**_COMMON, "user_reward": "users", "completions": "compl", "feedback": "fb",
                   "promoted": "prom", "refused": "ref"},
            status={"version": "version", "reward": "reward", "updates": "updates", "loss": "loss"},
            rates={"completions_per_s": "completions"},
            report=("reward", "learner", "timeline"),
        ),
    ),
    LoopKind(
        "decisions", DecisionsSection, "cluster.loops.decisions:DecisionsLoop",
        tables={"decisions": TableNeed("decisions", settings={"capacity": 200_000})},
        figures=Figures(
            lead=("version", "reward", "uniform"),
            short={**_COMMON, "decisions": "dec", "rewards": "rew", "promoted": "prom", "refused": "ref"},
            status={"version": "version", "reward": "reward", "updates": "updates", "loss": "loss"},
            rates={"decisions_per_s": "decisions"},
            report=("decision_reward", "learner", "timeline"),
        ),
    ),
    LoopKind(
        "novelty", NoveltySection, "cluster.loops.novelty:NoveltyLoop",
        figures=Figures(
            lead=("version",), short=_COMMON,
            status={"version": "version", "updates": "updates", "loss": "loss"},
            report=("learner",),
        ),
    ),
)}

# loops.<name>: the section of the kind its `kind:` names
AnyLoopSection = Annotated[Union[tuple(kind.section for kind in KINDS.values())], Field(discriminator="kind")]


def figures_of(kind: str | None) -> Figures:
    """The figures of `kind`; for a loop whose kind is not known (an old run directory), every
    kind's declarations at once."""
    if kind in KINDS:
        return KINDS[kind].figures
    every = [k.figures for k in KINDS.values()]
    return Figures(
        lead=tuple(dict.fromkeys(f for fig in every for f in fig.lead)),
        short={k: v for fig in every for k, v in fig.short.items()},
        hidden=tuple(dict.fromkeys(f for fig in every for f in fig.hidden)),
        status={k: v for fig in every for k, v in fig.status.items() if k != "updates"} | {"updates": "updates"},
        rates={k: v for fig in every for k, v in fig.rates.items()},
        report=tuple(dict.fromkeys(f for fig in every for f in fig.report)),
    )
