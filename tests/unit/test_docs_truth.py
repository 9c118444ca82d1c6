"""The docs say only what is true: README.md's and docs/*.md's checkable claims, checked against the code.

The docs follow these conventions so that their claims can be checked:

(a) CLI help and output.  A fenced block right after `<!-- evolve [SUBCOMMAND ...] --help -->` is
    that command's `--help` at 80 columns, verbatim.  A fenced block right after
    `<!-- evolve output -->` holds `$ evolve ARGS` lines, each followed by what the command prints
    (stdout, then stderr); only commands that answer before Ray starts belong there.
(b) Config keys.  An inline code span (or a line of a ```bash block) holding a dotted name that
    starts with a run-level section (`run.`, `cluster.`, `serving.`, `registry.`, `learner.`,
    `replay.`, `loops.`) names a key `evolve config keys` lists.  In `loops.X...`, X is a loop
    name of a preset in configs/ (it stands for that loop's kind: `loops.sentiment` is
    `loops.<feedback>`), a kind placeholder (`loops.<rl>`), or any other `<...>` placeholder (any
    kind).  Elsewhere a `<...>` segment stands for a `<name>` of the listing, and a concrete
    name there (a table, a policy id) matches `<name>` too.  A span starting with a loop group
    (`learning.`, `gate.`, `adapt.`, `model.`, `data.`, `traffic.`, `acting.`, `eval.`, `drift.`,
    `corpus.`, `tokenizer.`) names a key of some loop kind.  `gate.<stage>` is a registered
    stage's section, and `learner.lr` (a key the loader refuses as moved, MOVED_KEYS) may be
    named as refused.  Not keys: names of repo files and
    Python modules (`cluster.yaml`, `serving.proto.build`), and a span that names `summary.json`
    (its fields share the loops' names: `summary.json: loops.sentiment.continual`).
(c) docs/architecture.md.  Every path in the first column of its module tables exists (relative
    to the package of the `| **pkg/** |` row above it, or to the repo root in a table without
    package rows; `*` globs, a trailing `/` is a directory), and every .py file of the packages
    but `__init__.py` is in one of those tables.
(d) Metrics.  Every `evolve_...` name the docs mention (as `ray_evolve_...` too, with Prometheus'
    suffixes; `*` globs) is one the code exports through ray.util.metrics (a Counter, Gauge or
    Histogram made with that name, or the status board's METRICS), and docs/observability.md
    names every one the code exports.  `evolve_pb2*` are the generated gRPC modules.
(e) Progress lines and `evolve status`.  A fenced block right after `<!-- progress-lines -->` is
    what cluster/progress_lines.py prints for the figures it shows: its loops are the loops of
    one preset, each figure one its kind declares or its loop reports, the block re-rendered by
    the formatter is the block.  One after `<!-- evolve status -->` is what
    cluster/run_status.format_table prints for the rows it shows, likewise.
(f) Links and paths.  Every relative link points to an existing file, and a `#fragment` to a
    heading there.  Every code span that is a repo path (it starts with a top-level directory:
    `tests/unit/test_auth.py`, `gate/stages/`) exists, and `path::test_name` names a test there.
"""

from __future__ import annotations

import ast
import contextlib
import fnmatch
import re
import shlex
from functools import lru_cache
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
PACKAGES = ("core", "actors", "learners", "serving", "gate", "cluster", "evolve_client")
SECTIONS = ("run", "cluster", "serving", "registry", "learner", "replay", "loops")
GROUPS = ("learning", "gate", "adapt", "model", "data", "traffic", "acting", "eval", "drift", "corpus", "tokenizer")
FILE_SUFFIXES = (".py", ".yaml", ".yml", ".json", ".jsonl", ".md", ".png", ".html", ".lock", ".lease", ".log", ".proto")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
MARKED = re.compile(r"^<!-- (.+?) -->\n```\w*\n(.*?)^```", re.S | re.M)


def _rel(doc: Path) -> str:
    return str(doc.relative_to(REPO))


def _marked(marker: str) -> list[tuple[Path, str, str]]:
    """(doc, marker text, block) for every fenced block right after a marker that `marker` matches."""
    return [(doc, m.group(1), m.group(2)) for doc in DOCS for m in MARKED.finditer(doc.read_text())
            if re.fullmatch(marker, m.group(1))]


def _code(text: str) -> list[str]:
    """The inline code spans of `text` outside fenced blocks, and the lines of its bash blocks."""
    bash = [line for m in FENCE.finditer(text) if m.group(1) in ("bash", "sh") for line in m.group(2).splitlines()]
    return re.findall(r"`([^`\n]+(?:\n[^`\n]+)?)`", FENCE.sub("", text)) + bash


# ---- (a) CLI help and output ---------------------------------------------------------------------
def _cli(argv: list[str], monkeypatch, capsys) -> str:
    from cluster.cli import main

    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.chdir(REPO)
    with contextlib.suppress(SystemExit):
        main(argv)
    out = capsys.readouterr()
    return out.out + out.err


def test_help_blocks_are_the_clis_help(monkeypatch, capsys):
    blocks = _marked(r"evolve( [a-z][a-z-]*)* --help")
    assert blocks, "no `<!-- evolve ... --help -->` block in the docs"
    for doc, marker, block in blocks:
        argv = marker.split()[1:]
        assert _cli(argv, monkeypatch, capsys) == block, \
            f"{_rel(doc)}: the block after <!-- {marker} --> is not `{marker}` (regenerate it with COLUMNS=80)"


def test_output_blocks_are_what_the_cli_prints(monkeypatch, capsys):
    blocks = _marked("evolve output")
    assert blocks, "no `<!-- evolve output -->` block in the docs"
    for doc, _, block in blocks:
        for command in re.split(r"^(?=\$ )", block, flags=re.M)[1:]:
            line, _, expected = command.partition("\n")
            argv = shlex.split(line.removeprefix("$ "))[1:]
            assert _cli(argv, monkeypatch, capsys) == expected, f"{_rel(doc)}: `{line}` prints something else"


# ---- (b) config keys -----------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _preset_loops() -> dict[str, str]:
    """Loop name -> kind, over every preset in configs/ (one name is one kind everywhere)."""
    from core.config.loader import resolve

    kinds: dict[str, str] = {}
    for preset in sorted((REPO / "configs").glob("*.yaml")):
        for name, loop in (resolve(preset)[0].get("loops") or {}).items():
            if loop is not None:
                assert kinds.setdefault(name, loop["kind"]) == loop["kind"], f"loop {name!r}: two kinds in the presets"
    return kinds


@lru_cache(maxsize=None)
def _listed() -> list[tuple[str, ...]]:
    from core.config.keys import config_keys

    return [tuple(k.key.split(".")) for k in config_keys()]


def _matches(segments: tuple[str, ...]) -> bool:
    return any(len(k) == len(segments) and all(d == x or x == "<name>" for d, x in zip(segments, k))
               for k in _listed())


def _key_problem(key: str) -> str | None:
    """None when `key` is a config key by the rules above, else why not."""
    from core.config.kinds import KINDS
    from core.config.loader import MOVED_KEYS

    seg = tuple(key.split("."))
    if seg[-2:-1] == ("gate",) and seg[-1] == "<stage>":  # a registered stage's own section
        seg = seg[:-1]
    if seg[0] == "learner" and len(seg) == 2 and seg[1] in MOVED_KEYS:  # named as refused, with its new place
        return None
    if seg[0] in GROUPS:
        return None if any(_matches(("loops", f"<{k}>", *seg)) for k in KINDS) else "no loop kind has this key"
    if seg[0] == "loops":
        loop = seg[1]
        if loop in _preset_loops():
            kinds = [_preset_loops()[loop]]
        elif loop.strip("<>") in KINDS:
            kinds = [loop.strip("<>")]
        elif loop.startswith("<"):
            kinds = list(KINDS)
        else:
            return f"{loop!r} is no loop of a preset in configs/, nor a <placeholder>"
        return None if any(_matches(("loops", f"<{k}>", *seg[2:])) for k in kinds) else \
            f"no key {'.'.join(seg[2:])} in loops of kind {' or '.join(kinds)}"
    return None if _matches(seg) else "`evolve config keys` lists no such key"


def _keys_in(span: str) -> list[str]:
    if "summary.json" in span:
        return []
    names = re.findall(rf"(?<![\w./<>=-])((?:{'|'.join(SECTIONS + GROUPS)})\.[\w<>.-]*[\w>])", span)
    return [n for n in names if not n.endswith(FILE_SUFFIXES) and not _is_module(n)]


def _is_module(name: str) -> bool:
    path = REPO / name.replace(".", "/")
    return path.with_suffix(".py").is_file() or path.is_dir() or path.parent.with_suffix(".py").is_file()


def test_config_keys_in_the_docs_exist():
    seen, wrong = 0, []
    for doc in DOCS:
        for span in _code(doc.read_text()):
            for key in _keys_in(span):
                seen += 1
                problem = _key_problem(key)
                if problem:
                    wrong.append(f"{_rel(doc)}: `{key}`: {problem}")
    assert seen > 50, f"only {seen} config keys found in the docs: is the pattern broken?"
    assert not wrong, "\n".join(wrong)


# ---- (c) the module tables -----------------------------------------------------------------------
def _architecture_paths() -> list[str]:
    """Repo-relative paths (globs, directories) in the first column of architecture.md's module tables."""
    paths, package, in_table = [], None, False
    for line in (REPO / "docs" / "architecture.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells is None:
            in_table, package = False, None
            continue
        if not in_table:
            in_table = cells[0] in ("module", "file")
            continue
        head = re.fullmatch(r"\*\*(\w+)/\*\*", cells[0])
        if head:
            package = head.group(1)
            continue
        for item in re.findall(r"`([^`]+)`", cells[0]):
            rooted = item.split("/")[0] in PACKAGES
            paths.append(item if rooted or package is None else f"{package}/{item}")
    return paths


def _exists(path: str) -> bool:
    if "*" in path:
        return any(REPO.glob(path))
    return (REPO / path).is_dir() if path.endswith("/") else (REPO / path).is_file()


def test_every_module_in_the_architecture_tables_exists():
    paths = _architecture_paths()
    assert len(paths) > 100, f"only {len(paths)} modules read from docs/architecture.md's tables"
    missing = [p for p in paths if not _exists(p)]
    assert not missing, f"docs/architecture.md lists modules that do not exist: {missing}"


def test_every_module_is_in_the_architecture_tables():
    listed = _architecture_paths()

    def covered(path: str) -> bool:
        return any(path.startswith(p) if p.endswith("/") else fnmatch.fnmatch(path, p) for p in listed)

    modules = sorted(str(p.relative_to(REPO)) for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")
                     if p.name != "__init__.py" and "__pycache__" not in p.parts)
    unlisted = [m for m in modules if not covered(m)]
    assert not unlisted, f"modules missing from docs/architecture.md's tables: {unlisted}"


# ---- (d) metrics ---------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _exported() -> frozenset[str]:
    from cluster.run_status import METRICS, REPLAY_METRIC

    names = {*METRICS, REPLAY_METRIC[0]}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                        and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("Counter", "Gauge", "Histogram") \
                        and str(node.args[0].value).startswith("evolve_"):
                    names.add(node.args[0].value)
    return frozenset(names)


def _metrics_in(text: str) -> set[str]:
    found = re.findall(r"(?<![\w-])(ray_)?(evolve_[a-z0-9_]*[a-z0-9*])", text)
    return {re.sub(r"_(total|bucket|sum|count)$", "", name) if ray else name for ray, name in found
            if "_pb2" not in name and name != "evolve_client"}  # the client library's package is no metric


def test_metrics_the_docs_name_are_exported():
    exported = _exported()
    assert len(exported) > 15, f"only {len(exported)} metrics found in the code: is the scan broken?"
    wrong = [f"{_rel(doc)}: {name}" for doc in DOCS for name in sorted(_metrics_in(doc.read_text()))
             if not fnmatch.filter(exported, name)]
    assert not wrong, "metrics the code does not export:\n" + "\n".join(wrong)


def test_every_exported_metric_is_documented():
    named = _metrics_in((REPO / "docs" / "observability.md").read_text())
    missing = sorted(m for m in _exported() if not any(fnmatch.fnmatch(m, n) for n in named))
    assert not missing, f"metrics docs/observability.md does not name: {missing}"


# ---- (e) progress lines and `evolve status` ------------------------------------------------------
CLOCK = re.compile(r"\[\s*(?P<elapsed>[\d.]+)s(?:/(?P<budget>\d+)s)?\] CPU (?P<used>[\d.]+)/(?P<total>\d+) used"
                   r"(?: \| replay (?P<replay>.*))?")


def _number(text: str):
    return int(text) if re.fullmatch(r"-?\d+", text) else float(text) if re.fullmatch(r"-?[\d.]+", text) else text


@lru_cache(maxsize=None)
def _preset_of(loops: frozenset[str]):
    """The first preset (loaded) whose loops include `loops`."""
    from core.config.loader import load_config

    for preset in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config(preset)
        if loops <= set(cfg.loops):
            return cfg
    raise AssertionError(f"no preset in configs/ runs the loops {sorted(loops)}")


@lru_cache(maxsize=None)
def _reported(kind: str) -> frozenset[str]:
    """The figures loops of `kind` may report: its declarations, and the string literals of its loop's modules."""
    from core.config.kinds import KINDS, figures_of

    fig = figures_of(kind)
    names = {*fig.lead, *fig.short, *fig.hidden, *fig.status.values(), *fig.rates.values()}
    module = KINDS[kind].loop.split(":")[0].rsplit(".", 1)[1]
    for path in [REPO / "cluster" / "loop.py", *(REPO / "cluster" / "loops").glob(f"{module}*.py")]:
        names |= {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
                  and isinstance(n.value, str)}
    return frozenset(names)


def _check_tables(doc: Path, replay: dict | None, cfg) -> None:
    unknown = sorted(set(replay or {}) - set(cfg.replay.tables))
    assert not unknown, f"{_rel(doc)}: replay tables {unknown} are not the tables of these loops"


def test_progress_line_examples_are_the_formatters():
    from cluster.progress_lines import progress_lines
    from core.config.kinds import figures_of

    blocks = _marked("progress-lines")
    assert blocks, "no `<!-- progress-lines -->` block in the docs"
    for doc, _, block in blocks:
        clock, *rows = block.splitlines()
        m = CLOCK.fullmatch(clock)
        assert m, f"{_rel(doc)}: {clock!r} is not a clock line"
        names = [row.split()[0] for row in rows]
        cfg = _preset_of(frozenset(names))
        kinds = {name: cfg.loops[name].kind for name in names}
        replay = {k: int(v) for k, v in (cell.split("=") for cell in (m["replay"] or "").split())} or None
        _check_tables(doc, replay, cfg)
        figures = {}
        for name, row in zip(names, rows):
            full = {short: figure for figure, short in figures_of(kinds[name]).short.items()}
            cells = dict(cell.split("=", 1) for cell in row.split()[1:])
            figures[name] = {full.get(k, k): _number(v) for k, v in cells.items()}
            strange = sorted(set(figures[name]) - _reported(kinds[name]))
            assert not strange, f"{_rel(doc)}: loop {name!r} (kind {kinds[name]}) reports no figure {strange}"
        total = int(m["total"])
        usage = {"total": {"CPU": total}, "available": {"CPU": total - float(m["used"])}}
        budget = float(m["budget"]) if m["budget"] else None
        rendered = progress_lines(float(m["elapsed"]), budget, usage, figures, replay, kinds=kinds)
        assert "\n".join(rendered) + "\n" == block, \
            f"{_rel(doc)}: the formatter prints this block as:\n" + "\n".join(rendered)


STATUS_HEAD = re.compile(r"run (?P<run>\S+): (?P<elapsed>\d+)s, (?P<dir>[^;]*); replay (?P<replay>.*?)"
                         r" \(updated (?P<ago>\d+)s ago\)")
STATUS_ROW = re.compile(r"  (?P<loop>\S+)\s+(?P<live>\S+)\s+(?P<fig>\S+)\s+(?P<fb>\S+)\s+(?P<steps>\S+)  "
                        r"(?P<gate>.{18}) (?P<alarms>.*)")


def test_status_examples_are_format_table():
    from cluster.run_status import format_table

    blocks = _marked("evolve status")
    assert blocks, "no `<!-- evolve status -->` block in the docs"
    for doc, _, block in blocks:
        head, _, *rows = block.splitlines()
        h = STATUS_HEAD.fullmatch(head)
        assert h, f"{_rel(doc)}: {head!r} is not a status run line"
        cfg = _preset_of(frozenset(STATUS_ROW.fullmatch(r)["loop"] for r in rows))
        loops = {}
        for row in rows:
            r = STATUS_ROW.fullmatch(row)
            assert r, f"{_rel(doc)}: {row!r} is not a status row"
            none = {k: (None if v.strip() == "-" else _number(v.strip())) for k, v in r.groupdict().items()}
            figure = "heldout_acc" if cfg.loops[r["loop"]].kind == "feedback" else "eval_return"
            loops[r["loop"]] = {"version": none["live"], figure: none["fig"], "feedback_per_s": none["fb"],
                                "env_steps_per_s": none["steps"], "last_gate": none["gate"],
                                "open_alarms": [] if none["alarms"] is None else none["alarms"].split(", ")}
        replay = {k: int(v) for k, v in (cell.split("=") for cell in h["replay"].split(", "))}
        _check_tables(doc, replay, cfg)
        snapshot = {"run": h["run"], "elapsed_s": int(h["elapsed"]), "run_dir": h["dir"], "replay": replay,
                    "updated_at": 1000.0 - int(h["ago"]), "loops": loops}
        rendered = format_table([snapshot], now=1000.0)
        assert "\n".join(rendered) + "\n" == block, \
            f"{_rel(doc)}: `evolve status` prints this block as:\n" + "\n".join(rendered)


# ---- (f) links -----------------------------------------------------------------------------------
def _anchors(doc: Path) -> set[str]:
    text = FENCE.sub("", doc.read_text())
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, re.M)}


def test_relative_links_point_to_files_and_headings():
    wrong, seen = [], 0
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("", doc.read_text())):
            if re.match(r"[a-z]+:", target):
                continue
            seen += 1
            path, _, fragment = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.exists():
                wrong.append(f"{_rel(doc)}: ({target}): no such file")
            elif fragment and file.suffix == ".md" and fragment not in _anchors(file):
                wrong.append(f"{_rel(doc)}: ({target}): no heading #{fragment} in {file.name}")
    assert seen > 20, f"only {seen} relative links found: is the pattern broken?"
    assert not wrong, "\n".join(wrong)


TOP_DIRS = (*PACKAGES, "tests", "configs", "benchmarks", "dashboards", "docs")


def _path_problem(span: str) -> str | None:
    """Why the repo path (or `path::test`, or `test_x.py::test` found under tests/) in `span` is wrong."""
    m = re.fullmatch(rf"((?:{'|'.join(TOP_DIRS)})/[\w/.-]*|test_\w+\.py)(?:::(\w+))?", span)
    path, test = m.groups()
    if "/" not in path:
        files = sorted((REPO / "tests").rglob(path))
        if not test:
            return None
    else:
        files = [REPO / path] if _exists(path) else []
    if not files:
        return "no such file or directory"
    if test and not any(re.search(rf"^\s*(async )?def {test}\(", f.read_text(), re.M) for f in files):
        return f"no {test} in {', '.join(str(f.relative_to(REPO)) for f in files)}"
    return None


def test_repo_paths_in_the_docs_exist():
    """A path with `<...>` is a pattern and a dot-file is written by a run; neither is checked.  A span
    `::test_name` names a test in the file of the path before it on the same line."""
    path_span = re.compile(rf"((?:{'|'.join(TOP_DIRS)})/[\w/.-]*|test_\w+\.py)(::\w+)?")
    wrong, seen = [], 0
    for doc in DOCS:
        for line in FENCE.sub("", doc.read_text()).splitlines():
            last = None
            for span in re.findall(r"`([^`]+)`", line):
                if span.startswith("::") and last:
                    span = last + span
                if not path_span.fullmatch(span) or "/." in span:
                    continue
                seen += 1
                last = span.split("::")[0]
                problem = _path_problem(span)
                if problem:
                    wrong.append(f"{_rel(doc)}: `{span}`: {problem}")
    assert seen > 50, f"only {seen} repo paths found in the docs: is the pattern broken?"
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("doc", DOCS, ids=_rel)
def test_docs_keep_out_dates_and_issue_numbers(doc):
    if doc.name in ("reliability.md",):  # its tables carry the measured figures, with their dates
        return
    found = re.findall(r"\b20\d\d-\d\d-\d\d\b|\bissue \d+\b", doc.read_text())
    assert not found, f"{_rel(doc)}: dates and issue numbers belong in benchmarks/README.md: {found}"

