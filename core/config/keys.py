"""Every config key, its default and its one-line comment (`evolve config keys`).

The comment is the field's own: the `#` comment at the end of its line, else
the comment lines right above it, joined into one line.  A loop's keys are
listed once per kind under `loops.<kind>` (`loops.<rl>.env_id`: the env_id
of a loop of kind rl, whatever its name); a mapping of sections (replay
tables, exploration by policy) under its `<name>` placeholder.
"""

from __future__ import annotations

import ast
import inspect
import io
import json
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterator

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from core.config.evolve import EvolveConfig
from core.config.kinds import KINDS


@dataclass(frozen=True)
class KeyDoc:
    key: str
    default: str  # JSON, or "(required)"
    comment: str


def config_keys() -> list[KeyDoc]:
    """Every key of EvolveConfig, in the order a config file states them."""
    out: list[KeyDoc] = []
    for name, field in EvolveConfig.model_fields.items():
        if name == "loops":
            for kind in KINDS.values():
                prefix = f"loops.<{kind.name}>"  # <feedback>: the name of a loop of kind feedback
                out.append(KeyDoc(prefix, "{}", f"a loop of kind {kind.name}: {_doc(kind.section)}"))
                out.extend(_section_keys(kind.section, prefix + "."))
        else:
            out.extend(_field_keys(EvolveConfig, name, field, ""))
    return out


def format_keys(keys: list[KeyDoc]) -> list[str]:
    return [f"{k.key} = {k.default}" + (f"  # {k.comment}" if k.comment else "") for k in keys]


def _section_keys(model: type[BaseModel], prefix: str, instance: BaseModel | None = None) -> Iterator[KeyDoc]:
    """`instance`: the section as its owner's default makes it (an RL loop's gate has other stages and
    sizes than the class's own defaults); its values are the defaults shown."""
    for name, field in model.model_fields.items():
        yield from _field_keys(model, name, field, prefix, instance)


def _field_keys(owner: type[BaseModel], name: str, field: Any, prefix: str,
                instance: BaseModel | None = None) -> Iterator[KeyDoc]:
    key = f"{prefix}{name}"
    section, mapping = _section_of(field.annotation)
    value = getattr(instance, name) if instance is not None else _default_value(field)
    yield KeyDoc(key, _shown(value), comment_of(owner, name))
    if section is not None and not mapping:
        yield from _section_keys(section, key + ".", value if isinstance(value, BaseModel) else None)
    elif section is not None:
        yield from _section_keys(section, f"{key}.<name>.")


def _section_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(the section class a field holds, whether as a mapping of them); (None, False) for a value."""
    args = typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if origin is dict and len(args) == 2:
        inner, _ = _section_of(args[1])
        return inner, inner is not None
    if origin in (typing.Union, types.UnionType):
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        if len(models) == 1:
            return models[0], False
    return None, False


_REQUIRED = object()


def _default_value(field: Any) -> Any:
    if field.default is PydanticUndefined and field.default_factory is None:
        return _REQUIRED
    return field.get_default(call_default_factory=True)


def _shown(value: Any) -> str:
    if value is _REQUIRED:
        return "(required)"
    if isinstance(value, BaseModel):
        return "{...}"
    if isinstance(value, dict) and value and all(isinstance(v, BaseModel) for v in value.values()):
        return "{" + ", ".join(value) + "}"
    return json.dumps(value, default=str)


def _doc(model: type[BaseModel]) -> str:
    return " ".join((inspect.getdoc(model) or "").split(". ")[0].split())


def comment_of(model: type[BaseModel], name: str) -> str:
    """The comment of field `name` in the class that declares it."""
    for cls in model.__mro__:
        if name in cls.__dict__.get("__annotations__", {}):
            return _comments(cls).get(name, "")
    return ""


@lru_cache(maxsize=None)
def _comments(cls: type) -> dict[str, str]:
    """Field name -> its comment, read from the class's source."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    trailing: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT and lines[tok.start[0] - 1][: tok.start[1]].strip():
            trailing[tok.start[0]] = tok.string.lstrip("#").strip()
    out: dict[str, str] = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = (trailing.get(node.lineno) or trailing.get(node.end_lineno)
                                   or _comment_above(lines, node.lineno - 1))
    return out


def _comment_above(lines: list[str], index: int) -> str:
    """The block of `#` lines right above line `index` (0-based: the field's line), joined."""
    block: list[str] = []
    j = index - 1
    while j >= 0 and lines[j].strip().startswith("#"):
        block.insert(0, lines[j].strip().lstrip("#").strip())
        j -= 1
    return " ".join(block)
