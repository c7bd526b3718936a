"""Unit tests of the local Runflow's parts: ids, URL policy, validation, filters, faults, signing,
compositing, decoding, callback payloads and delivery bookkeeping. No sockets."""

from __future__ import annotations

import io
import json
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest
from PIL import Image

from backdrop.signatures import sign as project_sign
from backdrop_local.runflow.callbacks import DueQueue, build_delivery, payload, serialise, sign
from backdrop_local.runflow.errors import ApiError
from backdrop_local.runflow.faults import FaultInjector, FaultSettings, FaultSettingsInvalid
from backdrop_local.runflow.ids import uuid7
from backdrop_local.runflow.netpolicy import NetPolicy, is_loopback_host, parse_origin
from backdrop_local.runflow.outputs import OutputSigner
from backdrop_local.runflow.processing import Colour, ProcessingFailed, composite, decode_image
from backdrop_local.runflow.query import Cursor, parse_filter, parse_limit
from backdrop_local.runflow.store import FAILED, SUCCEEDED, AttemptOutcome, Run, Store
from backdrop_local.runflow.validation import validate_run_request

POLICY = NetPolicy.from_origins(["http://127.0.0.1:5555"])


def _body(**input_changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "input": {"image_url": "https://img.example/a.jpg", "color_red": 1, "color_green": 2, "color_blue": 3}
    }
    body["input"].update(input_changes)
    return body


def _run(status: str = SUCCEEDED, **changes: Any) -> Run:
    created = datetime(2026, 5, 6, 10, 0, 0, tzinfo=UTC)
    run = Run(
        id=str(uuid7()),
        request_id="req",
        input={},
        callback_url="http://127.0.0.1:9/hook",
        metadata={"k": "v"},
        client_ref=None,
        created_at=created,
        status_code=status,
        completed_at=datetime(2026, 5, 6, 10, 1, 42, 345000, tzinfo=UTC),
    )
    for key, value in changes.items():
        setattr(run, key, value)
    return run


# ---------------------------------------------------------------------------- ids
def test_uuid7_ids_are_version_7_unique_and_increasing() -> None:
    ids = [uuid7() for _ in range(5000)]
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in ids)
    assert [str(u) for u in ids] == sorted(str(u) for u in ids)
    assert len(set(ids)) == len(ids)
    millis = ids[0].int >> 80
    assert abs(millis - time.time() * 1000) < 5000


# ---------------------------------------------------------------------------- network policy
def test_loopback_and_origin_rules() -> None:
    assert parse_origin("HTTP://LocalHost/x") == ("http", "localhost", 80)
    assert parse_origin("https://[::1]:8443/x") == ("https", "::1", 8443)
    assert parse_origin("ftp://host/x") is None and parse_origin("http:///nohost") is None
    for host in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost", "api.localhost"):
        assert is_loopback_host(host), host
    for host in ("10.0.0.1", "192.168.1.1", "0.0.0.0", "example.com", "localhost.example.com", "169.254.1.1"):
        assert not is_loopback_host(host), host
    with pytest.raises(ValueError):
        NetPolicy.from_origins(["http://127.0.0.1:5555/path"])
    assert POLICY.image_url_problem("https://anything.example/a.jpg") is None
    assert POLICY.image_url_problem("http://127.0.0.1:5555/a.jpg") is None
    assert POLICY.image_url_problem("http://127.0.0.1:5556/a.jpg") is not None
    assert POLICY.callback_url_problem("http://localhost:8080/hook") is None
    assert POLICY.callback_url_problem("https://hooks.example.com/hook") is not None
    assert not POLICY.may_contact("https://s3.amazonaws.com/bucket/key")


# ---------------------------------------------------------------------------- validation
def test_a_valid_body_is_normalised() -> None:
    request = validate_run_request(
        {"input": {"color_blue": 3, "color_green": 2, "color_red": 1, "image_url": "https://a.example/x"}},
        POLICY,
    )
    assert list(request.input) == ["image_url", "color_red", "color_green", "color_blue"]
    assert request.callback_url is None and request.metadata is None and request.client_ref is None


def test_validation_reports_every_problem_at_once() -> None:
    with pytest.raises(ApiError) as caught:
        validate_run_request(
            {
                **_body(color_red=256, color_green=True, color_blue=None),
                "callback_url": "https://x.example/h",
            },
            POLICY,
        )
    error = caught.value
    assert error.status == 422 and error.code == "VALIDATION_ERROR"
    assert error.errors is not None
    locs = {tuple(e["loc"]): e["type"] for e in error.errors}
    assert locs == {
        ("body", "input", "color_red"): "less_than_equal",
        ("body", "input", "color_green"): "int_type",
        ("body", "input", "color_blue"): "int_type",
        ("body", "callback_url"): "value_error",
    }
    not_objects: list[Any] = [None, [], "text"]
    for bad in not_objects:
        with pytest.raises(ApiError):
            validate_run_request(bad, POLICY)


# ---------------------------------------------------------------------------- list parameters
def test_filters_and_cursors() -> None:
    queued = _run("queued", client_ref="it's b")
    done = _run(SUCCEEDED, client_ref="a")
    assert parse_filter(None)(queued)
    assert parse_filter("client_ref.EQ:'it\\'s b'")(queued)
    assert parse_filter('client_ref="it\'s b" and status_code:queued')(queued)
    assert not parse_filter("client_ref:a AND status_code:queued")(done)
    assert parse_filter("status_code.NE:queued")(done) and not parse_filter("status_code.NE:queued")(queued)
    for bad in ("colour:red", "status_code:queued OR status_code:failed", "status_code.GT:1", "nonsense"):
        with pytest.raises(ApiError):
            parse_filter(bad)
    assert parse_limit(None) == 50 and parse_limit("500") == 500
    for raw in ("0", "501", "-1", "x"):
        with pytest.raises(ApiError):
            parse_limit(raw)
    cursor = Cursor("next", str(uuid7()))
    assert Cursor.decode(cursor.encode()) == cursor
    assert Cursor.decode(None) == Cursor("first", None)
    for bad_token in ("!!", "e30", Cursor("next", None).encode()):
        with pytest.raises(ApiError):
            Cursor.decode(bad_token)


# ---------------------------------------------------------------------------- faults
def test_fault_settings_validation() -> None:
    assert FaultSettings.from_mapping({"create_429": 1, "callback_delay_s": 30}) == FaultSettings(
        create_429=1.0, callback_delay_s=30.0
    )
    with pytest.raises(ValueError):
        FaultSettings(processing_failure=1.01)
    with pytest.raises(FaultSettingsInvalid) as caught:
        FaultSettings.from_mapping({"create_5xx": 2, "typo": 0.1, "callback_drop": False})
    assert {p["loc"][-1] for p in caught.value.problems} == {"create_5xx", "typo", "callback_drop"}


def test_seeded_injector_repeats_and_fixed_rates_draw_nothing() -> None:
    def draws(injector: FaultInjector) -> list[bool]:
        return [injector.roll(n) for n in ("create_429", "processing_failure", "callback_drop") * 30]

    settings = FaultSettings(create_429=0.5, processing_failure=1.0, callback_drop=0.0)
    assert draws(FaultInjector(settings, 11)) == draws(FaultInjector(settings, 11))
    only_half = FaultInjector(FaultSettings(create_429=0.5), 11)
    assert [only_half.roll("create_429") for _ in range(30)] == draws(FaultInjector(settings, 11))[0::3]
    with pytest.raises(ValueError):
        only_half.roll("callback_delay_s")


# ---------------------------------------------------------------------------- output URLs
def test_signed_output_urls_expire_and_resist_tampering() -> None:
    now = [1_000_000.0]
    signer = OutputSigner(lambda: "http://127.0.0.1:1", 10.0, clock=lambda: now[0])
    url = signer.url("0196a1b2-0000-7000-8000-000000000001", 0)
    query = dict(part.split("=") for part in url.split("?")[1].split("&"))
    run_id = "0196a1b2-0000-7000-8000-000000000001"
    assert signer.check(run_id, 0, query["expires"], query["signature"]).ok
    assert not signer.check(run_id, 1, query["expires"], query["signature"]).ok
    assert not signer.check(run_id, 0, str(int(query["expires"]) + 1), query["signature"]).ok
    assert not signer.check(run_id, 0, query["expires"], query["signature"].upper()).ok
    assert not signer.check(run_id, 0, None, None).ok
    now[0] += 11
    expired = signer.check(run_id, 0, query["expires"], query["signature"])
    assert not expired.ok and "expired" in expired.reason
    other_key = OutputSigner(lambda: "http://127.0.0.1:1", 10.0, clock=lambda: now[0])
    assert not other_key.check(run_id, 0, query["expires"], query["signature"]).ok


# ---------------------------------------------------------------------------- compositing
def test_composite_follows_the_documented_formula() -> None:
    height, width = 40, 60
    original = np.full((height, width, 3), 200, dtype=np.uint8)
    original[:, :10] = 100  # a darker band of background: s = 100 / 200 = 0.5
    original[15:25, 25:35] = (10, 200, 30)  # the subject
    alpha = np.zeros((height, width), dtype=np.uint8)
    alpha[15:25, 25:35] = 255
    colour = Colour(100, 150, 250)
    result = np.asarray(
        composite(Image.fromarray(original), Image.fromarray(alpha, mode="L"), colour)
    ).astype(int)

    target = np.array([100, 150, 250])
    assert np.abs(result[5, 40] - target).max() <= 1  # evenly lit background: the colour itself
    shaded = np.clip(target * (0.7 + 0.3 * 0.5), 0, 255)
    assert np.abs(result[5, 5] - shaded).max() <= 1  # darker band keeps 30 % of its shading
    assert (result[20, 30] == (10, 200, 30)).all()  # subject untouched


def test_composite_blends_soft_edges_and_caps_bright_backgrounds() -> None:
    original = np.full((4, 4, 3), 100, dtype=np.uint8)
    original[0, 0] = 250  # s = 2.5 → clipped to 2 → factor 1.3, and 255 caps the channel
    alpha = np.zeros((4, 4), dtype=np.uint8)
    alpha[3, 3] = 128
    result = np.asarray(
        composite(Image.fromarray(original), Image.fromarray(alpha, mode="L"), Colour(250, 10, 0))
    )
    assert tuple(result[0, 0]) == (255, 13, 0)
    weight = 128 / 255
    expected = weight * 100 + (1 - weight) * np.array([250, 10, 0])
    assert np.abs(result[3, 3].astype(int) - np.rint(expected)).max() <= 1


# ---------------------------------------------------------------------------- decoding
def _encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_decode_applies_exif_orientation_and_flattens_transparency() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    upright = decode_image(_encoded(Image.new("RGB", (40, 20), "red"), "JPEG", exif=exif))
    assert upright.size == (20, 40) and upright.mode == "RGB"
    clear = decode_image(_encoded(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "PNG"))
    assert clear.mode == "RGB" and clear.getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"plain text",
        _encoded(Image.new("RGB", (64, 64), "blue"), "JPEG")[:300],
        _encoded(Image.new("RGB", (8, 8)), "BMP"),
    ],
)
def test_decode_refuses_what_is_not_a_readable_jpeg_png_or_webp(data: bytes) -> None:
    with pytest.raises(ProcessingFailed) as caught:
        decode_image(data)
    assert caught.value.code == "INPUT_UNREADABLE" and caught.value.stage == "decode"


def test_decode_refuses_too_many_pixels_before_decoding() -> None:
    with pytest.raises(ProcessingFailed) as caught:
        decode_image(_encoded(Image.new("RGB", (100, 100)), "PNG"), max_pixels=9_999)
    assert caught.value.code == "INPUT_UNREADABLE" and "pixels" in caught.value.message


# ---------------------------------------------------------------------------- callbacks and deliveries
def test_payload_shape_serialisation_and_signature() -> None:
    run = _run(FAILED)
    body = payload(run, {"outputs": []})
    assert list(body) == [
        "event",
        "run_id",
        "status",
        "output",
        "duration_ms",
        "created_at",
        "completed_at",
        "metadata",
    ]
    assert body["event"] == "run.failed" and body["output"] is None
    assert body["created_at"] == "2026-05-06T10:00:00+00:00"
    assert body["completed_at"] == "2026-05-06T10:01:42.345000+00:00"
    assert body["duration_ms"] == 102345
    raw = serialise(body)
    assert json.loads(raw) == body
    assert sign(raw, "whsec_abc") == project_sign(raw, "whsec_abc")


def test_delivery_bookkeeping_retries_only_what_may_succeed() -> None:
    store = Store()
    secret = store.create_secret("s", make_current=True)
    run = _run(SUCCEEDED)
    delivery = build_delivery(store, run, {"outputs": []}, is_automatic=True, max_attempts=3)
    store.add_delivery(delivery)
    assert delivery.signing_secret_id == secret.id
    assert delivery.signature == sign(delivery.payload_bytes, secret.plain_secret)

    server_error = AttemptOutcome(500, "no", 3, "HTTP 500", False, True)
    assert store.claim_delivery(delivery.id) is not None
    assert store.claim_delivery(delivery.id) is None  # already in flight
    assert store.record_attempt(delivery.id, server_error, (0.05, 0.1)) == 0.05
    store.claim_delivery(delivery.id)
    assert store.record_attempt(delivery.id, server_error, (0.05, 0.1)) == 0.1
    store.claim_delivery(delivery.id)
    assert store.record_attempt(delivery.id, server_error, (0.05, 0.1)) is None
    assert delivery.status_code == "failed" and delivery.failure_reason_code == "MAX_ATTEMPTS_EXCEEDED"

    refused = build_delivery(store, run, None, is_automatic=False, max_attempts=3)
    store.add_delivery(refused)
    store.claim_delivery(refused.id)
    assert (
        store.record_attempt(refused.id, AttemptOutcome(404, "", 1, "HTTP 404", False, False), (1.0,)) is None
    )
    assert refused.status_code == "failed" and len(refused.attempts) == 1
    assert store.is_idle()


def test_due_queue_orders_by_due_time_and_holds_each_id_once() -> None:
    due = DueQueue()
    stop = threading.Event()
    due.push("later", 0.15)
    due.push("now", 0.0)
    due.push("now", 0.0)
    started = time.monotonic()
    assert due.pop(stop) == "now"
    assert due.pop(stop) == "later"
    assert time.monotonic() - started >= 0.14
    stop.set()
    assert due.pop(stop) is None
