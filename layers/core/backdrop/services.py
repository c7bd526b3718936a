"""Everything outside the core that a use case talks to, built once per execution environment.

Use cases take a ``Services`` argument instead of reaching for globals: AWS clients, the Runflow
client, the DNS resolver, the output copier and the clock. Tests and the local stack hand in
their own (clients pointed at moto and the local Runflow, a fixed clock); AWS clients a function
never touches are never built, so they cost nothing at cold start.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

import boto3
import httpx
from botocore.config import Config

from backdrop.config import Settings, get_settings
from backdrop.jobstore import JobStore
from backdrop.ledger import ContentLedger, ResultLedger, RunBudget
from backdrop.observability import count, tracer
from backdrop.outputs import Copier, OutputPolicy, Resolver, copy_output, system_resolver
from backdrop.queues import WorkQueue
from backdrop.runs import RunflowApi, RunflowClient
from backdrop.secrets import SecretReader, Secrets
from backdrop.timing import RetryPolicy, aws_config, events_config

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.service_resource import DynamoDBServiceResource
    from mypy_boto3_events import EventBridgeClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient


def _share_session_with_secrets_provider(session: boto3.session.Session) -> None:
    """Powertools reads secrets through one default provider per process, which otherwise builds
    its client from a boto3 session of its own: a second copy of botocore's endpoint and model data,
    about 120 ms of a cold start. Give it a client of this session (same settings as its own)."""
    from aws_lambda_powertools.utilities.parameters import SecretsProvider
    from aws_lambda_powertools.utilities.parameters.constants import DEFAULT_PROVIDERS

    if "secrets" not in DEFAULT_PROVIDERS:
        DEFAULT_PROVIDERS["secrets"] = SecretsProvider(boto3_client=session.client("secretsmanager"))


class Services:
    def __init__(
        self,
        settings: Settings,
        *,
        session: boto3.session.Session | None = None,
        s3: S3Client | None = None,
        presign_s3: S3Client | None = None,
        sqs: SQSClient | None = None,
        jobs: JobStore | None = None,
        ledger: ResultLedger | None = None,
        budget: RunBudget | None = None,
        eventbridge: EventBridgeClient | None = None,
        secrets: Secrets | None = None,
        http: httpx.Client | None = None,
        runflow: RunflowApi | None = None,
        resolve: Resolver = system_resolver,
        copy: Copier = copy_output,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._session = session
        self._built: dict[str, Any] = {
            k: v
            for k, v in {
                "s3": s3,
                "presign_s3": presign_s3,
                "sqs": sqs,
                "jobs": jobs,
                "ledger": ledger,
                "budget": budget,
                "eventbridge": eventbridge,
                "secrets": secrets,
                "http": http,
                "runflow": runflow,
            }.items()
            if v is not None
        }
        self.resolve = resolve
        self.copy = copy
        self.clock = clock

    def _get(self, name: str, build: Callable[[], Any]) -> Any:
        if name not in self._built:
            self._built[name] = build()
        return self._built[name]

    @property
    def session(self) -> boto3.session.Session:
        if self._session is None:
            self._session = boto3.session.Session(region_name=self.settings.region)
        return self._session

    @property
    def s3(self) -> S3Client:
        client: S3Client = self._get("s3", lambda: self.session.client("s3", config=aws_config()))
        return client

    @property
    def presign_s3(self) -> S3Client:
        # Presigned URLs: SigV4 on the regional endpoint (the legacy signer and the global endpoint
        # give URLs that fail for new buckets or expire oddly).
        config = Config(signature_version="s3v4", s3={"us_east_1_regional_endpoint": "regional"})
        client: S3Client = self._get("presign_s3", lambda: self.session.client("s3", config=config))
        return client

    @property
    def sqs(self) -> SQSClient:
        client: SQSClient = self._get("sqs", lambda: self.session.client("sqs", config=aws_config()))
        return client

    def _dynamodb(self) -> DynamoDBServiceResource:
        resource: DynamoDBServiceResource = self._get(
            "dynamodb", lambda: self.session.resource("dynamodb", config=aws_config())
        )
        return resource

    @property
    def jobs(self) -> JobStore:
        store: JobStore = self._get(
            "jobs",
            lambda: JobStore(
                self._dynamodb().Table(self.settings.jobs_table),
                retention_days=self.settings.retention_days,
                clock=self.clock,
                announce=bool(self.settings.event_bus),
            ),
        )
        return store

    @property
    def ledger(self) -> ResultLedger:
        ledger: ResultLedger = self._get(
            "ledger",
            lambda: ResultLedger(self._dynamodb().Table(self.settings.ledger_table), clock=self.clock),
        )
        return ledger

    @property
    def contents(self) -> ContentLedger:
        contents: ContentLedger = self._get(
            "contents",
            lambda: ContentLedger(self._dynamodb().Table(self.settings.ledger_table), clock=self.clock),
        )
        return contents

    @property
    def budget(self) -> RunBudget:
        budget: RunBudget = self._get(
            "budget",
            lambda: RunBudget(
                self._dynamodb().Table(self.settings.ledger_table),
                daily=self.settings.daily_run_budget,
                clock=self.clock,
            ),
        )
        return budget

    @property
    def eventbridge(self) -> EventBridgeClient:
        # No automatic retries (see backdrop.timing): PutEvents is not idempotent.
        client: EventBridgeClient = self._get(
            "eventbridge", lambda: self.session.client("events", config=events_config())
        )
        return client

    @property
    def secrets(self) -> Secrets:
        def build() -> SecretReader:
            _share_session_with_secrets_provider(self.session)
            return SecretReader(
                api_key_secret=self.settings.runflow_api_key_secret,
                signing_secret=self.settings.callback_secret_name,
                max_age=self.settings.secrets_max_age_seconds,
                clock=self.clock,
            )

        reader: Secrets = self._get("secrets", build)
        return reader

    @property
    def http(self) -> httpx.Client:
        client: httpx.Client = self._get(
            "http",
            lambda: httpx.Client(timeout=httpx.Timeout(self.settings.runflow_timeout_seconds, connect=5.0)),
        )
        return client

    def runflow(self) -> RunflowApi:
        """The Runflow client; it reads the API key through the secrets cache for every request."""

        def build() -> RunflowClient:
            return RunflowClient(
                self.settings.runflow_base_url,
                lambda refresh: self.secrets.api_key(refresh=refresh),
                http=self.http,
                retry=RetryPolicy(budget_seconds=self.settings.submit_retry_budget_seconds),
                on_retry=lambda _problem: count("RunflowRetries"),
                wall_clock=self.clock,
            )

        client: RunflowApi = self._get("runflow", build)
        return client

    def uploads_queue(self) -> WorkQueue:
        queue: WorkQueue = self._get(
            "uploads_queue", lambda: WorkQueue(self.sqs, self.settings.uploads_queue_url)
        )
        return queue

    def copy_queue(self) -> WorkQueue:
        queue: WorkQueue = self._get("copy_queue", lambda: WorkQueue(self.sqs, self.settings.copy_queue_url))
        return queue

    @property
    def output_policy(self) -> OutputPolicy:
        return OutputPolicy(
            allowed_hosts=self.settings.allowed_output_hosts,
            max_bytes=self.settings.max_output_bytes,
            insecure_origin=self.settings.insecure_output_origin,
        )


@functools.cache
def get_services(needs: Collection[str] = ()) -> Services:
    """This execution environment's services; ``needs`` names the settings the function requires,
    checked once, so a deployment that lacks one fails its first invocation, naming it."""
    return Services(get_settings().require(*needs))


# Clients built before tracing started are built again, so that the X-Ray SDK sees their calls.
tracer.on_start(get_services.cache_clear)


def reset_services() -> None:
    get_services.cache_clear()
