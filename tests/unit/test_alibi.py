"""ALiBi attention bias: what the encoder gets, and that padding does not change a real token's output."""

import torch

from core.config.model import ModelSection
from core.models.encoder import alibi_slopes, attention_bias, bert_config, build_mlm_model, encoder_hidden


def _config(position_bias: str = "alibi"):
    cfg = ModelSection(num_layers=2, hidden_size=32, num_heads=4, intermediate_size=64, position_bias=position_bias)
    return bert_config(cfg, vocab_size=50, pad_token_id=0, max_positions=32)


def test_slopes_run_from_local_to_nearly_global():
    s = alibi_slopes(4)
    assert s[0] == 1.0 and abs(s[-1] - 1 / 32) < 1e-9 and s == sorted(s, reverse=True)
    assert alibi_slopes(1) == [1.0]


def test_config_keeps_slopes_through_json():
    config = _config()
    again = type(config).from_dict(config.to_dict())
    assert again.alibi_slopes == alibi_slopes(4)
    assert getattr(_config("none"), "alibi_slopes", None) is None


def test_bias_penalises_distance_and_masks_padding():
    ids = torch.ones(2, 5, dtype=torch.long)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    bias = attention_bias(_config(), ids, mask)
    assert bias.shape == (2, 4, 5, 5)
    assert bias[0, 0, 2, 2] == 0 and bias[0, 0, 2, 4] == -2.0  # head 0: slope 1
    assert bias[1, :, :, 3:].max() < -1e30  # padded keys get nothing
    plain = attention_bias(_config("none"), ids, mask)
    assert plain is mask  # without ALiBi BERT's own padding mask


def test_padding_does_not_change_real_tokens():
    model = build_mlm_model(_config(), seed=0).bert.eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    padded = torch.tensor([[5, 6, 7, 8, 0, 0]])
    with torch.no_grad():
        a = encoder_hidden(model, ids, torch.ones_like(ids))
        b = encoder_hidden(model, padded, torch.tensor([[1, 1, 1, 1, 0, 0]]))
    assert torch.allclose(a, b[:, :4], atol=1e-5)


def test_bias_changes_outputs():
    model = build_mlm_model(_config(), seed=0).bert.eval()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        with_bias = encoder_hidden(model, ids)
        without = model(input_ids=ids).last_hidden_state
    assert not torch.allclose(with_bias, without, atol=1e-4)
