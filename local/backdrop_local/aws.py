"""Local AWS: moto in server mode (S3, DynamoDB, SQS, Secrets Manager) over real HTTP on loopback,
provisioned from the template's own resource definitions."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from boto3.dynamodb.types import TypeDeserializer
from botocore.config import Config
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

from backdrop_local import s3events
from backdrop_local.iamrecord import CALLS_SUFFIX, CallRecorder
from backdrop_local.template import Template

ACCESS_KEY_ID = "backdrop-local"
SECRET_ACCESS_KEY = "backdrop-local-secret"  # noqa: S105 - moto accepts any credentials


class _AtomicItemWrites:
    """WSGI middleware: one DynamoDB request at a time.

    DynamoDB evaluates a condition and writes the item atomically; moto's threaded server does not
    (two concurrent conditional updates of one item can both pass their condition). The pipeline's
    correctness rests on that atomicity (a job ends, and announces its event, exactly once), so the
    local stack serialises DynamoDB requests; moto answers each in milliseconds."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not str(environ.get("HTTP_X_AMZ_TARGET", "")).startswith("DynamoDB_"):
            return self._app(environ, start_response)
        with self._lock:
            return list(self._app(environ, start_response))


class _LocalMotoServer(ThreadedMotoServer):
    """moto's threaded server with DynamoDB's atomic conditional writes and, with ``record_to``, a
    ``CallRecorder`` in front of its WSGI application."""

    def __init__(self, ip_address: str, port: int, record_to: Path | None) -> None:
        super().__init__(ip_address=ip_address, port=port, verbose=False)
        self.recorder: CallRecorder | None = None
        self._record_to = record_to

    def _server_entry(self) -> None:
        # As ThreadedMotoServer._server_entry, with the middlewares wrapped around moto's application.
        moto = DomainDispatcherApplication(create_backend_app)
        app: Callable[..., Iterable[bytes]] = _AtomicItemWrites(moto)
        if self._record_to is not None:
            self.recorder = CallRecorder(app, self._record_to)
            app = self.recorder
        self._server = make_server(
            self._ip_address, self._port, app, True, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()


class MotoServer:
    """moto's threaded server on a free loopback port, its S3 notifications as S3's (s3events).
    With ``record_dir``, every signed request is also recorded in IAM terms to
    ``<record_dir>/<instance>.calls.jsonl`` (see iamrecord)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        record_dir: Path | None = None,
        instance: str = "moto",
    ) -> None:
        self.calls_path = record_dir / f"{instance}{CALLS_SUFFIX}" if record_dir else None
        self._server = _LocalMotoServer(host, port, self.calls_path)
        self.endpoint_url = ""

    def start(self) -> str:
        s3events.install()
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self.endpoint_url

    def stop(self) -> None:
        self._server.stop()
        if self._server.recorder:
            self._server.recorder.close()


def client(service: str, endpoint_url: str, region: str, *, access_key_id: str = ACCESS_KEY_ID) -> Any:
    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=SECRET_ACCESS_KEY,
        config=Config(retries={"mode": "standard", "max_attempts": 3}),
    )


_deserializer = TypeDeserializer()


def scan_items(ddb: Any, table: str) -> list[dict[str, Any]]:
    """Every item of ``table`` as plain Python values: all pages, strongly consistent."""
    return [
        {k: _deserializer.deserialize(v) for k, v in raw.items()}
        for page in ddb.get_paginator("scan").paginate(TableName=table, ConsistentRead=True)
        for raw in page.get("Items", [])
    ]


@dataclass(frozen=True)
class Resources:
    endpoint_url: str
    region: str
    uploads_bucket: str
    upload_prefix: str
    results_bucket: str
    results_prefix: str
    jobs_table: str
    idempotency_table: str
    ledger_table: str
    queue_url: str
    queue_arn: str
    dlq_url: str
    copy_queue_url: str
    copy_queue_arn: str
    copy_dlq_url: str
    api_key_secret: str
    callback_secret_name: str
    # Where the stack's completion events arrive (a rule on the bus the template names; local only).
    events_queue_url: str = ""
    # Every queue of the template by logical id: (url, arn).
    queues: dict[str, tuple[str, str]] = field(default_factory=dict)


def _table_args(props: dict[str, Any]) -> dict[str, Any]:
    args: dict[str, Any] = {
        "TableName": props["TableName"],
        "AttributeDefinitions": props["AttributeDefinitions"],
        "KeySchema": props["KeySchema"],
        "BillingMode": props.get("BillingMode", "PAY_PER_REQUEST"),
    }
    if props.get("GlobalSecondaryIndexes"):
        args["GlobalSecondaryIndexes"] = props["GlobalSecondaryIndexes"]
    return args


def _create_queues(
    template: Template, sqs: Any, visibility_timeout: int | None
) -> dict[str, tuple[str, str]]:
    """Every SQS queue of the template, dead-letter queues first (redrive policies name them)."""
    logical_ids = template.resources_of_type("AWS::SQS::Queue")
    dead_letter = {
        target for logical in logical_ids for target in _redrive_targets(template.resource(logical))
    }
    created: dict[str, tuple[str, str]] = {}
    for logical in sorted(logical_ids, key=lambda name: name not in dead_letter):
        props = template.properties(logical)
        attributes: dict[str, str] = {}
        if "MessageRetentionPeriod" in props:
            attributes["MessageRetentionPeriod"] = str(props["MessageRetentionPeriod"])
        if "VisibilityTimeout" in props:
            attributes["VisibilityTimeout"] = str(visibility_timeout or props["VisibilityTimeout"])
        if "RedrivePolicy" in props:
            redrive = dict(props["RedrivePolicy"])
            (target,) = _redrive_targets(template.resource(logical))
            redrive["deadLetterTargetArn"] = created[target][1]
            attributes["RedrivePolicy"] = json.dumps(redrive)
        url = sqs.create_queue(QueueName=props["QueueName"], Attributes=attributes)["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        created[logical] = (url, arn)
    return created


def _redrive_targets(resource: dict[str, Any]) -> list[str]:
    target = resource.get("Properties", {}).get("RedrivePolicy", {}).get("deadLetterTargetArn")
    if isinstance(target, dict) and "Fn::GetAtt" in target:
        value = target["Fn::GetAtt"]
        return [value[0] if isinstance(value, list) else str(value).split(".", 1)[0]]
    return []


def provision(
    template: Template,
    endpoint_url: str,
    *,
    api_key: str,
    callback_secret: str,
    previous_callback_secret: str = "",
    visibility_timeout: int | None = None,
) -> Resources:
    """Create every stateful resource of the template in moto, with the template's names."""
    region = template.region
    s3 = client("s3", endpoint_url, region)
    sqs = client("sqs", endpoint_url, region)
    ddb = client("dynamodb", endpoint_url, region)
    sm = client("secretsmanager", endpoint_url, region)

    queues = _create_queues(template, sqs, visibility_timeout)
    for logical, (url, _arn) in queues.items():
        template.override_ref(logical, url)  # Ref of a queue is its URL, as in CloudFormation
    tables: dict[str, str] = {}
    for logical in template.resources_of_type("AWS::DynamoDB::Table"):
        props = template.properties(logical)
        props.setdefault("TableName", template.physical_id(logical))
        ddb.create_table(**_table_args(props))
        tables[logical] = props["TableName"]
        ttl = props.get("TimeToLiveSpecification")
        if ttl:
            ddb.update_time_to_live(
                TableName=props["TableName"],
                TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True},
            )

    uploads = template.properties("UploadsBucket")
    results = template.properties("ResultsBucket")
    for props in (uploads, results):
        name = props["BucketName"]
        s3.create_bucket(Bucket=name)
        if props.get("VersioningConfiguration", {}).get("Status") == "Enabled":
            s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    queue_configs = []
    for config in uploads.get("NotificationConfiguration", {}).get("QueueConfigurations", []):
        entry: dict[str, Any] = {"QueueArn": queues["UploadsQueue"][1], "Events": [config["Event"]]}
        rules = config.get("Filter", {}).get("S3Key", {}).get("Rules", [])
        if rules:
            entry["Filter"] = {
                "Key": {"FilterRules": [{"Name": r["Name"], "Value": r["Value"]} for r in rules]}
            }
        queue_configs.append(entry)
    s3.put_bucket_notification_configuration(
        Bucket=uploads["BucketName"], NotificationConfiguration={"QueueConfigurations": queue_configs}
    )

    events_queue_url = _route_completion_events(template, sqs, client("events", endpoint_url, region))

    api_key_name = template.physical_id("RunflowApiKeySecret")
    callback_name = template.physical_id("CallbackSigningSecret")
    sm.create_secret(Name=api_key_name, SecretString=api_key)
    sm.create_secret(
        Name=callback_name,
        SecretString=json.dumps({"current": callback_secret, "previous": previous_callback_secret}),
    )

    return Resources(
        endpoint_url=endpoint_url,
        region=region,
        uploads_bucket=uploads["BucketName"],
        upload_prefix=template.parameters["UploadPrefix"],
        results_bucket=results["BucketName"],
        results_prefix=template.parameters["ResultsPrefix"],
        jobs_table=tables["JobsTable"],
        idempotency_table=tables["IdempotencyTable"],
        ledger_table=tables["LedgerTable"],
        queue_url=queues["UploadsQueue"][0],
        queue_arn=queues["UploadsQueue"][1],
        dlq_url=queues["UploadsDeadLetterQueue"][0],
        copy_queue_url=queues["CopyQueue"][0],
        copy_queue_arn=queues["CopyQueue"][1],
        copy_dlq_url=queues["CopyDeadLetterQueue"][0],
        api_key_secret=api_key_name,
        callback_secret_name=callback_name,
        events_queue_url=events_queue_url,
        queues=queues,
    )


def _route_completion_events(template: Template, sqs: Any, events: Any) -> str:
    """A queue that receives every event the stack publishes on its bus, so users and tests see
    them (in AWS a user writes such a rule for their own systems)."""
    bus = template.parameters.get("EventBusName", "default")
    if bus != "default":
        events.create_event_bus(Name=bus)
    name = f"{template.stack_name}-completion-events"
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(
        Name=name, EventBusName=bus, EventPattern=json.dumps({"source": ["backdrop"]}), State="ENABLED"
    )
    events.put_targets(Rule=name, EventBusName=bus, Targets=[{"Id": "events-queue", "Arn": arn}])
    return str(url)
