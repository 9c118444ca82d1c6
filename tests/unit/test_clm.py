"""Next-token pretraining without a cluster: the objective's loss, learning and state, the unigram
baseline, the causal model's config and directories, and a version loaded back from the registry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from transformers import GPT2Config, GPT2LMHeadModel

from core.config.clm import CLMSection
from core.data.clm import prepare_clm_data, unigram_counts, unigram_perplexity
from core.models.causal_lm import (
    ModelError,
    decode,
    export_weights,
    gpt2_config,
    load_causal_lm,
    prompt_ids,
    sample_continuations,
)
from core.models.tokenizer import train_wordpiece
from core.storage.registry import PolicyRegistry
from learners.clm import CLMObjective, CLMSetup, NextTokenLoss
from learners.objective import WorkerContext

V, T = 40, 16
TEXTS = [f"今天天气很好，我们去公园散步{i}次。这家酒店的服务不错，房间干净" for i in range(300)]


def _tiny_config(**over) -> GPT2Config:
    return GPT2Config(vocab_size=V, n_positions=T, n_embd=32, n_layer=2, n_head=2, n_inner=64, bos_token_id=3,
                      eos_token_id=3, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **over)


def _objective(heldout, **clm) -> CLMObjective:
    setup = CLMSetup(
        clm=CLMSection(**{"seq_len": T, "warmup_steps": 5, "decay_steps": 300, "eval_sequences": 32,
                          "cpu_bf16": "off", "lr": 3e-3, **clm}),
        model_config=_tiny_config().to_dict(), pretrained_dir=None, tokenizer_files={}, heldout=heldout,
        info={"corpus": "test"})
    obj = CLMObjective()
    obj.setup(setup, WorkerContext())
    return obj


def _counting(n, seed=0):
    """Blocks where each token is the one before it plus one (mod the ids 5..V-1): the next token
    is certain from context, while every id is about equally frequent (unigram perplexity ~ V - 5)."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, V - 5, size=(n, 1))
    blocks = (5 + (start + np.arange(T)) % (V - 5)).astype(np.int32)
    blocks[:, 0] = 3
    return blocks


# ---- the objective ---------------------------------------------------------------------------------
def test_the_loss_is_cross_entropy_of_each_position_against_the_next_id():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(_tiny_config()).eval()
    ids = torch.randint(5, V, (3, T))
    loss, correct = NextTokenLoss(model)(ids)
    logits = model(input_ids=ids).logits
    by_hand = torch.stack([-torch.log_softmax(logits[b, t], -1)[ids[b, t + 1]]
                           for b in range(3) for t in range(T - 1)]).mean()
    assert torch.allclose(loss, by_hand, atol=1e-5)
    assert torch.allclose(loss, model(input_ids=ids, labels=ids).loss, atol=1e-5)  # transformers' own shift
    assert int(correct) == int((logits[:, :-1].argmax(-1) == ids[:, 1:]).sum())


def test_learns_the_next_token_far_below_the_unigram_perplexity():
    heldout = _counting(32, seed=1)
    obj = _objective(heldout)
    before = obj.evaluate()
    data = torch.from_numpy(_counting(1024)).long()
    for i in range(200):
        m = obj.step(data[(i * 16) % 1024 : (i * 16) % 1024 + 16])
    after = obj.evaluate()
    unigram = unigram_perplexity(_counting(1024).astype(np.int64), heldout[:, 1:], V)
    assert before["perplexity"] > 0.5 * unigram  # a fresh model is no better than counting
    assert after["perplexity"] < 0.2 * unigram, (after, unigram)
    assert after["next_token_accuracy"] > 0.8 and after["eval_predicted"] == 32 * (T - 1)
    assert m["tokens"] == 16 * T and m["predicted"] == 16 * (T - 1) and m["lr"] > 0


def test_evaluation_is_deterministic_and_the_state_round_trips():
    data = torch.from_numpy(_counting(64)).long()
    a = _objective(_counting(8))
    assert a.evaluate() == a.evaluate()
    for i in range(3):
        a.step(data[i * 8 : i * 8 + 8])
    b = _objective(_counting(8))
    b.load_state_dict(a.state_dict())
    ma, mb = a.step(data[40:48]), b.step(data[40:48])
    assert ma["loss"] == pytest.approx(mb["loss"]) and ma["lr"] == mb["lr"]


# ---- the unigram baseline --------------------------------------------------------------------------
def test_unigram_perplexity_with_add_one_smoothing():
    train = np.array([[9, 0, 0, 1], [9, 0, 2, 2]])  # targets (positions 1..): 0 x3, 1 x1, 2 x2; 3 never
    assert unigram_counts(train, 4).tolist() == [3, 1, 2, 0]
    probs = np.array([4, 2, 3, 1]) / (6 + 4)  # (count + 1) / (total + vocab)
    targets = np.array([[0, 3], [2, 2]])
    expected = math.exp(-np.mean(np.log(probs[[0, 3, 2, 2]])))
    assert unigram_perplexity(train, targets, 4) == pytest.approx(expected)
    # every id equally frequent: the perplexity is the vocabulary's size
    assert unigram_perplexity(np.array([[9, 0, 1, 2, 3]]), np.array([[1, 2]]), 4) == pytest.approx(4.0)


def test_prepared_data_packs_texts_after_the_end_token_and_scores_the_unigram_baseline(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(TEXTS), encoding="utf-8")
    cfg = CLMSection(corpus={"source": "file", "path": str(corpus), "heldout_fraction": 0.2},
                     tokenizer={"vocab_size": 100, "min_frequency": 1}, seq_len=T, eval_sequences=4,
                     model={"num_layers": 1, "hidden_size": 16, "num_heads": 2, "intermediate_size": 32})
    data = prepare_clm_data(cfg, tokenizer_dir=tmp_path / "tok")
    end = data.tokenizer.sep_token_id
    config = data.model_config
    assert config.bos_token_id == config.eos_token_id == end and config.n_positions == T
    assert config.vocab_size == len(data.tokenizer) and (data.train_blocks[:, 0] == end).all()
    assert data.bounds == (end, end)  # what live text from replay is packed with too
    targets = data.heldout_blocks[:4, 1:]
    assert data.facts["heldout_targets"] == targets.size
    assert data.facts["unigram_perplexity"] == pytest.approx(
        unigram_perplexity(data.train_blocks, targets, config.vocab_size))
    assert (tmp_path / "tok" / "tokenizer.json").is_file()  # kept for a resumed run


# ---- config and model directories ------------------------------------------------------------------
def test_config_defaults_and_refusals():
    cfg = CLMSection()
    assert cfg.kind == "clm" and cfg.policy_id == "lm" and cfg.samples.prompts and cfg.model.preset == "cpu-small"
    for bad in ({"samples": {"top_p": 0}}, {"samples": {"temperature": 0}}, {"policy_id": "a b"},
                {"model": {"position_bias": "alibi"}}, {"mask_prob": 0.15}, {"samples": {"prompts": ["x"] * 17}}):
        with pytest.raises(ValidationError):
            CLMSection(**bad)


def test_a_shape_the_heads_do_not_divide_is_refused():
    with pytest.raises(ModelError, match="not a multiple of num_heads"):
        gpt2_config(CLMSection(model={"hidden_size": 30, "num_heads": 4}).model, 100, 3, 3, 0, 16)


def _write_gpt2(path, tok, vocab_size=None):
    GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size or len(tok), n_positions=T, n_embd=16, n_layer=1, n_head=2,
                               bos_token_id=tok.sep_token_id, eos_token_id=tok.sep_token_id)).save_pretrained(path)
    tok.save_pretrained(path)


def _cfg(tmp_path, model_dir, **extra):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(TEXTS), encoding="utf-8")
    return CLMSection(corpus={"source": "file", "path": str(corpus), "heldout_fraction": 0.2}, seq_len=T,
                      model={"pretrained_dir": str(model_dir)}, eval_sequences=4, **extra)


def test_a_pretrained_causal_lm_directory_brings_its_tokenizer_and_trains(tmp_path):
    tok = train_wordpiece(TEXTS, vocab_size=100, min_frequency=1)
    _write_gpt2(tmp_path / "gpt", tok)
    cfg = _cfg(tmp_path, tmp_path / "gpt")
    data = prepare_clm_data(cfg)
    assert data.facts["tokenizer"] == f"pretrained:{tmp_path / 'gpt'}" and data.model_config.model_type == "gpt2"
    setup = CLMSetup(clm=cfg, model_config={}, pretrained_dir=str(tmp_path / "gpt"),
                     tokenizer_files=data.tokenizer_files(), heldout=data.heldout_blocks, info={})
    obj = CLMObjective()
    obj.setup(setup, WorkerContext())
    assert obj.step(torch.from_numpy(data.train_blocks[:4]).long())["loss"] > 0


@pytest.mark.parametrize("case, match", [
    ("missing", "no config.json: not a pretrained model directory"),
    ("bert", "a BertForMaskedLM, not a causal language model"),
    ("no_safetensors", "no model.safetensors: only safetensors weights are read"),
    ("small_vocab", "exceeds the model's embedding table"),
])
def test_a_bad_pretrained_dir_is_one_clear_error(tmp_path, case, match):
    from core.models.causal_lm import load_pretrained_causal_lm
    from tests.unit.test_text_tokenizer import _write_pretrained

    tok = train_wordpiece(TEXTS, vocab_size=100, min_frequency=1)
    path = tmp_path / "model"
    if case == "bert":
        _write_pretrained(path, vocab_size=len(tok))
        tok.save_pretrained(path)
    elif case == "no_safetensors":
        _write_gpt2(path, tok)
        (path / "model.safetensors").unlink()
        (path / "pytorch_model.bin").write_bytes(b"not a checkpoint")
    elif case == "small_vocab":
        _write_gpt2(path, tok, vocab_size=len(tok) - 1)
    with pytest.raises(ModelError, match=match) as err:
        prepare_clm_data(_cfg(tmp_path, path))  # before Ray starts
    assert "\n" not in str(err.value)
    if case in ("missing", "bert", "no_safetensors"):
        with pytest.raises(ModelError, match=match):
            load_pretrained_causal_lm(path)  # and where a worker loads it


# ---- a published version, loaded back -----------------------------------------------------------
def test_a_published_version_loads_in_one_call_and_generates(tmp_path):
    tok = train_wordpiece(TEXTS, vocab_size=100, min_frequency=1)
    cfg = CLMSection(seq_len=T, model={"num_layers": 1, "hidden_size": 16, "num_heads": 2, "intermediate_size": 32})
    end = tok.sep_token_id
    config = gpt2_config(cfg.model, len(tok), end, end, tok.pad_token_id, positions=T)
    from core.models.tokenizer import tokenizer_files

    setup = CLMSetup(clm=cfg, model_config=config.to_dict(), pretrained_dir=None,
                     tokenizer_files=tokenizer_files(tok), heldout=np.zeros((1, T), np.int32), info={})
    obj = CLMObjective()
    obj.setup(setup, WorkerContext())
    policy = obj.export_policy()
    assert "lm_head.weight" not in policy.weights  # tied to the embedding: stored once
    assert set(export_weights(obj.model)) == set(policy.weights)
    registry = PolicyRegistry(tmp_path / "registry")
    version = registry.publish("lm", policy.weights, {"metrics": {"perplexity": 1.0}}, files=policy.files)

    model, loaded_tok = load_causal_lm(tmp_path / "registry", "lm", version)
    ids = torch.from_numpy(np.asarray([prompt_ids(model, loaded_tok, "今天天气")] * 2))
    assert ids[0, 0] == end
    assert torch.allclose(model(ids).logits, obj.model.eval()(ids).logits, atol=1e-5)
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()  # tied again
    a = sample_continuations(model, loaded_tok, ["今天", "这家酒店"], max_new_tokens=8, seed=3)
    assert a == sample_continuations(model, loaded_tok, ["今天", "这家酒店"], max_new_tokens=8, seed=3)
    assert len(a) == 2 and all(isinstance(t, str) for t in a)
    # a prompt that fills the model's context gets no continuation rather than an error
    assert sample_continuations(model, loaded_tok, ["今" * (T + 4)], max_new_tokens=8) == [""]


def test_decoding_joins_chinese_characters_and_keeps_latin_words_apart():
    tok = train_wordpiece(TEXTS + ["hello world 2008年"], vocab_size=200, min_frequency=1)
    ids = tok("今天天气很好 hello world", add_special_tokens=False)["input_ids"]
    assert decode(tok, ids) == "今天天气很好hello world"
