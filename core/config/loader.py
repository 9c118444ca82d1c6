"""Load a YAML preset, apply `--set key=value` overrides, validate once.

Errors come out as a single `ConfigError` line: `<file>: <key>: <reason>`,
so the CLI can print it without a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from core.config.evolve import LOOP_SECTIONS, MOVED_KEYS, EvolveConfig


class ConfigError(ValueError):
    """A config that cannot be used; str() is one line naming source, key and reason."""

    def __init__(self, source: str, key: str, reason: str):
        self.source, self.key, self.reason = source, key, reason
        super().__init__(f"{source}: {key}: {reason}" if key else f"{source}: {reason}")

    def __reduce__(self):
        return (type(self), (self.source, self.key, self.reason))


def parse_override(item: str) -> tuple[str, Any]:
    """`rl.lr=1e-4` -> ("rl.lr", 1e-4); the value is read as YAML."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError("--set", item, "expected KEY=VALUE with a dotted key, e.g. rl.lr=1e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError("--set", key, f"value is not valid YAML: {_first_line(exc)}") from None
    return key, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> tuple[dict[str, Any], set[str]]:
    """Set each dotted key in a copy of `data`; returns the copy and the top-level keys touched."""
    import copy

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


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> EvolveConfig:
    """Read `path` (None = all defaults), apply overrides, validate."""
    source = str(path) if path is not None else "<defaults>"
    data = _read_yaml(Path(path)) if path is not None else {}
    data, touched = apply_overrides(data, overrides or [])
    _refuse_moved_keys(data, source, touched)
    try:
        return EvolveConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(str(p) for p in err["loc"])
        key = ".".join(loc)
        hits = [t for t in touched if t == key or t.startswith(key + ".") or key.startswith(t + ".")]
        raise ConfigError(f"--set {hits[0]}" if hits else source, key, _reason(err, loc)) from None


def _refuse_moved_keys(data: dict[str, Any], source: str, touched: set[str]) -> None:
    """A key that moved into the loop sections names its new place (the loops of this config)."""
    for old, key in MOVED_KEYS.items():
        section, _, name = old.partition(".")
        if isinstance(data.get(section), dict) and name in data[section]:
            loops = [k for k in (data.get("loops") or []) if k in LOOP_SECTIONS] or list(LOOP_SECTIONS)
            where = f"--set {old}" if old in touched else source
            raise ConfigError(where, "", f"{old} moved: set " + " / ".join(f"{loop}.{key}" for loop in loops)
                              + " (each loop kind owns its learning settings)")


def dump_config(cfg: EvolveConfig) -> str:
    """The resolved config as YAML (what goes into the run directory)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


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
    if err["type"] == "extra_forbidden":
        known = _known_keys(loc[:-1])
        return "unknown key" + (f" (known here: {', '.join(known)})" if known else "")
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if err["type"] != "missing" and not isinstance(value, (dict, list)):
        msg = f"{msg} (got {value!r})"
    return msg


def _known_keys(section: tuple[str, ...]) -> list[str]:
    """Field names of the config section at `section`, for 'did you mean' help."""
    model: Any = EvolveConfig
    for part in section:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = field.annotation
    return sorted(getattr(model, "model_fields", {}))


def _first_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
