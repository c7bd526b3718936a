"""Command line: start a local Runflow, print one JSON line when ready, stop on SIGINT/SIGTERM.

    python -m backdrop_local.runflow --port 0 --api-key rf_live_local \\
        --allow-http-origin http://127.0.0.1:5555 --create-callback-secret --create-429 0.1

The JSON line carries ``url`` and, with ``--create-callback-secret``, ``callback_secret`` (the plain
``whsec_...`` string) so a wrapper script can configure its receiver from it.

Every ``FaultSettings`` field is a flag of the same name with dashes (``--idempotency-keys ignore``,
``--outputs-per-run 3``, ``--processing instant``, ...), typed, bounded and defaulted as the field
is (see ``faults``); ``add_fault_arguments`` and ``faults_from_args`` give another command line
(the local stack's) the same flags.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import fields
from types import FrameType
from typing import Any

from backdrop_local.runflow.emulator import DEFAULT_RETRY_DELAYS, LocalRunflow
from backdrop_local.runflow.faults import RULES, FaultSettings, coerce, problem


def _delays(raw: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in raw.split(",") if part.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of seconds: {raw!r}") from exc
    if any(value < 0 for value in values):
        raise argparse.ArgumentTypeError("delays must not be negative")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m backdrop_local.runflow",
        description="Local Runflow API for runflow/background-color (loopback only).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default 0)")
    parser.add_argument(
        "--api-key", action="append", dest="api_keys", metavar="KEY", help="accepted API key (repeatable)"
    )
    parser.add_argument(
        "--allow-http-origin",
        action="append",
        dest="origins",
        default=[],
        metavar="ORIGIN",
        help="exact scheme://host:port that image_url may use over plain http (repeatable)",
    )
    parser.add_argument("--output-ttl", type=float, default=3600.0, help="output URL lifetime, seconds")
    parser.add_argument("--workers", type=int, default=2, help="runs processed at once")
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault-injection dice")
    parser.add_argument(
        "--create-callback-secret", action="store_true", help="create a current signing secret and print it"
    )
    parser.add_argument("--callback-secret-label", default="local")
    parser.add_argument(
        "--callback-retry-delays",
        type=_delays,
        default=DEFAULT_RETRY_DELAYS,
        metavar="S,S",
        help="seconds between callback attempts (default 1,2: three attempts)",
    )
    parser.add_argument("--log-level", default="WARNING")
    add_fault_arguments(parser)
    return parser


def _setting_type(name: str) -> Callable[[str], Any]:
    """Parse a flag's text as the setting ``name`` and check it as FaultSettings does."""
    kind = RULES[name].kind

    def parse(raw: str) -> Any:
        try:
            value: Any = raw if kind == "choice" else int(raw) if kind == "int" else float(raw)
        except ValueError as exc:
            expected = "an integer" if kind == "int" else "a number"
            raise argparse.ArgumentTypeError(f"{raw!r} is not {expected}") from exc
        found = problem(name, value)
        if found is not None:
            raise argparse.ArgumentTypeError(found["msg"])
        return coerce(name, value)

    return parse


def add_fault_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per FaultSettings field (``--create-429``, ``--outputs-per-run``, ...)."""
    faults = parser.add_argument_group("fault injection and test modes (rates 0..1; *-s in seconds)")
    for item in fields(FaultSettings):
        rule = RULES[item.name]
        faults.add_argument(
            f"--{item.name.replace('_', '-')}",
            dest=item.name,
            type=_setting_type(item.name),
            default=item.default,
            choices=rule.choices or None,
            metavar="|".join(rule.choices) if rule.choices else None,
            help=f"{rule.help} (default {item.default})",
        )


def faults_from_args(args: argparse.Namespace) -> FaultSettings:
    return FaultSettings(**{item.name: getattr(args, item.name) for item in fields(FaultSettings)})


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    try:
        faults = faults_from_args(args)
        runflow = LocalRunflow(
            host=args.host,
            port=args.port,
            api_keys=frozenset(args.api_keys or ["rf_live_local"]),
            allow_http_origins=tuple(args.origins),
            output_ttl_seconds=args.output_ttl,
            workers=args.workers,
            faults=faults,
            seed=args.seed,
            callback_retry_delays=args.callback_retry_delays,
        )
    except ValueError as exc:
        parser.error(str(exc))

    stopping = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    runflow.start()
    try:
        ready: dict[str, object] = {"url": runflow.url}
        if args.create_callback_secret:
            ready["callback_secret"] = runflow.create_callback_secret(label=args.callback_secret_label)
        print(json.dumps(ready), flush=True)
        while not stopping.wait(0.5):
            pass
    finally:
        runflow.stop()
    return 0
