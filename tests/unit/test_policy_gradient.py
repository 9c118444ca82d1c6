"""The policy-gradient objective on a tiny GPT-2: ratios, clipping, baselines, KL, learning, refusals."""

import math

import numpy as np
import pytest
import torch

from core.config.generate import GenerateSection
from core.data.completion_rewards import RewardRule
from core.data.corpus import review_texts
from core.models.generator import (Sampling, TransformersEngine, build_causal_lm, causal_lm_files,
                                   causal_lm_from_files)
from core.models.tokenizer import train_wordpiece
from learners.completion_source import CompletionRows, completion_batch
from learners.objective import WorkerContext
from learners.pg_loss import clipped_pg_loss, exact_kl, next_token_logprobs
from learners.policy_gradient import PGSetup, PolicyGradientObjective
from serving.completion_join import completion_event

PROMPTS = ["这个酒店很好", "书不错", "电脑的屏幕太暗了", "房间很干净"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: a tiny model's steps are mostly thread hand-offs on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok():
    return train_wordpiece(review_texts()[::200][:300], vocab_size=600, min_frequency=1)


def _objective(tok, seed=0, **learning):
    weights, files = causal_lm_files(build_causal_lm(tok, n_layer=1, n_embd=32, n_head=2, n_positions=64, seed=seed), tok)
    obj = PolicyGradientObjective()
    obj.setup(PGSetup(GenerateSection(policy_id="writer", learning=learning), weights, files, parent_version=1),
              WorkerContext())
    return obj


def _rows(obj, reward_fn, n=4, seed=0, max_new_tokens=6, version=1, prompts=PROMPTS):
    """Completions of the objective's current weights, each rated by reward_fn, as completions-table rows."""
    engine = TransformersEngine(obj.model, obj.tokenizer)
    out = engine.generate(prompts, Sampling(n=n, max_new_tokens=max_new_tokens, temperature=1.0, seed=seed))
    rows = []
    for g, (prompt, completions) in enumerate(zip(prompts, out)):
        for k, c in enumerate(completions):
            event = completion_event(f"e{g}-{k}", f"g{g}", prompt, c, 1.0, 1.0, "writer", version, "r0", None)
            rows.append({**event.feedback_row((None, reward_fn(c), None), None), "policy_version": version})
    return rows


def _parity(c):
    """A reward that differs between completions of one prompt: the first token's parity."""
    return float(c.token_ids[0] % 2)


def _batch(obj, rows):
    return completion_batch(CompletionRows(rows), RewardRule.from_section(obj.cfg), obj.tokenizer.pad_token_id, 64)


def _logp_all(obj, t):
    return next_token_logprobs(obj.model(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).logits)


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def test_on_fresh_samples_the_ratio_is_one_and_the_clipped_loss_is_plain_reinforce(tok):
    obj = _objective(tok)
    batch = _batch(obj, _rows(obj, _parity))
    t, mask = batch.tensors, batch.tensors["target_mask"]
    assert len(batch) == 16 and batch.dropped == 0
    adv = torch.linspace(-1.0, 1.0, len(batch))
    logp_all = _logp_all(obj, t)
    loss, parts = clipped_pg_loss(logp_all, None, t, adv, clip_epsilon=0.2, dual_clip=3.0, kl_coef=0.0)
    assert float(parts["ratio"]) == pytest.approx(1.0, abs=1e-4) and float(parts["clipped_share"]) == 0.0
    on = mask > 0
    logp = logp_all.gather(-1, t["input_ids"][:, 1:, None]).squeeze(-1)
    assert torch.allclose(logp[on], t["old_logprobs"][on], atol=1e-4)  # the learner recomputes what was logged
    assert float(loss.detach()) == pytest.approx(float(-(adv[:, None] * mask).sum() / mask.sum()), abs=1e-4)
    clipped_grad = _grads(obj.model, loss)
    reinforce = -(adv[:, None] * _logp_all(obj, t).gather(-1, t["input_ids"][:, 1:, None]).squeeze(-1) * mask).sum() / mask.sum()
    plain_grad = _grads(obj.model, reinforce)
    assert torch.allclose(clipped_grad, plain_grad, rtol=1e-3, atol=1e-6)
    assert float(plain_grad.norm()) > 1e-3  # a gradient that could have differed


def test_clipping_bounds_the_gradient_of_a_stale_sample_with_a_huge_ratio(tok):
    obj = _objective(tok)
    t = _batch(obj, _rows(obj, lambda c: 1.0)).tensors
    mask = t["target_mask"]
    adv = torch.tensor([1.0, -1.0] * 8)
    # the sampling version gave every token e^-10 of what the current weights give: ratio e^10
    stale = {**t, "old_logprobs": t["old_logprobs"] - 10.0 * mask}
    loss, parts = clipped_pg_loss(_logp_all(obj, t), None, stale, adv, clip_epsilon=0.2, dual_clip=3.0, kl_coef=0.0)
    assert float(parts["ratio"]) == pytest.approx(math.exp(10), rel=1e-3) and float(parts["clipped_share"]) == 1.0
    assert float(_grads(obj.model, loss).norm()) == 0.0  # both signs clipped: no push at all
    unclipped = -(adv[:, None] * stale_ratio(obj, stale) * mask).sum() / mask.sum()
    assert float(_grads(obj.model, unclipped).norm()) > 1e3  # what the clip prevents
    # a moderately stale negative sample (ratio e^0.5, inside the dual clip) still pushes
    mild = {**t, "old_logprobs": t["old_logprobs"] - 0.5 * mask}
    loss, _ = clipped_pg_loss(_logp_all(obj, t), None, mild, -torch.ones(16), 0.2, 3.0, 0.0)
    assert float(_grads(obj.model, loss).norm()) > 1e-3


def stale_ratio(obj, t):
    logp = _logp_all(obj, t).gather(-1, t["input_ids"][:, 1:, None]).squeeze(-1)
    return torch.exp(logp - t["old_logprobs"])


def test_a_constant_reward_per_prompt_changes_nothing(tok):
    obj = _objective(tok, kl_coef=0.0, lr=1e-2)
    before = {k: v.clone() for k, v in obj.model.state_dict().items()}
    out = obj.step(_batch(obj, _rows(obj, lambda c: 1.0)))
    assert out["updates"] == 1.0 and out["grouped_share"] == 1.0 and out["advantage_abs"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in obj.model.state_dict().items())
    out = obj.step(_batch(obj, _rows(obj, _parity, seed=1)))  # varying: it moves
    assert out["advantage_abs"] > 0
    assert not all(torch.equal(before[k], v) for k, v in obj.model.state_dict().items())


def test_the_kl_to_the_reference_is_zero_for_itself_and_positive_after_updates(tok):
    obj = _objective(tok, lr=1e-2, kl_coef=0.1)
    t = _batch(obj, _rows(obj, lambda c: 1.0)).tensors
    with torch.no_grad():
        ref = next_token_logprobs(obj.reference(input_ids=t["input_ids"], attention_mask=t["attention_mask"]).logits)
        assert float(exact_kl(_logp_all(obj, t), ref).abs().max()) < 1e-6
    first = obj.step(_batch(obj, _rows(obj, _parity)))
    assert first["kl"] == pytest.approx(0.0, abs=1e-6)  # measured before its own step
    later = [obj.step(_batch(obj, _rows(obj, _parity, seed=s)))["kl"] for s in range(1, 4)]
    assert min(later) > 1e-5
    with torch.no_grad():
        assert float(exact_kl(_logp_all(obj, t), ref).min()) >= -1e-6  # never negative, anywhere


def _target_probability(obj, target):
    """Mean probability of `target` as each prompt's first completion token."""
    engine = TransformersEngine(obj.model, obj.tokenizer)
    with torch.no_grad():
        probs = [torch.softmax(obj.model(input_ids=torch.tensor([engine.prompt_ids(p)])).logits[0, -1], -1)[target]
                 for p in PROMPTS]
    return float(torch.stack(probs).mean())


def test_a_toy_reward_raises_the_rewarded_tokens_probability(tok):
    """Reward 1 for a completion that contains one given token: a hundred-odd on-policy updates make
    that token far likelier (the test fails if the sign, the ratio or the baseline is wrong)."""
    obj = _objective(tok, lr=1e-2, kl_coef=0.01, candidate_every=10_000)
    target = tok.convert_tokens_to_ids("好")
    before = _target_probability(obj, target)
    hits = []
    for step in range(150):
        rows = _rows(obj, lambda c: float(target in c.token_ids), seed=step, max_new_tokens=4)
        hits.append(np.mean([r["reward"] for r in rows]))
        obj.step(_batch(obj, rows))
    after = _target_probability(obj, target)
    assert obj.updates == 150 and obj.skipped == 0
    assert after > 5 * before and after > 0.2, (before, after)
    assert np.mean(hits[-20:]) > np.mean(hits[:20]) + 0.3, (hits[:20], hits[-20:])


def test_a_nan_reward_is_dropped_and_a_nan_loss_is_refused(tok):
    obj = _objective(tok, lr=1e-2)
    rows = _rows(obj, lambda c: 1.0)
    rows[0] = {**rows[0], "reward": math.nan}
    batch = _batch(obj, rows)
    assert batch.dropped == 1 and len(batch) == 15 and batch.rows == 16
    before = {k: v.clone() for k, v in obj.model.state_dict().items()}
    batch.tensors["reward"][3] = math.nan  # past the rule: the loss itself is NaN
    out = obj.step(batch)
    assert out["updates"] == 0.0 and out["skipped_nonfinite"] == 1.0 and out["dropped_rows"] == 1.0
    assert all(torch.equal(before[k], v) for k, v in obj.model.state_dict().items())
    assert math.isnan(obj.last["loss"])  # nothing learned, nothing reported as learned
    exported = obj.export_policy()
    assert all(bool(torch.isfinite(w).all()) for w in exported.weights.values() if w.is_floating_point())


def test_the_exported_policy_is_a_causal_lm_the_generator_loads(tok):
    obj = _objective(tok, lr=1e-2)
    obj.step(_batch(obj, _rows(obj, _parity)))
    exported = obj.export_policy()
    assert exported.info["objective"] == "policy_gradient" and exported.metrics["updates"] == 1.0
    model, tokenizer = causal_lm_from_files(exported.weights, exported.files)
    ids = torch.tensor([[2, 5, 7]])
    with torch.no_grad():
        assert torch.allclose(model(input_ids=ids).logits, obj.model(input_ids=ids).logits, atol=1e-5)
    assert tokenizer.get_vocab() == tok.get_vocab()


def test_state_round_trips_through_a_checkpoint(tok):
    obj = _objective(tok, lr=1e-2)
    obj.step(_batch(obj, _rows(obj, _parity)))
    again = _objective(tok, seed=1, lr=1e-2)
    again.load_state_dict(obj.state_dict())
    assert again.updates == 1 and again.baseline.value == obj.baseline.value
    assert all(torch.equal(v, again.model.state_dict()[k]) for k, v in obj.model.state_dict().items())


def test_runs_in_the_shared_train_loop_from_a_replay_table_and_resumes(tok, tmp_path):
    """The objective through learners/train_loop.run_loop: batches from a real completions table,
    checkpoints, the exported policy in the final one, and a resume from it."""
    from core.config.replay import ReplaySection, TableSection
    from core.replay.store import ShardStore
    from learners.completion_source import CompletionSource
    from learners.train_loop import POLICY_DIR, LoopSpec, read_policy, run_loop
    from serving.event_join import to_columns
    from tests.unit.test_mlm_train_loop import Recorder

    obj = _objective(tok, lr=1e-2)
    store = ShardStore(ReplaySection(num_shards=1, tables={"completions": TableSection(kind="completions")}),
                       tmp_path / "replay")
    rows = _rows(obj, _parity)
    for i, r in enumerate(rows):  # the common columns the join stamps on every row
        r.update(id=r["event_id"], table="completions", source="feedback", actor_id="r0", policy_id="writer",
                 created_at=1_700_000_000_000_000 + i)
    store.add("completions", to_columns(rows))
    source = CompletionSource(store, "completions", rows=8, rule=RewardRule.from_section(obj.cfg),
                              pad_id=tok.pad_token_id, context=64)

    def spec(max_steps):
        return LoopSpec(objective_factory=PolicyGradientObjective, objective_config=obj.setup_, source=source,
                        max_steps=max_steps, report_every=2, eval_every=4, checkpoint_every=4)

    rec = Recorder(tmp_path / "a")
    state = run_loop(spec(4), WorkerContext(), rec.hooks(), resume_dir=None)
    assert state.step == 4 and state.totals.get("updates") == 4 and state.totals.get("completions") == 32
    weights, files, meta = read_policy(rec.checkpoints[-1][1] / POLICY_DIR)
    assert meta["info"]["objective"] == "policy_gradient" and "config.json" in files
    assert meta["info"]["reference_version"] == 1 and meta["metrics"]["updates"] == 4
    again = Recorder(tmp_path / "b")
    state = run_loop(spec(6), WorkerContext(), again.hooks(), resume_dir=str(rec.checkpoints[-1][1]))
    assert state.step == 6 and state.resumes == 1
    store.close()
