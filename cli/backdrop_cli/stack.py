"""Which stack the command talks to: where its resources are and which parameters it runs with.

A deployed stack is read from CloudFormation (``describe_stacks``: its outputs name the resources,
its parameters are the values the functions were deployed with); the local stack from the
``local-stack.json`` it writes (same names, and the parameter values it was started with).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from backdrop_cli.errors import BadUsage, Failure

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.service_resource import DynamoDBServiceResource, Table
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient

LOCAL_STACK_FILE = "local-stack.json"
DEFAULT_STATE_DIR = Path(".backdrop")

# Outputs of template.yaml the command needs.
OUTPUTS = (
    "UploadsBucketName",
    "UploadPrefix",
    "ResultsBucketName",
    "JobsTableName",
    "LedgerTableName",
    "UploadsQueueUrl",
    "DeadLetterQueueUrl",
    "CopyQueueUrl",
)


@dataclass(frozen=True)
class Stack:
    """A Backdrop stack's resources and parameters, and clients for them."""

    label: str  # the stack's name, or "local"
    region: str
    uploads_bucket: str
    upload_prefix: str
    results_bucket: str
    jobs_table: str
    ledger_table: str
    uploads_queue_url: str
    dead_letter_queue_url: str
    copy_queue_url: str
    parameters: Mapping[str, str]
    session: boto3.session.Session = field(repr=False)
    endpoint_url: str | None = None
    pool_size: int = 32
    _clients: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def results_prefix(self) -> str:
        return self.parameters.get("ResultsPrefix", "results/")

    def _config(self, *, retries: bool = True) -> Config:
        # Standard retries everywhere except where a resend could duplicate (see sqs_once).
        attempts = {"mode": "standard", "max_attempts": 5} if retries else {"total_max_attempts": 1}
        return Config(
            retries=attempts,  # type: ignore[arg-type]
            max_pool_connections=self.pool_size,
            connect_timeout=5,
            read_timeout=30,
        )

    def _client(self, name: str, service: str, *, retries: bool = True) -> Any:
        if name not in self._clients:
            self._clients[name] = self.session.client(  # type: ignore[call-overload]
                service, endpoint_url=self.endpoint_url, config=self._config(retries=retries)
            )
        return self._clients[name]

    @property
    def s3(self) -> S3Client:
        client: S3Client = self._client("s3", "s3")
        return client

    @property
    def sqs(self) -> SQSClient:
        client: SQSClient = self._client("sqs", "sqs")
        return client

    @property
    def sqs_once(self) -> SQSClient:
        """SQS without botocore's retries: a send whose answer was lost must not be repeated
        blindly (the sender decides what is safe to send again)."""
        client: SQSClient = self._client("sqs_once", "sqs", retries=False)
        return client

    @property
    def dynamodb(self) -> DynamoDBServiceResource:
        if "dynamodb" not in self._clients:
            self._clients["dynamodb"] = self.session.resource(
                "dynamodb", endpoint_url=self.endpoint_url, config=self._config()
            )
        resource: DynamoDBServiceResource = self._clients["dynamodb"]
        return resource

    @property
    def jobs(self) -> Table:
        return self.dynamodb.Table(self.jobs_table)

    @property
    def ledger(self) -> Table:
        return self.dynamodb.Table(self.ledger_table)


def _session(profile: str | None, region: str | None) -> boto3.session.Session:
    try:
        return boto3.session.Session(profile_name=profile, region_name=region)
    except BotoCoreError as exc:  # an unknown profile
        raise BadUsage(str(exc)) from exc


def deployed_stack(name: str, *, profile: str | None, region: str | None) -> Stack:
    """A deployed stack, found by name with CloudFormation's describe_stacks."""
    session = _session(profile, region)
    if not session.region_name:
        raise BadUsage("no AWS region: pass --region or set AWS_REGION (or a profile's region)")
    try:
        answer = session.client("cloudformation").describe_stacks(StackName=name)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        if error.get("Code") == "ValidationError":  # "Stack with id X does not exist"
            raise BadUsage(f"stack {name!r}: {error.get('Message', 'not found')}") from exc
        raise Failure(f"cannot describe stack {name!r}: {exc}") from exc
    except BotoCoreError as exc:
        raise Failure(f"cannot describe stack {name!r}: {exc}") from exc
    (described,) = answer["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in described.get("Outputs", [])}
    missing = [key for key in OUTPUTS if key not in outputs]
    if missing:
        raise BadUsage(
            f"stack {name!r} is not a Backdrop stack (or not fully created):"
            f" outputs {', '.join(missing)} missing"
        )
    parameters = {p["ParameterKey"]: p.get("ParameterValue", "") for p in described.get("Parameters", [])}
    return Stack(
        label=name,
        region=session.region_name,
        uploads_bucket=outputs["UploadsBucketName"],
        upload_prefix=outputs["UploadPrefix"],
        results_bucket=outputs["ResultsBucketName"],
        jobs_table=outputs["JobsTableName"],
        ledger_table=outputs["LedgerTableName"],
        uploads_queue_url=outputs["UploadsQueueUrl"],
        dead_letter_queue_url=outputs["DeadLetterQueueUrl"],
        copy_queue_url=outputs["CopyQueueUrl"],
        parameters=parameters,
        session=session,
    )


def local_stack(state_dir: Path | None) -> Stack:
    """The local stack (``make local``), from the local-stack.json it writes while it runs."""
    path = (state_dir or DEFAULT_STATE_DIR) / LOCAL_STACK_FILE
    try:
        info: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise BadUsage(f"{path} not found: is the local stack running? (`make local`)") from exc
    except (OSError, ValueError) as exc:
        raise BadUsage(f"{path} cannot be read: {exc}") from exc
    pid = info.get("pid")
    if isinstance(pid, int) and not _alive(pid):
        raise BadUsage(f"{path} names a local stack (pid {pid}) that is no longer running")
    try:
        session = boto3.session.Session(
            aws_access_key_id=info["aws_access_key_id"],
            aws_secret_access_key=info["aws_secret_access_key"],
            region_name=info["region"],
        )
        return Stack(
            label="local",
            region=info["region"],
            uploads_bucket=info["uploads_bucket"],
            upload_prefix=info["upload_prefix"],
            results_bucket=info["results_bucket"],
            jobs_table=info["jobs_table"],
            ledger_table=info["ledger_table"],
            uploads_queue_url=info["queue_url"],
            dead_letter_queue_url=info["dead_letter_queue_url"],
            copy_queue_url=info["copy_queue_url"],
            parameters={str(k): str(v) for k, v in info.get("parameters", {}).items()},
            session=session,
            endpoint_url=info["aws_endpoint_url"],
        )
    except KeyError as exc:
        raise BadUsage(f"{path} has no {exc.args[0]!r}: written by an older local stack?") from exc


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True
