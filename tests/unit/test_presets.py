"""Every preset resolves to what the previous config shape resolved, key by key, except for renamed
keys: tests/data/resolved_before/ holds the previous resolutions, tests/unit/preset_renames.py the
rename map.  And each preset states only its difference: at most 40 lines of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from core.config.loader import dump_config, load_config

sys.path.insert(0, str(Path(__file__).parent))
from preset_renames import NEW_BY_KIND, NEW_KEYS, NEW_LOOPS, PRESET_CHANGED, flatten, migrate  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
BEFORE = REPO / "tests/data/resolved_before"
PRESETS = sorted((REPO / "configs").glob("*.yaml"))
MAX_LINES = 40


def _new_key(key: str, actual: dict) -> bool:
    """A key the previous shape did not have: one of NEW_KEYS, or of its kind's, inside a loop."""
    parts = key.split(".")
    if parts[0] != "loops":
        return False
    if parts[1] in NEW_LOOPS:
        return True
    inner = ".".join(parts[2:])
    return inner in NEW_KEYS or inner in NEW_BY_KIND.get(actual.get(f"loops.{parts[1]}.kind"), set())


@pytest.mark.parametrize("preset", [p for p in PRESETS if (BEFORE / f"{p.stem}.json").exists()], ids=lambda p: p.stem)
def test_a_preset_resolves_as_before_except_renamed_keys(preset):
    expected = flatten(migrate(json.loads((BEFORE / f"{preset.stem}.json").read_text())))
    for key, (before, now) in PRESET_CHANGED.get(preset.stem, {}).items():
        assert expected[key] == before, key
        expected[key] = now
    shown = subprocess.run([sys.executable, "-m", "cluster.cli", "config", "show", str(preset)], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    actual = flatten(yaml.safe_load(shown.stdout))
    differ = {k: (v, actual.get(k, "<absent>")) for k, v in expected.items() if actual.get(k, "<absent>") != v}
    assert not differ, f"{preset.name}: (before, now) {differ}"
    added = sorted(k for k in actual if k not in expected and not _new_key(k, actual))
    assert not added, f"{preset.name}: keys the previous version did not resolve: {added}"


def test_every_preset_has_a_previous_resolution_or_is_new():
    new = {"two_of_each", "clm", "generate", "decisions"}  # presets the previous version did not have
    assert {p.stem for p in PRESETS} - new == {p.stem for p in BEFORE.glob("*.json")}


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_a_preset_states_only_its_difference(preset):
    lines = preset.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_LINES, f"{preset.name}: {len(lines)} lines"


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_the_resolved_config_reloads_as_itself(preset, tmp_path):
    cfg = load_config(preset)
    out = tmp_path / "config.yaml"
    out.write_text(dump_config(cfg))
    assert load_config(out) == cfg
