"""The `rollout` command (SPEC 10). Exit codes: 0 success, 1 check or criteria failed,
2 usage or configuration error."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from proxy import __version__
from proxy.config.load import load_config, resolve_config_path
from proxy.control import history_view, moves, pilot_commands, views
from proxy.control.console import EXIT_FAILED, EXIT_USAGE
from proxy.control.progress_inputs import parse_duration
from proxy.errors import ConfigError
from proxy.telemetry.logs import setup_logging

if TYPE_CHECKING:
    from proxy.demo.pilot import AutopilotRunner

# Event loop implementations `rollout serve --loop` offers (see bench/RESULTS.md).
LOOPS = ("asyncio", "uvloop")
DEFAULT_LOOP = "uvloop"

Command = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    _setup_logging(args)
    args.config_path = resolve_config_path(getattr(args, "config", None))
    try:
        return int(args.func(args))
    except ConfigError as exc:
        _print_config_error(exc)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `rollout status | head`: the reader left; exit quietly like other Unix tools.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS keeps a `-c` given before the command from being reset by the subparser.
    common.add_argument(
        "-c",
        "--config",
        default=argparse.SUPPRESS,
        help="config file (default: $ROLLOUT_CONFIG, else config/rollout.yaml)",
    )
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
    )
    parser = argparse.ArgumentParser(
        prog="rollout",
        description="Session-sticky gradual rollout from the Legacy API to the Signal API.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"rollout-proxy {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    def add(name: str, func: Command, help_text: str, example: str) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=help_text,
            epilog=f"example:\n  {example}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func, command=name)
        return p

    p = add("serve", cmd_serve, "run the proxy", "rollout serve -c /etc/rollout/rollout.yaml")
    p.add_argument(
        "--grace",
        type=float,
        default=1.0,
        help="seconds between turning not-ready and closing the listener on SIGTERM",
    )
    p.add_argument(
        "--poll-interval",
        type=float,
        default=1.0,
        help="seconds between config file checks; 0 = only SIGHUP and POST /-/reload",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes sharing the listen port (SO_REUSEPORT), each with its own guard; "
        "/metrics aggregates them (default 1)",
    )
    p.add_argument(
        "--loop",
        choices=LOOPS,
        default=DEFAULT_LOOP,
        help=f"event loop implementation (default {DEFAULT_LOOP}; see bench/RESULTS.md)",
    )
    p.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)

    p = add(
        "demo",
        cmd_demo,
        "start sample signal and legacy APIs plus the proxy on loopback",
        "rollout demo",
    )
    p.add_argument("--port", type=int, default=8080, help="proxy port (default 8080)")
    p.add_argument("--admin-port", type=int, default=9180)
    p.add_argument("--signal-port", type=int, default=8000)
    p.add_argument("--legacy-port", type=int, default=8001)
    p.add_argument(
        "--autopilot",
        action="store_true",
        help="start at 0 %%, send built-in traffic and let the autopilot walk the plan "
        "(0 -> 10 -> 30 -> 50 -> 80 %% in about two minutes, then wait for `rollout approve`)",
    )
    p.add_argument(
        "--break-signal",
        action="store_true",
        help="with --autopilot: the signal API fails 15 %% of requests once the rollout "
        "reaches 30 %%, so you watch the guard trip and the autopilot roll back",
    )

    p = add(
        "check", views.cmd_check, "validate the config file", "rollout check -c config/rollout.yaml"
    )
    p.add_argument(
        "--preview",
        action="store_true",
        help="also show who the file would move, against what the running proxy serves",
    )
    p.add_argument("--admin", metavar="URL", help="admin listener (default: from the config)")

    p = add(
        "explain",
        views.cmd_explain,
        "show bucket, side and reason for one session id under the current config",
        "rollout explain alice --path /signals/anomaly",
    )
    p.add_argument("session_id")
    p.add_argument("--path", default="/", help="request path (selects the feature)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    _add_ops_commands(add)
    _add_autopilot_commands(add)
    return parser


def _add_autopilot_commands(
    add: Callable[[str, Command, str, str], argparse.ArgumentParser],
) -> None:
    """The autopilot's commands (SPEC 13): the controller, the operator's word to it, and the
    change log."""
    from proxy.control.autopilot_view import cmd_autopilot

    p = add(
        "autopilot",
        cmd_autopilot,
        "run the autopilot: bake, analyse, promote or roll back by itself; "
        "`rollout autopilot status` says where it stands",
        "rollout autopilot --dry-run",
    )
    p.add_argument(
        "action",
        nargs="?",
        choices=["status"],
        help="status: where the autopilot stands and what it does next",
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="one analysis, then exit (0 pass/hold, 1 fail, 3 inconclusive, 4 unreadable)",
    )
    p.add_argument("--dry-run", action="store_true", help="decide and print; write nothing")
    p.add_argument("--admin", metavar="URL", help="admin listener (default: from the config)")
    p.add_argument("--json", action="store_true", help="with status: machine-readable output")

    reason = "why: recorded in the history"
    p = add(
        "approve",
        pilot_commands.cmd_approve,
        "let the autopilot enter the gate it waits at (given early: the next gate)",
        "rollout approve --reason 'go to 100 %, agreed in #ops'",
    )
    p.add_argument("--reason", metavar="TEXT", help=reason)
    p = add(
        "pause",
        pilot_commands.cmd_pause,
        "stop the autopilot's decisions until `rollout resume`",
        "rollout pause --reason 'load test tonight'",
    )
    p.add_argument("--reason", metavar="TEXT", help=reason)
    p = add(
        "resume",
        pilot_commands.cmd_resume,
        "restart the autopilot's decisions (also after a pause it put itself in)",
        "rollout resume --reason 'load test over'",
    )
    p.add_argument("--reason", metavar="TEXT", help=reason)

    p = add(
        "history",
        history_view.cmd_history,
        "the change log, newest last, with the figures each decision saw",
        "rollout history --last 5",
    )
    p.add_argument(
        "--last",
        type=_count,
        default=history_view.DEFAULT_LAST,
        metavar="N",
        help=f"entries to show (default {history_view.DEFAULT_LAST}; 0 = all)",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _add_ops_commands(
    add: Callable[[str, Command, str, str], argparse.ArgumentParser],
) -> None:
    def live(p: argparse.ArgumentParser) -> None:
        p.add_argument("--admin", metavar="URL", help="admin listener (default: from the config)")

    def edit(p: argparse.ArgumentParser) -> None:
        live(p)
        p.add_argument("--reason", metavar="TEXT", help="why: recorded in the history")
        p.add_argument(
            "--dry-run",
            action="store_true",
            help="print the change and who it would move (from the running proxy); write nothing",
        )

    p = add(
        "status",
        views.cmd_status,
        "configured and live state: percentage, stage, guard, per-upstream figures",
        "rollout status --json",
    )
    live(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add(
        "set",
        moves.cmd_set,
        "set the rollout percentage (or one feature's)",
        "rollout set 30 --reason 'stage 2 approved in #ops'",
    )
    p.add_argument("percentage", type=float, metavar="PCT")
    p.add_argument("--feature", metavar="NAME", help="a feature under rollout.features")
    edit(p)

    p = add(
        "stage",
        moves.cmd_stage,
        "set the percentage to stage N of rollout.stages (stage 0 is the first)",
        "rollout stage 2 --reason 'metrics green for 24 h'",
    )
    p.add_argument("n", type=int, metavar="N")
    edit(p)

    p = add(
        "promote",
        moves.cmd_promote,
        "move to the next stage, only when the promotion criteria hold on live figures",
        "rollout promote --reason 'error rate 0.2 %, p95 80 ms'",
    )
    p.add_argument("--force", action="store_true", help="promote even if criteria fail")
    edit(p)

    p = add(
        "rollback",
        moves.cmd_rollback,
        "move to the previous stage below the current percentage (--gradual: in steps)",
        "rollout rollback --gradual --step 5 --every 60 --reason 'p95 regression'",
    )
    edit(p)
    _add_gradual_options(p)

    p = add(
        "emergency",
        moves.cmd_emergency,
        "send everything to legacy now (percentages are kept); --off to clear",
        "rollout emergency --reason 'signal outage'",
    )
    p.add_argument("--off", action="store_true", help="clear the emergency")
    edit(p)

    p = add(
        "test",
        views.cmd_test,
        "smoke test /health, /signals?limit=10, /signals/stats via the proxy and each upstream",
        "rollout test --url http://127.0.0.1:8080",
    )
    p.add_argument("--url", help="proxy URL (default: from the config's listen address)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = add(
        "report",
        views.cmd_report,
        "signal vs legacy side by side, with the verdict against the criteria",
        "rollout report --prometheus http://prometheus:9090 --window 10m",
    )
    live(p)
    p.add_argument("--prometheus", metavar="URL", help="figures from Prometheus, all replicas")
    p.add_argument("--window", default="5m", help="range for --prometheus (default 5m)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--markdown",
        action="store_true",
        help="the progress report as GitHub-flavoured Markdown: stages, changes, figures "
        "per stage, guard trips, fallbacks, autopilot, shadow, smoke test, next step",
    )
    p.add_argument(
        "--since",
        type=_duration,
        metavar="DURATION",
        help="with --markdown: the history range, e.g. 30m, 24h, 7d (default 24h)",
    )
    p.add_argument(
        "--no-smoke", action="store_true", help="with --markdown: do not run the smoke test"
    )

    p = add(
        "diff",
        views.cmd_diff,
        "shadow comparison: match rate per feature and the most recent mismatches",
        "rollout diff --limit 5",
    )
    live(p)
    p.add_argument("--limit", type=int, default=20, help="mismatches to show (default 20)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _add_gradual_options(p: argparse.ArgumentParser) -> None:
    """`rollout rollback --gradual` (SPEC 14): its options, and the dispatch to it."""
    from proxy.control.gradual import DEFAULT_EVERY, DEFAULT_STEP

    p.add_argument(
        "--gradual",
        action="store_true",
        help="lower the percentage in steps, each written and logged; Ctrl-C or SIGTERM stops "
        "it where it is (exit 130 / 143); a change by someone else stops it (exit 1)",
    )
    p.add_argument(
        "--step",
        type=float,
        metavar="PCT",
        help=f"with --gradual: percentage points per step (default {DEFAULT_STEP:g})",
    )
    p.add_argument(
        "--every",
        type=float,
        metavar="SECONDS",
        help=f"with --gradual: seconds between two steps (default {DEFAULT_EVERY:g})",
    )
    p.add_argument(
        "--to",
        type=float,
        metavar="PCT",
        help="with --gradual: where to stop (default: the previous stage)",
    )
    p.set_defaults(func=_rollback)


def _rollback(args: argparse.Namespace) -> int:
    from proxy.control.gradual import cmd_rollback_gradual

    if args.gradual:
        return cmd_rollback_gradual(args)
    given = [f"--{name}" for name in ("step", "every", "to") if getattr(args, name) is not None]
    if given:
        print(f"rollout rollback: {', '.join(given)} only with --gradual", file=sys.stderr)
        return EXIT_USAGE
    return moves.cmd_rollback(args)


def _duration(text: str) -> str:
    try:
        parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text.strip()


def _setup_logging(args: argparse.Namespace) -> None:
    setup_logging(verbose=bool(getattr(args, "verbose", False)))


def _print_config_error(exc: ConfigError) -> None:
    print(f"error: invalid configuration {exc.source}:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  - {problem}", file=sys.stderr)


def cmd_serve(args: argparse.Namespace) -> int:
    from proxy.app import run_loop, serve

    path = args.config_path
    load_config(path)  # invalid config: exit 2 before binding anything
    if args.workers < 1:
        print("error: --workers must be at least 1", file=sys.stderr)
        return EXIT_USAGE
    if args.workers > 1 and args.worker_index is None:
        from proxy.workers import run_workers

        return run_workers(
            path,
            args.workers,
            grace=args.grace,
            poll_interval=args.poll_interval,
            loop=args.loop,
        )
    return run_loop(
        args.loop,
        serve(
            path,
            grace=args.grace,
            poll_interval=args.poll_interval,
            worker_index=args.worker_index,
        ),
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from proxy.demo.run import DemoPorts, run_demo

    ports = DemoPorts(
        proxy=args.port, admin=args.admin_port, signal=args.signal_port, legacy=args.legacy_port
    )
    if args.break_signal and not args.autopilot:
        print("rollout demo: --break-signal needs --autopilot", file=sys.stderr)
        return EXIT_USAGE
    runner: AutopilotRunner | None = None
    if args.autopilot:
        # Imported here: only this command needs the controller.
        from proxy.control.autopilot import run_autopilot
        from proxy.demo.pilot import say

        def runner(path: Path, stop: threading.Event) -> int:
            return run_autopilot(path, stop=stop, say=say)

    return asyncio.run(run_demo(ports, autopilot=runner, break_signal=args.break_signal))


__all__ = ["build_parser", "main"]
