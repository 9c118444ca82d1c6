"""The policy-gradient loss of a causal LM on logged completions: clipped ratios, a KL to a reference.

Per completion token t of completion i (the batch's tokens all count alike: the loss is their mean,
so a long completion weighs as its tokens do):

    ratio_t  = pi_theta(y_t | y_<t) / pi_old(y_t | y_<t)
    pg_t     = max(-A_i ratio_t, -A_i clip(ratio_t, 1 - eps, 1 + eps))          (PPO, Schulman 2017)
    pg_t     = min(pg_t, -A_i c)  where A_i < 0                                  (dual clip, Ye et al. 2020)
    kl_t     = sum_v pi_theta(v | y_<t) (log pi_theta(v | y_<t) - log pi_ref(v | y_<t))
    loss     = mean_t (pg_t + beta kl_t)

pi_old is the version that sampled the completion, read from the completions table's `logprobs`:
the log-probability under that version's model at temperature 1, the same distribution the learner
recomputes, so on a fresh sample the ratio is 1 and the gradient is REINFORCE's, -A grad log pi.  The
table's other column, `sampling_logprobs` (the distribution after temperature and top-p that actually
drew the token), is not the denominator: against it a fresh sample's ratio is p/q, not 1 (below 1 on
every token top-p kept, and p itself for a greedy token), so PPO's clip would act on how the request
sampled rather than on how far the weights have moved since.

PPO's clip keeps a positive advantage from pushing a token's ratio past 1 + eps; the dual clip caps a
negative advantage's term at c |A| (c = `dual_clip` > 1 + eps), so a stale sample whose ratio has grown
huge adds no gradient at all instead of one proportional to the ratio.  The log-ratio is clamped to
+-20 before exp so an extreme one stays finite (such a token is clipped either way).

The KL is exact over the vocabulary at every completion position, not a sampled estimate (k1 / k3):
the tokens were drawn by an older version, at a temperature and top-p, so a sampled estimate of
KL(pi_theta || pi_ref) would be biased by that mismatch; the whole next-token distribution is at hand
anyway (the log-softmax the ratio needs), and the exact value is 0 against itself and never negative.
"""

from __future__ import annotations

import torch

MAX_LOG_RATIO = 20.0


def next_token_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """log-softmax of positions 0 .. L-2 (each predicts the next token), float32: [B, L-1, V]."""
    return torch.log_softmax(logits[:, :-1].float(), dim=-1)


def exact_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """KL(p || ref) of each position's next-token distribution: [B, L-1]."""
    return (logp.exp() * (logp - ref_logp)).sum(-1)


def clipped_pg_loss(logp_all: torch.Tensor, ref_logp_all: torch.Tensor | None, batch: dict[str, torch.Tensor],
                    advantages: torch.Tensor, clip_epsilon: float, dual_clip: float,
                    kl_coef: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The batch loss and its parts; see the module docstring.

    logp_all: next_token_logprobs of the model being trained; ref_logp_all the reference's (None: no KL
    term); batch: input_ids, target_mask, old_logprobs (learners/completion_source.py); advantages [B].
    """
    mask = batch["target_mask"]
    logp = logp_all.gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)  # [B, L-1]
    log_ratio = torch.where(mask > 0, logp - batch["old_logprobs"], torch.zeros_like(logp))
    ratio = log_ratio.clamp(-MAX_LOG_RATIO, MAX_LOG_RATIO).exp()
    adv = advantages[:, None].to(logp.dtype)
    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - clip_epsilon, 1.0 + clip_epsilon))
    pg = torch.where(adv < 0, torch.minimum(pg, -adv * dual_clip), pg)
    kl = exact_kl(logp_all, ref_logp_all) if ref_logp_all is not None else torch.zeros_like(pg)
    tokens = mask.sum().clamp_min(1.0)
    loss = ((pg + kl_coef * kl) * mask).sum() / tokens
    with torch.no_grad():
        on = mask > 0
        clipped = ((ratio > 1 + clip_epsilon) & (adv > 0)) | ((ratio < 1 - clip_epsilon) & (adv < 0))
        clipped |= (adv < 0) & (ratio > dual_clip)
        parts = {"pg": (pg * mask).sum() / tokens, "kl": (kl * mask).sum() / tokens,
                 "ratio": ratio[on].mean() if on.any() else torch.tensor(1.0),
                 "clipped_share": clipped[on].float().mean() if on.any() else torch.tensor(0.0),
                 "tokens": mask.sum()}
    return loss, parts
