"""The text classifier the feedback loop serves and trains: a BERT encoder, mean pooling, a linear head.

It starts from the encoder `evolve pretrain` publishes (weights = BertModel
state dict; files = tokenizer files + `config.json`), or from a random
initialisation of the same architecture.  A classifier version in the registry
holds the whole model's weights (keys `bert.*`, `head.*`) and the files
`config.json` (the encoder's BertConfig), the tokenizer files and
`labels.json` (the label names, index = class id), so a serving replica can
rebuild it from the registry alone.  A pair classifier (`pairs`, said in labels.json
as `"inputs": "pairs"`) reads `(text, text_pair)` inputs (core/data/inputs.py),
encoded as BERT does: `[CLS] a [SEP] b [SEP]`, token type 0 then 1, the longer
side cut first so both sides keep tokens.  A version with a wide part (core/models/wide.py)
also holds `wide.*` weights and `wide.json`; its answers are the wide or the
combined logits.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from transformers import BertConfig, BertModel

from core.data.inputs import TextInput
from core.models.encoder import encoder_hidden
from core.models.tokenizer import tokenizer_files, tokenizer_from_files
from core.models.wide import WidePart, split_wide, wide_from_files


class ClassifierError(ValueError):
    """A classifier that cannot be built or loaded; str() says why."""


class TextClassifier(nn.Module):
    def __init__(self, config: BertConfig, num_labels: int, dropout: float = 0.1):
        super().__init__()
        if num_labels < 2:
            raise ClassifierError(f"a classifier needs at least 2 labels, got {num_labels}")
        self.bert = BertModel(config, add_pooling_layer=False)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(config.hidden_size, num_labels)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.drop(self.pooled(ids, mask, types)))  # [B, L] logits

    def pooled(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None = None) -> torch.Tensor:
        """[B, H]: the encoder's last hidden state, mean over real tokens (what the head reads)."""
        hidden = encoder_hidden(self.bert, ids, mask, types)  # [B, T, H]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)

    def first_token(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor | None = None) -> torch.Tensor:
        """[B, H]: the encoder's last hidden state at [CLS]."""
        return encoder_hidden(self.bert, ids, mask, types)[:, 0]


@dataclass
class ClassifierBundle:
    """A model with what it needs to read text: its tokenizer, label names and max length."""

    model: TextClassifier
    tokenizer: Any
    labels: list[str]
    max_len: int = 64
    wide: WidePart | None = None  # kind wide / wide_deep; None: the deep model alone
    pairs: bool = False  # reads (text, text_pair) inputs; False: one text each
    bf16: bool = False  # bf16 autocast for answers on a GPU (see `place`)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def place(self, device: torch.device | str, bf16: bool = True) -> "ClassifierBundle":
        """Move the model (and its wide part) to `device`; on CUDA, answers run under bf16 autocast."""
        device = torch.device(device)
        self.model.to(device)
        if self.wide is not None:
            self.wide.to(device)
        self.bf16 = bf16 and device.type == "cuda"
        return self

    def encode(self, texts: Sequence[TextInput]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return encode(self.tokenizer, texts, self.max_len)

    def predict_proba(self, texts: Sequence[TextInput], batch: int = 128) -> np.ndarray:
        """[N, L] float32 class probabilities (eval mode, no dropout)."""
        # softmax in float32 even under autocast: propensities feed importance weights and OPE
        if self.wide is None:
            return self._batched(texts, batch, len(self.labels),
                                 lambda ids, mask, types: torch.softmax(self.model(ids, mask, types).float(), -1))
        return self._batched_texts(texts, batch, lambda chunk: torch.softmax(self.logits(chunk).float(), -1))

    def logits(self, texts: Sequence[TextInput]) -> torch.Tensor:
        """[B, L] the served logits (grad enabled; callers choose train or eval mode)."""
        wide, dev = self.wide, self.device
        deep = None
        if wide is None or wide.uses_deep:
            deep = self.model(*(t.to(dev) for t in self.encode(texts)))
        return deep if wide is None else wide.combined(deep, wide(texts))

    @torch.no_grad()
    def _batched_texts(self, texts: Sequence[TextInput], batch: int, fn) -> np.ndarray:
        self.model.eval()
        order = by_length(texts)
        with self._autocast():
            out = [fn([texts[i] for i in order[start : start + batch]]).float().cpu().numpy()
                   for start in range(0, len(texts), batch)]
        return _unsorted(out, order, len(self.labels))

    def pooled_features(self, texts: Sequence[TextInput], pooling: str = "mean", batch: int = 128) -> np.ndarray:
        """[N, H] float32: each text's last hidden state, the mean over tokens or [CLS] (`pooling`: mean | cls)."""
        fn = {"mean": self.model.pooled, "cls": self.model.first_token}[pooling]
        return self._batched(texts, batch, self.model.head.in_features, fn)

    @torch.no_grad()
    def _batched(self, texts: Sequence[TextInput], batch: int, width: int, fn) -> np.ndarray:
        self.model.eval()
        out, dev, order = [], self.device, by_length(texts)
        with self._autocast():
            for start in range(0, len(texts), batch):
                encoded = self.encode([texts[i] for i in order[start : start + batch]])
                out.append(fn(*(t.to(dev) for t in encoded)).float().cpu().numpy())
        return _unsorted(out, order, width)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def files(self) -> dict[str, bytes]:
        """The registry files of a classifier version (weights travel separately)."""
        return {
            **tokenizer_files(self.tokenizer),
            "config.json": json.dumps(self.model.bert.config.to_dict(), sort_keys=True, default=str).encode(),
            "labels.json": json.dumps({"labels": self.labels, "max_len": self.max_len,
                                       **({"inputs": "pairs"} if self.pairs else {})}).encode(),
            **(self.wide.files() if self.wide is not None else {}),
        }

    def weights(self) -> dict[str, torch.Tensor]:
        deep = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        return {**deep, **(self.wide.weights() if self.wide is not None else {})}


def by_length(texts: Sequence[TextInput]) -> np.ndarray:
    """Indices of `texts` from shortest to longest (characters, both sides of a pair).

    A batch pads to its longest input, so batching texts of like length skips most of the padding:
    scoring a held-out set this way takes about half the time of batching it in its own order.
    """
    return np.argsort([len(t[0]) + len(t[1]) if isinstance(t, tuple) else len(t) for t in texts], kind="stable")


def _unsorted(chunks: list[np.ndarray], order: np.ndarray, width: int) -> np.ndarray:
    """The rows of `chunks` (in `order`) back in the inputs' own order."""
    if not chunks:
        return np.zeros((0, width), np.float32)
    out = np.empty_like(stacked := np.concatenate(chunks))
    out[order] = stacked
    return out


def encode(tok, texts: Sequence[TextInput], max_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded ids [B, T], attention mask [B, T] and token types [B, T] (T <= max_len).

    A pair is `[CLS] a [SEP] b [SEP]`, types 0 up to the first [SEP] and 1 after it; `longest_first`
    cuts a token at a time from the longer side, so a long first text never crowds out the second.
    Plain texts and pairs may share a batch (the fast tokenizer encodes each item on its own).
    """
    enc = tok(list(texts), truncation="longest_first", max_length=max_len, padding=True,
              return_token_type_ids=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]


def from_encoder(encoder_weights: Mapping[str, Any] | None, files: Mapping[str, bytes], labels: Sequence[str],
                 max_len: int = 64, seed: int = 0, pairs: bool = False) -> ClassifierBundle:
    """A new classifier on a published encoder (weights None: random init of the same architecture)."""
    config = _config(files)
    max_len = min(max_len, config.max_position_embeddings)  # the encoder cannot see further
    torch.manual_seed(seed)
    model = TextClassifier(config, len(labels))
    if encoder_weights is not None:
        state = _tensors(encoder_weights)
        try:
            model.bert.load_state_dict(state)  # strict: the encoder must fit exactly
        except RuntimeError as exc:
            raise ClassifierError(f"encoder weights do not fit the encoder config: {_short(exc)}") from None
    return ClassifierBundle(model, _tokenizer(files, config), list(labels), max_len, pairs=pairs)


def from_version(weights: Mapping[str, Any], files: Mapping[str, bytes]) -> ClassifierBundle:
    """Rebuild a published classifier version (registry weights + files)."""
    if "labels.json" not in files:
        raise ClassifierError("not a classifier version: no labels.json (an encoder? use from_encoder)")
    meta = json.loads(files["labels.json"])
    bundle = from_encoder(None, files, meta["labels"], int(meta.get("max_len", 64)),
                          pairs=meta.get("inputs") == "pairs")
    deep, wide = split_wide(_tensors(weights))
    try:
        bundle.model.load_state_dict(deep)
        bundle.wide = wide_from_files(files)
        if bundle.wide is not None or wide:
            if bundle.wide is None:
                raise RuntimeError("wide.* weights without wide.json")
            bundle.wide.load_state_dict(wide)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ClassifierError(f"classifier weights do not fit its config: {_short(exc)}") from None
    return bundle


def _tensors(weights: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    # a copy: arrays from the object store are read-only, and torch warns on (and must not write to) them
    return {k: v if isinstance(v, torch.Tensor) else torch.from_numpy(np.array(v, copy=True)) for k, v in weights.items()}


def _config(files: Mapping[str, bytes]) -> BertConfig:
    if "config.json" not in files:
        raise ClassifierError("no config.json among the version's files")
    return BertConfig.from_dict(json.loads(files["config.json"]))


def _tokenizer(files: Mapping[str, bytes], config: BertConfig):
    tok = tokenizer_from_files({k: v for k, v in files.items() if k.startswith(("tokenizer", "special_tokens", "vocab"))})
    if len(tok) > config.vocab_size:
        raise ClassifierError(f"tokenizer has {len(tok)} tokens but the encoder's vocabulary is {config.vocab_size}")
    return tok


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]
