"""A classifier that starts from a Hugging Face BERT checkpoint directory (`feedback.pretrained_dir`)."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertModel

from core.models.classifier_start import starting_classifier
from core.config.feedback import FeedbackSection
from core.data.labeled import LabeledData
from core.models.classifier import ClassifierError, from_version
from core.models.tokenizer import train_wordpiece

TEXTS = ["这家酒店很好", "房间太小了", "服务非常周到", "早餐难吃", "位置方便", "空调坏了"] * 5


@pytest.fixture(scope="module")
def data() -> LabeledData:
    rows = [(t, i % 2) for i, t in enumerate(TEXTS)]
    return LabeledData(train=rows, heldout=rows[:6], labels=["neg", "pos"])


def _tiny(tmp_path, cls=BertModel):
    tok = train_wordpiece(TEXTS, 120)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, pad_token_id=tok.pad_token_id)
    torch.manual_seed(3)
    model = cls(config)
    path = tmp_path / "tiny-bert"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path, model


@pytest.mark.parametrize("cls", [BertModel, BertForSequenceClassification])
def test_the_encoder_weights_tokenizer_and_provenance_come_from_the_directory(tmp_path, data, cls):
    path, saved = _tiny(tmp_path, cls)
    start = starting_classifier(FeedbackSection(model={"pretrained_dir": str(path), "max_len": 32}), data)
    encoder = saved if cls is BertModel else saved.bert
    got = start.bundle.model.bert.state_dict()
    assert torch.equal(got["embeddings.word_embeddings.weight"], encoder.state_dict()["embeddings.word_embeddings.weight"])
    assert torch.equal(got["encoder.layer.0.output.dense.weight"], encoder.state_dict()["encoder.layer.0.output.dense.weight"])
    assert start.origin["encoder"] == "pretrained" and start.origin["pretrained"] == str(path.resolve())
    assert start.origin["num_layers"] == 1 and start.origin["hidden_size"] == 32
    probs = start.bundle.predict_proba(TEXTS[:4])
    assert probs.shape == (4, 2)
    # a published version rebuilds from the registry's weights and files alone, as serving does
    again = from_version(start.bundle.weights(), start.bundle.files())
    assert torch.allclose(torch.from_numpy(again.predict_proba(TEXTS[:4])), torch.from_numpy(probs))


def test_a_missing_directory_is_one_clear_error(tmp_path, data):
    with pytest.raises(ClassifierError, match="model.pretrained_dir"):
        starting_classifier(FeedbackSection(model={"pretrained_dir": str(tmp_path / "nowhere")}), data)


def test_two_starts_at_once_are_refused():
    with pytest.raises(ValueError, match="not both"):
        FeedbackSection(model={"pretrained_dir": "x", "encoder_registry": "y"})


def test_a_checkpoint_without_safetensors_is_refused_not_unpickled(tmp_path, data):
    path, model = _tiny(tmp_path)
    (path / "model.safetensors").unlink()
    torch.save(model.state_dict(), path / "pytorch_model.bin")  # a pickle: code runs when it is read
    with pytest.raises(ClassifierError, match="cannot load a BERT checkpoint"):
        starting_classifier(FeedbackSection(model={"pretrained_dir": str(path), "max_len": 32}), data)


def test_hub_names_and_directories_ask_for_safetensors(tmp_path):
    from core.models.classifier_start import pretrained_source

    source, local, options = pretrained_source("google-bert/bert-base-uncased")
    assert (source, local) == ("google-bert/bert-base-uncased", False)
    assert options == {"local_files_only": False, "use_safetensors": True}
    source, local, options = pretrained_source(str(tmp_path))
    assert local and options["use_safetensors"] is True and options["local_files_only"] is True


def test_the_mlm_start_loads_safetensors_only(tmp_path):
    from transformers import BertForMaskedLM

    from core.models.encoder import ModelError, load_pretrained_mlm

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    model = BertForMaskedLM(config)
    model.save_pretrained(tmp_path / "m")
    load_pretrained_mlm(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    torch.save(model.state_dict(), tmp_path / "m" / "pytorch_model.bin")
    with pytest.raises(ModelError, match="cannot load as BertForMaskedLM"):
        load_pretrained_mlm(tmp_path / "m")
