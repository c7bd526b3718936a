"""Backdrop's own Runflow client against the local Runflow, over real HTTP on loopback: the
Idempotency-Key rules and the ``client_ref`` lookup that a lost create answer relies on."""

from __future__ import annotations

import httpx
import pytest

from backdrop.runs import RunflowClient, RunflowConflict, RunRequest
from backdrop_local.runflow import LocalRunflow
from tests.integration.local_runflow.local_runflow_support import API_KEY


def request_for(image_url: str, job_id: str) -> RunRequest:
    return RunRequest(
        image_url=image_url,
        red=30,
        green=120,
        blue=220,
        callback_url="http://127.0.0.1:9/unused",
        metadata={"job_id": job_id},
        client_ref=job_id,
    )


def test_second_attempt_with_fresh_url_conflicts_and_finds_the_first_run(
    runflow: LocalRunflow, junk_url: str
) -> None:
    with httpx.Client(timeout=10, trust_env=False) as http:
        client = RunflowClient(runflow.url, API_KEY, http=http)
        first = client.create_run(request_for(junk_url, "job-a"), idempotency_key="job-a")
        again = client.create_run(request_for(junk_url, "job-a"), idempotency_key="job-a")
        assert again.run_id == first.run_id  # same key, same body: replayed

        # A later attempt presigns the image again: same key, another body.
        with pytest.raises(RunflowConflict):
            client.create_run(request_for(junk_url + "?fresh=1", "job-a"), idempotency_key="job-a")
        client.create_run(request_for(junk_url, "job-b"), idempotency_key="job-b")

        assert [run.run_id for run in client.find_runs("job-a")] == [first.run_id]
        assert client.find_runs("job-never-submitted") == []
    assert runflow.stats()["runs_created"] == 2
    assert runflow.wait_idle(30)
