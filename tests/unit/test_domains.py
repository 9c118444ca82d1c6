"""Review domains by keyword rules, and streams that go through them one after another."""

import pytest

from core.data.domains import DOMAINS, review_domain
from core.config.data import DataSection
from core.data.labeled import ordered_index


def test_keyword_rules_name_the_product():
    assert review_domain("房间很干净，前台服务好") == "hotel"
    assert review_domain("这本书的作者写得很好") == "book"
    assert review_domain("键盘手感不错，屏幕很亮") == "laptop"
    assert review_domain("很好很满意") is None  # no keyword
    assert review_domain("书和电脑") is None  # a tie


def test_the_reviews_grouped_by_domain_stream_domain_after_domain():
    data = DataSection(group_column="domain", order="grouped").load()
    assert set(data.groups) == set(DOMAINS) and len(data.heldout_groups) == len(data.heldout)
    assert len(data.train) > 8000  # most reviews have a clear domain
    order = ["laptop", "hotel", "book"]
    stream = [data.groups[i] for i in ordered_index(data, "grouped", seed=0, group_order=order)]
    changes = [g for k, g in enumerate(stream) if k == 0 or stream[k - 1] != g]
    assert changes == order
    labels = [data.train[i][1] for i in ordered_index(data, "grouped", seed=0, group_order=order)[:200]]
    assert 0 < sum(labels) < 200  # shuffled within a domain: not all the negatives first
    short = [data.groups[i] for i in ordered_index(data, "grouped", seed=0, group_order=order, group_rows=300)]
    assert short == ["laptop"] * 300 + ["hotel"] * 300 + ["book"] * 300  # a shorter stream, same order


def test_a_group_order_must_name_every_group():
    data = DataSection(group_column="domain", order="grouped").load()
    from core.data.corpus import CorpusError

    with pytest.raises(CorpusError, match="not in group_order"):
        ordered_index(data, "grouped", group_order=["hotel", "book"])
