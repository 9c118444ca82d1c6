"""What a loop with its own Serve app, joiner and gate actor shares (the generate and decisions loops).

A loop mixing it in sets `self.app` (a deployed app with `app_name`), `self.joiner_name` and
`self.gate` (a GateActor handle) when it launches; both may still be None if the launch failed.
"""

from __future__ import annotations

from typing import Any

import ray

from cluster.learner_run import get_or
from cluster.loop import plain_event
from serving.feedback_app import stop_joiner


class AppAndGate:
    app: Any = None
    gate: Any = None
    joiner_name: str

    def forward_gate_events(self) -> None:
        """The gate's buffered events (promotions, refusals, ...) into the run's events.jsonl."""
        for ev in get_or(self.gate.drain_events.remote(), []):
            kind = ev.pop("event", "gate")
            self.event(kind, **plain_event(ev))

    def teardown(self) -> None:
        """Undeploy the app, flush and stop its joiner, end the gate."""
        if self.app is not None:
            from ray import serve

            serve.delete(self.app.app_name)
            stop_joiner(self.joiner_name)
        if self.gate is not None:
            ray.kill(self.gate, no_restart=True)
