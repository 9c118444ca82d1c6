"""The online learner's loss on a batch of feedback rows: cross-entropy on labeled rows, the clipped
importance-weighted policy gradient on reward-only rows (learners/online.py says why)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def feedback_loss(logits: torch.Tensor, rows: dict[str, torch.Tensor], baseline: float, pg_weight: float,
                  max_importance_weight: float, reward_as_label: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The batch loss (mean over usable rows) and its parts; see the module docstring.

    rows: label [B] (int, <0 = none), prediction [B], reward [B] (nan = none), logged_p [B].
    A row with a valid label is supervised; else a row with a finite reward, a valid served
    class and a logged probability > 0 is a bandit row; anything else is ignored.
    `reward_as_label` on two labels: a reward of exactly 1 or 0 on a served class names the
    label (that class or the other), and the row is supervised (part `from_reward`).
    """
    L = logits.shape[-1]
    logp = F.log_softmax(logits, dim=-1)  # [B, L]
    label, pred, reward, mu = rows["label"], rows["prediction"], rows["reward"], rows["logged_p"]
    labeled = (label >= 0) & (label < L)
    from_reward = ~labeled & (pred >= 0) & (pred < L) & ((reward == 0) | (reward == 1))
    if not (reward_as_label and L == 2):  # on more labels "wrong" does not say which one is right
        from_reward = torch.zeros_like(from_reward)
    label = torch.where(from_reward, torch.where(reward == 1, pred, 1 - pred), label)
    labeled = labeled | from_reward
    bandit = ~labeled & torch.isfinite(reward) & (pred >= 0) & (pred < L) & torch.isfinite(mu) & (mu > 0)
    ce = -logp.gather(1, label.clamp(0, L - 1).unsqueeze(1)).squeeze(1)  # [B]
    logp_a = logp.gather(1, pred.clamp(0, L - 1).unsqueeze(1)).squeeze(1)  # [B] log pi(a|x)
    with torch.no_grad():  # constants of the loss; 0 on other rows so no NaN reaches a gradient
        ratio = torch.where(bandit, logp_a.exp() / torch.where(bandit, mu, 1.0).clamp_min(1e-8), 0.0)
        w = ratio.clamp(max=max_importance_weight)
        adv = torch.where(bandit, reward, baseline) - baseline
    pg = -(w * adv * logp_a)  # [B]
    zero = torch.zeros_like(ce)
    per_row = torch.where(labeled, ce, zero) + torch.where(bandit, pg_weight * pg, zero)
    loss = per_row.sum() / (labeled | bandit).sum().clamp_min(1)
    return loss, {"labeled": labeled, "bandit": bandit, "from_reward": from_reward, "ce": ce, "pg": pg, "weight": w,
                  "ratio": ratio, "label": label, "reward": reward}
