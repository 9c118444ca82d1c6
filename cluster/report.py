"""`evolve report RUN_DIR [--out DIR]`: a run's figures as PNGs and one self-contained report.html.

    RUN_DIR/events.jsonl (+ summary.json when the run ended)
        -> cluster.report_data series per loop -> cluster.report_plots figures
        -> OUT/<figure>.png and OUT/report.html (the same PNGs inlined as base64: one file to mail)

It reads what is there, so it works on a run that is still going; `evolve run`
writes it into the run directory when a run ends.  A loop's figures are the
ones its kind declares (core/config/kinds.py `Figures.report`; the kind is read
from the run's config.yaml), each drawn only when the run wrote its events.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import re
import time
from pathlib import Path
from typing import Any

from cluster import report_data as data
from cluster.errors import UserError
from cluster.rundir import read_events
from core.config.kinds import figures_of

TITLE = "Evolve run report"


@dataclasses.dataclass
class Report:
    html: Path
    pngs: list[Path]
    finished: bool  # the run wrote its `finished` event


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Report:
    from cluster import report_plots as plots  # matplotlib only when a report is asked for

    run_dir = Path(run_dir)
    events_path = run_dir / "events.jsonl"
    if not events_path.is_file():
        raise UserError(f"{run_dir} is not a run directory: no events.jsonl")
    out = Path(out) if out is not None else run_dir
    out.mkdir(parents=True, exist_ok=True)
    events = read_events(events_path)
    summary = _read_json(run_dir / "summary.json")
    t0 = data.run_start(events)
    loops = data.by_loop(events)
    kinds = loop_kinds(run_dir)
    figures = {  # every figure a kind may declare: its name -> how it is drawn from a loop's events
        "heldout": lambda loop, evs: plots.heldout(loop, *data.heldout_vs_feedback(evs)),
        "eval_return": lambda loop, evs: plots.eval_return(loop, *data.eval_vs_env_steps(evs)),
        "learner": lambda loop, evs: plots.learner(loop, data.learner_series(evs, t0)),
        "masked_accuracy": lambda loop, evs: plots.masked_accuracy(loop, data.masked_accuracy(evs)),
        "perplexity": lambda loop, evs: plots.perplexity(loop, data.perplexity(evs)),
        "reward": lambda loop, evs: plots.reward_and_kl(loop, data.reward_and_kl(evs, t0)),
        "decision_reward": lambda loop, evs: plots.decision_reward(loop, data.decision_reward(evs, t0)),
        "timeline": lambda loop, evs: plots.timeline(loop, *data.timeline(evs, t0)),
    }

    sections: list[tuple[str, list[tuple[str, Any]]]] = []  # (heading, [(png name, figure)])
    for loop, evs in loops.items():
        if loop in ("run", "replay", "publisher"):
            continue
        figs = [(name, figures[name](loop, evs)) for name in figures_of(kinds.get(loop)).report]
        sections.append((f"loop {loop}", [(f"{_slug(loop)}_{name}", fig) for name, fig in figs]))
    shared = [("publish_latency", plots.publish_latency(data.publish_latencies(loops.get("publisher", [])))),
              ("replay", plots.replay(data.replay_series(loops.get("replay", []), t0)))]
    sections.append(("publishing and replay", shared))

    pngs: list[Path] = []
    body: list[str] = []
    for heading, figs in sections:
        images = []
        for name, fig in figs:
            if fig is None:
                continue
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
            plots.close(fig)
            path = out / f"{name}.png"
            path.write_bytes(buf.getvalue())
            pngs.append(path)
            images.append(f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
                          f'{base64.b64encode(buf.getvalue()).decode()}"><figcaption>{html.escape(name)}.png'
                          "</figcaption></figure>")
        if images:
            body.append(f"<h2>{html.escape(heading)}</h2>\n" + "\n".join(images))
    finished = any(e.get("loop") == "run" and e.get("event") == "finished" for e in events)
    page = _page(run_dir, events, summary, finished, body)
    report_path = out / "report.html"
    tmp = report_path.with_name(report_path.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(report_path)  # a browser open on the old report never reads half a file
    return Report(report_path, pngs, finished)


def _page(run_dir: Path, events: list[dict], summary: dict | None, finished: bool, body: list[str]) -> str:
    run = (summary or {}).get("run", {})
    name = run.get("name") or run_dir.name
    state = (f"finished ({run.get('stopped_by', '?')}, {run.get('wall_s', 0):.0f} s)" if finished
             else f"still going: {len(events)} events so far")
    loops = (summary or {}).get("loops", {})
    tables = []
    for loop, facts in loops.items():
        cells = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_short(v))}</td></tr>"
                        for k, v in facts.items() if not isinstance(v, (list, dict)))
        tables.append(f"<h3>summary: {html.escape(loop)}</h3><table>{cells}</table>")
    tables += [_continual_table(loop, figures) for loop, figures in _continual(events, loops).items()]
    generated = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{TITLE}: {html.escape(name)}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 60em; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; }} figcaption {{ color: #666; font-size: small; }}
table {{ border-collapse: collapse; font-size: small; }} th, td {{ border: 1px solid #ddd; padding: 2px 8px; text-align: left; }}
</style></head>
<body>
<h1>{TITLE}: {html.escape(name)}</h1>
<p>Run directory <code>{html.escape(str(run_dir))}</code>; {html.escape(state)}. Generated {generated}.</p>
{"".join(tables)}
{"".join(body) or "<p>No figures yet: the run has written no progress.</p>"}
</body></html>
"""


CONTINUAL = ("seen", "finished", "ACC", "BWT", "FWT", "worst_accuracy", "worst_group", "min_ACC", "stability_gap")


def _continual(events: list[dict], loops: dict[str, Any]) -> dict[str, dict]:
    """Each grouped loop's continual figures: summary.json's once the run ended, else its newest
    `continual` event (a run still going, a stream that never finished)."""
    out = {e["loop"]: e for e in events if e.get("event") == "continual" and "ACC" in e}
    out.update({loop: facts["continual"] for loop, facts in loops.items() if isinstance(facts.get("continual"), dict)})
    return out


def _continual_table(loop: str, figures: dict) -> str:
    cells = "".join(f"<tr><th>{k}</th><td>{html.escape(_short(figures.get(k)))}</td></tr>" for k in CONTINUAL)
    return f"<h3>continual learning: {html.escape(loop)}</h3><table>{cells}</table>"


def loop_kinds(run_dir: Path) -> dict[str, str]:
    """Each loop's kind, from the run's resolved config.yaml; {} when it is missing or unreadable."""
    import yaml

    try:
        loops = (yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}).get("loops")
    except (OSError, yaml.YAMLError, AttributeError):
        return {}
    if not isinstance(loops, dict):
        return {}
    return {name: loop.get("kind") for name, loop in loops.items() if isinstance(loop, dict)}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None  # a run still going has no summary yet


def _short(value: Any, limit: int = 120) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
