"""The generator's fixed judge and its prompts: accuracy on reviews it never saw, its file's round
trip, a corrupt or foreign file refused and rebuilt; held-out and traffic prompts apart."""

from __future__ import annotations

import json

import numpy as np
import pytest

from core.data.prompts import compact, judge_reviews, judge_trains_on, review_prompts
from core.models import judge as judge_mod
from core.models.judge import JudgeFileError, ensure_judge, load_judge, save_judge
from tests.unit.review_judge import judge_file


def test_the_judge_reads_reviews_it_never_saw():
    judge, _ = judge_file()
    trained, unseen = judge_reviews()
    assert not {t for t, _ in trained} & {t for t, _ in unseen}
    assert len(unseen) > 5000
    accuracy = judge.accuracy(unseen)
    assert accuracy >= 0.8, f"unseen accuracy {accuracy:.3f}"
    assert judge.meta["unseen_accuracy"] == pytest.approx(accuracy)
    assert judge.meta["trained_on"] == len(trained)
    p = judge.positive(["质量很好，非常满意，推荐购买", "太差了，非常失望，不会再买"])
    assert p[0] > 0.5 > p[1]


def test_spaces_between_characters_do_not_change_the_reading():
    judge, _ = judge_file()
    a, b = judge.positive(["房间很干净，服务很好", "房 间 很 干 净 ， 服 务 很 好"])
    assert a == pytest.approx(b)
    r = judge.reward(["房间很"], ["干净，服务很好"])
    assert r[0] == pytest.approx(a)
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        judge.reward(["a", "b"], ["c"])
    assert judge.positive([]).shape == (0,)


def test_the_judge_file_round_trips_and_is_not_trained_again(tmp_path, monkeypatch):
    judge, _ = judge_file()
    path = save_judge(judge, tmp_path / "j" / "judge.npz")
    back = load_judge(path)
    texts = ["还不错", "不好用", "一般般吧，价格有点贵"]
    np.testing.assert_allclose(back.positive(texts), judge.positive(texts), rtol=1e-6)
    assert back.meta == json.loads(json.dumps(judge.meta))

    def never():
        raise AssertionError("a valid judge file was trained again")

    monkeypatch.setattr(judge_mod, "train_judge", never)
    np.testing.assert_allclose(ensure_judge(path).positive(texts), judge.positive(texts), rtol=1e-6)


def _corrupt(path, tmp_path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad = tmp_path / "flipped.npz"
    bad.write_bytes(bytes(raw))
    return bad


def test_a_corrupt_or_foreign_file_is_refused_naming_why(tmp_path):
    judge, path = judge_file()
    with pytest.raises(JudgeFileError, match="flipped.npz: (not a readable judge file|checksum mismatch)"):
        load_judge(_corrupt(path, tmp_path))
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(JudgeFileError, match="truncated.npz: not a readable judge file"):
        load_judge(truncated)
    # intact zip, altered weights, the old checksum kept: only the checksum can tell
    arrays = judge_mod._arrays(judge)
    checksum = judge_mod._checksum(arrays)
    arrays["coef"] = arrays["coef"] * 2
    tampered = tmp_path / "tampered.npz"
    np.savez(tampered, **arrays, checksum=np.array(checksum))
    with pytest.raises(JudgeFileError, match="checksum mismatch"):
        load_judge(tampered)
    # a file another judge format wrote (its checksum right)
    other = judge_mod.Judge(judge.idf, judge.coef, judge.intercept, {**judge.meta, "format": 99})
    with pytest.raises(JudgeFileError, match="made by another judge"):
        load_judge(save_judge(other, tmp_path / "other.npz"))
    with pytest.raises(JudgeFileError, match="trained on other reviews"):
        load_judge(path, expect_fingerprint="not-these")


def test_a_refused_file_is_trained_again_and_replaced(tmp_path, monkeypatch):
    judge, path = judge_file()
    bad = _corrupt(path, tmp_path)
    trained = []
    monkeypatch.setattr(judge_mod, "train_judge", lambda: trained.append(1) or judge)  # the real fit, made once
    rebuilt = ensure_judge(bad)
    assert trained == [1]
    assert load_judge(bad).meta == rebuilt.meta  # the file now holds a valid judge
    missing = tmp_path / "new" / "judge.npz"
    ensure_judge(missing)
    assert trained == [1, 1] and missing.is_file()
    assert not list(missing.parent.glob(".*.tmp"))


def test_held_out_and_traffic_prompts_are_apart_and_new_to_the_judge():
    prompts = review_prompts(opening_chars=8)
    assert 0 < len(prompts.heldout) <= 500 and len(prompts.traffic) > 1000
    assert not set(prompts.heldout) & set(prompts.traffic)
    assert len(set(prompts.traffic)) == len(prompts.traffic)
    assert all(len(p) == 8 and p == compact(p) for p in prompts.heldout + prompts.traffic)
    trained, _ = judge_reviews()
    judge_openings = {compact(t)[:8] for t, _ in trained}
    assert not judge_openings & set(prompts.heldout + prompts.traffic)
    assert review_prompts(opening_chars=8) == prompts  # fixed by hashes, in every process
    longer = review_prompts(opening_chars=12, max_heldout=None)
    assert len(longer.heldout) > 500 and all(len(p) == 12 for p in longer.heldout)
    assert judge_trains_on("房 间 很 干 净") == judge_trains_on("房间很干净")
    with pytest.raises(ValueError, match="heldout_share"):
        review_prompts(heldout_share=1.0)
    with pytest.raises(ValueError, match="no prompts left"):
        review_prompts(opening_chars=100_000)
