"""`evolve cluster validate`: Ray's own autoscaler schema, then Evolve's rules.

Ray's checks run first on the file as written (a misspelled key is caught
before defaults are merged in), then the way `ray up` prepares it.  Our rules
add what Ray cannot know: a head type that exists, a node type that carries
the learner resource, whole-number resources, token auth on, a dashboard
that is not bound to a public interface, and, for a cluster that can have
worker nodes, run configs (--config) that keep their state on shared storage.
"""

from __future__ import annotations

import copy
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

LEARNER_RESOURCE = "learner"


@dataclass
class ValidationReport:
    path: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def validate_cluster_file(path: str | os.PathLike[str], learner_resource: str = LEARNER_RESOURCE,
                          run_configs: list[str | os.PathLike[str]] | tuple = ()) -> ValidationReport:
    """`run_configs`: Evolve configs meant for this cluster; on a multi-node cluster each must
    keep its registry, replay and Train storage on shared storage (core/storage/paths.py)."""
    report = ValidationReport(str(path))
    config = _read(Path(path), report)
    if config is None:
        return report
    report.problems += _ray_schema_problems(config)
    report.problems += _our_rules(config, learner_resource, report.notes)
    if report.ok:
        report.problems += _ray_prepare_problems(config)
    report.problems += _storage_problems(config, run_configs, report.notes)
    return report


def _multi_node(config: dict[str, Any]) -> bool:
    """Whether the cluster may ever have a worker node besides the head."""
    types = config.get("available_node_types") or {}
    head = config.get("head_node_type")
    workers = [spec for name, spec in types.items() if name != head and isinstance(spec, dict)]
    return bool(config.get("max_workers", 0)) and any(
        spec.get("max_workers", config.get("max_workers", 0)) or spec.get("min_workers", 0) for spec in workers)


def _storage_problems(config: dict[str, Any], run_configs, notes: list[str]) -> list[str]:
    if not _multi_node(config):
        return []
    if not run_configs:
        notes.append("multi-node: pass the run's config (--config configs/cluster.yaml) to check its storage")
        return []
    from core.config.loader import ConfigError, load_config
    from core.storage.paths import RunStorage, shared_storage_problems

    out = []
    for run_config in run_configs:
        try:
            cfg = load_config(run_config)
        except ConfigError as exc:
            out.append(f"{run_config}: {exc}")
            continue
        storage = RunStorage.resolve(cfg.run.storage, cfg.registry.uri, cfg.replay.dir, cfg.run.resolved_run_dir())
        problems = shared_storage_problems(storage)
        out += [f"{run_config}: {p}" for p in problems]
        if not problems:
            notes.append(f"{run_config}: registry {storage.registry}, replay {storage.replay}, "
                         f"train {storage.train}")
    return out


def _read(path: Path, report: ValidationReport) -> dict[str, Any] | None:
    if not path.is_file():
        report.problems.append("no such file")
        return None
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        report.problems.append(f"not valid YAML: {' '.join(str(exc).split())}")
        return None
    if not isinstance(config, dict):
        report.problems.append("top level must be a mapping")
        return None
    return config


def _ray_schema_problems(config: dict[str, Any]) -> list[str]:
    import jsonschema
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    validator = jsonschema.Draft7Validator(schema)
    out = []
    for err in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        out.append(f"{where}: {err.message} [ray schema]")
    return out


def _our_rules(config: dict[str, Any], learner_resource: str, notes: list[str]) -> list[str]:
    out: list[str] = []
    node_types = config.get("available_node_types")
    if not isinstance(node_types, dict) or not node_types:
        return ["available_node_types: missing or empty; Evolve needs a head, CPU and GPU learner node types"]
    head = config.get("head_node_type")
    if head is None:
        out.append("head_node_type: missing")
    elif head not in node_types:
        out.append(f"head_node_type: {head!r} is not one of available_node_types {sorted(node_types)}")
    learner_types = []
    for name, spec in node_types.items():
        resources = (spec or {}).get("resources", {}) if isinstance(spec, dict) else {}
        if not isinstance(resources, dict):
            out.append(f"available_node_types.{name}.resources: must be a mapping")
            continue
        for res, value in resources.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                out.append(
                    f"available_node_types.{name}.resources.{res}: resource {res!r} must be a whole number >= 0, "
                    f"got {value!r} (Ray schedules fractions per task, not per node)"
                )
        if resources.get(learner_resource):
            learner_types.append(name)
            if not resources.get("GPU"):
                notes.append(f"node type {name!r} carries {learner_resource!r} but no GPU: learners will train on CPU")
    if not learner_types:
        out.append(
            f"available_node_types: no node type carries the {learner_resource!r} resource that learners ask for "
            f"(add `{learner_resource}: 1` to the GPU worker's resources)"
        )
    else:
        notes.append(f"learners land on: {', '.join(learner_types)}")
    out += _start_command_rules(config)
    return out


def _start_command_rules(config: dict[str, Any]) -> list[str]:
    out = []
    head_cmds = " ".join(map(str, config.get("head_start_ray_commands") or []))
    worker_cmds = " ".join(map(str, config.get("worker_start_ray_commands") or []))
    if re.search(r"--dashboard-host[= ](0\.0\.0\.0|::)", head_cmds):
        out.append(
            "head_start_ray_commands: dashboard bound to a public interface; "
            "use --dashboard-host=127.0.0.1 and `ray dashboard` (SSH tunnel)"
        )
    for key, cmds in (("head_start_ray_commands", head_cmds), ("worker_start_ray_commands", worker_cmds)):
        if "RAY_AUTH_MODE=token" not in cmds:
            out.append(f"{key}: token auth is off; start Ray with RAY_AUTH_MODE=token on every node")
    return out


def _ray_prepare_problems(config: dict[str, Any]) -> list[str]:
    """The path `ray up` takes: merge provider defaults, then Ray's full validation."""
    import logging

    from ray.autoscaler._private.util import prepare_config, validate_config

    logging.getLogger("ray.autoscaler").setLevel(logging.WARNING)
    try:
        validate_config(prepare_config(copy.deepcopy(config)))
    except Exception as exc:  # jsonschema / ValueError / KeyError from Ray's own checks
        message = getattr(exc, "message", None) or " ".join(str(exc).split())
        return [f"{message} [ray prepare_config/validate_config]"]
    return []
