"""`evolve rollback POLICY [--to VERSION]`: make an older version of a policy live again.

Two ways, for two situations:
- a run is live (`--address auto` or `ray://...`): ask that run's publish gate (the named actor
  `evolve-gate-<policy>`), which moves the registry pointer *and* pushes the version to every
  Serve replica and rollout actor at once;
- no run is live (`--registry URI` or `--run-dir DIR`): move the pointer in the registry; the next
  run, or a publisher that re-reads the registry, serves that version.  Refused while a run holds
  a lease on that registry (`core.storage.registry_lease`): its replicas would keep serving the old version.
"""

from __future__ import annotations

from pathlib import Path

from cluster.errors import UserError
from core.storage.registry import PolicyNotFound, StageConflict
from core.storage.registry_lease import RegistryInUse, refuse_if_live
from core.storage.paths import RunStorage, is_url


def rollback(policy_id: str, to: int | None = None, registry: str | None = None, run_dir: str | None = None,
             address: str | None = None, namespace: str = "evolve") -> dict:
    if address is not None:
        result = _rollback_live(policy_id, to, address, namespace)
    else:
        result = _rollback_offline(policy_id, to, _registry_uri(registry, run_dir))
    print(f"{policy_id}: v{result['from']} -> v{result['to']} is live ({result.get('reason', 'manual')})")
    return result


def _registry_uri(registry: str | None, run_dir: str | None) -> str:
    if registry:
        return registry
    if run_dir:
        path = _run_registry(Path(run_dir))
        if is_url(path):
            return path
        if not Path(path).is_dir():
            raise UserError(f"{run_dir}: no registry at {path} (is it a run directory?)")
        return str(path)
    raise UserError("say where the policy lives: --address auto (a live run), --run-dir DIR or --registry URI")


def _run_registry(run_dir: Path) -> str:
    """Where the run kept its registry (registry.uri, else run.storage/registry), from its recorded
    config; <run dir>/registry when there is none."""
    if not (run_dir / "config.yaml").is_file():
        return str(run_dir / "registry")
    from core.config.loader import load_config

    cfg = load_config(run_dir / "config.yaml")
    return RunStorage.resolve(cfg.run.storage, cfg.registry.uri, cfg.replay.dir, run_dir).registry


def _rollback_offline(policy_id: str, to: int | None, uri: str) -> dict:
    from gate.pointer import GateError, rollback_registry

    try:
        refuse_if_live(uri, f"roll {policy_id!r} back")
        return rollback_registry(uri, policy_id, to, reason="manual (evolve rollback)")
    except (PolicyNotFound, GateError, RegistryInUse, StageConflict) as exc:
        raise UserError(str(exc)) from None


def _rollback_live(policy_id: str, to: int | None, address: str, namespace: str) -> dict:
    import ray

    from cluster.connect import ClusterConnectError, probe
    from cluster.gate_actor import gate_name

    try:
        probe(address)
        ray.init(address=address, namespace=namespace, logging_level="WARNING")
    except (ConnectionError, ClusterConnectError, RuntimeError, ValueError) as exc:
        raise UserError(f"cannot reach Ray at {address}: {exc}") from None
    try:
        try:
            gate = ray.get_actor(gate_name(policy_id), namespace=namespace)
        except ValueError:
            raise UserError(f"no live run serves policy {policy_id!r} on {address} "
                            f"(no actor {gate_name(policy_id)!r}); use --run-dir or --registry") from None
        try:
            return ray.get(gate.rollback.remote(policy_id, to, "manual (evolve rollback)"), timeout=120)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause if getattr(exc, "cause", None) is not None else exc
            raise UserError(f"rollback refused: {cause}") from None
    finally:
        ray.shutdown()
