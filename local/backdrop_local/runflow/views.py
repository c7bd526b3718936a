"""JSON shapes of runs, callback deliveries and signing secrets, as Runflow's API returns them.

The run object carries every field of Runflow's OpenAPI run schema (ids of things this emulator
does not have are null), plus what the official SDK reads besides: ``model`` (owner/slug),
``error: {code, message}`` on runs that carry a failure code (failed, timed out, expired,
canceled) and ``finished_at``. ``output`` is set for ``succeeded`` and ``partial_succeeded`` runs
(one item per output, each URL freshly signed), null otherwise; so is ``cost``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

from backdrop_local.runflow.ids import iso
from backdrop_local.runflow.store import WITH_OUTPUT, CallbackSecret, Delivery, Run

MODEL = "runflow/background-color"
PRICE = "0.12"
# Stable made-up UUIDs: the real ones are Runflow-internal and clients do not depend on them.
MODEL_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "https://api.runflow.io/v1/models/runflow/background-color"))
ORG_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "https://api.runflow.io/local-emulator/org"))
USER_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "https://api.runflow.io/local-emulator/user"))

OutputUrl = Callable[[str, int], str]


def run_output(run: Run, output_url: OutputUrl) -> dict[str, Any] | None:
    """Family-A output with freshly signed URLs; None unless the run (partially) succeeded."""
    if run.status_code not in WITH_OUTPUT:
        return None
    return {
        "outputs": [
            {"url": output_url(run.id, item.index), "type": "image", "content_type": item.content_type}
            for item in run.outputs
        ],
        "seed": None,
        "timing": run.timing,
        "nsfw_detected": None,
    }


def run_view(run: Run, output_url: OutputUrl, base_url: str) -> dict[str, Any]:
    billed = run.status_code in WITH_OUTPUT
    terminal = run.completed_at is not None
    return {
        "id": run.id,
        "model": MODEL,
        "model_id": MODEL_ID,
        "flow_id": None,
        "comfyui_workflow_id": None,
        "flow_version_id": None,
        "resolved_template_id": None,
        "target_type": "model",
        "target_version": None,
        "org_id": ORG_ID,
        "created_by": USER_ID,
        "batch_id": None,
        "status_code": run.status_code,
        "source_code": "api",
        "input": run.input,
        "output": run_output(run, output_url),
        "context": {},
        "duration_ms": run.duration_ms,
        "cost": PRICE if billed else None,
        "cost_breakdown": {"base": PRICE} if billed else None,
        "nodes_total": 1,
        "nodes_completed": 1 if terminal else 0,
        "client_ref": run.client_ref,
        "jurisdiction_code": None,
        "request_id": run.request_id,
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "completed_at": iso(run.completed_at),
        "finished_at": iso(run.completed_at),
        "callback_url": run.callback_url,
        "metadata": run.metadata,
        "has_logs": False,
        "has_node_runs": False,
        "links": {
            "self": f"{base_url}/v1/runs/{run.id}",
            "callback": f"{base_url}/v1/runs/{run.id}/callback",
        },
        "failure_code": run.failure_code,
        "failure_message": run.failure_message,
        "failure_stage_code": run.failure_stage_code,
        "error": (
            {"code": run.failure_code, "message": run.failure_message}
            if run.failure_code is not None
            else None
        ),
    }


def delivery_view(delivery: Delivery) -> dict[str, Any]:
    return {
        "id": delivery.id,
        "run_id": delivery.run_id,
        "callback_url": delivery.callback_url,
        "request_id": delivery.request_id,
        "payload_bytes": delivery.payload_bytes.decode("utf-8"),
        "payload": json.loads(delivery.payload_bytes),
        "signing_secret_id": delivery.signing_secret_id,
        "is_automatic": delivery.is_automatic,
        "status_code": delivery.status_code,
        "failure_reason_code": delivery.failure_reason_code,
        "failure_detail": delivery.failure_detail,
        "attempt_count": len(delivery.attempts),
        "max_attempts": delivery.max_attempts,
        "next_attempt_at": iso(delivery.next_attempt_at),
        "created_at": iso(delivery.created_at),
        "updated_at": iso(delivery.updated_at),
        "completed_at": iso(delivery.completed_at),
        "attempts": [
            {
                "id": attempt.id,
                "delivery_id": delivery.id,
                "attempt_number": attempt.attempt_number,
                "status_code": attempt.status_code,
                "response_body": attempt.response_body,
                "response_time_ms": attempt.response_time_ms,
                "error_message": attempt.error_message,
                "created_at": iso(attempt.created_at),
            }
            for attempt in delivery.attempts
        ],
    }


def secret_view(secret: CallbackSecret, *, with_plain_secret: bool = False) -> dict[str, Any]:
    view: dict[str, Any] = {}
    if with_plain_secret:
        view["plain_secret"] = secret.plain_secret
    view.update(
        {
            "id": secret.id,
            "org_id": ORG_ID,
            "key_prefix": secret.key_prefix,
            "is_current": secret.is_current,
            "label": secret.label,
            "disabled_at": iso(secret.disabled_at),
            "last_used_at": iso(secret.last_used_at),
            "created_at": iso(secret.created_at),
            "updated_at": iso(secret.updated_at),
        }
    )
    return view
