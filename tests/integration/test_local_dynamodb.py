"""The local stack's DynamoDB keeps DynamoDB's promise the pipeline rests on: a conditional write
is atomic, so of many writers racing to end one job exactly one wins (and announces it)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator

import pytest
from botocore.exceptions import ClientError

from backdrop_local.aws import MotoServer, client

REGION = "us-east-1"
WRITERS = 12
ITEMS = 40


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    server = MotoServer()
    url = server.start()
    yield url
    server.stop()


def test_of_writers_racing_on_one_item_exactly_one_wins(endpoint: str) -> None:
    ddb = client("dynamodb", endpoint, REGION)
    ddb.create_table(
        TableName="race",
        KeySchema=[{"AttributeName": "job_id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "job_id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    for i in range(ITEMS):
        ddb.put_item(TableName="race", Item={"job_id": {"S": f"j{i}"}, "status": {"S": "copying"}})
    writers = [client("dynamodb", endpoint, REGION) for _ in range(WRITERS)]
    wins: dict[str, int] = {f"j{i}": 0 for i in range(ITEMS)}
    lock = threading.Lock()

    def end_jobs(writer: object, start: threading.Barrier) -> None:
        start.wait()
        for i in range(ITEMS):
            try:
                writer.update_item(  # type: ignore[attr-defined]
                    TableName="race",
                    Key={"job_id": {"S": f"j{i}"}},
                    UpdateExpression="SET #s = :done",
                    ConditionExpression="#s = :copying",
                    ExpressionAttributeNames={"#s": "status"},
                    ExpressionAttributeValues={":done": {"S": "succeeded"}, ":copying": {"S": "copying"}},
                )
            except ClientError as exc:
                assert exc.response["Error"]["Code"] == "ConditionalCheckFailedException"
                continue
            with lock:
                wins[f"j{i}"] += 1

    start = threading.Barrier(WRITERS)
    # The server runs in this process: switching threads often makes an interleaving of condition
    # and write (which DynamoDB never allows) likely instead of rare.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    threads = [threading.Thread(target=end_jobs, args=(w, start)) for w in writers]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join(timeout=120)
    finally:
        sys.setswitchinterval(interval)
    assert not any(thread.is_alive() for thread in threads)
    assert {job: n for job, n in wins.items() if n != 1} == {}
