"""One cold start, in a process of its own (``python -I -S -B``: nothing but the standard library is
importable until the path below is set, and nothing compiled is written).

``function`` mode imports the built handler module, as Lambda's init does, and builds the clients
the function's first invocation builds, through the function's own code. ``floor`` mode imports
only boto3 and httpx and builds the same clients with them directly, from one boto3 session: the
least any function making those calls could do. Prints one JSON line of phase timings.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable
from typing import Any

STARTED = time.perf_counter()


def function_builders(module: Any) -> dict[str, Callable[[], object]]:
    services = module.services()

    def secrets() -> object:
        # What the first secret read builds: Powertools' default Secrets Manager provider, unless
        # the services installed one of their own.
        services.secrets  # noqa: B018 - building it is the point
        from aws_lambda_powertools.utilities.parameters import SecretsProvider
        from aws_lambda_powertools.utilities.parameters.constants import DEFAULT_PROVIDERS

        if "secrets" not in DEFAULT_PROVIDERS:
            DEFAULT_PROVIDERS["secrets"] = SecretsProvider()
        return DEFAULT_PROVIDERS["secrets"]

    def tracing() -> object:
        # A sampled first invocation (Tracing: Active) builds the real Tracer before anything else.
        from backdrop.observability import tracer

        return tracer.active

    return {
        "tracing": tracing,
        "s3": lambda: services.s3,
        "presign_s3": lambda: services.presign_s3,
        "dynamodb": lambda: (services.jobs, services.ledger),
        "idempotency": lambda: module.persistence("upload"),
        "sqs": lambda: services.sqs,
        "events": lambda: services.eventbridge,
        "secrets": secrets,
        "http": lambda: services.http,
    }


def floor_builders() -> dict[str, Callable[[], object]]:
    import boto3
    import httpx
    from botocore.config import Config

    session = boto3.session.Session()
    return {
        "tracing": lambda: None,
        "s3": lambda: session.client("s3"),
        "presign_s3": lambda: session.client("s3", config=Config(signature_version="s3v4")),
        "dynamodb": lambda: session.resource("dynamodb").Table("jobs"),
        "idempotency": lambda: session.client("dynamodb"),
        "sqs": lambda: session.client("sqs"),
        "events": lambda: session.client("events"),
        "secrets": lambda: session.client("secretsmanager"),
        "http": lambda: httpx.Client(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=("function", "floor"), required=True)
    parser.add_argument("--handler", default="app.lambda_handler")
    parser.add_argument("--path", action="append", default=[])
    parser.add_argument("--clients", default="")
    args = parser.parse_args()
    sys.path[:0] = args.path
    before = time.perf_counter()
    if args.mode == "function":
        module_name, function_name = args.handler.rsplit(".", 1)
        module = importlib.import_module(module_name)
        getattr(module, function_name)
        imported = time.perf_counter()
        builders = function_builders(module)
    else:
        builders = floor_builders()
        imported = time.perf_counter()
    each: dict[str, float] = {}
    for name in filter(None, args.clients.split(",")):
        began = time.perf_counter()
        builders[name]()
        each[name] = round((time.perf_counter() - began) * 1000, 2)
    done = time.perf_counter()
    xray = "aws_xray_sdk" in sys.modules
    print(
        json.dumps(
            {
                "interpreter_ms": round((before - STARTED) * 1000, 2),
                "import_ms": round((imported - before) * 1000, 2),
                "clients_ms": round((done - imported) * 1000, 2),
                "each_client_ms": each,
                "modules": len(sys.modules),
                "xray_loaded": xray,
            }
        )
    )


if __name__ == "__main__":
    main()
