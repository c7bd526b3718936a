"""The built functions run by `sam local` in Lambda containers against moto on the Docker bridge.

`sam local invoke` runs the reconciler on the schedule event; `sam local start-api` serves the
callback route, where a forged signature is refused (401) and the sample event, signed with the
sample secret stored in moto's Secrets Manager, is accepted (200, for a job nobody knows).

Nothing may reach a public endpoint. Checked three ways: SAM CLI's every AWS endpoint (STS included)
is moto, and its HTTP(S) proxy is a trap that forwards nothing and records what asked (must stay
empty); where docker-engine.sh's egress guard is in place, its count of packets the containers tried
to send off this machine must not move; and the functions only answer as asserted if their AWS calls
reached moto.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backdrop_local.aws import Resources, provision
from backdrop_local.samlocal import (
    EgressTrap,
    SamLocal,
    egress_dropped_packets,
    free_port,
    function_environment,
    local_template,
    sam_containers,
    write_env_vars,
)
from backdrop_local.template import Template

# The first test may install Docker and build the image (a minute or two, each step bounded).
pytestmark = [pytest.mark.samlocal, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"
# Documented in the README: the secret the sample callback events are signed with.
SAMPLE_SECRET = "whsec_backdrop_sample_secret_not_for_production"
FUNCTIONS = ("SubmitFunction", "CallbackFunction", "ReconcileFunction")


@dataclass
class World:
    sam: SamLocal
    trap: EgressTrap
    resources: Resources
    dropped_before: int | None


@pytest.fixture(scope="module")
def world(
    lambda_image: str,
    bridge_ip: str,
    moto_on_bridge: str,
    built_template: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[World]:
    state = tmp_path_factory.mktemp("samlocal")
    # moto keeps one state per process: a stack name no other test uses.
    template = Template(ROOT / "template.yaml", stack_name="samlocal", region="us-east-1")
    resources = provision(template, moto_on_bridge, api_key="rf_live_samlocal", callback_secret=SAMPLE_SECRET)
    # No Runflow runs in these tests: its URL is a port on the bridge address that nothing listens on.
    runflow_url = f"http://{bridge_ip}:{free_port(bridge_ip)}"
    env = function_environment(resources, endpoint_url=moto_on_bridge, runflow_url=runflow_url)
    env_vars = write_env_vars(state / "env-vars.json", FUNCTIONS, env)
    derived = local_template(built_template, out=built_template.with_name("template.samlocal-test.json"))
    with EgressTrap() as trap:
        sam = SamLocal(
            endpoint_url=moto_on_bridge,
            image=lambda_image,
            template=derived,
            env_vars=env_vars,
            state_dir=state,
            trap=trap,
        )
        yield World(sam=sam, trap=trap, resources=resources, dropped_before=egress_dropped_packets())


def assert_nothing_went_out(world: World) -> None:
    assert world.trap.attempts == [], f"SAM CLI asked to reach non-local hosts: {world.trap.attempts}"
    if world.dropped_before is not None:
        assert egress_dropped_packets() == world.dropped_before, "a container tried to send off this machine"


def test_invoke_runs_the_built_reconciler_against_moto(world: World) -> None:
    result = world.sam.invoke("ReconcileFunction", EVENTS / "reconcile-schedule.json", timeout=300)
    print(f"SAMLOCAL invoke_seconds={result.seconds:.1f} image={world.sam.image}")
    assert result.response == {"examined": 0}, result.logs
    assert "Reconciler pass finished" in result.logs
    assert result.container_ids, "SAM printed no SAM_CONTAINER_ID"
    assert not sam_containers(world.sam.image) & set(result.container_ids), "invoke left its container"
    assert_nothing_went_out(world)


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")  # noqa: S310 - http on loopback
    try:
        with opener.open(request, timeout=120) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def callback_request(name: str) -> tuple[bytes, dict[str, str]]:
    event = json.loads((EVENTS / name).read_text())
    headers = {k: event["headers"][k] for k in ("content-type", "runflow-signature", "runflow-request-id")}
    return event["body"].encode(), headers


def test_start_api_serves_the_callback_route(world: World) -> None:
    with world.sam.start_api(timeout=180) as api:
        print(f"SAMLOCAL start_api_startup_seconds={api.startup_seconds:.1f}")
        route = api.url + "/runflow/callback"
        status, body = post(route, *callback_request("callback-forged-signature.json"))
        assert status == 401, (body, api.logs()[-3000:])
        # The control: the same body signed with the secret in moto passes the signature check and
        # reaches the jobs table, which does not know the job.
        status, body = post(route, *callback_request("callback-run-completed.json"))
        assert (status, body) == (200, {"result": "unknown_job"}), api.logs()[-3000:]
    assert api.process.poll() is not None, "sam local start-api still runs"
    assert not sam_containers(world.sam.image) & api.container_ids, "start-api left containers behind"
    assert_nothing_went_out(world)
