"""The run says its endpoints line only once each loop's route answers (cluster/run.py)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from cluster.run import _wait_for_routes


class _Proxy(BaseHTTPRequestHandler):
    """Serve's proxy before and after it learns a route: 404 for the first `missing` GETs, then 405."""

    missing = 3
    seen = 0

    def do_GET(self):  # noqa: N802 (http.server's name)
        type(self).seen += 1
        self.send_response(404 if type(self).seen <= type(self).missing else 405)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def proxy():
    _Proxy.seen = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def test_waits_past_the_404s_until_the_route_answers(proxy):
    _Proxy.missing = 3
    _wait_for_routes({"http": proxy, "grpc": "[::]:9000", "loop_predict": f"{proxy}/v1/predict"}, timeout_s=30)
    assert _Proxy.seen == 4  # three 404s, then the 405 that says the route is live; the base URL is not asked


def test_gives_up_at_the_deadline(proxy):
    _Proxy.missing = 10**9
    t0 = time.monotonic()
    _wait_for_routes({"loop_predict": f"{proxy}/v1/predict"}, timeout_s=1.0)
    assert 1.0 <= time.monotonic() - t0 < 60  # returns; a GET under load may take its whole 5 s timeout
    assert _Proxy.seen >= 2
