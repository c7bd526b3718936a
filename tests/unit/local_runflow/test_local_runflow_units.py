"""Unit tests of the local Runflow's parts: ids, URL policy, validation, filters, faults, signing,
compositing, decoding, callback payloads and delivery bookkeeping. No sockets."""

from __future__ import annotations

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
from tests.support.images import encoded

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
def _composite(
    original: np.ndarray[Any, Any], alpha: np.ndarray[Any, Any], colour: Colour
) -> np.ndarray[Any, Any]:
    image = Image.fromarray(original.astype(np.uint8))
    mask = Image.fromarray(alpha.astype(np.uint8), mode="L")
    return np.asarray(composite(image, mask, colour)).astype(int)


def _square_subject(height: int, width: int, side: int) -> tuple[np.ndarray[Any, Any], slice, slice]:
    alpha = np.zeros((height, width), dtype=np.uint8)
    rows = slice(height // 2 - side // 2, height // 2 + side // 2)
    cols = slice(width // 2 - side // 2, width // 2 + side // 2)
    alpha[rows, cols] = 255
    return alpha, rows, cols


def test_an_evenly_lit_background_becomes_the_colour_and_the_subject_does_not_bleed() -> None:
    original = np.full((120, 160, 3), 200)
    alpha, rows, cols = _square_subject(120, 160, 60)
    original[rows, cols] = (0, 0, 0)  # a black subject: a blur including it would darken around it
    result = _composite(original, alpha, Colour(100, 150, 250))
    background = alpha == 0
    assert np.abs(result[background] - (100, 150, 250)).max() <= 1
    assert (result[rows, cols] == 0).all()  # the subject is untouched


@pytest.mark.parametrize(("height", "width"), [(180, 240), (900, 1200)])
@pytest.mark.parametrize("pattern", ["checker", "stripes"])
def test_background_texture_does_not_ghost_through(height: int, width: int, pattern: str) -> None:
    y, x = np.mgrid[0:height, 0:width]
    patterns = {
        "checker": ((x // 2 + y // 2) % 2) * 140 + 80,  # 2 px squares of 80 and 220
        "stripes": ((x // 3) % 2) * 140 + 80,  # 3 px vertical stripes, like a flag or wood grain
    }
    busy = patterns[pattern]
    original = np.repeat(busy[..., np.newaxis], 3, axis=2)
    alpha, rows, cols = _square_subject(height, width, height // 3)
    original[rows, cols] = (10, 200, 30)
    result = _composite(original, alpha, Colour(100, 150, 200))

    background = alpha == 0
    # Per pixel the old luminance swung the colour by +-14 % (28 levels of blue); now it is flat:
    # the colour itself away from edges, and within a smooth +-2 % next to the image border and the
    # subject, where the blur window is cut off and holds more of the nearest stripe.
    margin = round(0.15 * min(height, width))  # three sigmas
    far = np.zeros_like(background)
    far[margin:-margin, margin:-margin] = True
    far[rows.start - margin : rows.stop + margin, cols.start - margin : cols.stop + margin] = False
    assert far.sum() > 0.1 * far.size
    assert np.abs(result[far] - (100, 150, 200)).max() <= 1
    assert np.abs(result[background] - (100, 150, 200)).max() <= 4
    both_h = background[:, 1:] & background[:, :-1]
    both_v = background[1:, :] & background[:-1, :]
    steps = np.concatenate(
        [
            (result[:, 1:] - result[:, :-1])[both_h].ravel(),
            (result[1:, :] - result[:-1, :])[both_v].ravel(),
        ]
    )
    assert steps.std() < 0.25  # neighbouring background pixels hardly ever differ at all


def test_a_smooth_light_gradient_shows_at_thirty_percent() -> None:
    height, width = 200, 400
    ramp = 100.0 + 100.0 * np.arange(width) / (width - 1)  # light grows left to right, 100 to 200
    original = np.repeat(np.broadcast_to(ramp, (height, width))[..., np.newaxis], 3, axis=2).round()
    alpha, _, _ = _square_subject(height, width, 40)
    result = _composite(original, alpha, Colour(100, 150, 200))
    # Luminance 125 and 175 against the median 150: 0.7 + 0.3 * (125 / 150) = 0.95, and 1.05.
    assert np.abs(result[20, 100] - (95, 142.5, 190)).max() <= 1
    assert np.abs(result[20, 300] - (105, 157.5, 210)).max() <= 1
    assert np.abs(result[180, 300] - (105, 157.5, 210)).max() <= 1


def test_shading_is_capped_and_soft_edges_blend() -> None:
    height, width = 120, 300
    original = np.full((height, width, 3), 60)
    original[:, :100] = 240  # a bright third: 240 / median 60 = 4, capped at 2
    alpha = np.zeros((height, width), dtype=np.uint8)
    alpha[60, 250] = 128  # one half-covered pixel of an otherwise absent subject
    result = _composite(original, alpha, Colour(250, 10, 0))
    assert tuple(result[60, 20]) == (255, 13, 0)  # factor 1.3, and 255 caps the red channel
    assert tuple(result[60, 200]) == (250, 10, 0)  # the median region is the colour itself
    # alpha 128/255 of the original grey 60 over the colour: 0.502 * 60 + 0.498 * colour.
    assert np.abs(result[60, 250] - (155, 35, 30)).max() <= 1


def test_without_background_the_colour_is_flat() -> None:
    original = np.full((30, 40, 3), 90)
    alpha = np.full((30, 40), 200, dtype=np.uint8)  # every pixel is subject: no shading to take
    result = _composite(original, alpha, Colour(0, 0, 255))
    weight = 200 / 255
    assert np.abs(result[5, 5] - np.rint(weight * 90 + (1 - weight) * np.array([0, 0, 255]))).max() <= 1


# ---------------------------------------------------------------------------- decoding
def test_decode_applies_exif_orientation_and_flattens_transparency() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    upright = decode_image(encoded(Image.new("RGB", (40, 20), "red"), "JPEG", exif=exif))
    assert upright.size == (20, 40) and upright.mode == "RGB"
    clear = decode_image(encoded(Image.new("RGBA", (8, 8), (0, 0, 0, 0)), "PNG"))
    assert clear.mode == "RGB" and clear.getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"plain text",
        encoded(Image.new("RGB", (64, 64), "blue"), "JPEG")[:300],
        encoded(Image.new("RGB", (8, 8)), "BMP"),
    ],
)
def test_decode_refuses_what_is_not_a_readable_jpeg_png_or_webp(data: bytes) -> None:
    with pytest.raises(ProcessingFailed) as caught:
        decode_image(data)
    assert caught.value.code == "INPUT_UNREADABLE" and caught.value.stage == "decode"


def test_decode_refuses_too_many_pixels_before_decoding() -> None:
    with pytest.raises(ProcessingFailed) as caught:
        decode_image(encoded(Image.new("RGB", (100, 100)), "PNG"), max_pixels=9_999)
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
