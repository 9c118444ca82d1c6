"""`evolve play ENV_ID --url URL`: play a gymnasium env through a served RL policy (evolve_client).

One line per finished episode (its number, return, length and the version that served it),
then a summary with the mean return of the last 100. Ctrl-C stops at the next vector step:
the running episodes are ended as truncated and the summary is printed. A refusal or an
unreachable server ends it with the client's reason.
"""

from __future__ import annotations

import signal
import sys
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from cluster.errors import UserError

# Extra PolicyClient arguments: tests give a transport (httpx.MockTransport) and a sleep here.
CLIENT_OPTIONS: dict[str, Any] = {}


def play_env(env_id: str, url: str, policy: str | None = None, key: str | None = None, episodes: int | None = None,
             num_envs: int = 1, seed: int = 0) -> int:
    import gymnasium as gym

    from evolve_client import PolicyClient, PolicyClientError
    from evolve_client.play import EpisodeResult, play

    try:
        client = PolicyClient(url, key=key, policy_id=policy, **CLIENT_OPTIONS)
    except ValueError as exc:
        raise UserError(str(exc)) from exc

    def line(ep: EpisodeResult) -> None:
        served = "?" if not ep.versions else ",".join(map(str, ep.versions)) if len(ep.versions) <= 3 else \
            f"{ep.versions[0]}..{ep.versions[-1]} ({len(ep.versions)})"  # a long episode outlives many versions
        print(f"episode {ep.number}: return {ep.episode_return:g}, length {ep.length}, "
              f"version{'s' if len(ep.versions) > 1 else ''} {served}", flush=True)

    stop = threading.Event()
    with client, _stop_on_interrupt(stop):
        try:
            summary = play(env_id, client, episodes=episodes, num_envs=num_envs, seed=seed, on_episode=line, stop=stop)
        except PolicyClientError as exc:
            raise UserError(f"the policy server at {client.base_url}: {exc}") from exc
        except gym.error.Error as exc:
            raise UserError(f"env {env_id!r}: {exc}") from exc
        except ValueError as exc:
            raise UserError(str(exc)) from exc
    mean = "none yet" if summary.mean_return is None else f"{summary.mean_return:.2f}"
    print(f"{summary.episodes} episode(s), {summary.steps} steps in {summary.seconds:.1f} s "
          f"({summary.steps_per_s:.0f} steps/s); mean return of the last {len(summary.last_returns)}: {mean}"
          + ("; stopped" if stop.is_set() else ""))
    return 130 if stop.is_set() else 0


@contextmanager
def _stop_on_interrupt(stop: threading.Event) -> Iterator[None]:
    """The first Ctrl-C asks the player to stop after its vector step; a second one interrupts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def first(signum: int, frame: Any) -> None:
        stop.set()
        print("evolve: stopping after this step (Ctrl-C again to interrupt)", file=sys.stderr)
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
