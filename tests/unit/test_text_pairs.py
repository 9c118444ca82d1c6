"""The People's Daily pair task: articles split at headline runs, three balanced relations."""

from __future__ import annotations

import csv
from collections import Counter

from core.data.pairs import PAIR_LABELS, articles, is_headline, make_pairs, people_daily_pairs, write_pairs_csv

LINES = [
    "北京举行新年音乐会", "新华社记者报道",  # a headline run of two lines
    "今晚的长安街流光溢彩。", "音乐会在雄壮的管弦乐中开始。", "演出结束后观众起立鼓掌。", "人们久久不愿离去。",
    "李鹏在北京考察企业",
    "上午九时，李鹏总理来到工厂。", "他向职工祝贺新年。", "职工们表示要干好工作。",
]


def test_headlines_are_short_lines_without_sentence_punctuation():
    assert is_headline("北京举行新年音乐会") and not is_headline("今晚的长安街流光溢彩。")
    assert not is_headline("长" * 41) and not is_headline("   ")


def test_a_headline_run_starts_one_article():
    arts = articles(LINES)
    assert [len(a) for a in arts] == [4, 3] and arts[1][0].startswith("上午九时")


def test_each_relation_holds_and_the_labels_are_balanced():
    arts = articles(LINES)
    pairs = make_pairs(arts, per_label=20, seed=1)
    assert Counter(y for _, _, y in pairs) == {0: 5, 1: 5, 2: 5}  # 5 anchors: each label capped there
    where = {p: (ai, k) for ai, art in enumerate(arts) for k, p in enumerate(art)}
    for a, b, y in pairs:
        (aa, ka), (ab, kb) = where[a], where[b]
        if y == 0:
            assert aa == ab and kb == ka + 1
        elif y == 1:
            assert aa == ab and abs(kb - ka) >= 2
        else:
            assert aa != ab
    assert make_pairs(arts, 20, seed=1) == pairs  # fixed by the seed


def test_the_shipped_corpus_gives_thousands_of_pairs_and_a_csv(tmp_path):
    pairs = people_daily_pairs(per_label=3000, seed=0)
    assert Counter(y for _, _, y in pairs) == {0: 3000, 1: 3000, 2: 3000}
    path = write_pairs_csv(tmp_path / "pairs.csv", pairs[:10])
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    assert len(rows) == 10 and set(rows[0]) == {"text", "text_pair", "label"} and rows[0]["label"] in PAIR_LABELS
