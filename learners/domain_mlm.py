"""Continual MLM inside the live loop: re-base the classifier's encoder on the new domain's texts.

While a `learner_boost` with `domain_mlm > 0` lasts, each online update also
masks 15% of its rows' tokens (BERT's rule: learners/mlm.choose_masks) and
adds `domain_mlm` x the masked-LM loss of the classifier's own encoder.  The
fresh rows are the newest feedback, so the encoder keeps learning what text
from the changed stream looks like (domain-adaptive pretraining, Gururangan
et al. 2020) while the head learns its labels.  The MLM head's decoder is the
encoder's word embeddings (tied, as in BERT); its transform and bias are the
learner's own, never published: a served version is the classifier alone.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from core.models.encoder import encoder_hidden
from learners.mlm import choose_masks


class DomainMLM:
    def __init__(self, model: torch.nn.Module, tokenizer: Any, lr: float, seed: int):
        from transformers.models.bert.modeling_bert import BertOnlyMLMHead

        config = model.bert.config
        self.head = BertOnlyMLMHead(config).to(next(model.parameters()).device)
        _init_like_bert(self.head, config.initializer_range)  # built outside a PreTrainedModel: no init of its own
        self.head.predictions.decoder.weight = model.bert.embeddings.word_embeddings.weight  # tied
        own = [p for name, p in self.head.named_parameters() if name != "predictions.decoder.weight"]
        self.optimizer = torch.optim.AdamW(own, lr=lr)
        self.special = torch.zeros(config.vocab_size, dtype=torch.bool)
        self.special[[i for i in tokenizer.all_special_ids if i < config.vocab_size]] = True
        self.mask_id, self.vocab_size = tokenizer.mask_token_id, config.vocab_size
        self.gen = torch.Generator().manual_seed(seed)

    def loss(self, model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy at the masked positions of ids [B, T] (padding is never masked)."""
        self.optimizer.zero_grad(set_to_none=True)  # an update skipped since leaves nothing behind
        corrupted, positions, labels = choose_masks(ids.cpu(), self.special, self.vocab_size, self.mask_id, self.gen)
        dev = ids.device
        hidden = encoder_hidden(model.bert, corrupted.to(dev), mask)  # [B, T, H]
        picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions.to(dev))
        return F.cross_entropy(self.head(picked).float(), labels.to(dev))

    def step(self) -> None:
        """After the shared backward: the head's own parameters (the tied decoder is the encoder's)."""
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


@torch.no_grad()
def _init_like_bert(module: torch.nn.Module, std: float) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.Linear):
            m.weight.normal_(0.0, std)
        elif isinstance(m, torch.nn.LayerNorm):
            m.weight.fill_(1.0)
            m.bias.zero_()
    for name, p in module.named_parameters():
        if name.endswith("bias") and "LayerNorm" not in name:
            p.zero_()
