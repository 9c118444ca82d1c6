"""Pair inputs in core and the learner, without Ray: BERT's encoding, the wide hashing, the data, the batches."""

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from core.config.data import DataSection
from core.data.labeled import load_labeled
from core.data.schemas import feedback_schema
from core.models.classifier import encode, from_encoder, from_version
from core.data.inputs import as_input, input_key, inputs_from_columns, split_input
from core.models.tokenizer import tokenizer_files, train_wordpiece
from core.models.wide import HashedNgrams, WidePart, hash_ngrams
from learners.feedback_source import feedback_to_batch

CORPUS = ["今天天气很好", "我们去公园玩", "明天下雨了", "他们在家看书", "hello world"] * 6


@pytest.fixture(scope="module")
def tok():
    return train_wordpiece(CORPUS, vocab_size=200, min_frequency=1)


def _bundle(tok, pairs: bool):
    config = {"vocab_size": len(tok), "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 32, "max_position_embeddings": 64, "pad_token_id": tok.pad_token_id}
    files = {**tokenizer_files(tok), "config.json": json.dumps(config).encode()}
    return from_encoder(None, files, ["next", "same_article", "other_article"], max_len=16, pairs=pairs)


def test_a_pair_is_cls_a_sep_b_sep_with_token_types(tok):
    ids, mask, types = encode(tok, [("今天天气", "我们去")], 32)
    tokens = tok.convert_ids_to_tokens(ids[0].tolist())
    assert tokens == ["[CLS]", "今", "天", "天", "气", "[SEP]", "我", "们", "去", "[SEP]"]
    assert types[0].tolist() == [0] * 6 + [1] * 4  # the first [SEP] closes side 0
    assert mask[0].tolist() == [1] * 10


def test_truncation_keeps_both_sides_cutting_the_longer_first(tok):
    long_a, short_b = "今天天气很好" * 10, "我们去"
    ids, _, types = encode(tok, [(long_a, short_b)], 12)
    tokens = tok.convert_ids_to_tokens(ids[0].tolist())
    assert len(tokens) == 12 and tokens.count("[SEP]") == 2
    assert tokens[-4:] == ["我", "们", "去", "[SEP]"]  # the short side survives whole
    ids, _, types = encode(tok, [(long_a, long_a)], 12)
    side = types[0].tolist()
    assert side.count(0) - 2 >= 4 and side.count(1) - 1 >= 4  # 9 tokens of text: 4 and 5, one side each


def test_texts_and_pairs_share_a_batch(tok):
    ids, mask, types = encode(tok, [("今天", "明天"), "hello world"], 16)
    assert ids.shape == mask.shape == types.shape and int(types[1].sum()) == 0


def test_token_types_change_the_deep_model_and_pairs_survive_a_round_trip(tok):
    bundle = _bundle(tok, pairs=True)
    bundle.model.eval()
    ids, mask, types = bundle.encode([("今天天气", "我们去")])
    with torch.no_grad():
        assert not torch.allclose(bundle.model(ids, mask, types), bundle.model(ids, mask))
    again = from_version(bundle.weights(), bundle.files())
    assert again.pairs and json.loads(bundle.files()["labels.json"])["inputs"] == "pairs"
    inputs = [("今天天气", "我们去"), ("明天下雨了", "他们在家看书")]
    assert np.allclose(again.predict_proba(inputs), bundle.predict_proba(inputs), atol=1e-6)
    assert not from_version(_bundle(tok, False).weights(), _bundle(tok, False).files()).pairs


def test_wide_hashing_keeps_single_texts_and_salts_each_side():
    f = HashedNgrams(2**16)
    assert np.array_equal(f.buckets_of("今天好"), hash_ngrams("今天好", 2**16))  # old versions still read
    a_side = hash_ngrams("今天好", 2**16)
    pair = f.buckets_of(("今天好", "今天好"))
    # both sides and every shared n-gram (all 5 of them): 15 buckets, the second side apart from the first
    assert len(pair) == 15 and not set(f.buckets_of(("x", "今天好"))[1:]) & set(a_side)
    unrelated = f.buckets_of(("今天好", "明年坏"))
    assert len(unrelated) == 10  # no n-gram in common: no shared side
    ids, offsets, values = f([("今天好", "明年坏"), "今天好"])
    assert offsets.tolist() == [0, 10]


def test_pair_overlap_bins_say_how_much_the_sides_share():
    f = HashedNgrams(2**16, 1, 2, overlap_bins=4)
    same, apart, half = (f.sides_of(p)[3] for p in (("今天好", "今天好"), ("今天好", "明年坏"), ("今天好", "今天坏")))
    assert len(same) == 4  # unigrams and bigrams, each way: one bin each
    assert set(same).isdisjoint(apart) and set(half).isdisjoint(same) and set(half).isdisjoint(apart)
    assert np.array_equal(f.sides_of(("今天好", "明天坏"))[3], f.sides_of(("我们走", "他们来"))[3])  # same shares
    assert len(HashedNgrams(2**16).sides_of(("今天好", "今天好"))) == 3  # no bins: the three sides as before


def test_side_norm_gives_each_side_unit_norm_and_joint_one_norm_over_all():
    pair = ("今天天气很好我们去公园散步吧", "好")
    for norm, expect in (("side", [1.0, 1.0, 1.0]), ("joint", None)):
        ids, _, values = HashedNgrams(2**20, 1, 2, pair_norm=norm)([pair])
        sides = HashedNgrams(2**20, 1, 2).sides_of(pair)
        # the distinct buckets of each side, in order (2**20 buckets: no collisions in this pair)
        sizes = [len(np.unique(side)) for side in sides]
        parts = np.split(values.numpy(), np.cumsum(sizes)[:-1]) if norm == "side" else [values.numpy()]
        norms = [float(np.sqrt((v * v).sum())) for v in parts]
        assert norms == pytest.approx(expect if expect is not None else [1.0])
    text = HashedNgrams(2**16, pair_norm="side")(["今天好"])
    assert torch.equal(text[2], HashedNgrams(2**16)(["今天好"])[2])  # a single text reads alike


def test_a_version_written_before_the_pair_keys_keeps_its_features():
    from core.models.wide import WIDE_FILE, wide_from_files

    old = {WIDE_FILE: json.dumps({"kind": "wide", "combine": "sum", "buckets": 64, "ngram_min": 1,
                                  "ngram_max": 2, "num_labels": 3}).encode()}
    features = wide_from_files(old).features
    assert (features.pair_norm, features.overlap_bins) == ("joint", 0)
    new = WidePart(3, "wide", "sum", 64, 1, 2, "side", 8)
    assert (wide_from_files(new.files()).features.pair_norm, wide_from_files(new.files()).features.overlap_bins) == ("side", 8)


def test_pair_data_from_a_file(tmp_path):
    path = tmp_path / "pairs.csv"
    rows = [("句子%d" % i, "回答%d" % (i % 7), ["yes", "no", "maybe"][i % 3]) for i in range(60)]
    rows.append(("句子0", "回答0", "yes"))  # the same pair again: dropped
    path.write_text("premise,hypothesis,y\n" + "".join(f"{a},{b},{y}\n" for a, b, y in rows), encoding="utf-8")
    data = load_labeled(str(path), "premise", "y", 0.2, text_pair_column="hypothesis")
    assert data.pairs and data.labels == ["maybe", "no", "yes"]
    assert len(data.train) + len(data.heldout) == 60
    assert all(isinstance(x, tuple) and len(x) == 2 for x, _ in data.train + data.heldout)
    assert not {x for x, _ in data.train} & {x for x, _ in data.heldout}
    with pytest.raises(Exception, match="no column 'nope'"):
        load_labeled(str(path), "premise", "y", 0.2, text_pair_column="nope")


def test_builtin_pairs_need_the_pair_column():
    with pytest.raises(ValueError, match="text_pair_column: text_pair"):
        DataSection(builtin="people_daily_pairs")
    with pytest.raises(ValueError, match="single texts"):
        DataSection(text_pair_column="b")
    assert DataSection(builtin="people_daily_pairs", text_pair_column="text_pair").builtin == "people_daily_pairs"


def test_input_helpers():
    assert as_input("a") == "a" and as_input("a", "b") == ("a", "b")
    assert split_input(("a", "b")) == ("a", "b") and split_input("a") == ("a", None)
    assert inputs_from_columns(["a", "c"], ["b", None]) == [("a", "b"), "c"]
    assert inputs_from_columns(["a"], None) == ["a"] and input_key(("a", "b")) != input_key("ab")


def _feedback_batch(pairs: list) -> pa.RecordBatch:
    schema = feedback_schema()
    n = len(pairs)
    cols = {"id": [f"f{i}" for i in range(n)], "table": ["feedback"] * n, "source": ["feedback"] * n,
            "actor_id": ["s"] * n, "policy_id": ["p"] * n, "policy_version": [1] * n,
            "created_at": pa.array([0] * n, pa.timestamp("us", tz="UTC")), "event_id": [f"e{i}" for i in range(n)],
            "text": [f"a{i}" for i in range(n)], "prediction": [0] * n, "probs": [[0.5, 0.5]] * n,
            "label": [1] * n, "reward": [None] * n, "propensity": [1.0] * n, "action_probs": [None] * n,
            "text_pair": pairs}
    return pa.RecordBatch.from_pydict(cols, schema=schema)


def test_feedback_batches_carry_the_pair_and_old_rows_read_as_texts():
    rb = _feedback_batch(["b0", None])
    assert feedback_to_batch(rb).text == [("a0", "b0"), "a1"]
    old = rb.drop_columns(["text_pair"])  # a segment written before the column existed
    assert feedback_to_batch(old).text == ["a0", "a1"]


def test_batches_by_length_answer_each_input_in_its_own_place(tok):
    bundle = _bundle(tok, pairs=True)
    inputs = ["今天天气很好" * 3, ("明天", "我们去公园玩"), "hello", ("他们在家看书" * 2, "今天"), "明天下雨了"]
    one_by_one = np.concatenate([bundle.predict_proba([x]) for x in inputs])
    assert np.allclose(bundle.predict_proba(inputs, batch=2), one_by_one, atol=1e-5)
    features = bundle.pooled_features(inputs, batch=2)
    assert np.allclose(features, np.concatenate([bundle.pooled_features([x]) for x in inputs]), atol=1e-5)
    assert bundle.predict_proba([]).shape == (0, 3)
