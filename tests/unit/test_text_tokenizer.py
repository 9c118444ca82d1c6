"""WordPiece tokenizer: CJK characters one by one, transformers round trip, packing, vocabulary checks."""

import numpy as np
import pytest
from transformers import BertConfig

from core.config.mlm import MLMSection
from core.data.mlm import prepare_mlm_data
from core.models.encoder import ModelError, check_vocab_fits
from core.models.tokenizer import (
    TokenizerError,
    check_mlm_tokenizer,
    load_tokenizer,
    pack_blocks,
    tokenizer_files,
    tokenizer_from_files,
    train_wordpiece,
)

TEXTS = ["我爱北京天安门", "今天天气很好，我们去公园", "这本书写得很好 hello world", "１２月３１日 新年讲话"] * 20


@pytest.fixture(scope="module")
def tok():
    return train_wordpiece(TEXTS, vocab_size=200, min_frequency=1)


def test_chinese_characters_are_single_tokens(tok):
    assert tok.tokenize("我爱北京") == ["我", "爱", "北", "京"]
    assert tok.tokenize("１２月") == ["12", "月"]  # NFKC folds full-width digits


def test_special_tokens_and_template(tok):
    check_mlm_tokenizer(tok)
    ids = tok("我爱北京")["input_ids"]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def test_saved_as_a_transformers_tokenizer(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    assert again("今天天气很好")["input_ids"] == tok("今天天气很好")["input_ids"]
    from_bytes = tokenizer_from_files(tokenizer_files(tok))
    assert len(from_bytes) == len(tok) and from_bytes.mask_token_id == tok.mask_token_id


def test_load_refuses_a_missing_dir(tmp_path):
    with pytest.raises(TokenizerError, match="not found"):
        load_tokenizer(tmp_path / "nope")


def test_pack_blocks_has_no_padding():
    blocks = pack_blocks([[10, 11, 12], [13, 14], [], [15, 16, 17, 18]], seq_len=4, cls_id=2, sep_id=3)
    # stream: 10 11 12 3 13 14 3 15 16 17 18 3 -> 4 rows of 3 after [CLS]
    assert blocks.dtype == np.int32 and blocks.shape == (4, 4)
    assert (blocks[:, 0] == 2).all()
    assert blocks[0].tolist() == [2, 10, 11, 12] and blocks[1].tolist() == [2, 3, 13, 14]


def test_vocabulary_mismatch_is_named(tok):
    with pytest.raises(ModelError, match=r"tokenizer vocabulary \(\d+ tokens\) does not match .*\(999 rows\)"):
        check_vocab_fits(BertConfig(vocab_size=999), tok)


def _write_pretrained(dir_, vocab_size):
    from transformers import BertForMaskedLM

    cfg = BertConfig(vocab_size=vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64)
    BertForMaskedLM(cfg).save_pretrained(dir_)


def test_prepare_refuses_a_tokenizer_that_does_not_fit_the_model(tok, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"{t}{i}" for i, t in enumerate(TEXTS)), encoding="utf-8")
    tok.save_pretrained(tmp_path / "tok")
    _write_pretrained(tmp_path / "model", vocab_size=len(tok) + 7)
    cfg = MLMSection(
        corpus={"source": "file", "path": str(corpus), "heldout_fraction": 0.2},
        tokenizer={"pretrained_dir": str(tmp_path / "tok")},
        model={"pretrained_dir": str(tmp_path / "model")},
        seq_len=16,
    )
    with pytest.raises(ModelError, match="does not match"):
        prepare_mlm_data(cfg)


def test_prepare_with_a_fitting_pretrained_dir(tok, tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"{t}{i}" for i, t in enumerate(TEXTS)), encoding="utf-8")
    tok.save_pretrained(tmp_path / "m")
    _write_pretrained(tmp_path / "m", vocab_size=len(tok))
    cfg = MLMSection(corpus={"source": "file", "path": str(corpus), "heldout_fraction": 0.2},
                    tokenizer={"pretrained_dir": str(tmp_path / "m")}, model={"pretrained_dir": str(tmp_path / "m")},
                    seq_len=16)
    data = prepare_mlm_data(cfg)
    assert data.model_config.hidden_size == 16 and data.train_blocks.shape[1] == 16
    assert data.facts["tokenizer"].startswith("pretrained:")


def test_prepare_trains_and_then_reuses_the_run_tokenizer(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"{t}{i}" for i, t in enumerate(TEXTS)), encoding="utf-8")
    cfg = MLMSection(corpus={"source": "file", "path": str(corpus), "heldout_fraction": 0.2},
                    tokenizer={"vocab_size": 100, "min_frequency": 1}, seq_len=16)
    first = prepare_mlm_data(cfg, tokenizer_dir=tmp_path / "tok")
    assert (tmp_path / "tok" / "tokenizer.json").is_file()
    second = prepare_mlm_data(cfg, tokenizer_dir=tmp_path / "tok")
    assert "reused" in second.facts["tokenizer"]
    assert (first.heldout_blocks == second.heldout_blocks).all()
    assert first.model_config.vocab_size == len(first.tokenizer)


def test_model_needs_tokenizer_config_rule():
    with pytest.raises(ValueError, match="tokenizer.pretrained_dir"):
        MLMSection(model={"pretrained_dir": "/x"})
