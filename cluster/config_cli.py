"""`evolve config show CONFIG [--set ...]` and `evolve config keys`: the resolved config, and every key.

`show` prints what `evolve run CONFIG` would run with (its bases merged, the
overrides applied, each loop's policy id and tables filled in): the same YAML
the run writes to config.yaml in its run directory.  `keys` lists every key
with its default and its comment.
"""

from __future__ import annotations

import os
import sys

from core.config.keys import config_keys, format_keys
from core.config.loader import dump_config, load_config


def show(config: str, overrides: list[str]) -> int:
    print(dump_config(load_config(config, overrides)), end="")
    return 0


def keys(prefix: str | None = None) -> int:
    lines = format_keys([k for k in config_keys() if prefix is None or k.key.startswith(prefix)])
    try:
        print("\n".join(lines), flush=True)
    except BrokenPipeError:  # `evolve config keys | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
