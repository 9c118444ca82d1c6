"""Everything next-token pretraining needs before training starts, checked up front: the same
corpus, tokenizer and packed blocks as masked-LM (`core/data/mlm.py: prepare_blocks`), a causal
model's config, and the baseline its perplexity is read against.

The baseline is a unigram model of the training tokens (add-one smoothing over the model's
vocabulary, the same tokenizer), scored on exactly the held-out tokens the objective predicts:
positions 1.. of the first `eval_sequences` held-out blocks.  A causal LM that uses no context
cannot do better than it on average, so the ratio of the two perplexities says how much the
model reads its context.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from core.config.clm import CLMSection
from core.data.mlm import MLMData, ModelSide, prepare_blocks
from core.models.causal_lm import check_causal_vocab, gpt2_config, pretrained_config, text_bounds
from core.models.tokenizer import check_causal_tokenizer


def prepare_clm_data(cfg: CLMSection, tokenizer_dir: Path | None = None) -> MLMData:
    """`tokenizer_dir`: where a trained tokenizer is kept (reused if it exists, as for masked-LM).
    A pretrained model brings its tokenizer (its own directory unless tokenizer.pretrained_dir)."""
    pretrained = cfg.model.pretrained_dir
    if pretrained is not None:
        config = pretrained_config(pretrained)  # refused before a tokenizer is trained or loaded

    def describe(tokenizer: Any) -> tuple[Any, int, int]:
        if pretrained is None:
            end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
            built = gpt2_config(cfg.model, len(tokenizer), end, end, tokenizer.pad_token_id, positions=cfg.seq_len)
            return built, end, end
        check_causal_vocab(config, tokenizer)
        return (config, *text_bounds(config, tokenizer))

    side = ModelSide(cfg.tokenizer.pretrained_dir or pretrained, check_causal_tokenizer, describe)
    data = prepare_blocks(cfg, tokenizer_dir, side)
    targets = data.heldout_blocks[: cfg.eval_sequences, 1:]
    data.facts.update(unigram_perplexity=unigram_perplexity(data.train_blocks, targets, data.model_config.vocab_size),
                      heldout_targets=int(targets.size))
    return data


def unigram_counts(blocks: np.ndarray, vocab_size: int) -> np.ndarray:
    """How often each id is a prediction target in `blocks` (every position but the first)."""
    return np.bincount(blocks[:, 1:].ravel(), minlength=vocab_size)[:vocab_size]


def unigram_perplexity(train_blocks: np.ndarray, targets: np.ndarray, vocab_size: int, alpha: float = 1.0) -> float:
    """exp(mean -log p(t)) over `targets`, p = (count + alpha) / (total + alpha * vocab_size)."""
    counts = unigram_counts(train_blocks, vocab_size).astype(np.float64)
    probs = (counts + alpha) / (counts.sum() + alpha * vocab_size)
    return float(np.exp(-np.log(probs[np.asarray(targets).ravel()]).mean()))
