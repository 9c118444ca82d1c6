"""`evolve run` stops cleanly on SIGTERM even after Ray's start-up took the signal over."""

from __future__ import annotations

import os
import signal

from cluster.run import StopSignals


def test_sigterm_after_another_handler_took_over_still_stops_the_run():
    original = signal.getsignal(signal.SIGTERM)
    stop = StopSignals()
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # what ray.init does (its handler ends the process)
        stop.install()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.wait(5), "SIGTERM did not reach the run's handler"
        assert stop.reason == "terminated"
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) == original  # the handler from before the first install
