"""The MLM objective without a cluster: masking statistics, masked-only projection, learning, state."""

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertModel

from core.config.mlm import MLMSection
from learners.mlm import MaskedOnlyMLM, MLMObjective, MLMSetup, choose_masks
from learners.objective import WorkerContext

V, T = 50, 16
SPECIAL = dict(pad=0, unk=1, cls=2, sep=3, mask=4)


def _special_table():
    t = torch.zeros(V, dtype=torch.bool)
    t[:5] = True
    return t


def test_masking_rates_80_10_10_and_specials_untouched():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, V, (256, 128))
    ids[:, 0], ids[:, 64] = 2, 3
    out, pos, labels = choose_masks(ids, _special_table(), V, 4, gen)
    flat_in, flat_out = ids.flatten(), out.flatten()
    assert abs(len(pos) / (ids.numel() - 512) - 0.15) < 0.01
    assert not _special_table()[flat_in[pos]].any()  # never chose [CLS]/[SEP]
    assert (labels == flat_in[pos]).all()
    masked = (flat_out[pos] == 4).float().mean()
    kept = (flat_out[pos] == flat_in[pos]).float().mean()
    assert abs(masked - 0.8) < 0.02 and 0.09 < kept < 0.13  # 10% kept (+ random hits of the same id)
    untouched = torch.ones(ids.numel(), dtype=torch.bool)
    untouched[pos] = False
    assert (flat_out[untouched] == flat_in[untouched]).all()
    assert not _special_table()[flat_out].logical_and(flat_out != 2).logical_and(flat_out != 3).logical_and(flat_out != 4).any()


def test_masking_always_chooses_something():
    ids = torch.tensor([[2, 7, 3]])
    _, pos, _ = choose_masks(ids, _special_table(), V, 4, torch.Generator().manual_seed(0), mask_prob=1e-9)
    assert pos.tolist() == [1]


def _tiny_config():
    return BertConfig(vocab_size=V, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      max_position_embeddings=T, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def test_masked_only_projection_equals_the_full_head():
    torch.manual_seed(0)
    model = BertForMaskedLM(_tiny_config()).eval()
    ids = torch.randint(5, V, (3, T))
    inputs, pos, labels = choose_masks(ids, _special_table(), V, 4, torch.Generator().manual_seed(1))
    loss, logits = MaskedOnlyMLM(model)(inputs, pos, labels)
    full = model(input_ids=inputs).logits.reshape(-1, V)[pos]
    assert torch.allclose(logits, full, atol=1e-5)
    ref = torch.nn.functional.cross_entropy(full, labels)
    assert torch.allclose(loss, ref, atol=1e-5)


def _objective(heldout, **mlm):
    setup = MLMSetup(
        mlm=MLMSection(**{"seq_len": T, "warmup_steps": 5, "decay_steps": 200, "eval_sequences": 32, "cpu_bf16": "off",
                         "lr": 3e-3, **mlm}),
        model_config=_tiny_config().to_dict(),
        pretrained_dir=None,
        tokenizer_files={"tokenizer.json": b"{}"},
        special_ids=SPECIAL,
        heldout=heldout,
        info={"corpus": "test"},
    )
    obj = MLMObjective()
    obj.setup(setup, WorkerContext())
    return obj


def _patterned(n, seed=0):
    """Sequences with learnable structure: one token repeated, so any visible token names the masked ones."""
    rng = np.random.default_rng(seed)
    blocks = np.repeat(rng.integers(5, V, size=(n, 1)), T, axis=1).astype(np.int32)
    blocks[:, 0] = 2
    return blocks


def test_learns_held_out_structure():
    obj = _objective(_patterned(32, seed=1))
    before = obj.evaluate()
    data = torch.from_numpy(_patterned(512)).long()
    for i in range(300):
        m = obj.step(data[(i * 16) % 512 : (i * 16) % 512 + 16])
    after = obj.evaluate()
    assert before["masked_accuracy"] < 0.2
    assert after["masked_accuracy"] > 0.6, after
    assert after["eval_loss"] < before["eval_loss"] and after["perplexity"] < before["perplexity"]
    assert m["tokens"] == 16 * T and m["masked"] > 0 and m["lr"] > 0


def test_evaluation_is_deterministic():
    obj = _objective(_patterned(8))
    assert obj.evaluate() == obj.evaluate()


def test_state_round_trip_continues_identically():
    data = torch.from_numpy(_patterned(64)).long()
    a = _objective(_patterned(4))
    for i in range(3):
        a.step(data[i * 8 : i * 8 + 8])
    state = a.state_dict()
    b = _objective(_patterned(4))
    b.load_state_dict(state)
    ma, mb = a.step(data[40:48]), b.step(data[40:48])
    assert ma["loss"] == pytest.approx(mb["loss"]) and ma["lr"] == mb["lr"]


def test_warmup_then_decay():
    obj = _objective(_patterned(4))
    lrs = [obj._lr_factor(s) for s in (0, 4, 5, 100, 200, 1000)]
    assert lrs[0] < lrs[1] <= 1.0 and lrs[2] == 1.0
    assert lrs[3] < 1.0 and lrs[4] == pytest.approx(0.05) and lrs[5] == pytest.approx(0.05)


def test_export_policy_is_a_bert_encoder():
    from safetensors.torch import load

    obj = _objective(_patterned(4))
    policy = obj.export_policy()
    encoder = BertModel(_tiny_config(), add_pooling_layer=False)
    encoder.load_state_dict(policy.weights)  # strict: names and shapes fit
    assert {"tokenizer.json", "config.json", "mlm_head.safetensors"} <= set(policy.files)
    assert "predictions.transform.dense.weight" in load(policy.files["mlm_head.safetensors"])
    assert policy.info == {"corpus": "test"}


def test_evaluation_reports_both_maskings():
    obj = _objective(_patterned(32, seed=1), eval_masking="strict")
    figures = obj.evaluate()
    assert figures["masked_accuracy"] == figures["strict_masked_accuracy"]
    assert {"bert_masked_accuracy", "perplexity", "eval_loss", "strict_eval_loss"} <= set(figures)


def test_cpu_bf16_modes():
    from learners.mlm import _cpu_bf16

    assert _cpu_bf16("on") is True and _cpu_bf16("off") is False
    assert isinstance(_cpu_bf16("auto"), bool)


def test_sequence_length_warmup_cuts_blocks_then_trains_at_full_length():
    obj = _objective(_patterned(4), short_seq_len=4, short_seq_steps=2)
    data = torch.from_numpy(_patterned(16)).long()
    seen = []
    real_core = obj.train_core
    obj.train_core = lambda inputs, pos, labels: (seen.append(tuple(inputs.shape)), real_core(inputs, pos, labels))[1]
    for i in range(3):
        m = obj.step(data[i * 4 : i * 4 + 4])
        assert m["tokens"] == 4 * T  # the same tokens per step in both phases
    assert seen == [(16, 4), (16, 4), (4, T)]
    # the phase follows the step count, so a resumed run picks up where it was
    b = _objective(_patterned(4), short_seq_len=4, short_seq_steps=2)
    b.load_state_dict(obj.state_dict())
    assert b._cut_short(data[:4]).shape == (4, T)
    assert _objective(_patterned(4), short_seq_len=5, short_seq_steps=1)._cut_short(data[:2]).shape == (6, 5)
