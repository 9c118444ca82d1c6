"""The live-text source against a fake replay client (the Protocol the real client implements)."""

import numpy as np
import pyarrow as pa
import pytest

from core.models.tokenizer import tokenizer_files, train_wordpiece
from learners.objective import WorkerContext
from learners.text_source import BlockPacker, ReplayTextSource

TEXTS = ["我爱北京天安门", "今天天气很好，我们去公园", "这本书写得很好"]


class FakeReplay:
    def __init__(self, batches):
        self.batches, self.calls = list(batches), []

    def sample(self, table, n, timeout_s):
        self.calls.append((table, n, timeout_s))
        if not self.batches:
            raise TimeoutError("below min_size")
        item = self.batches.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


def _rows(texts):
    return pa.RecordBatch.from_pydict({"id": [str(i) for i in range(len(texts))], "text": texts})


@pytest.fixture(scope="module")
def files():
    return tokenizer_files(train_wordpiece(TEXTS * 10, vocab_size=100, min_frequency=1))


def test_packer_carries_the_remainder():
    p = BlockPacker(seq_len=4, cls_id=2, sep_id=3)
    assert p.add([[10, 11]]).shape == (1, 4)  # 10 11 3 -> one full row of 3
    assert p.add([[12]]).shape == (0, 4)  # 12 3 wait for more
    rows = p.add([[13, 14]])
    assert rows.tolist() == [[2, 12, 3, 13]]


def test_batches_from_sampled_text_after_a_timeout(files):
    fake = FakeReplay([TimeoutError("not yet"), _rows(TEXTS * 20), _rows(TEXTS * 20)])
    src = ReplayTextSource(fake, "text", batch_size=4, seq_len=8, tokenizer_files=files, texts_per_sample=60)
    batch = next(src.batches(WorkerContext(), seed=0))
    assert batch.shape == (4, 8) and batch.dtype.is_floating_point is False
    assert (batch[:, 0] == 2).all()  # [CLS] opens every block
    assert fake.calls[0] == ("text", 60, 5.0)


def test_a_causal_lm_packs_live_text_with_its_own_bounds(files):
    """A clm loop's blocks open with the end-of-text id, as its corpus blocks do (core/data/clm.py)."""
    fake = FakeReplay([_rows(TEXTS * 20)])
    src = ReplayTextSource(fake, "text", batch_size=4, seq_len=8, tokenizer_files=files, bounds=(3, 3))
    batch = next(src.batches(WorkerContext(), seed=0))
    assert (batch[:, 0] == 3).all() and not (batch == 2).any()  # [SEP] opens and ends texts, no [CLS]


def test_no_text_for_too_long_is_an_error(files):
    src = ReplayTextSource(FakeReplay([]), "text", batch_size=2, seq_len=8, tokenizer_files=files,
                           sample_timeout_s=0.01, max_wait_s=0.05)
    with pytest.raises(TimeoutError, match="no text"):
        next(src.batches(WorkerContext(), seed=0))


def test_a_table_without_text_is_refused(files):
    bad = pa.RecordBatch.from_pydict({"obs": [1.0]})
    src = ReplayTextSource(FakeReplay([bad]), "text", batch_size=2, seq_len=8, tokenizer_files=files)
    with pytest.raises(ValueError, match="no 'text' column"):
        next(src.batches(WorkerContext(), seed=0))
