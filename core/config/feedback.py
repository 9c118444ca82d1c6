"""A `feedback` loop's section: serve a text classifier, learn from client feedback.

Serve predict / feedback -> replay (the loop's `feedback` and `text` tables) -> online
learner -> publish gate -> live on every replica.  Traffic actors play the
clients in a run on this machine.  The keys come in groups by concern: `model`
(where the classifier starts, its shape), `data`, `traffic`, `learning`,
`serving`, `gate`, `adapt`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from core.config.adapt import AdaptSection
from core.config.base import NAME_PATTERN, LoopSection, Section, ServedPolicy
from core.config.data import DataSection, TrafficSection
from core.config.gate import CanarySection, GateSection, OPESection, ShadowSection
from core.config.memory import MemorySection
from core.config.model import FeedbackModelSection

__all__ = ["CanarySection", "DataSection", "FeedbackLearningSection", "FeedbackSection", "FeedbackServingSection",
           "GateSection", "OPESection", "ShadowSection", "TrafficSection"]


class FeedbackLearningSection(Section):
    """The online learner: AdamW on the encoder and head, AdaGrad on the wide part; fresh feedback
    batches mixed with rehearsal of older rows."""

    lr: float = Field(default=5e-4, gt=0, lt=1)  # AdamW step size
    weight_decay: float = Field(default=0.01, ge=0)  # AdamW decoupled weight decay
    grad_clip: float = Field(default=1.0, gt=0)  # global gradient norm cap
    bf16: bool = True  # bf16 autocast on GPU learners (fp32 master weights); CPU learners stay fp32
    batch_size: int = Field(default=32, ge=1)  # rows per update, fresh + rehearsal
    rehearsal: float = Field(default=0.5, ge=0, lt=1)  # share of each batch replayed from older feedback
    reservoir_size: int = Field(default=5000, ge=1)  # older feedback kept for rehearsal (the buffer's size)
    memory: MemorySection = Field(default_factory=MemorySection)  # the rehearsal buffer's balance, distillation
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
    # The first candidate comes this many updates in (then every candidate_every): a new loop's
    # first steps on fresh feedback are its largest gains, and they reach clients without waiting.
    first_candidate: int = Field(default=5, ge=1)
    # The gate judges only the newest queued candidate; True drops a candidate while the gate
    # still judges the previous one, which spares the object store on slow gates.
    skip_when_gate_busy: bool = False
    report_every: int = Field(default=10, ge=1)  # learner updates between progress records
    checkpoint_every: int = Field(default=200, ge=1)  # learner updates between checkpoints
    curve_rows: int = Field(default=200, ge=0)  # held-out rows the learner scores for its own curve


class FeedbackServingSection(Section):
    """The loop's Serve app: predict and feedback under `route_prefix`, its replicas and batching."""

    # /predict, /feedback, /healthz and /models answer under it; two feedback loops need two.
    route_prefix: str = "/v1"
    num_replicas: int = Field(default=1, ge=1)  # Serve replicas of the classifier
    # Requests waiting for a replica beyond this answer 503 with Retry-After at once, instead of
    # queueing without bound (Serve's max_queued_requests, per caller).
    max_queued_requests: int = Field(default=1000, ge=1)
    max_batch_size: int = Field(default=32, ge=1)  # @serve.batch, counted in texts
    batch_wait_timeout_s: float = Field(default=0.01, ge=0)  # how long a batch waits to fill
    max_text_chars: int = Field(default=2000, ge=1)  # longer request texts are refused (413)
    feedback_ttl_s: float = Field(default=600.0, gt=0)  # feedback after this -> 410

    @field_validator("route_prefix")
    @classmethod
    def _route(cls, v: str) -> str:
        if not v.startswith("/") or v.endswith("/") and v != "/" or "//" in v:
            raise ValueError(f"a route prefix starts with '/' and does not end with one, e.g. /v1/reviews; got {v!r}")
        return v


class FeedbackSection(ServedPolicy, LoopSection):
    kind: Literal["feedback"] = "feedback"  # a live classifier learning from feedback
    policy_id: str | None = None  # registry and Serve name of the classifier; None: the loop's name
    # Replay tables by role: `feedback` (joined rows the learner samples) and `text` (request texts
    # for continual MLM; null: not logged).  Unset: named after the loop (<loop>, <loop>-text).
    tables: dict[str, str | None] = Field(default_factory=dict)
    model: FeedbackModelSection = Field(default_factory=FeedbackModelSection)  # the classifier and its start
    data: DataSection = Field(default_factory=DataSection)  # labeled rows: traffic and the held-out set
    traffic: TrafficSection = Field(default_factory=TrafficSection)  # the simulated users
    learning: FeedbackLearningSection = Field(default_factory=FeedbackLearningSection)  # the online learner
    serving: FeedbackServingSection = Field(default_factory=FeedbackServingSection)  # the loop's Serve app
    gate: GateSection = Field(default_factory=GateSection)  # what a candidate must pass to go live
    adapt: AdaptSection = Field(default_factory=AdaptSection)  # drift detection and what an alarm changes
    stop_accuracy: float | None = Field(default=None, gt=0, le=1)  # stop the run when live reaches it

    @model_validator(mode="after")
    def _names(self) -> "FeedbackSection":
        if self.policy_id is not None and not NAME_PATTERN.match(self.policy_id):
            raise ValueError("policy_id must be 1-64 characters of letters, digits, '_', '.', '-'")
        if "groups" in self.gate.stages and not self.data.group_column:
            raise ValueError("gate.stages names 'groups' (per-group non-regression): it needs data.group_column")
        return self

    def check_in_run(self, name: str, cfg: Any) -> None:
        source = self.model.encoder_loop
        if source is None:
            return
        loops, names = cfg.loops, list(cfg.loops)
        if source not in loops or loops[source].kind != "mlm":
            mlm = [n for n, loop in loops.items() if loop.kind == "mlm"]
            raise ValueError(f"loops.{name}.model.encoder_loop {source!r} must name an mlm loop of this run "
                             f"({', '.join(mlm) or 'none'})")
        if names.index(source) > names.index(name):
            raise ValueError(f"loops: {name!r} re-bases onto the encoders of {source!r}: list {source!r} before it")
        if self.model.kind == "wide":
            raise ValueError(f"loops.{name}.model.encoder_loop: a wide model never runs its encoder (model.kind wide)")

    def routes(self) -> list[str]:
        return [self.serving.route_prefix]

    def catch_up_batches(self) -> int:
        """Fresh batches the learner may take at once: `wide_catch_up` for a gated wide_deep model, else 1."""
        m = self.model
        return self.learning.wide_catch_up if m.kind == "wide_deep" and m.combine == "gate" else 1
