"""The served generator's engine: completions of prompts, with the log-probabilities of every sampled token.

    engine = TransformersEngine(model, tokenizer)
    engine.generate(["prompt", ...], Sampling(n=4, max_new_tokens=32, temperature=0.8, top_p=0.95))
        -> per prompt, its n `Completion`s (token ids, text, logprobs, sampling_logprobs, finish)

`GenerationEngine` is the one interface serving calls, so an engine on a GPU server can back it
later; `TransformersEngine` is `transformers`' `generate`: every prompt and its `n` completions in
one batched call, prompts padded on the left (a decoder-only model continues from the last
position), the KV cache on.

Each sampled token carries two log-probabilities, because a learner needs both:
  `logprobs`           log p(token) under the model itself (softmax of its raw logits, temperature 1):
                       what a policy-gradient learner recomputes under the new weights, the
                       numerator of its importance ratio;
  `sampling_logprobs`  log q(token) under the distribution the token was actually drawn from (the
                       logits after temperature and top-p): the behaviour propensity; 0.0 for a
                       greedy token (temperature 0 picks it with probability 1).
Both come from the scores `generate` itself used, not from a second forward pass.

A prompt is encoded as pretraining reads the start of a text (core/models/causal_lm.py: the model's
begin token, then the prompt's tokens without special ones); a completion ends at the model's end
token, which it keeps with its log-probabilities, or after `max_new_tokens` (finish "length").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence

import torch

from core.models.causal_lm import build_causal_lm as build_from_config
from core.models.causal_lm import decode, export_weights, load_weights, prompt_ids, text_bounds

GREEDY = 0.0  # a temperature of 0 asks for greedy decoding
# a positive temperature below this divides the logits into overflow (inf / NaN probabilities)
MIN_TEMPERATURE = 0.01


@dataclass(frozen=True)
class Sampling:
    """How to draw completions: `n` per prompt, up to `max_new_tokens` each."""

    max_new_tokens: int = 32
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None  # the call's torch seed (a batch shares one)

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.n < 1:
            raise ValueError("max_new_tokens and n must be at least 1")
        if not (self.temperature == GREEDY or self.temperature >= MIN_TEMPERATURE) or not 0 < self.top_p <= 1:
            raise ValueError(f"temperature must be 0 (greedy) or >= {MIN_TEMPERATURE}, and top_p in (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == GREEDY

    def key(self) -> tuple[int, float, float]:
        """What requests must share to be decoded in one call."""
        return self.max_new_tokens, self.temperature, self.top_p


@dataclass
class Completion:
    prompt_ids: list[int]
    token_ids: list[int]
    text: str
    logprobs: list[float]  # under the model (raw logits, temperature 1)
    sampling_logprobs: list[float]  # under the distribution that drew each token (temperature, top-p)
    finish: str  # "stop": the end token; "length": max_new_tokens reached
    extra: dict[str, Any] = field(default_factory=dict)


class GenerationEngine(Protocol):
    """What serving needs from a generator; `context` is the longest prompt + completion in tokens."""

    context: int

    def prompt_ids(self, prompt: str) -> list[int]: ...

    def generate(self, prompts: Sequence[str], sampling: Sampling) -> list[list[Completion]]: ...


class TransformersEngine:
    """`transformers`' `generate` behind `GenerationEngine`; not thread-safe (one worker thread per replica)."""

    def __init__(self, model: Any, tokenizer: Any, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.tokenizer, self.device = tokenizer, device
        # the ids a text starts and ends with in pretraining (core/models/causal_lm.py): a prompt
        # reads as the start of a text, a completion ends where a text does
        self.begin_id, self.end_id = text_bounds(model.config, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.end_id
        self.context = int(getattr(model.config, "n_positions", None) or model.config.max_position_embeddings)

    def prompt_ids(self, prompt: str) -> list[int]:
        return prompt_ids(self.model, self.tokenizer, prompt)

    @torch.inference_mode()
    def generate(self, prompts: Sequence[str], sampling: Sampling) -> list[list[Completion]]:
        encoded = [self.prompt_ids(p) for p in prompts]
        ids, mask = self._left_padded(encoded)
        if sampling.seed is not None:
            torch.manual_seed(sampling.seed)
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, max_new_tokens=sampling.max_new_tokens,
            num_return_sequences=sampling.n, return_dict_in_generate=True, output_scores=True, output_logits=True,
            pad_token_id=self.pad_id, eos_token_id=self.end_id, use_cache=True, **_decoding(sampling))
        new = out.sequences[:, ids.shape[1]:]
        raw = _token_logprobs(out.logits, new)  # under the model
        drawn = torch.zeros_like(raw) if sampling.greedy else _token_logprobs(out.scores, new)
        completions: list[list[Completion]] = [[] for _ in prompts]
        for row in range(new.shape[0]):  # generate orders rows prompt by prompt, n each
            prompt = row // sampling.n
            length, finish = self._length(new[row])
            tokens = new[row, :length].tolist()
            completions[prompt].append(Completion(
                prompt_ids=encoded[prompt], token_ids=tokens, text=self.decode(tokens),
                logprobs=raw[row, :length].tolist(), sampling_logprobs=drawn[row, :length].tolist(), finish=finish))
        return completions

    def decode(self, token_ids: Sequence[int]) -> str:
        return decode(self.tokenizer, list(token_ids))

    def _left_padded(self, encoded: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for i, e in enumerate(encoded):
            ids[i, width - len(e):] = torch.tensor(e, dtype=torch.long)
            mask[i, width - len(e):] = 1
        return ids.to(self.device), mask.to(self.device)

    def _length(self, tokens: torch.Tensor) -> tuple[int, str]:
        """Tokens up to and including the first end token; what follows it is padding."""
        ends = (tokens == self.end_id).nonzero()
        if len(ends):
            return int(ends[0, 0]) + 1, "stop"
        return tokens.shape[0], "length"


def _decoding(sampling: Sampling) -> dict[str, Any]:
    if sampling.greedy:
        return {"do_sample": False}
    # top_k 0: no hidden top-k cut (a model's generation config may carry one); only what the request asks
    return {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}


def _token_logprobs(steps: Sequence[torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """log softmax of each step's scores at the token taken there: (rows, steps)."""
    logp = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in steps], dim=1)
    return logp.gather(-1, tokens[:, : logp.shape[1], None]).squeeze(-1)


def _first_id(tokenizer: Any, *names: str) -> int | None:
    return next((getattr(tokenizer, n) for n in names if getattr(tokenizer, n, None) is not None), None)


# ---- a causal LM as the registry stores it ------------------------------------------------
CONFIG_FILE = "config.json"


def causal_lm_files(model: Any, tokenizer: Any) -> tuple[dict[str, torch.Tensor], dict[str, bytes]]:
    """(weights, files) to publish, as the pretraining loop publishes: each tensor once (a tied
    output layer is tied again on load), the model's config.json and the tokenizer's files."""
    from core.models.tokenizer import tokenizer_files

    config = json.dumps(model.config.to_dict(), indent=2, sort_keys=True, default=str).encode()
    return export_weights(model), {**tokenizer_files(tokenizer), CONFIG_FILE: config}


def causal_lm_from_files(weights: Mapping[str, torch.Tensor], files: Mapping[str, bytes]) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer) of a stored version: a `transformers` causal LM built from
    its config.json, and any fast tokenizer (a GPT-2 BPE has no [MASK]: not the masked-LM checks)."""
    from core.models.tokenizer import check_causal_tokenizer, tokenizer_from_files

    if CONFIG_FILE not in files:
        raise ValueError("no config.json: not a causal LM")
    model = load_weights(build_from_config(json.loads(files[CONFIG_FILE])), dict(weights))
    tokenizer = tokenizer_from_files({k: v for k, v in files.items() if k != CONFIG_FILE}, check=check_causal_tokenizer)
    return model.eval(), tokenizer


def build_causal_lm(tokenizer: Any, n_layer: int = 2, n_embd: int = 64, n_head: int = 2, n_positions: int = 256,
                    seed: int = 0) -> Any:
    """A GPT-2-shaped causal LM with random weights for `tokenizer`'s vocabulary, its texts laid out as
    pretraining lays them out: the end-of-text token (eos, else [SEP]) before and after each (bos
    before, when the tokenizer has one)."""
    from transformers import GPT2Config

    end = _first_id(tokenizer, "eos_token_id", "sep_token_id")
    begin = _first_id(tokenizer, "bos_token_id") if tokenizer.bos_token_id is not None else end
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=n_layer, n_embd=n_embd, n_head=n_head,
                        n_positions=n_positions, bos_token_id=begin, eos_token_id=end,
                        pad_token_id=tokenizer.pad_token_id)
    return build_from_config(config, seed).eval()
