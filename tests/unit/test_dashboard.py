"""dashboards/evolve.json: current with its generator, one panel per exported metric, datasource a variable."""

import importlib.util
import json

from cluster.run_status import METRICS, REPLAY_METRIC
from tests.conftest import REPO


def _build():
    spec = importlib.util.spec_from_file_location("dashboard_build", REPO / "dashboards" / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_checked_in_dashboard_is_what_the_generator_writes():
    assert json.loads((REPO / "dashboards" / "evolve.json").read_text()) == _build().dashboard()


def test_every_loop_metric_has_a_panel_with_a_unit():
    board = _build().dashboard()
    exprs = [p["targets"][0]["expr"] for p in board["panels"]]
    for name in [*METRICS, REPLAY_METRIC[0], *(m[0] for m in _build().ACTOR_METRICS)]:
        assert any(f"ray_{name}" in e for e in exprs), name
    assert all(p["datasource"] == "${datasource}" and p["description"].endswith(")") for p in board["panels"])
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "window"}
