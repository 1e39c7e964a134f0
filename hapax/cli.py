"""The ``hapax`` command: ``serve``, ``validate``, ``keys create`` and ``report``; and the roles apart,
``control-plane``, ``ext-proc`` and ``envoy`` (hapax/roles.py)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from control_plane.config.errors import ConfigError
from control_plane.config.load import load_config, summarize
from control_plane.config.served import route_lines
from hapax import focus_parquet, ledger_report, logs, roles


def _serve(args: argparse.Namespace) -> int:
    from hapax.ports import PortInUse
    from hapax.supervisor import ServeOptions, StartupError, serve

    logs.setup("supervisor", args.log_level or "INFO")
    options = ServeOptions(
        config_path=Path(args.config) if args.config else None,
        port=args.port,
        admin_port=args.admin_port,
        metrics_port=args.metrics_port,
        envoy_log_level=args.envoy_log_level,
        envoy_max_heap_mb=args.envoy_max_heap_mb,
        envoy_concurrency=args.envoy_concurrency,
        log_level=args.log_level,
        validation_timeout=args.validation_timeout,
    )
    if args.ready_timeout is not None:
        options = replace(options, ready_timeout=args.ready_timeout)
    try:
        return asyncio.run(serve(options))
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    except (StartupError, PortInUse) as err:
        print(f"hapax: could not start: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


def _validate(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as err:
        for issue in err.issues:
            print(f"{err.source}: {issue}", file=sys.stderr)
        print(f"{err.source}: {len(err.issues)} error(s)", file=sys.stderr)
        return 1
    for warning in config.warnings:
        print(f"{config.source}: warning: {warning}", file=sys.stderr)
    if args.envoy:
        from hapax.envoy_process import EnvoyNotFound

        try:
            failure = _envoy_validate(config)
        except (EnvoyNotFound, OSError) as err:  # no envoy binary, or one that cannot be run
            print(f"{config.source}: cannot run envoy to validate: {err}", file=sys.stderr)
            return 1
        if failure:
            print(f"{config.source}: Envoy rejects the generated configuration:\n{failure}", file=sys.stderr)
            return 1
    print(summarize(config))
    print("\n".join(f"  {line}" for line in route_lines(config)))
    return 0


def _keys_create(args: argparse.Namespace) -> int:
    from hapax.client_keys import new_key

    key, line = new_key()
    # The key on stdout alone (a script can capture it); what to do with it on stderr.
    print(f"A new key for client '{args.client}'. It is shown once: give it to the client now.",
          file=sys.stderr)
    print(key)
    print(f"Add its line to clients.{args.client}.keys in hapax.yaml (the gateway stores only this):\n"
          f"  clients:\n    {args.client}:\n      keys:\n        - \"{line.htpasswd}\"", file=sys.stderr)
    return 0


def _report(args: argparse.Namespace) -> int:
    from hapax import focus, focus_csv

    by = tuple(dict.fromkeys(args.by or ledger_report.DEFAULT_BY))  # in order, once each
    try:
        if args.parquet:
            focus_parquet.require()  # before anything is read or written
        if args.csv or args.parquet:
            focus.columns(by)  # a clash fails before the ledger is read
        period = ledger_report.Period.of(args.since, args.until, datetime.now(UTC))
    except (focus_parquet.ParquetUnavailable, focus.ColumnClash, ledger_report.PeriodError) as err:
        return _report_failed(err, 2)
    try:
        if args.ledger.startswith(ledger_report.POSTGRES_SCHEMES):
            report = ledger_report.read_postgres_report(args.ledger, period, by)
        else:
            report = ledger_report.read_report(Path(args.ledger), period, by)
    except ledger_report.LedgerError as err:
        return _report_failed(err, 1)
    print(ledger_report.describe(report, Path(args.ledger)))
    files = ((args.csv, focus_csv.write), (args.parquet, focus_parquet.write))
    return max((_write_file(report, path, write) for path, write in files if path), default=0)


def _write_file(report: ledger_report.Report, path: str, write: Callable[[ledger_report.Report, Path], int]) -> int:
    try:
        rows = write(report, Path(path))
    except OSError as err:
        return _report_failed(f"cannot write {path}: {err.strerror or err}", 1)
    print(f"Wrote {rows} rows (a group's day each) to {path}", file=sys.stderr)
    return 0


def _report_failed(problem: object, code: int) -> int:
    print(f"hapax report: {problem}", file=sys.stderr)
    return code


def _envoy_validate(config) -> str:
    from control_plane.resources.names import Address, ExtProcEndpoints
    from control_plane.resources.stats import envoy_stats_tags, stats_label_keys
    from control_plane.snapshot import build_snapshot
    from control_plane.static_bootstrap import envoy_rejection
    from hapax.envoy_process import envoy_binary

    endpoints = ExtProcEndpoints(grpc=(Address("127.0.0.1", 1),), http=(Address("127.0.0.1", 2),),
                                 verdicts=(Address("127.0.0.1", 3),))
    snapshot = build_snapshot(config, "validate", endpoints)
    return envoy_rejection(envoy_binary(), snapshot, envoy_stats_tags(stats_label_keys(config)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hapax", description="LLM gateway on Envoy")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway (control plane, ext_proc, Envoy)")
    serve.add_argument("--config", help="hapax.yaml; without it, a built-in default "
                       "(local fake providers unless OPENAI_API_KEY / ANTHROPIC_API_KEY are set)")
    serve.add_argument("--port", type=int, help="listen port (overrides server.port; 0 = any free port)")
    serve.add_argument("--admin-port", type=int, help="Envoy admin port on 127.0.0.1 (overrides server.admin_port)")
    serve.add_argument("--metrics-port", type=int, help="Prometheus port (overrides server.metrics_port)")
    serve.add_argument("--log-level", help="debug | info | warning | error (overrides logging.level)")
    serve.add_argument("--envoy-log-level", default="warning")
    serve.add_argument("--envoy-max-heap-mb", type=int, default=1024,
                       help="Envoy's heap ceiling: past 98 %% of it, new requests get 503 overloaded")
    serve.add_argument("--envoy-concurrency", type=int,
                       help="Envoy worker threads (default: one per CPU; 1 when pinned to one core)")
    serve.add_argument("--ready-timeout", type=float,
                       help="seconds each process has to start, beyond the steps it announces with their "
                            "bounds (default 60)")
    serve.add_argument("--validation-timeout", type=float,
                       help="seconds Envoy's validation of each config version may take; past them the "
                            "version is served without it (default 30)")
    validate = sub.add_parser("validate", help="check a config file and print every error")
    validate.add_argument("--config", required=True)
    validate.add_argument("--envoy", action="store_true",
                          help="also check the generated Envoy configuration with envoy --mode validate")
    keys = sub.add_parser("keys", help="client API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="print a new client key once, and the line the config stores")
    create.add_argument("client", help="the client (clients.NAME in hapax.yaml) the key is for")
    _add_report_arguments(sub.add_parser("report", help="what requests cost, from the cost ledger, by label or column"))
    # The roles apart take their own processes' options as they are (their --help lists them).
    for role, what in (("control-plane", "the xDS control plane alone (one per fleet)"),
                       ("ext-proc", "one ext_proc worker alone (beside each Envoy)")):
        sub.add_parser(role, help=what, add_help=False).add_argument("options", nargs=argparse.REMAINDER)
    roles.envoy_arguments(sub.add_parser("envoy", help="Envoy alone, for a control plane elsewhere"))
    # argparse hands a role's options that look like its own (--help) back as unknown: they are the role's.
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command not in ("control-plane", "ext-proc"):
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if unknown:
        args.options = [*unknown, *args.options]
    commands = {"serve": _serve, "validate": _validate, "keys": _keys_create, "report": _report,
                "control-plane": _control_plane, "ext-proc": _ext_proc, "envoy": _envoy}
    return commands[args.command](args)


def _control_plane(args: argparse.Namespace) -> int:
    from control_plane.server import main as control_plane_main

    return control_plane_main(args.options, prog="hapax control-plane")


def _ext_proc(args: argparse.Namespace) -> int:
    from ext_proc.server import main as ext_proc_main

    return ext_proc_main(args.options, prog="hapax ext-proc")


def _envoy(args: argparse.Namespace) -> int:
    try:
        return roles.run_envoy(args)
    except (roles.RoleError, ConfigError) as err:
        print(f"hapax envoy: {err}", file=sys.stderr)
        return 2


def _add_report_arguments(report: argparse.ArgumentParser) -> None:
    report.add_argument("--ledger", required=True, metavar="DIR|URL",
                        help="the ledger's directory (its monthly SQLite files), or its postgresql:// URL")
    report.add_argument("--since", type=_argument(ledger_report.utc_day), metavar="YYYY-MM-DD",
                        help="first UTC day (default: the first of the month the period ends in)")
    report.add_argument("--until", type=_argument(ledger_report.utc_day), metavar="YYYY-MM-DD",
                        help="last UTC day, included (default: up to now)")
    report.add_argument("--by", action="extend", type=_argument(ledger_report.group_keys), metavar="KEY[,KEY...]",
                        help="group by a metrics label (default: department) or a column: "
                             f"{', '.join(ledger_report.GROUP_COLUMNS)}; several comma-separated or repeated")
    report.add_argument("--csv", metavar="OUT.csv",
                        help="also write one row per group and UTC day, in FinOps FOCUS column names")
    report.add_argument("--parquet", metavar="OUT.parquet",
                        help=f"the same rows as --csv, typed, in a Parquet file (needs {focus_parquet.INSTALL})")


def _argument(parse: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse ``type`` whose ValueError message argparse shows as it is."""
    def checked(text: str) -> object:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err
    return checked


if __name__ == "__main__":
    sys.exit(main())
