"""`evolve pretrain` refuses bad input with one line, before any cluster starts."""

import pytest

from cluster.cli import build_parser, main
from tests.unit.test_text_tokenizer import _write_pretrained


def _run(capsys, *argv):
    rc = main(["pretrain", *argv])
    return rc, capsys.readouterr().err


@pytest.fixture(autouse=True)
def _no_ray(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("Ray must not start for bad input")

    monkeypatch.setattr("cluster.run.connect", refuse)


def test_empty_corpus(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("\n\n", encoding="utf-8")
    rc, err = _run(capsys, "configs/mlm.yaml", "--run-dir", str(tmp_path / "run"),
                   "--set", "loops.mlm.corpus.source=file", "--set", f"loops.mlm.corpus.path={tmp_path / 'empty.txt'}")
    assert rc == 1 and err.startswith("evolve: error: ") and "corpus is empty" in err and err.count("\n") == 1


def test_column_that_is_not_text(tmp_path, capsys):
    (tmp_path / "n.csv").write_text("review,stars\n5,1\n4,2\n", encoding="utf-8")
    rc, err = _run(capsys, "configs/mlm.yaml", "--run-dir", str(tmp_path / "run"),
                   "--set", "loops.mlm.corpus.source=file", "--set", f"loops.mlm.corpus.path={tmp_path / 'n.csv'}",
                   "--set", "loops.mlm.corpus.column=review")
    assert rc == 1 and "column 'review' is not text" in err


def test_tokenizer_that_does_not_fit_the_model(tmp_path, capsys):
    from core.models.tokenizer import train_wordpiece

    texts = [f"今天天气很好，我们去公园{i}" for i in range(200)]
    (tmp_path / "c.txt").write_text("\n".join(texts), encoding="utf-8")
    tok = train_wordpiece(texts, vocab_size=80, min_frequency=1)
    tok.save_pretrained(tmp_path / "tok")
    _write_pretrained(tmp_path / "model", vocab_size=len(tok) + 1)
    rc, err = _run(capsys, "configs/mlm.yaml", "--run-dir", str(tmp_path / "run"),
                   "--set", "loops.mlm.corpus.source=file", "--set", f"loops.mlm.corpus.path={tmp_path / 'c.txt'}",
                   "--set", f"loops.mlm.tokenizer.pretrained_dir={tmp_path / 'tok'}",
                   "--set", f"loops.mlm.model.pretrained_dir={tmp_path / 'model'}", "--set", "loops.mlm.seq_len=16")
    assert rc == 1 and "does not match the model's embedding table" in err


def test_bad_mlm_key_is_a_config_error(capsys):
    rc = main(["pretrain", "configs/mlm.yaml", "--set", "loops.mlm.mask_prob=2"])
    assert rc == 2 and "loops.mlm.mask_prob" in capsys.readouterr().err


def test_pretrain_help_lists_the_flags():
    text = build_parser().parse_args.__self__.format_help()
    assert "pretrain" in text
    sub = build_parser()._subparsers._group_actions[0].choices["pretrain"].format_help()
    assert "--budget-s" in sub and "--run-dir" in sub and "--set" in sub


def test_pretrain_runs_a_clm_loop_and_refuses_a_directory_that_is_no_causal_lm(tmp_path, capsys):
    _write_pretrained(tmp_path / "bert", vocab_size=100)  # a BertForMaskedLM: not a causal LM
    capsys.readouterr()  # transformers' own lines while writing it
    rc, err = _run(capsys, "configs/clm.yaml", "--run-dir", str(tmp_path / "run"),
                   "--set", f"loops.clm.model.pretrained_dir={tmp_path / 'bert'}")
    assert rc == 1 and err.startswith("evolve: error: ") and err.count("\n") == 1
    assert "a BertForMaskedLM, not a causal language model" in err


def test_pretrain_refuses_a_config_without_a_pretraining_loop(capsys):
    rc = main(["pretrain", "configs/cartpole.yaml"])
    assert rc == 2 and "no loop of kind mlm or clm to run" in capsys.readouterr().err
