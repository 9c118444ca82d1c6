"""The classifier a feedback loop starts from: a published encoder with a fresh head, or a random init.

    model.encoder_registry + encoder_policy (+ encoder_version)   (a feedback loop's `model`)
        found     -> that encoder, its tokenizer, a new head for the data's labels
        not found -> a WordPiece tokenizer trained on the traffic texts and a random
                     encoder of that shape (the loop still learns, from a weaker start)

`origin` is the lineage of the start; it goes into version 1's metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from core.config.feedback import FeedbackSection
from core.data.labeled import LabeledData
from core.storage.registry import PolicyNotFound, PolicyRegistry
from core.data.inputs import split_input
from core.models.classifier import ClassifierBundle, ClassifierError, from_encoder
from core.models.wide import new_wide
from core.models.tokenizer import tokenizer_files


@dataclass
class StartingClassifier:
    bundle: ClassifierBundle
    origin: dict[str, Any] = field(default_factory=dict)
    # Set when an encoder was asked for and is not there: the loop warns that it starts from scratch.
    missing_encoder: str | None = None


def starting_classifier(fb: FeedbackSection, data: LabeledData, seed: int = 0,
                        encoder_files: dict[str, bytes] | None = None) -> StartingClassifier:
    """Raises ClassifierError for an encoder version that does not exist or does not load.
    `encoder_files` (tokenizer files + config.json): the shape of the encoders an MLM loop of the run
    will publish; with no encoder of its own the classifier starts as a random init of that shape."""
    if encoder_files is not None and own_encoder(fb) is None:
        bundle = from_encoder(None, encoder_files, data.labels, fb.model.max_len, seed=seed)
        start = StartingClassifier(bundle, {"encoder": "random_init", "encoder_loop": fb.model.encoder_loop,
                                            "vocab_size": len(bundle.tokenizer)})
    else:
        start = _start(fb, data, seed)
    start.bundle.pairs = data.pairs  # (text, text_pair) inputs: said in the version's labels.json
    if data.pairs:
        start.origin["inputs"] = "pairs"
    start.bundle.wide = new_wide(fb.model, len(data.labels))  # model.kind wide / wide_deep
    return start


def own_encoder(fb: FeedbackSection) -> str | None:
    """What the classifier starts from when it has an encoder of its own (None: it has none)."""
    m = fb.model
    if m.pretrained_dir:
        return f"the checkpoint {m.pretrained_dir}"
    if m.encoder_registry:
        registry = PolicyRegistry(m.encoder_registry, create=False)
        if m.encoder_version is not None or registry.has(m.encoder_policy):
            return f"encoder {m.encoder_policy!r} in {m.encoder_registry}"
    return None


def _start(fb: FeedbackSection, data: LabeledData, seed: int) -> StartingClassifier:
    m = fb.model
    if m.pretrained_dir:
        return _from_pretrained(m.pretrained_dir, data, m.max_len, seed)
    if m.encoder_registry:
        registry = PolicyRegistry(m.encoder_registry, create=False)
        if m.encoder_version is not None or registry.has(m.encoder_policy):
            return _from_registry(fb, registry, data, seed)
        start = _random_init(fb, data, seed)
        start.missing_encoder = f"{m.encoder_policy!r} in {m.encoder_registry}"
        return start
    return _random_init(fb, data, seed)


def _from_registry(fb: FeedbackSection, registry: PolicyRegistry, data: LabeledData, seed: int) -> StartingClassifier:
    m = fb.model
    version = m.encoder_version if m.encoder_version is not None else registry.latest(m.encoder_policy).version
    try:
        loaded = registry.load(m.encoder_policy, version, as_numpy=True)
    except PolicyNotFound as exc:
        raise ClassifierError(f"model.encoder_version: {exc}") from None
    origin = {"encoder_registry": m.encoder_registry, "encoder_policy": m.encoder_policy,
              "encoder_version": version, "encoder_masked_accuracy": loaded.meta.metrics.get("masked_accuracy")}
    bundle = from_encoder(loaded.weights, loaded.files, data.labels, m.max_len, seed=seed)
    return StartingClassifier(bundle, origin)


def _from_pretrained(name: str, data: LabeledData, max_len: int, seed: int) -> StartingClassifier:
    """A Hugging Face BERT-family checkpoint: its encoder and tokenizer, a new head for the data's labels.
    A directory is read offline; any other name goes to the hub (online machines only)."""
    from transformers import AutoTokenizer, BertModel

    source, local, options = pretrained_source(name)
    try:
        encoder = BertModel.from_pretrained(source, add_pooling_layer=False, **options)
        tok = AutoTokenizer.from_pretrained(source, local_files_only=local)
    except Exception as exc:  # transformers raises OSError/ValueError/... for missing or broken checkpoints
        where = "directory" if local else "directory or hub name (is this machine online?)"
        raise ClassifierError(f"model.pretrained_dir: cannot load a BERT checkpoint from {where} {name!r}: "
                              f"{' '.join(str(exc).split())[:200]}") from None
    if not tok.is_fast:
        raise ClassifierError(f"model.pretrained_dir: {name!r} has no fast (Rust) tokenizer (tokenizer.json)")
    config = encoder.config.to_dict()
    files = {**tokenizer_files(tok), "config.json": json.dumps(config, default=str).encode()}
    bundle = from_encoder(encoder.state_dict(), files, data.labels, max_len, seed=seed)
    origin = {"encoder": "pretrained", "pretrained": source, "model_type": config.get("model_type"),
              "hidden_size": config.get("hidden_size"), "num_layers": config.get("num_hidden_layers"),
              "vocab_size": len(tok)}
    return StartingClassifier(bundle, origin)


def pretrained_source(name: str) -> tuple[str, bool, dict[str, Any]]:
    """(what to load, whether it is a local directory, the model's `from_pretrained` options).
    Weights load from safetensors only, from a directory as from the hub: a pickled
    pytorch_model.bin runs code of whoever wrote it when it is read."""
    from pathlib import Path

    local = Path(name).expanduser()
    if local.is_dir():
        return str(local.resolve()), True, {"local_files_only": True, "use_safetensors": True}
    return name, False, {"local_files_only": False, "use_safetensors": True}


def _random_init(fb: FeedbackSection, data: LabeledData, seed: int) -> StartingClassifier:
    from core.models.encoder import bert_config
    from core.models.tokenizer import train_wordpiece

    # both texts of a pair: the tokenizer must know the second side's words too
    tok = train_wordpiece([s for x, _ in data.train for s in split_input(x) if s is not None], fb.model.vocab_size)
    config = bert_config(fb.model, len(tok), tok.pad_token_id, max_positions=max(fb.model.max_len, 128))
    files = {**tokenizer_files(tok), "config.json": json.dumps(config.to_dict(), default=str).encode()}
    bundle = from_encoder(None, files, data.labels, fb.model.max_len, seed=seed)
    return StartingClassifier(bundle, {"encoder": "random_init", "vocab_size": len(tok)})
