"""Load a YAML preset (and the presets it names as `base:`), apply `--set key=value` overrides, validate once.

    base: [sentiment, cartpole]     # presets in this file's directory (or paths), merged in order
    run: {name: default}            # then this file's own keys, deep-merged over them
    loops:
      cartpole: null                # a loop (or a replay.tables entry) set to null is left out

Mappings merge key by key; any other value (a list, a number, null) replaces
what the base said.  Errors come out as a single `ConfigError` line:
`<file>: <key>: <reason>`, so the CLI can print it without a traceback.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from core.config.evolve import EvolveConfig, old_shape_hint
from core.config.kinds import KINDS

# Keys that moved out of `learner:` into each loop's `learning` group; a config that still
# sets one is refused with the new place.
MOVED_KEYS = ("lr", "batch_size", "checkpoint_every")
OLD_LOOP_SECTIONS = ("feedback", "rl", "mlm", "novelty")


class ConfigError(ValueError):
    """A config that cannot be used; str() is one line naming source, key and reason."""

    def __init__(self, source: str, key: str, reason: str):
        self.source, self.key, self.reason = source, key, reason
        super().__init__(f"{source}: {key}: {reason}" if key else f"{source}: {reason}")

    def __reduce__(self):
        return (type(self), (self.source, self.key, self.reason))


def parse_override(item: str) -> tuple[str, Any]:
    """`run.seed=3` -> ("run.seed", 3); the value is read as YAML."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError("--set", item, "expected KEY=VALUE with a dotted key, e.g. loops.cartpole.learning.lr=1e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError("--set", key, f"value is not valid YAML: {_first_line(exc)}") from None
    return key, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> tuple[dict[str, Any], set[str]]:
    """Set each dotted key in a copy of `data`; returns the copy and the keys touched."""
    out = copy.deepcopy(data)
    touched: set[str] = set()
    for item in overrides:
        key, value = parse_override(item)
        parts = key.split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError("--set", ".".join(parts[: i + 1]), "is a value, not a section")
            node = child
        node[parts[-1]] = value
        touched.add(key)
    return out, touched


def resolve(path: str | Path | None, overrides: list[str] | None = None) -> tuple[dict[str, Any], set[str]]:
    """The preset's data with its bases merged in and the overrides applied, before validation;
    and the override keys touched."""
    data = read_preset(Path(path)) if path is not None else {}
    data, touched = apply_overrides(data, overrides or [])
    return _leave_out_nulls(data), touched


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> EvolveConfig:
    """Read `path` (None = all defaults) and its bases, apply overrides, validate."""
    data, touched = resolve(path, overrides)
    return validate(data, str(path) if path is not None else "<defaults>", touched)


def validate(data: dict[str, Any], source: str, touched: set[str] = frozenset()) -> EvolveConfig:
    """The EvolveConfig of resolved `data`, or one ConfigError line naming `source` (or the --set) and the key."""
    _refuse_old_shape(data, source)
    _refuse_moved_keys(data, source, touched)
    try:
        return EvolveConfig.model_validate(_with_table_kinds(data))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = _plain_loc(err["loc"])
        key = ".".join(loc)
        hits = [t for t in touched if t == key or t.startswith(key + ".") or key.startswith(t + ".")]
        raise ConfigError(f"--set {hits[0]}" if hits else source, key, _reason(err, loc)) from None


def read_preset(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """`path`'s mapping with the presets its `base:` names merged under it, in order."""
    data = _read_yaml(path)
    bases = data.pop("base", None)
    if bases is None:
        return data
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(str(path), "base", "must name a preset or a list of presets, e.g. base: [sentiment, cartpole]")
    merged: dict[str, Any] = {}
    for base in bases:
        base_path = _base_path(path, base)
        if base_path.resolve() in [p.resolve() for p in (*seen, path)]:
            raise ConfigError(str(path), "base", f"{base!r} names a preset that is its own base ({base_path})")
        if not base_path.is_file():
            raise ConfigError(str(path), "base", f"no such preset {base!r} ({base_path})")
        merged = deep_merge(merged, read_preset(base_path, (*seen, path)))
    return deep_merge(merged, data)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`: mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def dump_config(cfg: EvolveConfig) -> str:
    """The resolved config as YAML (what goes into the run directory, and `evolve config show`)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def _base_path(path: Path, base: str) -> Path:
    p = Path(base)
    if not p.suffix:
        p = p.with_suffix(".yaml")
    return p if p.is_absolute() else path.parent / p


def _leave_out_nulls(data: dict[str, Any]) -> dict[str, Any]:
    """A loop or a replay table set to null is left out (a preset dropping what its base declares)."""
    for parent in (data, data.get("replay")):
        key = "loops" if parent is data else "tables"
        if isinstance(parent, dict) and isinstance(parent.get(key), dict):
            parent[key] = {name: v for name, v in parent[key].items() if v is not None}
    return data


def _with_table_kinds(data: dict[str, Any]) -> dict[str, Any]:
    """A replay.tables entry for a table a loop writes takes that table's kind and its kind's
    settings under what the entry says, so a preset states only the settings it changes."""
    loops, tables = data.get("loops"), (data.get("replay") or {}).get("tables")
    if not isinstance(loops, dict) or not isinstance(tables, dict):
        return data
    data = copy.deepcopy(data)
    tables = data["replay"]["tables"]
    for name, loop in loops.items():
        kind = KINDS.get(loop.get("kind")) if isinstance(loop, dict) else None
        named = (loop.get("tables") or {}) if kind is not None else {}
        for role, need in (kind.tables if kind is not None else {}).items():
            table = named.get(role, f"{name}{need.suffix}") if isinstance(named, dict) else None
            if isinstance(table, str) and isinstance(tables.get(table), dict):
                tables[table] = {"kind": need.kind, **need.settings, **tables[table]}
    return data


def _refuse_old_shape(data: dict[str, Any], source: str) -> None:
    """`loops: [feedback, rl]` with top-level `feedback:` / `rl:` sections: refused in one line that
    shows the new shape."""
    old = [k for k in OLD_LOOP_SECTIONS if k in data]
    listed = data.get("loops")
    if isinstance(listed, list) or old:
        kinds = [str(k) for k in listed] if isinstance(listed, list) else old
        names = {k: (data.get(k) or {}).get("name") for k in kinds if isinstance(data.get(k), dict)}
        raise ConfigError(source, "loops", old_shape_hint(kinds, {k: n for k, n in names.items() if n}))


def _refuse_moved_keys(data: dict[str, Any], source: str, touched: set[str]) -> None:
    """A key that moved into the loops' sections names its new place (the loops of this config)."""
    learner = data.get("learner")
    for key in MOVED_KEYS:
        if isinstance(learner, dict) and key in learner:
            loops = data.get("loops") or {"<loop>": {}}
            where = f"--set learner.{key}" if f"learner.{key}" in touched else source
            raise ConfigError(where, "", f"learner.{key} moved: set " + " / ".join(_moved_to(n, loop, key)
                                                                                  for n, loop in loops.items())
                              + " (each loop owns its learning settings)")


def _moved_to(name: str, loop: Any, key: str) -> str:
    """Where a moved learner key lives in a loop: a pretraining loop's schedule is its section's own."""
    kind = loop.get("kind") if isinstance(loop, dict) else None
    return f"loops.{name}.{key}" if kind in ("mlm", "clm") else f"loops.{name}.learning.{key}"


def _plain_loc(loc: tuple[Any, ...]) -> tuple[str, ...]:
    """Pydantic's error location without the discriminator's tag: loops.<name>.<kind>.x -> loops.<name>.x."""
    parts = [str(p) for p in loc]
    if len(parts) > 2 and parts[0] == "loops" and parts[2] in KINDS:
        del parts[2]
    return tuple(parts)


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(str(path), "", "no such config file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(str(path), "", f"not valid YAML: {_first_line(exc)}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "", "not UTF-8 text") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "", f"top level must be a mapping, got {type(data).__name__}")
    return data


def _reason(err: dict[str, Any], loc: tuple[str, ...]) -> str:
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        return f"each loop needs `kind:`, one of {', '.join(KINDS)}"
    if err["type"] == "extra_forbidden":
        known = _known_keys(loc[:-1], err)
        return "unknown key" + (f" (known here: {', '.join(known)})" if known else "")
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if err["type"] != "missing" and not isinstance(value, (dict, list)):
        msg = f"{msg} (got {value!r})"
    return msg


def _known_keys(section: tuple[str, ...], err: dict[str, Any]) -> list[str]:
    """Field names of the config section at `section`, for 'did you mean' help."""
    model: Any = EvolveConfig
    parts = list(section)
    if len(parts) >= 2 and parts[0] == "loops":
        tag = [str(p) for p in err["loc"]][2] if len(err["loc"]) > 2 else None
        if tag not in KINDS:
            return []
        model, parts = KINDS[tag].section, parts[2:]
    for part in parts:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return sorted(getattr(model, "model_fields", {}))


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
