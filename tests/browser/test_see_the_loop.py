"""A real `evolve run` (both loops of `make run`), looked at as a user would: a quiet terminal,
`evolve status`, Ray's metrics export holding every series of dashboards/evolve.json, the API docs
and the Ray dashboard in headless Chromium (offline: every host but loopback unresolvable), and the
run's report.html once it ends.  Screenshots go to runs/browser-check/ (EVOLVE_SCREENSHOTS overrides).

`make test-browser`; needs the OS package `chromium` (.ci/run installs it).
"""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import matplotlib.image
import numpy as np
import pytest
import ray

from tests.conftest import REPO, free_port
from tests.integration.helpers import CliProcess, wait_until

pytestmark = pytest.mark.browser

BUDGET_S = 300
SHOTS = Path(os.environ.get("EVOLVE_SCREENSHOTS", REPO / "runs" / "browser-check"))
# what Evolve itself prints: its own lines, the progress clock, and the per-loop lines under it
OWN_LINE = re.compile(r"^(evolve: |\[ *\d+\.\ds(/\d+s)?\] |  \S+ +\S+=)")


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "headless Chromium is missing: apt-get install -y chromium (.ci/run does)"
    return found


def browse(url: str, name: str, tmp_path: Path) -> tuple[str, np.ndarray]:
    """The rendered DOM and a screenshot of `url`, with every host but loopback unresolvable."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = SHOTS / f"{name}.png"
    shot.unlink(missing_ok=True)
    common = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
              f"--user-data-dir={tmp_path / ('chromium-' + name)}", "--window-size=1280,1600",
              "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",  # a CDN asset would not load
              "--virtual-time-budget=15000"]  # let the page's scripts render before the snapshot
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    got = subprocess.run([*common, f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    assert got.returncode == 0 and shot.is_file(), got.stderr[-2000:]
    return dom.stdout, matplotlib.image.imread(shot)


def assert_not_blank(image: np.ndarray, name: str) -> None:
    rgb = image[..., :3]
    inked = (rgb < 0.9).any(axis=-1).mean()  # share of pixels that are not (near) white
    assert inked > 0.01 and rgb.std() > 0.02, f"{name}: the screenshot is blank ({inked:.4f} inked)"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    http_port, dash_port = free_port(), free_port()
    proc = CliProcess(
        "run", "configs/default.yaml", "--budget-s", str(BUDGET_S), "--run-dir", str(tmp / "run"),
        "--set", f"serving.http_port={http_port}", "--set", f"cluster.dashboard_port={dash_port}",
        "--set", "run.progress_interval_s=2",
        "--set", f"loops.sentiment.model.encoder_registry={tmp / 'no-encoder'}",
        "--set", "loops.sentiment_mlm=null", "--set", "loops.sentiment.model.encoder_loop=null",  # pages, not pretraining
    )
    try:
        proc.wait_for_line("evolve: loop 'cartpole' started", timeout_s=600)
        address = proc.wait_for_line("evolve: Ray ", timeout_s=5).split(" at ")[-1].strip()
        yield {"proc": proc, "tmp": tmp, "http": f"http://127.0.0.1:{http_port}",
               "dash": f"http://127.0.0.1:{dash_port}", "address": address, "run_dir": tmp / "run"}
    finally:
        if proc.proc.poll() is None:
            proc.proc.terminate()
            proc.wait(timeout_s=180)


def test_status_prints_the_loop_table(run):
    def table():  # the rows come with the run's first progress line after its loops started
        proc = CliProcess("status", "--address", run["address"])
        assert proc.wait(timeout_s=120) == 0, proc.output
        return proc.output if "(loops starting)" not in proc.output else None

    lines = wait_until(table, 120, "the loop table in `evolve status`", every_s=5).splitlines()
    assert any(line.startswith("run default: ") and str(run["run_dir"]) in line for line in lines), lines
    assert any(line.split()[:3] == ["loop", "live", "acc/ret"] for line in lines), lines
    row = next(line for line in lines if line.strip().startswith("sentiment "))
    assert row.split()[1] != "-", row  # a live version


def _dashboard_series() -> list[str]:
    """The series dashboards/evolve.json queries, as Ray's export names them."""
    board = json.loads((REPO / "dashboards" / "evolve.json").read_text())
    return sorted({m for p in board["panels"] for m in re.findall(r"ray_evolve_\w+", p["targets"][0]["expr"])})


def test_ray_metrics_export_has_every_dashboard_series(run):
    ray.init(address=run["address"], logging_level="ERROR", log_to_driver=False)
    try:
        port = next(n["MetricsExportPort"] for n in ray.nodes() if n.get("Alive"))
    finally:
        ray.shutdown()
    wanted = _dashboard_series()

    def scraped():
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        have = {m.group(1) for m in re.finditer(r"^(ray_evolve_\w+?)(?:\{[^}]*\})? [-+0-9.eE]+", text, re.M)}
        missing = [name for name in wanted if name not in have]
        return None if missing else have

    try:
        wait_until(scraped, 180, "every dashboard series in Ray's metrics export")
    except AssertionError:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        have = sorted(set(re.findall(r"^(ray_evolve_\w+?)(?:\{|\s)", text, re.M)))
        raise AssertionError(f"missing: {sorted(set(wanted) - set(have))}; exported: {have}") from None


def test_api_docs_render_offline(run, tmp_path):
    dom, image = browse(f"{run['http']}/v1/docs", "v1-docs", tmp_path)
    assert "<title>Evolve feedback - Swagger UI</title>" in dom
    paths = set(re.findall(r'data-path="([^"]+)"', dom))
    assert {"/predict", "/feedback"} <= paths, paths  # Swagger UI drew the routes from the spec
    assert_not_blank(image, "v1-docs")


def test_the_dashboard_overview_renders(run, tmp_path):
    dom, image = browse(f"{run['dash']}/#/overview", "ray-dashboard", tmp_path)
    assert "<title>Overview | Ray Dashboard</title>" in dom  # the app's own title for the page it rendered
    assert_not_blank(image, "ray-dashboard")


def test_the_run_ends_with_a_quiet_terminal_and_a_report(run, tmp_path):
    assert run["proc"].wait(timeout_s=BUDGET_S + 300) == 0, run["proc"].output
    noise = [line for line in run["proc"].lines if line.strip() and not OWN_LINE.match(line)]
    assert not noise, "lines Evolve did not print reached the terminal:\n" + "\n".join(noise[:20])
    assert (run["run_dir"] / "ray-driver.log").is_file() and (run["run_dir"] / "ray-logs").is_dir()
    report = run["run_dir"] / "report.html"
    pngs = sorted(run["run_dir"].glob("*.png"))
    assert report.is_file() and pngs
    assert f"evolve: report {report} ({len(pngs)} figures)" in run["proc"].output
    shutil.copy(report, SHOTS / "report.html")  # the page itself beside its screenshot
    dom, image = browse(report.as_uri(), "report", tmp_path)
    assert "<title>Evolve run report: default</title>" in dom
    assert dom.count("data:image/png;base64,") == len(pngs)
    assert_not_blank(image, "report")
