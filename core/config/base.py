"""The base every config section shares (kept apart so section modules can import it)."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

# \Z, not $: `$` also matches before a trailing newline, which would let "name\n" through
NAME_PATTERN = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
