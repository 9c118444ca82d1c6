"""Learning without forgetting: a pull toward the live version on rehearsal rows.

The term beside the feedback loss (Li & Hoiem 2016, "Learning without Forgetting";
Hinton et al. 2015 for the temperature):

    distill = weight * T^2 * mean over rehearsal rows of KL( p_live(.|x)/T || p_cand(.|x)/T )

so the candidate keeps answering the old rows as the version users have now
does, while the fresh rows teach it the new ones.  The reference model is a
frozen copy of the classifier: at first the version the learner started from,
then the newest of its own candidates the gate made live.  Every rank takes a
snapshot of its weights when it hands (or would hand) a candidate; rank 0 reads
the gate's answer, and every rank switches to the same snapshot at the same
update (an all-reduce of the snapshot's update number).  A candidate a
live-traffic stage holds, and a rollback, are not followed: the reference stays
the last version the gate made live at once.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F

from learners.objective import WorkerContext

SNAPSHOTS_KEPT = 3  # candidates waiting for the gate's answer; older ones are forgotten
LIVE_DECISIONS = ("promote", "initial")


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * mean_rows KL(softmax(teacher/T) || softmax(student/T)); 0 on no rows."""
    if student.shape[0] == 0:
        return student.sum() * 0.0
    t = float(temperature)
    p_log = F.log_softmax(teacher.detach().float() / t, dim=-1)
    q_log = F.log_softmax(student.float() / t, dim=-1)
    kl = (p_log.exp() * (p_log - q_log)).sum(-1)
    return kl.mean() * t * t


class LiveReference:
    """The live version as this learner knows it, and the snapshots of its candidates in flight."""

    def __init__(self, model: torch.nn.Module, ctx: WorkerContext):
        self.ctx = ctx
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.version_update: int | None = None  # the learner update whose snapshot is the reference
        self.pending: OrderedDict[int, tuple[Any, dict[str, torch.Tensor]]] = OrderedDict()

    def snapshot(self, updates: int, model: torch.nn.Module, answer: Any = None) -> None:
        """Every rank, at a candidate: its weights now, and (rank 0) the gate's answer to come."""
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.pending[updates] = (answer, state)
        while len(self.pending) > SNAPSHOTS_KEPT:
            self.pending.popitem(last=False)

    def follow(self) -> bool:
        """Every rank, in lockstep: take the newest snapshot the gate made live; True if it changed."""
        promoted = -1
        for updates, (answer, _) in list(self.pending.items()):
            decision = _decision(answer)
            if decision is None:
                continue
            if decision in LIVE_DECISIONS:
                promoted = max(promoted, updates)
            else:
                self.pending[updates] = (_REFUSED, self.pending[updates][1])
        if self.ctx.world_size > 1:
            import torch.distributed as dist

            t = torch.tensor([float(promoted)], device=self.ctx.device)
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            promoted = int(t.item())
        if promoted < 0 or promoted not in self.pending:
            return False
        self.model.load_state_dict(self.pending[promoted][1])
        self.version_update = promoted
        for updates in [u for u in self.pending if u <= promoted]:
            del self.pending[updates]
        return True

    def logits(self, ids: torch.Tensor, mask: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(ids, mask, types).float()


_REFUSED = object()  # an answer read: never the reference


def _decision(answer: Any) -> str | None:
    """The gate's decision on a candidate, once it has answered (None: not yet, or no answer)."""
    if answer is None or answer is _REFUSED:
        return None
    if isinstance(answer, dict):
        return str(answer.get("decision"))
    import ray

    if not isinstance(answer, ray.ObjectRef):
        return None
    ready, _ = ray.wait([answer], timeout=0)
    if not ready:
        return None
    try:
        return str(ray.get(answer).get("decision"))
    except Exception:  # the gate failed on it: it never went live
        return "error"
