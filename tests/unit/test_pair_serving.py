"""Pairs through serving without Ray: request shapes and their 4xx, events, joined rows, the replay export."""

import datetime as dt
import json
from types import SimpleNamespace

import pyarrow as pa
import pytest

from actors.pair_traffic import predict_body
from core.config.replay import ReplaySection
from core.replay.offline import read_table
from core.replay.segments import SegmentLog
from core.data.schemas import feedback_schema, text_schema, to_record_batch
from core.models.classifier import from_encoder
from core.models.tokenizer import tokenizer_files, train_wordpiece
from serving.classify import Served, classify
from serving.join import EventJoin, FeedbackRejected, to_columns
from serving.requests import MAX_TEXTS, check_inputs_fit, grpc_inputs, parse_json, parse_predict

LABELS = ["next", "same_article", "other_article"]


def _status(fn, *args) -> tuple[int, str]:
    with pytest.raises(FeedbackRejected) as info:
        fn(*args)
    return info.value.status, info.value.detail


def test_pair_request_shapes():
    assert parse_predict({"text": "前", "text_pair": "后"}, 10) == ([("前", "后")], True)
    assert parse_predict({"pairs": [["a", "b"], ["c", "d"]]}, 10) == ([("a", "b"), ("c", "d")], False)
    assert parse_predict({"text": "a"}, 10) == (["a"], True)  # one text stays one text


@pytest.mark.parametrize(
    "body, status, words",
    [
        ({"text_pair": "b"}, 422, "either 'text'"),
        ({"texts": ["a"], "text_pair": "b"}, 422, "'text_pair' goes with 'text'"),
        ({"pairs": [["a", "b"]], "text_pair": "b"}, 422, "'text_pair' goes with 'text'"),
        ({"text": "a", "pairs": [["a", "b"]]}, 422, "either 'text'"),
        ({"text": "a", "text_pair": 3}, 422, "'text_pair' must be a string"),
        ({"text": "a", "text_pair": None}, 422, "'text_pair' must be a string"),
        ({"text": "a", "text_pair": "  "}, 422, "'text_pair' is empty"),
        ({"text": "a", "text_pair": "x" * 11}, 413, "'text_pair' has 11 characters; the limit is 10"),
        ({"pairs": []}, 422, "1..256"),
        ({"pairs": "ab"}, 422, "list of 1..256"),
        ({"pairs": [["a", "b"]] * (MAX_TEXTS + 1)}, 422, "1..256"),
        ({"pairs": [["a", "b"], ["c"]]}, 422, "pairs[1] must be a list of two strings"),
        ({"pairs": [["a", "b", "c"]]}, 422, "pairs[0] must be a list of two strings"),
        ({"pairs": [{"text": "a"}]}, 422, "pairs[0] must be a list of two strings"),
        ({"pairs": [["a", 5]]}, 422, "pairs[0][1] must be a string"),
        ({"pairs": [["", "b"]]}, 422, "pairs[0][0] is empty"),
        ({"pairs": [["a", "x" * 11]]}, 413, "pairs[0][1] has 11 characters"),
    ],
)
def test_malformed_pair_bodies(body, status, words):
    got, detail = _status(parse_predict, body, 10)
    assert got == status and words in detail, detail


def test_a_lone_surrogate_in_a_pair_is_refused_before_the_batch():
    status, detail = _status(parse_json, b'{"text": "a", "text_pair": "\\ud800"}')
    assert status == 422 and "body['text_pair'] is not valid Unicode" in detail
    status, detail = _status(parse_json, b'{"pairs": [["a", "\\udc00b"]]}')
    assert status == 422 and "body['pairs'][0][1]" in detail


def test_inputs_must_fit_the_model():
    check_inputs_fit([("a", "b")], model_pairs=True)
    check_inputs_fit(["a"], model_pairs=False)
    status, detail = _status(check_inputs_fit, ["a"], True)
    assert status == 422 and "classifies text pairs" in detail
    status, detail = _status(check_inputs_fit, [("a", "b")], False)
    assert status == 422 and "classifies single texts" in detail


def test_grpc_text_pairs_pair_up_by_index():
    req = SimpleNamespace(texts=["a", "c"], text_pairs=["b", "d"])
    assert grpc_inputs(req, 10) == [("a", "b"), ("c", "d")]
    assert grpc_inputs(SimpleNamespace(texts=["a"], text_pairs=[]), 10) == ["a"]
    status, detail = _status(grpc_inputs, SimpleNamespace(texts=["a", "c"], text_pairs=["b"]), 10)
    assert status == 422 and "1 texts for 2" in detail
    assert _status(grpc_inputs, SimpleNamespace(texts=["a"], text_pairs=["x" * 11]), 10)[0] == 413


def test_traffic_sends_the_shape_of_its_rows():
    assert predict_body([("a", "b")], batched=False) == {"text": "a", "text_pair": "b"}
    assert predict_body([("a", "b"), ("c", "d")], batched=True) == {"pairs": [["a", "b"], ["c", "d"]]}
    assert predict_body(["a"], batched=False) == {"text": "a"}
    assert predict_body(["a", "b"], batched=True) == {"texts": ["a", "b"]}


def _pair_bundle():
    tok = train_wordpiece(["今天天气很好", "我们去公园玩", "明天下雨了"] * 10, vocab_size=80, min_frequency=1)
    config = {"vocab_size": len(tok), "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 32, "max_position_embeddings": 64, "pad_token_id": tok.pad_token_id}
    files = {**tokenizer_files(tok), "config.json": json.dumps(config).encode()}
    return from_encoder(None, files, LABELS, max_len=32, pairs=True)


class Clock:
    t = 1_700_000_000.0

    def __call__(self) -> float:
        return self.t


def test_events_and_joined_rows_carry_both_texts():
    _, events = classify(Served(_pair_bundle(), 2), [("今天天气很好", "我们去公园玩")], "pairs", "serve-x")
    assert events[0]["text"] == "今天天气很好" and events[0]["text_pair"] == "我们去公园玩"
    join = EventJoin(60.0, clock=Clock())
    text_rows = join.record(events)
    # both texts go to the text table (continual MLM), as rows of their own
    assert [r["text"] for r in text_rows] == ["今天天气很好", "我们去公园玩"]
    assert to_record_batch("text", text_schema(), to_columns(text_rows)).num_rows == 2
    answer, row = join.join(events[0]["event_id"], "same_article")
    assert row["text"] == "今天天气很好" and row["text_pair"] == "我们去公园玩" and row["label"] == 1
    batch = to_record_batch("feedback", feedback_schema(), to_columns([row]))
    assert batch.column("text_pair").to_pylist() == ["我们去公园玩"]
    assert join.join(events[0]["event_id"], "same_article") == (answer, None)  # a repeat: nothing written


def test_a_single_text_row_has_a_null_pair():
    join = EventJoin(60.0, clock=Clock())
    join.record([{"event_id": "e1", "text": "好", "prediction": 0, "probs": [0.6, 0.4], "labels": ["neg", "pos"],
                  "policy_id": "s", "policy_version": 1, "actor_id": "serve-x"}])
    _, row = join.join("e1", "neg")
    assert row["text_pair"] is None
    assert to_record_batch("feedback", feedback_schema(), to_columns([row])).column("text_pair").null_count == 1


def _rows(start: int, n: int, pairs: bool) -> dict:
    t0 = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
    cols = {"id": [f"f{i}" for i in range(start, start + n)], "table": ["feedback"] * n,
            "source": ["feedback"] * n, "actor_id": ["s"] * n, "policy_id": ["p"] * n, "policy_version": [1] * n,
            "created_at": [t0] * n, "event_id": [f"e{i}" for i in range(start, start + n)],
            "text": [f"a{i}" for i in range(start, start + n)], "prediction": [0] * n, "probs": [[1.0, 0.0]] * n,
            "label": [0] * n, "reward": [None] * n, "propensity": [1.0] * n, "action_probs": [None] * n}
    if pairs:
        cols["text_pair"] = [f"b{i}" for i in range(start, start + n)]
    return cols


def test_the_export_reads_segments_from_before_the_pair_column(tmp_path):
    cfg = ReplaySection.model_validate({"num_shards": 1, "tables": {"feedback": {"kind": "feedback",
                                                                                 "capacity": 100}}})
    table_dir = tmp_path / "shard-0" / "feedback"
    table_dir.mkdir(parents=True)
    new = feedback_schema()
    old_schema = pa.schema(list(new)[:-1], metadata=new.metadata)  # the feedback table before text_pair
    old = SegmentLog(table_dir, old_schema, segment_rows=3)
    old.append(0, to_record_batch("feedback", old_schema, _rows(0, 3, pairs=False)))
    old.close()
    log = SegmentLog(table_dir, new, segment_rows=3)
    log.append(3, to_record_batch("feedback", new, _rows(3, 2, pairs=True)))
    log.close()
    got = read_table(tmp_path, "feedback", cfg)
    assert got.column("text").to_pylist() == ["a0", "a1", "a2", "a3", "a4"]
    assert got.column("text_pair").to_pylist() == [None, None, None, "b3", "b4"]


def test_a_grpc_message_the_proxy_cannot_decode_is_refused_with_the_reason():
    from serving.grpc_messages import lenient
    from serving.proto import evolve_pb2
    from serving.requests import grpc_feedback

    surrogate = b"\x0a\x05a\xed\xa0\x80b"  # field 1, a string holding U+D800 written as UTF-8 would be
    for message, check in [(evolve_pb2.PredictRequest, lambda r: grpc_inputs(r, 100)),
                           (evolve_pb2.FeedbackRequest, grpc_feedback)]:
        decoded = lenient(message)(surrogate)
        status, detail = _status(check, decoded)
        assert status == 400 and detail.startswith(f"the message is not a valid {message.DESCRIPTOR.name}: ")
    fine = lenient(evolve_pb2.FeedbackRequest)(evolve_pb2.FeedbackRequest(event_id="e1", reward=0.5).SerializeToString())
    assert grpc_feedback(fine) == ("e1", None, 0.5)
