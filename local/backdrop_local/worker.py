"""A Lambda execution environment for one function, run as its own process.

Started with ``python -S -E worker.py ...`` so nothing but the standard library is importable until
this script puts Lambda's layout on the path: the function's folder (``/var/task``), each layer's
``python/`` folder (``/opt/python``) and a folder holding only what the managed runtime provides
(boto3 and its dependencies). A packaging mistake therefore fails here as it would in AWS.

Protocol: one JSON request per line on stdin, one JSON answer per line on the original stdout.
The handler's own output (logs) goes to stderr.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import sys
import time
import traceback
import uuid
from typing import Any


class Context:
    """The parts of Lambda's context object that handlers and Powertools read."""

    def __init__(self, name: str, memory: int, deadline: float, region: str) -> None:
        self.function_name = name
        self.function_version = "$LATEST"
        self.invoked_function_arn = f"arn:aws:lambda:{region}:123456789012:function:{name}"
        self.memory_limit_in_mb = memory
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{name}"
        self.log_stream_name = time.strftime("%Y/%m/%d/[$LATEST]") + uuid.uuid4().hex
        self._deadline = deadline

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def _install_crash_fault(handler_module: Any, rate: float, seed: int) -> None:
    """Fault injection for the local stack only: die in the middle of copying an output, after the
    job moved to ``copying`` and its result lease was taken, as a Lambda killed mid-invocation would.
    Installed from outside the core: the handler module's services factory is swapped for one that
    hands out the same services with a copier that may crash."""
    outputs = importlib.import_module("backdrop.outputs")
    copy_output = outputs.copy_output
    get_services = handler_module.get_services
    rng = random.Random(seed + os.getpid())

    def crashing_copy_output(*args: Any, **kwargs: Any) -> Any:
        if rng.random() < rate:
            sys.stderr.write("local fault injection: crashing mid-copy\n")
            sys.stderr.flush()
            os._exit(137)
        return copy_output(*args, **kwargs)

    def get_services_crashing_mid_copy(*args: Any, **kwargs: Any) -> Any:
        services = get_services(*args, **kwargs)
        services.copy = crashing_copy_output
        return services

    handler_module.get_services = get_services_crashing_mid_copy


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--path", action="append", default=[], help="import path entries, in order")
    parser.add_argument("--handler", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--memory", type=int, default=512)
    args = parser.parse_args()

    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # handler prints and logs go to stderr, never into the protocol stream
    sys.path[:0] = args.path
    module_name, function_name = args.handler.rsplit(".", 1)
    handler_module = importlib.import_module(module_name)
    handler = getattr(handler_module, function_name)
    crash_rate = float(os.environ.get("BACKDROP_LOCAL_CRASH_MID_COPY_RATE", "0") or 0)
    if crash_rate > 0:
        _install_crash_fault(
            handler_module, crash_rate, int(os.environ.get("BACKDROP_LOCAL_FAULT_SEED", "0"))
        )
    answers.write(json.dumps({"ready": True}) + "\n")

    region = os.environ.get("AWS_REGION", "us-east-1")
    for line in sys.stdin:
        request = json.loads(line)
        deadline = time.monotonic() + float(request["timeout"])
        context = Context(args.name, args.memory, deadline, region)
        try:
            result = handler(request["event"], context)
            answer = {"ok": True, "result": result}
        except Exception as exc:
            answer = {
                "ok": False,
                "errorType": type(exc).__name__,
                "errorMessage": str(exc),
                "stackTrace": traceback.format_exc().splitlines(),
            }
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        answers.write(json.dumps(answer, default=str) + "\n")


if __name__ == "__main__":
    main()
