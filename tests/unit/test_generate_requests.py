"""The generator app's request rules: each bad input is a 4xx whose reason names the field."""

import pytest

from core.config.generate import GenerateServingSection
from core.models.generator import Sampling
from serving.generate_requests import check_fits, parse_completion_feedback, parse_generate
from serving.join import FeedbackRejected

LIMITS = GenerateServingSection(max_prompt_chars=50, max_new_tokens_limit=16, max_n=4, default_max_new_tokens=8)


def _refused(fn, *args) -> tuple[int, str]:
    with pytest.raises(FeedbackRejected) as info:
        fn(*args)
    return info.value.status, info.value.detail


def test_a_prompt_alone_takes_the_defaults():
    prompt, sampling = parse_generate({"prompt": "酒店"}, LIMITS)
    assert prompt == "酒店" and sampling == Sampling(max_new_tokens=8, temperature=1.0, top_p=1.0, n=1)
    _, sampling = parse_generate({"prompt": "a", "max_new_tokens": 16, "temperature": 0, "top_p": 0.5, "n": 4}, LIMITS)
    assert sampling == Sampling(max_new_tokens=16, temperature=0.0, top_p=0.5, n=4)


@pytest.mark.parametrize("body,status,field", [
    ({"prompt": ""}, 422, "'prompt' is empty"),
    ({"prompt": "a", "temperature": 5e-324}, 422, "'temperature' must be 0 (greedy) or at least"),
    ({"prompt": "   "}, 422, "'prompt' is empty"),
    ({}, 422, "'prompt' is required"),
    ({"prompt": 3}, 422, "'prompt' must be a string"),
    ({"prompt": "x" * 51}, 413, "'prompt' has 51 characters"),
    ({"prompt": "a\ud800"}, 422, "'prompt' is not valid Unicode"),
    ({"prompt": "a", "max_new_tokens": 17}, 422, "'max_new_tokens' must be an integer in 1..16"),
    ({"prompt": "a", "max_new_tokens": 0}, 422, "'max_new_tokens'"),
    ({"prompt": "a", "max_new_tokens": "8"}, 422, "'max_new_tokens'"),
    ({"prompt": "a", "max_new_tokens": 8.0}, 422, "'max_new_tokens'"),
    ({"prompt": "a", "max_new_tokens": True}, 422, "'max_new_tokens'"),
    ({"prompt": "a", "n": 5}, 422, "'n' must be an integer in 1..4"),
    ({"prompt": "a", "n": [2]}, 422, "'n'"),
    ({"prompt": "a", "temperature": -0.1}, 422, "'temperature'"),
    ({"prompt": "a", "temperature": 6}, 422, "'temperature'"),
    ({"prompt": "a", "temperature": "hot"}, 422, "'temperature'"),
    ({"prompt": "a", "top_p": 0}, 422, "'top_p'"),
    ({"prompt": "a", "top_p": 1.5}, 422, "'top_p'"),
    ({"prompt": "a", "seed": 1}, 422, "unknown field 'seed'"),
    (["a"], 422, "body must be a JSON object"),
])
def test_each_bad_generate_body_is_refused_naming_its_field(body, status, field):
    got, detail = _refused(parse_generate, body, LIMITS)
    assert got == status and field in detail, detail


def test_a_prompt_past_the_context_names_prompt_and_max_new_tokens():
    status, detail = _refused(check_fits, 60, Sampling(max_new_tokens=8), 64)
    assert status == 422 and "'prompt' is 60 tokens" in detail and "'max_new_tokens'" in detail
    check_fits(56, Sampling(max_new_tokens=8), 64)  # exactly the context fits


def test_feedback_forms():
    assert parse_completion_feedback({"event_id": "e", "thumbs": "up"}) == ("e", 1, None, None)
    assert parse_completion_feedback({"event_id": "e", "thumbs": "down"}) == ("e", 0, None, None)
    assert parse_completion_feedback({"event_id": "e", "reward": 1}) == ("e", None, 1.0, None)
    assert parse_completion_feedback({"event_id": "e", "better_than": "f"}) == ("e", None, None, "f")


@pytest.mark.parametrize("body,field", [
    ({"thumbs": "up"}, "'event_id'"),
    ({"event_id": "", "thumbs": "up"}, "'event_id'"),
    ({"event_id": "e"}, "exactly one of 'thumbs'"),
    ({"event_id": "e", "thumbs": "up", "reward": 1}, "got 'thumbs', 'reward'"),
    ({"event_id": "e", "thumbs": "yes"}, "'thumbs' must be"),
    ({"event_id": "e", "thumbs": True}, "'thumbs' must be"),
    ({"event_id": "e", "reward": 1.5}, "'reward' must be a number in [0, 1]"),
    ({"event_id": "e", "reward": "1"}, "'reward'"),
    ({"event_id": "e", "better_than": 7}, "'better_than' must be an event id"),
    ({"event_id": "e", "better_than": "e"}, "'better_than' names the completion itself"),
    ({"event_id": "e", "label": 1}, "unknown field 'label'"),
])
def test_each_bad_feedback_body_is_refused_naming_its_field(body, field):
    status, detail = _refused(parse_completion_feedback, body)
    assert status == 422 and field in detail, detail


def test_limits_refuse_defaults_beyond_them():
    with pytest.raises(ValueError, match="default_max_new_tokens"):
        GenerateServingSection(max_new_tokens_limit=8, default_max_new_tokens=9)
