"""The whole of Backdrop on one machine, on free loopback ports.

moto (S3, DynamoDB, SQS, Secrets Manager) provisioned from template.yaml; the local Runflow; the
deployed functions as ``sam build`` built them, each in its own worker processes; S3 → SQS → submit
delivery as the template wires it; a local HTTP API for the callback route; and the reconciler on
a schedule. ``.backdrop/local-stack.json`` tells other tools where everything is.
"""

from __future__ import annotations

import json
import logging
import os
import site
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backdrop.config import load_settings
from backdrop_local.apigateway import LocalHttpApi
from backdrop_local.aws import ACCESS_KEY_ID, SECRET_ACCESS_KEY, MotoServer, Resources, client, provision
from backdrop_local.eventsources import Schedule, SqsEventSource
from backdrop_local.iampolicies import stack_refs
from backdrop_local.iampolicies import write as write_policies
from backdrop_local.iamrecord import CALLS_SUFFIX, POLICIES_SUFFIX, function_access_key
from backdrop_local.lambdas import LocalFunction, runtime_dir
from backdrop_local.runflow import FaultSettings, LocalRunflow
from backdrop_local.runflow.emulator import DEFAULT_RETRY_DELAYS
from backdrop_local.samlocal import write_stack_files
from backdrop_local.template import Template

ROOT = Path(__file__).resolve().parents[2]
REGION = "us-east-1"
# The name events/ and a first deployment use, so that the sample events match the local stack.
STACK_NAME = "backdrop"
RUNFLOW_API_KEY = "rf_live_backdrop_local"
CALLBACK_PATH = "/runflow/callback"
# The secret events/ is signed with (public, documented): accepted beside the local Runflow's own,
# as a rotation's previous secret is, so the sample callbacks verify against a running local stack.
SAMPLE_CALLBACK_SECRET = "whsec_backdrop_sample_secret_not_for_production"  # noqa: S105 - public sample


@dataclass
class StackOptions:
    root: Path = ROOT
    state_dir: Path | None = None
    # "build": functions from .aws-sam/build (what gets deployed); "source": from the source tree.
    code: str = "build"
    # moto keeps one state per process: two stacks in one process need different names.
    stack_name: str = STACK_NAME
    reconcile_every_seconds: float = 300.0
    reconcile_min_age_seconds: int = 120
    run_deadline_minutes: int | None = None
    create_settle_seconds: float | None = None
    visibility_timeout_seconds: int = 30
    submit_concurrency: int | None = None
    copy_concurrency: int = 2
    callback_concurrency: int = 4
    runflow_workers: int = 2
    runflow_faults: FaultSettings = field(default_factory=FaultSettings)
    runflow_seed: int | None = None
    runflow_callback_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS
    output_ttl_seconds: float = 3600.0
    crash_mid_copy_rate: float = 0.0
    fault_seed: int = 0
    max_output_bytes: int | None = None
    max_input_bytes: int | None = None
    log_level: str = "INFO"
    # Where moto and the local Runflow listen: loopback, or the Docker bridge's host address so that
    # `sam local` containers can reach them (the only non-loopback address ever used).
    listen_host: str = "127.0.0.1"
    # The SQS event sources and the reconciler's schedule; off when `sam local` plays the functions.
    event_sources: bool = True
    # Template parameters, as ``sam deploy --parameter-overrides`` would set them.
    parameter_overrides: dict[str, str] = field(default_factory=dict)
    # Record every AWS call in IAM terms, with the template's expanded policies, under
    # <state dir>/iam/ for `python -m backdrop_local.iamcheck` (each function has its own key).
    record_iam: bool = True


class LocalStack:
    def __init__(self, options: StackOptions | None = None) -> None:
        self.options = options or StackOptions()
        self.state_dir = self.options.state_dir or self.options.root / ".backdrop"
        self.iam_dir = self.state_dir / "iam"
        self.moto = MotoServer(
            host=self.options.listen_host,
            record_dir=self.iam_dir if self.options.record_iam else None,
            instance=self.options.stack_name,
        )
        self.runflow: LocalRunflow | None = None
        self.api: LocalHttpApi | None = None
        self.functions: dict[str, LocalFunction] = {}
        self.sqs_sources: list[SqsEventSource] = []
        self.schedule: Schedule | None = None
        self.resources: Resources | None = None
        self.template: Template | None = None
        self._overrides: dict[str, str] = {}
        self._callback_url = ""
        self.callback_secret = ""
        self.info: dict[str, Any] = {}
        self._clients: dict[str, Any] = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> dict[str, Any]:
        opts = self.options
        # moto's and the HTTP API's per-request access lines drown the functions' own logs.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        # The IAM records describe this run of the stack only (a state dir outlives `make local`).
        for suffix in (CALLS_SUFFIX, POLICIES_SUFFIX):
            (self.iam_dir / f"{opts.stack_name}{suffix}").unlink(missing_ok=True)
        endpoint = self.moto.start()
        loopback = opts.listen_host in ("127.0.0.1", "::1", "localhost")
        self.runflow = LocalRunflow(
            host=opts.listen_host,
            bridge_host=None if loopback else opts.listen_host,
            port=0,
            api_keys=frozenset({RUNFLOW_API_KEY}),
            allow_http_origins=(endpoint,),
            output_ttl_seconds=opts.output_ttl_seconds,
            workers=opts.runflow_workers,
            faults=opts.runflow_faults,
            seed=opts.runflow_seed,
            callback_retry_delays=opts.runflow_callback_delays,
        )
        self.runflow.start()
        self.callback_secret = self.runflow.create_callback_secret(label="backdrop-local")

        template = Template(
            opts.root / "template.yaml",
            stack_name=opts.stack_name,
            region=REGION,
            parameters=opts.parameter_overrides,
        )
        self.template = template
        self.resources = provision(
            template,
            endpoint,
            api_key=RUNFLOW_API_KEY,
            callback_secret=self.callback_secret,
            previous_callback_secret=SAMPLE_CALLBACK_SECRET,
            visibility_timeout=opts.visibility_timeout_seconds,
        )
        if opts.record_iam:
            write_policies(template, stack_refs(template, self.resources), self.iam_dir)
        routes: dict[tuple[str, str], Any] = {}
        self.api = LocalHttpApi(routes, api_id=template.physical_id("CallbackApi"))
        self.api.start()
        callback_url = self.api.url + CALLBACK_PATH

        overrides = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "BACKDROP_RUNFLOW_BASE_URL": self.runflow.url,
            # Exactly the local Runflow's origin may be plain http on loopback; nothing else.
            "BACKDROP_INSECURE_OUTPUT_ORIGIN": self.runflow.url,
            "BACKDROP_RECONCILE_MIN_AGE_SECONDS": str(opts.reconcile_min_age_seconds),
            # The local queues' visibility timeout, as the template sets CopyQueue's.
            "BACKDROP_COPY_REQUEUE_AFTER_SECONDS": str(opts.visibility_timeout_seconds),
            "POWERTOOLS_TRACE_DISABLED": "true",
            "POWERTOOLS_LOG_LEVEL": opts.log_level,
        }
        if opts.create_settle_seconds is not None:
            overrides["BACKDROP_CREATE_SETTLE_SECONDS"] = str(opts.create_settle_seconds)
        if opts.run_deadline_minutes is not None:
            overrides["BACKDROP_RUN_DEADLINE_MINUTES"] = str(opts.run_deadline_minutes)
        if opts.max_output_bytes is not None:
            overrides["BACKDROP_MAX_OUTPUT_BYTES"] = str(opts.max_output_bytes)
        if opts.max_input_bytes is not None:
            overrides["BACKDROP_MAX_INPUT_BYTES"] = str(opts.max_input_bytes)

        runtime = runtime_dir(self.state_dir / "lambda-runtime")
        self._overrides = overrides
        self._callback_url = callback_url
        for logical in template.functions():
            spec = template.function(logical)
            self.functions[logical] = LocalFunction(
                logical,
                handler=spec.handler,
                paths=self._code_paths(logical, spec.code_uri, runtime),
                env=self._function_env(template, logical),
                timeout=spec.timeout,
                max_concurrency=self._concurrency(logical),
                log_path=self.state_dir / "logs" / f"{logical}.log",
            )
            for event in spec.events.values():
                if event["Type"] == "HttpApi":
                    props = event["Properties"]
                    routes[(props["Method"].upper(), props["Path"])] = self.functions[logical].invoke

        arn_to_url = {arn: url for url, arn in self.resources.queues.values()}
        for logical in template.functions() if opts.event_sources else ():
            for event in template.function(logical).events.values():
                if event["Type"] != "SQS":
                    continue
                props = event["Properties"]
                source = SqsEventSource(
                    # Lambda's poller uses the function's role (SAM gives it AWSLambdaSQSQueueExecutionRole).
                    client("sqs", endpoint, REGION, access_key_id=self.function_access_keys[logical]),
                    queue_url=arn_to_url[props["Queue"]],
                    queue_arn=props["Queue"],
                    region=REGION,
                    invoke=self.functions[logical].invoke,
                    batch_size=int(props.get("BatchSize", 10)),
                    max_concurrency=self._concurrency(logical),
                )
                source.start()
                self.sqs_sources.append(source)
        if opts.event_sources:
            self.schedule = Schedule(
                self.functions["ReconcileFunction"].invoke,
                every_seconds=opts.reconcile_every_seconds,
                region=REGION,
                rule_name=f"{opts.stack_name}-reconcile",
            )
            self.schedule.start()

        self.info = {
            "region": REGION,
            "aws_endpoint_url": endpoint,
            "aws_access_key_id": ACCESS_KEY_ID,
            "aws_secret_access_key": SECRET_ACCESS_KEY,
            "uploads_bucket": self.resources.uploads_bucket,
            "upload_prefix": self.resources.upload_prefix,
            "results_bucket": self.resources.results_bucket,
            "results_prefix": self.resources.results_prefix,
            "jobs_table": self.resources.jobs_table,
            "callback_url": callback_url,
            "runflow_url": self.runflow.url,
            "runflow_api_key": RUNFLOW_API_KEY,
            "callback_secret": self.callback_secret,
            "queue_url": self.resources.queue_url,
            "dead_letter_queue_url": self.resources.dlq_url,
            "copy_queue_url": self.resources.copy_queue_url,
            "copy_dead_letter_queue_url": self.resources.copy_dlq_url,
            "ledger_table": self.resources.ledger_table,
            "events_queue_url": self.resources.events_queue_url,
            "idempotency_table": self.resources.idempotency_table,
            "parameters": dict(template.parameters),
            "logs_dir": str(self.state_dir / "logs"),
            "pid": os.getpid(),
        }
        self.info.update(
            write_stack_files(
                self.state_dir,
                endpoint,
                {logical: self._function_env(template, logical) for logical in self.functions},
                {
                    "UPLOADS_BUCKET": self.resources.uploads_bucket,
                    "RESULTS_BUCKET": self.resources.results_bucket,
                    "JOBS_TABLE": self.resources.jobs_table,
                    "RUNFLOW_URL": self.runflow.url,
                },
            )
        )
        path = self.state_dir / "local-stack.json"
        path.write_text(json.dumps(self.info, indent=2) + "\n")
        path.chmod(0o600)
        return self.info

    def stop(self) -> None:
        if self.schedule:
            self.schedule.stop()
        for source in self.sqs_sources:
            source.stop()
        if self.api:
            self.api.stop()
        for function in self.functions.values():
            function.close()
        if self.runflow:
            self.runflow.stop()
        self.moto.stop()
        self._clients.clear()
        (self.state_dir / "local-stack.json").unlink(missing_ok=True)

    def __enter__(self) -> LocalStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def update_parameters(self, overrides: dict[str, str]) -> None:
        """Change template parameters as a stack update would: the functions' new invocations
        see the new environment (those in flight finish with the old one)."""
        if self.template is None:
            raise RuntimeError("the local stack is not started")
        template = Template(
            self.options.root / "template.yaml",
            stack_name=self.options.stack_name,
            region=REGION,
            parameters={**self.template.parameters, **overrides},
        )
        for logical, (url, _arn) in self.resources.queues.items() if self.resources else ():
            template.override_ref(logical, url)
        envs = {logical: self._function_env(template, logical) for logical in self.functions}
        if self.options.record_iam and self.resources is not None:
            write_policies(template, stack_refs(template, self.resources), self.iam_dir)
        for logical, env in envs.items():
            self.functions[logical].update_environment(env)
        self.template = template
        self.info["parameters"] = dict(template.parameters)
        (self.state_dir / "local-stack.json").write_text(json.dumps(self.info, indent=2) + "\n")

    # ------------------------------------------------------------------ helpers
    @property
    def function_access_keys(self) -> dict[str, str]:
        """The access key id each function signs its AWS requests with (its role, for the IAM check)."""
        assert self.template is not None
        return {
            logical: function_access_key(self.options.stack_name, logical)
            for logical in self.template.functions()
        }

    def _function_env(self, template: Template, logical: str) -> dict[str, str]:
        spec = template.function(logical)
        env = {
            **spec.environment,
            **self._overrides,
            "AWS_ACCESS_KEY_ID": function_access_key(self.options.stack_name, logical),
        }
        if spec.environment.get("BACKDROP_CALLBACK_URL") != "":  # left empty on purpose: see template
            env["BACKDROP_CALLBACK_URL"] = self._callback_url
        # As a function's start would: a bad setting (a colour rule, a number) stops the stack.
        load_settings(env).require()
        opts = self.options
        if logical == "CopyFunction" and opts.crash_mid_copy_rate > 0:
            env["BACKDROP_LOCAL_CRASH_MID_COPY_RATE"] = str(opts.crash_mid_copy_rate)
            env["BACKDROP_LOCAL_FAULT_SEED"] = str(opts.fault_seed)
        return env

    def _code_paths(self, logical: str, code_uri: str, runtime: Path) -> list[Path]:
        root = self.options.root
        if self.options.code == "source":
            return [root / code_uri, root / "layers" / "core", *map(Path, site.getsitepackages()), runtime]
        build = root / ".aws-sam" / "build"
        function_dir = build / logical
        layer_dir = build / "CoreLayer" / "python"
        if not function_dir.is_dir() or not layer_dir.is_dir():
            raise RuntimeError(f"{function_dir} or {layer_dir} is missing: run `make build` first")
        return [function_dir, layer_dir, runtime]

    def _concurrency(self, logical: str) -> int:
        opts = self.options
        if logical == "SubmitFunction":
            return opts.submit_concurrency or 2
        if logical == "CallbackFunction":
            return opts.callback_concurrency
        if logical == "CopyFunction":
            return opts.copy_concurrency
        return 1

    def _client(self, service: str) -> Any:
        # One client per service: tests poll the stack every second, and boto3 clients are thread-safe.
        if service not in self._clients:
            self._clients[service] = client(service, self.moto.endpoint_url, REGION)
        return self._clients[service]

    def s3(self) -> Any:
        return self._client("s3")

    def dynamodb(self) -> Any:
        return self._client("dynamodb")

    def sqs(self) -> Any:
        return self._client("sqs")
