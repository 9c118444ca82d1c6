"""A decision's features: named namespaces of a context and of each action, hashed into one space.

    context  {"user": {"age": 31, "country": "de", "tags": ["news", "sport"]}, ...}
    action   {"id": "a7", "features": {"item": {"topic": "sport", "price": 4.5}}}
        -> per namespace: hashed feature ids + values   number: (ns, name) with the number
                                                        string: (ns, name=value) with 1
                                                        list of strings: one (ns, name=item) each, 1
        -> per action: the context's features, the action's own, and the crosses of every
           `interactions` pair of namespaces (Vowpal Wabbit's -q), each cross's value the product

The context's features are the same for every action: they do not change the ranking, but
they carry the reward's level, which the regression the scorer learns (and SquareCB's gaps)
need.  Hashes are 64-bit blake2b digests, so every process maps a name to the same bucket.
A value that is not a finite number (at most MAX_MAGNITUDE), a string or a list of strings is a
FeatureError that names its field, which the API turns into a 4xx.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np

from core.models.wide import finalise

_ORDER = np.uint64(0x9E3779B97F4A7C15)  # keeps the cross (a, b) apart from (b, a)
MAX_FEATURES = 4096  # per namespace: a bound on what one request may cost
# A number's magnitude: the crosses multiply two values in float32 (which ends near 3e38), so a
# larger one would turn a score into inf or NaN
MAX_MAGNITUDE = 1e9


class FeatureError(ValueError):
    """A feature a request cannot have; `field` is its path, e.g. `actions[2].features.item.price`."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


@lru_cache(maxsize=1 << 17)
def feature_hash(namespace: str, key: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{namespace}\x1f{key}".encode(), digest_size=8).digest(), "little")


@dataclass(frozen=True)
class Namespace:
    hashes: np.ndarray  # uint64 [n]
    values: np.ndarray  # float32 [n]


def namespace(name: str, features: Any, field: str) -> Namespace:
    """One namespace's hashed features, or a FeatureError naming the offending field."""
    if not isinstance(features, Mapping):
        raise FeatureError(field, "a namespace is an object of named features")
    keys: list[str] = []
    values: list[float] = []
    for feat, value in features.items():
        where = f"{field}.{feat}"
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float)):
            number = float(value) if abs(value) <= MAX_MAGNITUDE else math.inf  # (a huge int has no float)
            if not math.isfinite(number):
                raise FeatureError(where, f"a number must be finite and at most {MAX_MAGNITUDE:g} in magnitude")
            keys.append(feat)
            values.append(number)
        elif isinstance(value, str):
            keys.append(f"{feat}={value}")
            values.append(1.0)
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    raise FeatureError(f"{where}[{i}]", "a list holds strings only")
                keys.append(f"{feat}={item}")
                values.append(1.0)
        else:
            raise FeatureError(where, "a feature is a number, a string or a list of strings, "
                                      f"not {type(value).__name__ if value is not None else 'null'}")
        if len(keys) > MAX_FEATURES:
            raise FeatureError(field, f"more than {MAX_FEATURES} features in one namespace")
    return Namespace(np.fromiter((feature_hash(name, k) for k in keys), np.uint64, len(keys)),
                     np.asarray(values, np.float32))


def namespaces(groups: Any, field: str) -> dict[str, Namespace]:
    if groups is None:
        return {}
    if not isinstance(groups, Mapping):
        raise FeatureError(field, "features are an object of namespaces")
    return {str(ns): namespace(str(ns), feats, f"{field}.{ns}") for ns, feats in groups.items()}


@dataclass(frozen=True)
class Encoded:
    """Every action's features in one flat array: action k owns [offsets[k], offsets[k + 1])."""

    index: np.ndarray  # int64 [total], bucket in [0, 2**bits)
    value: np.ndarray  # float32 [total]
    offsets: np.ndarray  # int64 [K + 1]

    @property
    def actions(self) -> int:
        return len(self.offsets) - 1

    def of(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.offsets[k], self.offsets[k + 1]
        return self.index[lo:hi], self.value[lo:hi]


def _cross(a: Namespace, b: Namespace) -> Namespace:
    h = finalise((a.hashes[:, None] * _ORDER) ^ b.hashes[None, :])
    return Namespace(h.ravel(), (a.values[:, None] * b.values[None, :]).ravel())


class FeatureSpace:
    """Hashes a context and its actions into `2**bits` buckets with the configured crosses."""

    def __init__(self, bits: int, interactions: Sequence[Sequence[str]] = ()):
        self.bits, self.mask = bits, np.uint64((1 << bits) - 1)
        self.interactions = [tuple(pair) for pair in interactions]

    def encode(self, context: Mapping[str, Namespace], actions: Sequence[Mapping[str, Namespace]]) -> Encoded:
        parts_per_action = []
        for own in actions:
            spaces = {**context, **own}  # an action's namespace of a context's name is the action's
            parts = [*context.values(), *own.values()]
            parts += [_cross(spaces[a], spaces[b]) for a, b in self.interactions if a in spaces and b in spaces]
            parts_per_action.append(parts)
        sizes = [sum(len(p.hashes) for p in parts) for parts in parts_per_action]
        offsets = np.zeros(len(actions) + 1, np.int64)
        np.cumsum(sizes, out=offsets[1:])
        flat = [p for parts in parts_per_action for p in parts]
        hashes = np.concatenate([p.hashes for p in flat]) if flat else np.zeros(0, np.uint64)
        values = np.concatenate([p.values for p in flat]) if flat else np.zeros(0, np.float32)
        return Encoded((hashes & self.mask).astype(np.int64), values.astype(np.float32), offsets)
