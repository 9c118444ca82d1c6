"""The gate on a text generator, without Ray: a tiny GPT-2 built from config, a registry in tmp_path.

The loop's reward here is a rule: a completion earns for each "很好" it holds (up to four).  The
poisoned candidate is the live model trained, in the fixture, to answer every prompt with that
phrase over and over: it earns far more reward than live on the held-out prompts, and the
reward-hacking bounds must refuse it anyway.  The terse one is trained to end at once.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from core.config.gate import GateSection, SamplesSection, generator_gate
from core.data.corpus import review_texts
from core.models.generator import Sampling, TransformersEngine, build_causal_lm, causal_lm_files
from core.models.tokenizer import train_wordpiece
from core.storage.registry import PolicyRegistry
from gate import Gate, GateError
from gate.kinds.generator import GeneratorKind
from tests.unit.test_gate import P, FakePublisher

PHRASE = "很好"
SAMPLES = SamplesSection(n=2, max_new_tokens=16, seed=0)


def liked(prompts, completions) -> list[float]:
    """The rule-based reward: a quarter point per "很好" in the completion, at most 1."""
    return [min(1.0, c.replace(" ", "").count(PHRASE) / 4) for c in completions]


def _train(model, engine, prompts, tail, steps: int = 80, lr: float = 1e-2):
    """Some dozens of AdamW steps of next-token loss on `prompt + tail` (the tail's tokens only)."""
    model = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    rows = [(engine.prompt_ids(p), tail) for p in prompts]
    width = max(len(p) + len(t) for p, t in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, t) in enumerate(rows):
        ids[i, :len(p) + len(t)] = torch.tensor(p + t)
        labels[i, len(p):len(p) + len(t)] = torch.tensor(t)
        mask[i, :len(p) + len(t)] = 1
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _numpy(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def world():
    torch.set_num_threads(1)
    texts = review_texts()
    tok = train_wordpiece(texts[::400][:120], vocab_size=400, min_frequency=1)
    prompts = [t[:6] for t in texts[1::97][:12]]
    live = build_causal_lm(tok, n_layer=1, n_embd=32, n_head=2, n_positions=64, seed=0)
    engine = TransformersEngine(live, tok)
    phrase = tok(PHRASE, add_special_tokens=False)["input_ids"]
    poisoned = _train(live, engine, prompts, phrase * 8)
    terse = _train(live, engine, prompts, [engine.end_id])
    _, files = causal_lm_files(live, tok)
    return {"tok": tok, "prompts": prompts, "files": files, "live": _numpy(live), "poisoned": _numpy(poisoned),
            "terse": _numpy(terse), "engine": engine}


def _gate(tmp_path, world, start: str = "live", **values) -> tuple[Gate, PolicyRegistry]:
    registry = PolicyRegistry(tmp_path / "registry")
    gate = Gate(registry, GeneratorKind(world["prompts"], liked, SAMPLES), generator_gate(values),
                publisher=FakePublisher(registry))
    assert gate.bootstrap(P, world[start], world["files"])["decision"] == "initial"
    return gate, registry


def _stage(registry, version: int, name: str) -> dict:
    (found,) = [s for s in registry.get(P, version).gate["stages"] if s["stage"] == name]
    return found


def test_a_candidate_identical_to_live_passes_the_bounds(tmp_path, world):
    gate, registry = _gate(tmp_path, world)
    out = gate.submit(P, world["live"], world["files"], {})
    assert out["decision"] == "promote", out["reason"]
    assert [s["stage"] for s in registry.get(P, out["version"]).gate["stages"]] == ["heldout", "bounds"]
    bounds = _stage(registry, out["version"], "bounds")
    assert bounds["reference"] == 1 and abs(bounds["candidate"]["kl"]) < 1e-3
    assert {k: bounds["candidate"][k] for k in ("repetition", "length")} == \
        {k: bounds["live"][k] for k in ("repetition", "length")}
    assert bounds["candidate"]["length"] > 1 and "within the reward-hacking bounds" in bounds["reason"]


@pytest.mark.parametrize("bounds,caught", [
    ({}, {"kl", "repetition"}),  # the defaults: both bounds are past
    ({"max_kl": None}, {"repetition"}),
    ({"max_repetition": None}, {"kl"}),
])
def test_a_poisoned_candidate_is_refused_by_the_bound_that_caught_it_not_by_its_reward(tmp_path, world, bounds,
                                                                                          caught):
    gate, registry = _gate(tmp_path, world, bounds=bounds)
    out = gate.submit(P, world["poisoned"], world["files"], {})
    assert out["decision"] == "refuse", out["reason"]
    version = registry.get(P, out["version"])
    # the reward: the held-out stage measured it well above live's and let it through
    assert version.metrics["heldout_accuracy"] > version.metrics["parent_heldout_accuracy"] + 0.3
    assert _stage(registry, out["version"], "heldout")["decision"] == "promote"
    # the refusal: the bounds stage's, naming each bound it broke and only those
    refused = _stage(registry, out["version"], "bounds")
    assert refused["decision"] == "refuse" and set(refused["broken"]) == caught, (refused["candidate"], refused["live"])
    for name in caught:
        assert f"> max_{name}" in out["reason"]
    figures = refused["candidate"]
    if "kl" in caught:
        assert figures["kl"] > 0.5 and abs(refused["live"]["kl"]) < 1e-3
    if "repetition" in caught:
        assert figures["repetition"] > 0.5 > refused["live"]["repetition"]
    assert registry.latest(P, "live").version == 1


@pytest.mark.parametrize("start,candidate,bounds,said", [
    ("live", "terse", {"min_length": 4}, "< min_length 4"),
    ("terse", "live", {"max_length": 6}, "> max_length 6"),
])
def test_a_candidate_past_a_length_bound_is_refused_naming_length(tmp_path, world, start, candidate, bounds, said):
    gate, registry = _gate(tmp_path, world, start=start, bounds={"max_kl": None, **bounds})
    out = gate.submit(P, world[candidate], world["files"], {})
    assert out["decision"] == "refuse" and said in out["reason"], out["reason"]
    refused = _stage(registry, out["version"], "bounds")
    assert refused["broken"] == ["length"]
    assert (refused["candidate"]["length"] < 4) == (candidate == "terse")


def _logged(world, n_prompts: int = 12, n: int = 8) -> list[dict]:
    """Live's completions of the prompts, sampled (temperature 0.9, top-p 0.95), rated by the rule,
    held back for the gate as the joiner hands them over."""
    engine = world["engine"]
    drawn = engine.generate(world["prompts"][:n_prompts], Sampling(n=n, max_new_tokens=12, temperature=0.9,
                                                                   top_p=0.95, seed=7))
    items = []
    for prompt, completions in zip(world["prompts"], drawn):
        for i, c in enumerate(completions):
            reward = liked([prompt], [c.text])[0] + (0.5 if i % 2 else 0.0)  # the rule alone is 0 on most
            row = {"policy_version": 1, "prompt": prompt, "prompt_ids": c.prompt_ids, "token_ids": c.token_ids,
                   "sampling_logprobs": c.sampling_logprobs, "temperature": 0.9, "top_p": 0.95,
                   "feedback": "reward", "reward": reward, "thumbs_up": None}
            items.append({"type": "feedback", "row": row, "client": f"u{i}", "slice": "ope"})
    return items


def test_the_off_policy_estimate_of_live_on_its_own_logged_completions_is_its_on_policy_mean(tmp_path, world):
    gate, registry = _gate(tmp_path, world, stages=["heldout", "ope", "bounds"],
                           ope={"min_rows": 50, "min_ess": 10})
    items = _logged(world)
    assert gate.evidence(P, items)["taken"]["ope"] == len(items) == 96
    out = gate.submit(P, world["live"], world["files"], {})
    assert out["decision"] == "promote", out["reason"]
    ope = _stage(registry, out["version"], "ope")
    on_policy = float(np.mean([it["row"]["reward"] for it in items]))
    assert ope["candidate"] == pytest.approx(on_policy, abs=1e-3) and ope["live"] == pytest.approx(on_policy, abs=1e-3)
    assert ope["candidate_ci"][0] <= on_policy <= ope["candidate_ci"][1]
    assert ope["ess"] > 95 and abs(ope["diff"]) < 1e-3 and ope["method"] == "snips"


def test_the_off_policy_estimate_moves_with_the_candidate(world):
    """The poisoned candidate would rarely have drawn live's completions: its weights collapse (ESS)."""
    kind = GeneratorKind(world["prompts"], liked, SAMPLES)
    live = kind.load(world["live"], world["files"])
    poisoned = kind.load(world["poisoned"], world["files"])
    rows = [kind.read(it).logged for it in _logged(world)]
    cfg = generator_gate({"ope": {"max_weight": None}}).ope
    c, l, d, said = kind.off_policy(poisoned, lambda: live, rows, cfg, seed=0)
    assert l.ess > 95 and c.ess < 0.5 * l.ess and "ess" in said


def test_a_generator_refuses_a_gate_it_cannot_serve(tmp_path, world):
    kind, registry = GeneratorKind(world["prompts"], liked, SAMPLES), PolicyRegistry(tmp_path / "registry")
    with pytest.raises(GateError, match="gate.test"):
        Gate(registry, kind, GateSection(stages=["heldout"]), publisher=FakePublisher(registry))
    with pytest.raises(GateError, match="gate.ope.method"):
        Gate(registry, kind, generator_gate({"stages": ["ope"], "ope": {"method": "dr"}}),
             publisher=FakePublisher(registry))
    with pytest.raises(GateError, match="'bounds' needs completions"):
        from gate.kinds.text import TextKind

        Gate(registry, TextKind([("text", 0)]), GateSection(stages=["bounds"]), publisher=FakePublisher(registry))


def test_live_evidence_is_read_from_completion_rows(tmp_path, world):
    """A rating's score (reward, else thumbs; a preference none), a bad logged row refused alone, and
    the greedy answers a plug-in stage may time."""
    gate, _ = _gate(tmp_path, world)
    kind = gate.kind
    (good,) = _logged(world, n_prompts=1, n=1)
    thumbs = {**good, "row": {**good["row"], "reward": None, "thumbs_up": True, "feedback": "thumbs"}}
    preference = {**good, "row": {**good["row"], "reward": None, "thumbs_up": None, "feedback": "preference"}}
    bad = {**good, "row": {**good["row"], "sampling_logprobs": good["row"]["sampling_logprobs"][:-1]}}
    assert kind.read(thumbs).score == 1.0 and kind.read(thumbs).logged is not None
    assert kind.read(preference).score is None and kind.read(preference).logged is None
    out = gate.evidence(P, [good, thumbs, preference, bad])
    assert out["items"] == 3 and out["refused"] == 1
    greedy = kind.answer(kind.load(world["live"], world["files"]), world["prompts"][:3])
    assert len(greedy) == 3 and list(greedy) == list(kind.answer(kind.load(world["live"], world["files"]),
                                                                 world["prompts"][:3]))
