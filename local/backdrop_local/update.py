"""``make local-update PARAMETER_OVERRIDES='Name=value ...'`` (``python -m backdrop_local.update
Name=value ...``): a stack update of the running local stack.

The local stack's answer to ``sam deploy --parameter-overrides``: the running stack (``make
local``) applies the new template parameters to its functions, as CloudFormation would update the
functions' environment, and keeps every job, queue message and object. Values are validated like a
deploy validates them; a refused one changes nothing. Raising ``DailyRunBudget`` this way lets the
reconciler resume held jobs on its next pass.

The request travels as a file beside ``local-stack.json`` and a SIGHUP to the stack's process;
the stack answers in another file, which this command waits for.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from backdrop_local.template import ParameterError, parse_parameter_overrides

REQUEST = "parameter-update.json"
ANSWER = "parameter-update.answer.json"


def request_path(state_dir: Path) -> Path:
    return state_dir / REQUEST


def answer_path(state_dir: Path) -> Path:
    return state_dir / ANSWER


def write_atomically(path: Path, doc: dict[str, Any]) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(doc, indent=2) + "\n")
    partial.replace(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m backdrop_local.update",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="NAME=VALUE",
        help="template parameters to change (default: the PARAMETER_OVERRIDES environment variable)",
    )
    parser.add_argument("--state-dir", type=Path, default=Path(".backdrop"), help="the local stack's folder")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")
    args = parser.parse_args(argv)
    try:
        overrides = parse_parameter_overrides(
            " ".join(args.overrides) if args.overrides else os.environ.get("PARAMETER_OVERRIDES", "")
        )
    except ParameterError as exc:
        parser.error(str(exc))
    if not overrides:
        parser.error("name at least one parameter (NAME=VALUE, or PARAMETER_OVERRIDES)")
    info_file = args.state_dir / "local-stack.json"
    try:
        pid = int(json.loads(info_file.read_text())["pid"])
    except (OSError, ValueError, KeyError) as exc:
        print(f"backdrop_local.update: no running local stack ({info_file}: {exc})", file=sys.stderr)
        return 1
    nonce = uuid.uuid4().hex
    write_atomically(request_path(args.state_dir), {"id": nonce, "parameters": overrides})
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        print(f"backdrop_local.update: the local stack (pid {pid}) is not running", file=sys.stderr)
        return 1
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            answer = json.loads(answer_path(args.state_dir).read_text())
        except (OSError, ValueError):
            answer = {}
        if answer.get("id") == nonce:
            if answer.get("error"):
                print(f"backdrop_local.update: refused: {answer['error']}", file=sys.stderr)
                return 2
            print(json.dumps({"parameters": answer["parameters"]}, indent=2))
            return 0
        time.sleep(0.1)
    print(f"backdrop_local.update: no answer from the local stack within {args.timeout:g} s", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
