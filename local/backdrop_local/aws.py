"""Local AWS: moto in server mode (S3, DynamoDB, SQS, Secrets Manager) over real HTTP on loopback,
provisioned from the template's own resource definitions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import boto3
from boto3.dynamodb.types import TypeDeserializer
from botocore.config import Config
from moto.server import ThreadedMotoServer

from backdrop_local.template import Template

ACCESS_KEY_ID = "backdrop-local"
SECRET_ACCESS_KEY = "backdrop-local-secret"  # noqa: S105 - moto accepts any credentials


class MotoServer:
    """moto's threaded server on a free loopback port."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
        self.endpoint_url = ""

    def start(self) -> str:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        return self.endpoint_url

    def stop(self) -> None:
        self._server.stop()


def client(service: str, endpoint_url: str, region: str) -> Any:
    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=ACCESS_KEY_ID,
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
    queue_url: str
    queue_arn: str
    dlq_url: str
    api_key_secret: str
    callback_secret_name: str


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


def provision(
    template: Template,
    endpoint_url: str,
    *,
    api_key: str,
    callback_secret: str,
    visibility_timeout: int | None = None,
) -> Resources:
    """Create every stateful resource of the template in moto, with the template's names."""
    region = template.region
    s3 = client("s3", endpoint_url, region)
    sqs = client("sqs", endpoint_url, region)
    ddb = client("dynamodb", endpoint_url, region)
    sm = client("secretsmanager", endpoint_url, region)

    # Dead-letter queue first: the uploads queue's redrive policy names it.
    dlq_props = template.properties("UploadsDeadLetterQueue")
    dlq_url = sqs.create_queue(QueueName=dlq_props["QueueName"])["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    queue_props = template.properties("UploadsQueue")
    redrive = dict(queue_props["RedrivePolicy"])
    redrive["deadLetterTargetArn"] = dlq_arn
    attributes = {
        "VisibilityTimeout": str(visibility_timeout or queue_props["VisibilityTimeout"]),
        "MessageRetentionPeriod": str(queue_props.get("MessageRetentionPeriod", 345600)),
        "RedrivePolicy": json.dumps(redrive),
    }
    queue_url = sqs.create_queue(QueueName=queue_props["QueueName"], Attributes=attributes)["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]

    for logical in ("JobsTable", "IdempotencyTable"):
        props = template.properties(logical)
        props.setdefault("TableName", template.physical_id(logical))
        ddb.create_table(**_table_args(props))
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
        entry: dict[str, Any] = {"QueueArn": queue_arn, "Events": [config["Event"]]}
        rules = config.get("Filter", {}).get("S3Key", {}).get("Rules", [])
        if rules:
            entry["Filter"] = {
                "Key": {"FilterRules": [{"Name": r["Name"], "Value": r["Value"]} for r in rules]}
            }
        queue_configs.append(entry)
    s3.put_bucket_notification_configuration(
        Bucket=uploads["BucketName"], NotificationConfiguration={"QueueConfigurations": queue_configs}
    )

    api_key_name = template.physical_id("RunflowApiKeySecret")
    callback_name = template.physical_id("CallbackSigningSecret")
    sm.create_secret(Name=api_key_name, SecretString=api_key)
    sm.create_secret(
        Name=callback_name, SecretString=json.dumps({"current": callback_secret, "previous": ""})
    )

    return Resources(
        endpoint_url=endpoint_url,
        region=region,
        uploads_bucket=uploads["BucketName"],
        upload_prefix=template.parameters["UploadPrefix"],
        results_bucket=results["BucketName"],
        results_prefix=template.parameters["ResultsPrefix"],
        jobs_table=template.physical_id("JobsTable"),
        idempotency_table=template.physical_id("IdempotencyTable"),
        queue_url=queue_url,
        queue_arn=queue_arn,
        dlq_url=dlq_url,
        api_key_secret=api_key_name,
        callback_secret_name=callback_name,
    )
