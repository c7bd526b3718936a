"""``make local``: the local stack in the foreground until Ctrl-C or SIGTERM.

Writes ``.backdrop/local-stack.json`` (see the README for its keys) and removes it on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from types import FrameType

from backdrop.config import ConfigError
from backdrop_local.runflow.cli import add_fault_arguments, faults_from_args
from backdrop_local.samlocal import SamLocalError, bridge_host_address
from backdrop_local.stack import ROOT, LocalStack, StackOptions
from backdrop_local.template import ParameterError, Template, parse_parameter_overrides
from backdrop_local.update import answer_path, request_path, write_atomically


def listen_host(choice: str) -> str:
    if choice == "loopback":
        return "127.0.0.1"
    try:
        return bridge_host_address(timeout=5.0)
    except (SamLocalError, OSError, subprocess.SubprocessError, ValueError) as exc:
        if choice == "bridge":
            raise SystemExit(f"backdrop_local: no Docker bridge to listen on: {exc}") from exc
        return "127.0.0.1"


def apply_update(stack: LocalStack) -> None:
    """``python -m backdrop_local.update``'s request: new template parameters, as a stack update."""
    try:
        request = json.loads(request_path(stack.state_dir).read_text())
    except (OSError, ValueError):
        return
    answer: dict[str, object] = {"id": request.get("id")}
    try:
        stack.update_parameters({str(k): str(v) for k, v in dict(request.get("parameters") or {}).items()})
    except (ParameterError, ConfigError) as exc:
        answer["error"] = str(exc)
    else:
        answer["parameters"] = stack.info["parameters"]
        print(f"Parameters updated: {request.get('parameters')}", file=sys.stderr, flush=True)
    write_atomically(answer_path(stack.state_dir), answer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backdrop_local", description=__doc__)
    parser.add_argument(
        "--reconcile-every",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="reconciler schedule (AWS default is 5 minutes; 60 s locally)",
    )
    parser.add_argument(
        "--reconcile-min-age",
        type=int,
        default=120,
        metavar="SECONDS",
        help="open jobs younger than this are left to their callbacks",
    )
    parser.add_argument(
        "--code",
        choices=["build", "source"],
        default="build",
        help="run the functions as `sam build` built them (default) or from the source tree",
    )
    add_fault_arguments(parser)
    parser.add_argument("--state-dir", type=Path, default=None, help="where local-stack.json and logs go")
    parser.add_argument("--seed", type=int, default=None, help="seed of the local Runflow's fault dice")
    parser.add_argument(
        "--listen",
        choices=["auto", "loopback", "bridge"],
        default="auto",
        help="where moto and the local Runflow listen: the Docker bridge's host address lets "
        "`sam local` containers reach them (auto: the bridge when a Docker engine runs, else loopback)",
    )
    parser.add_argument(
        "--parameter-overrides",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="template parameters, as `sam deploy --parameter-overrides` takes them "
        "(also from the PARAMETER_OVERRIDES environment variable, which `make local` passes on)",
    )
    args = parser.parse_args(argv)
    faults = faults_from_args(args)
    try:
        overrides = parse_parameter_overrides(os.environ.get("PARAMETER_OVERRIDES", ""))
        overrides.update(parse_parameter_overrides(" ".join(args.parameter_overrides)))
        Template(ROOT / "template.yaml", stack_name="check", region="us-east-1", parameters=overrides)
    except ParameterError as exc:
        parser.error(str(exc))
    stack = LocalStack(
        StackOptions(
            listen_host=listen_host(args.listen),
            code=args.code,
            state_dir=args.state_dir,
            reconcile_every_seconds=args.reconcile_every,
            reconcile_min_age_seconds=args.reconcile_min_age,
            runflow_faults=faults,
            runflow_seed=args.seed,
            parameter_overrides=overrides,
        )
    )
    stopping = threading.Event()
    updating = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    def request_update(signum: int, _frame: FrameType | None) -> None:
        updating.set()
        stopping.set()  # wakes the loop below, which tells the two apart

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGHUP, request_update)
    try:
        info = stack.start()
    except ConfigError as exc:
        stack.stop()
        print(f"backdrop_local: {exc}", file=sys.stderr)
        return 2
    try:
        print(json.dumps(info, indent=2))
        print(
            f"Backdrop local stack is up; see {stack.state_dir / 'local-stack.json'}. Ctrl-C stops it.",
            file=sys.stderr,
            flush=True,
        )
        while True:
            stopping.wait(1.0)
            if updating.is_set():
                updating.clear()
                stopping.clear()
                apply_update(stack)
            elif stopping.is_set():
                break
    finally:
        print("Stopping the local stack...", file=sys.stderr, flush=True)
        stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
