"""``python -m backdrop_local.samlocal``: the engine, the bridge's address, a SAM CLI state folder,
or one ``sam local invoke`` against a local endpoint."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from backdrop_local.samlocal.bridge import bridge_host_address
from backdrop_local.samlocal.egress import EgressTrap
from backdrop_local.samlocal.engine import ensure_engine, ensure_image
from backdrop_local.samlocal.environment import local_template, prepare_sam_app_dir
from backdrop_local.samlocal.sam import SamLocal
from backdrop_local.samlocal.shared import ROOT, UNAVAILABLE_EXIT, SamLocalError, SamLocalUnavailable

# The package's first line, as before the split.
DESCRIPTION = (
    "``sam local invoke`` and ``sam local start-api`` against local services, with nothing going out."
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backdrop_local.samlocal", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("ensure", help="make the Docker engine and the Lambda image available; print the image")
    sub.add_parser("bridge-address", help="print the Docker bridge's host address")
    app_dir = sub.add_parser(
        "sam-cli-dir",
        help="prepare a SAM CLI state folder whose version check is done (use it as __SAM_CLI_APP_DIR)",
    )
    app_dir.add_argument("path", type=Path)
    invoke = sub.add_parser("invoke", help="sam local invoke one function against a local endpoint")
    invoke.add_argument("function")
    invoke.add_argument("--event", type=Path)
    invoke.add_argument("--endpoint-url", required=True, help="local AWS endpoint, reachable from containers")
    invoke.add_argument("--env-vars", type=Path)
    invoke.add_argument("--template", type=Path, default=None)
    invoke.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    try:
        if args.command == "sam-cli-dir":
            prepare_sam_app_dir(args.path)
            print(args.path)
            return 0
        if args.command == "bridge-address":
            ensure_engine()
            print(bridge_host_address())
            return 0
        image = ensure_image()
        if args.command == "ensure":
            print(image)
            return 0
        with EgressTrap() as trap:
            sam = SamLocal(
                endpoint_url=args.endpoint_url,
                image=image,
                template=args.template or local_template(),
                env_vars=args.env_vars,
                state_dir=ROOT / ".backdrop" / "samlocal",
                trap=trap,
            )
            result = sam.invoke(args.function, args.event, timeout=args.timeout)
            sys.stderr.write(result.logs)
            print(json.dumps(result.response))
            if trap.attempts:
                print(f"samlocal: refused outbound requests: {trap.attempts}", file=sys.stderr)
                return 1
        return 0
    except SamLocalUnavailable as exc:
        print(f"samlocal: UNAVAILABLE: {exc.reason}", file=sys.stderr)
        return UNAVAILABLE_EXIT
    except SamLocalError as exc:
        print(f"samlocal: {exc}", file=sys.stderr)
        return 1
