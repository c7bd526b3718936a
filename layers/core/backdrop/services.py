"""The clients the use cases need, built once per execution environment from the settings.

Use cases take a ``Services`` argument instead of reaching for globals, so tests can hand them
clients pointed at moto and the local Runflow.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import boto3
import httpx
from botocore.config import Config

from backdrop.config import Settings, get_settings
from backdrop.jobstore import JobStore
from backdrop.outputs import OutputPolicy
from backdrop.runs import RetryPolicy, RunflowClient
from backdrop.secrets import SecretReader

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def _boto_config() -> Config:
    return Config(retries={"mode": "standard", "max_attempts": 5}, connect_timeout=5, read_timeout=20)


@dataclass
class Services:
    settings: Settings
    s3: S3Client
    presign_s3: S3Client
    jobs: JobStore
    secrets: SecretReader
    http: httpx.Client
    _runflow: RunflowClient | None = field(default=None, repr=False)

    @property
    def output_policy(self) -> OutputPolicy:
        return OutputPolicy(
            allowed_hosts=self.settings.allowed_output_hosts,
            max_bytes=self.settings.max_output_bytes,
            insecure_origin=self.settings.insecure_output_origin,
        )

    def runflow(self) -> RunflowClient:
        """The Runflow client; the API key is fetched (and cached) on first use only."""
        if self._runflow is None:
            from backdrop.observability import count

            self._runflow = RunflowClient(
                self.settings.runflow_base_url,
                self.secrets.api_key(),
                http=self.http,
                retry=RetryPolicy(budget_seconds=self.settings.submit_retry_budget_seconds),
                on_retry=lambda _problem: count("RunflowRetries"),
            )
        return self._runflow


def build_services(settings: Settings) -> Services:
    session = boto3.session.Session(region_name=settings.region)
    s3 = session.client("s3", config=_boto_config())
    # Presigned URLs: SigV4 on the regional endpoint (the legacy signer and the global endpoint
    # give URLs that fail for new buckets or expire oddly).
    presign_s3 = session.client(
        "s3",
        config=Config(signature_version="s3v4", s3={"us_east_1_regional_endpoint": "regional"}),
    )
    table = session.resource("dynamodb", config=_boto_config()).Table(settings.jobs_table)
    return Services(
        settings=settings,
        s3=s3,
        presign_s3=presign_s3,
        jobs=JobStore(table, retention_days=settings.retention_days),
        secrets=SecretReader(
            api_key_secret=settings.runflow_api_key_secret,
            signing_secret=settings.callback_secret_name,
            max_age=settings.secrets_max_age_seconds,
        ),
        http=httpx.Client(timeout=httpx.Timeout(settings.runflow_timeout_seconds, connect=5.0)),
    )


@functools.cache
def get_services() -> Services:
    return build_services(get_settings())


def reset_services() -> None:
    get_services.cache_clear()
