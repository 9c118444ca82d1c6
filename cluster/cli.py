"""`evolve`: run a config, look at a cluster, check a cluster file, play an env through a served policy.

Expected failures (a bad config, an unreachable cluster, an invalid cluster
file) print one line and exit non-zero; only bugs produce a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from cluster.errors import UserError
from core.config.loader import ConfigError, resolve, validate
from core.storage.run_hold import StorageHeld, StorageUnreachable


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evolve",
        description="Evolve keeps models learning after they ship: Ray actors generate experience, "
        "Ray Train learners improve the policy, Ray Serve publishes it back.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the evolution loops of a config", description="Run the loops of CONFIG.")
    _add_run_arguments(run, "configs/default.yaml")
    run.set_defaults(func=_cmd_run)

    pretrain = sub.add_parser(
        "pretrain",
        help="masked-LM pretraining of the encoder, published to the registry",
        description="Pretrain a BERT encoder by masked language modelling, or a causal LM by next-token "
        "prediction, on Ray Train (the config's loops of kind mlm or clm): `evolve run CONFIG` on those loops "
        "alone, with serving.enabled=false. At the budget it "
        "evaluates, checkpoints and publishes; a second call with the same --run-dir resumes from its last "
        "checkpoint.",
    )
    _add_run_arguments(pretrain, "configs/mlm.yaml")
    pretrain.set_defaults(func=_cmd_pretrain)

    rollback = sub.add_parser(
        "rollback",
        help="make an older version of a policy live again",
        description="Make VERSION (default: the one before the live one) of POLICY live again. With --address the "
        "running loop's publish gate switches every Serve replica and actor now; with --run-dir/--registry only the "
        "registry pointer moves (for a run that is not live).",
    )
    rollback.add_argument("policy", metavar="POLICY", help="policy id, e.g. sentiment")
    rollback.add_argument("--to", type=int, metavar="VERSION", help="version to make live (default: the previous one)")
    where = rollback.add_mutually_exclusive_group()
    where.add_argument("--address", help="a live run's cluster: 'auto' or ray://host:10001")
    where.add_argument("--run-dir", help="a run directory (its registry/)")
    where.add_argument("--registry", help="a registry directory or fsspec URL")
    rollback.add_argument("--namespace", default="evolve", help="Ray namespace of the live run (default: evolve)")
    rollback.set_defaults(func=_cmd_rollback)

    status = sub.add_parser("status", help="show a running cluster and its loops",
                            description="Show nodes, resources, Serve apps and one row per running loop: live "
                            "version, held-out accuracy or eval return, feedback and env-step rates, last gate "
                            "decision, open alarms, replay sizes.")
    status.add_argument("--address", default="auto", help="cluster to inspect (default: auto, the local one)")
    status.add_argument("--watch", nargs="?", type=_positive_float, const=5.0, metavar="SECONDS",
                        help="print again every SECONDS (default 5) until Ctrl-C")
    status.add_argument("--namespace", default="evolve", help="Ray namespace of the runs (default: evolve)")
    status.set_defaults(func=_cmd_status)

    report = sub.add_parser("report", help="a run's figures: PNGs and one self-contained report.html",
                            description="Plot RUN_DIR's events (held-out accuracy, eval return, publish latency, "
                            "replay, learner, drift alarms) into PNGs and report.html (images inlined). Works on a "
                            "run that is still going.")
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.add_argument("--out", metavar="DIR", help="write here (default: RUN_DIR)")
    report.set_defaults(func=_cmd_report)

    cluster = sub.add_parser("cluster", help="cluster file tools", description="Tools for ray_cluster.yaml.")
    csub = cluster.add_subparsers(dest="cluster_command", required=True, metavar="SUBCOMMAND")
    validate = csub.add_parser(
        "validate",
        help="check a `ray up` file with Ray's schema and Evolve's rules",
        description="Check PATH with Ray's autoscaler schema validation plus Evolve's rules.",
    )
    validate.add_argument("path", nargs="?", default="ray_cluster.yaml", metavar="PATH")
    validate.add_argument("--learner-resource", default="learner", help="custom resource learners ask for")
    validate.add_argument("--config", action="append", default=[], metavar="RUN_CONFIG",
                          help="a run config for this cluster: its storage must be shared (repeatable)")
    validate.set_defaults(func=_cmd_validate)

    stop = sub.add_parser("stop", help="end runs submitted as Ray jobs cleanly (loops stopped, summary written)")
    stop.add_argument("--address", help="the head's job server (default http://127.0.0.1:8265)")
    stop.add_argument("--job", help="only this submission id (default: every running evolve job)")
    stop.set_defaults(func=lambda a: _stop_cli().stop_runs(a.address, a.job))

    keys = sub.add_parser("keys", help="API keys for the served endpoints",
                          description="Create, list and revoke API keys (serving.auth). A key is printed once; "
                          "the file keeps its SHA-256 only.")
    ksub = keys.add_subparsers(dest="keys_command", required=True, metavar="SUBCOMMAND")
    kcreate = ksub.add_parser("create", help="make a key and print it once")
    kcreate.add_argument("--scopes", default="predict,feedback",
                         help="comma-separated: predict, feedback, admin (default: predict,feedback)")
    kcreate.add_argument("--name", default="", help="who the key is for")
    kcreate.set_defaults(func=lambda a: _keys_cli().create(a.file, a.scopes, a.name, a.env))
    klist = ksub.add_parser("list", help="ids, names, scopes, state")
    klist.set_defaults(func=lambda a: _keys_cli().list_keys(a.file))
    krevoke = ksub.add_parser("revoke", help="refuse a key from now on")
    krevoke.add_argument("key_id", metavar="ID")
    krevoke.set_defaults(func=lambda a: _keys_cli().revoke(a.file, a.key_id, a.env))
    for p in (kcreate, klist, krevoke):
        p.add_argument("--file", default="~/.evolve/keys.json",
                       help="the key store (serving.auth.keys_file; default: ~/.evolve/keys.json)")
    for p in (kcreate, krevoke):
        p.add_argument("--env", default="EVOLVE_API_KEYS",
                       help="serving.auth.keys_env: when this variable is set it wins over the file, and a "
                       "revoke is refused (default: EVOLVE_API_KEYS)")

    config = sub.add_parser("config", help="the resolved config of a preset, and every config key",
                            description="Look at configs: `show` prints a preset resolved (bases merged, overrides "
                            "applied, each loop's names filled in), as `evolve run` would run it; `keys` lists every "
                            "key with its default and its comment.")
    confsub = config.add_subparsers(dest="config_command", required=True, metavar="SUBCOMMAND")
    show = confsub.add_parser("show", help="print CONFIG resolved, as YAML",
                              description="Print CONFIG resolved: what `evolve run CONFIG` runs with and writes to "
                              "config.yaml in the run directory.")
    show.add_argument("config", metavar="CONFIG", help="YAML preset, e.g. configs/default.yaml")
    _add_set(show)
    show.set_defaults(func=lambda a: _config_cli().show(a.config, a.overrides))
    keys_ = confsub.add_parser("keys", help="every config key, its default and its comment",
                               description="List every config key (loops.<kind>.KEY: a key of each loop of that "
                               "kind), its default and its one-line comment.")
    keys_.add_argument("prefix", nargs="?", metavar="PREFIX", help="only keys that start with this, e.g. loops.<rl>")
    keys_.set_defaults(func=lambda a: _config_cli().keys(a.prefix))

    replay = sub.add_parser("replay", help="a run's replay store", description="Look into a run's replay store (offline).")
    rsub = replay.add_subparsers(dest="replay_command", required=True, metavar="SUBCOMMAND")
    inspect = rsub.add_parser("inspect", help="tables, sizes, version ranges, disk use",
                              description="Print the tables of RUN_DIR's replay store.")
    inspect.add_argument("run_dir", metavar="RUN_DIR")
    inspect.set_defaults(func=lambda a: _replay_cli().inspect_run(a.run_dir))
    export = rsub.add_parser("export", help="write a table's live rows to Parquet",
                             description="Write TABLE's live rows from RUN_DIR to OUT (Parquet).")
    export.add_argument("run_dir", metavar="RUN_DIR")
    export.add_argument("table", metavar="TABLE")
    export.add_argument("out", metavar="OUT")
    export.set_defaults(func=lambda a: _replay_cli().export_run(a.run_dir, a.table, a.out))

    play = sub.add_parser("play", help="play a gymnasium env through a served RL policy",
                          description="Play episodes of ENV_ID through the RL policy served at URL (the client "
                          "library, evolve_client): one batched /act per step for all running episodes. Prints each "
                          "finished episode's return, length and serving version, then the mean return of the last "
                          "100. Ctrl-C ends the running episodes as truncated and prints the summary.")
    play.add_argument("env_id", metavar="ENV_ID", help="a gymnasium env id, e.g. CartPole-v1")
    play.add_argument("--url", required=True,
                      help="the server (http://host:8000) or the policy's own URL (.../v1/policies/ID)")
    play.add_argument("--policy", metavar="ID", help="the policy id (needed when --url is the server)")
    play.add_argument("--key", help="an API key with the predict scope (serving.auth)")
    play.add_argument("--episodes", type=_positive_int, metavar="N", help="stop after N episodes (default: Ctrl-C)")
    play.add_argument("--num-envs", type=_positive_int, default=1, metavar="K",
                      help="episodes played at once, batched per request (default: 1)")
    play.add_argument("--seed", type=int, default=0, metavar="S", help="the env's seed (default: 0)")
    play.set_defaults(func=lambda a: _play_cli().play_env(a.env_id, a.url, a.policy, a.key, a.episodes, a.num_envs,
                                                          a.seed))
    return parser


def _keys_cli():
    from cluster import keys_cli

    return keys_cli


def _stop_cli():
    from cluster import stop_cli

    return stop_cli


def _config_cli():
    from cluster import config_cli

    return config_cli


def _replay_cli():
    from cluster import replay_cli

    return replay_cli


def _play_cli():
    from cluster import play_cli

    return play_cli


def _add_run_arguments(parser: argparse.ArgumentParser, example: str) -> None:
    parser.add_argument("config", metavar="CONFIG", help=f"YAML preset, e.g. {example}")
    parser.add_argument("--budget-s", type=_positive_float,
                        help="stop after this many seconds (default: the config's, else until Ctrl-C)")
    parser.add_argument("--address",
                        help="join a running cluster: 'auto' or ray://host:10001 (default: start an embedded one)")
    parser.add_argument("--run-dir", help="write the run here instead of runs/<name>/ (the same directory resumes)")
    parser.add_argument("--verbose", action="store_true",
                        help="print Ray's own worker and library log lines here too (default: into the run directory)")
    _add_set(parser)


def _add_set(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set loops.cartpole.learning.lr=1e-4 (repeatable; VALUE is YAML)",
    )


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _cmd_run(args: argparse.Namespace, extra: Sequence[str] = (), only_kinds: tuple[str, ...] = ()) -> int:
    """`only_kinds`: run the config's loops of these kinds alone (refused when it has none)."""
    from cluster.run import execute

    overrides = [*args.overrides, *extra]
    if args.budget_s is not None:
        overrides.append(f"run.budget_s={args.budget_s}")
    if args.address is not None:
        overrides.append(f"cluster.address={json.dumps(args.address)}")
    if args.run_dir is not None:
        overrides.append(f"run.run_dir={json.dumps(args.run_dir)}")
    data, touched = resolve(args.config, overrides)
    if only_kinds:
        loops = data.get("loops") if isinstance(data.get("loops"), dict) else {}
        data["loops"] = {n: loop for n, loop in loops.items() if isinstance(loop, dict) and loop.get("kind") in only_kinds}
        if not data["loops"]:
            raise ConfigError(args.config, "loops", f"no loop of kind {' or '.join(only_kinds)} to run")
    return execute(validate(data, args.config, touched), verbose=args.verbose)


def _cmd_pretrain(args: argparse.Namespace) -> int:
    """`evolve run CONFIG` on the config's pretraining loops (mlm, clm) alone, serving nothing."""
    return _cmd_run(args, ["serving.enabled=false"], only_kinds=("mlm", "clm"))


def _cmd_rollback(args: argparse.Namespace) -> int:
    from cluster.rollback_cli import rollback

    rollback(args.policy, to=args.to, registry=args.registry, run_dir=args.run_dir, address=args.address,
             namespace=args.namespace)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from cluster.status import print_status

    return print_status(args.address, watch_s=args.watch, namespace=args.namespace)


def _cmd_report(args: argparse.Namespace) -> int:
    from cluster.report import write_report

    report = write_report(args.run_dir, args.out)
    print(f"evolve: report {report.html} ({len(report.pngs)} figures"
          + ("" if report.finished else "; the run is still going") + ")")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from cluster.validate import validate_cluster_file

    report = validate_cluster_file(args.path, learner_resource=args.learner_resource, run_configs=args.config)
    for problem in report.problems:
        print(f"{report.path}: {problem}", file=sys.stderr)
    if not report.ok:
        print(f"{report.path}: invalid ({len(report.problems)} problem(s))", file=sys.stderr)
        return 1
    print(f"{report.path}: ok" + "".join(f"; {note}" for note in report.notes))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"evolve: config error: {exc}", file=sys.stderr)
        return 2
    except StorageHeld as exc:  # a second run on a live run's directory or storage
        print(f"evolve: refused: {exc}", file=sys.stderr)
        return 2
    except (UserError, StorageUnreachable) as exc:
        print(f"evolve: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("evolve: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
