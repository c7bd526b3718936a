"""Identifiers and timestamps as Runflow shapes them.

Run ids are UUIDv7 (RFC 9562): 48-bit Unix milliseconds, then a 12-bit counter that keeps ids made
within the same millisecond increasing, then random bits. Ids therefore sort in creation order, so
the run list can order and paginate on the id alone.

Timestamps are aware UTC datetimes rendered with ``datetime.isoformat()`` (``+00:00``, never ``Z``),
which is what Runflow documents for callback payloads; REST responses use the same rendering.
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from datetime import UTC, datetime

_lock = threading.Lock()
_last_ms = 0
_counter = 0
_COUNTER_MAX = 0xFFF


def uuid7() -> uuid.UUID:
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            # Start low in the counter space so many ids fit in one millisecond.
            _counter = secrets.randbits(10)
        else:
            ms = _last_ms
            _counter += 1
            if _counter > _COUNTER_MAX:
                # Counter exhausted: borrow the next millisecond rather than break ordering.
                ms += 1
                _counter = 0
        _last_ms = ms
        counter = _counter
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= counter << 64
    value |= 0b10 << 62
    value |= secrets.randbits(62)
    return uuid.UUID(int=value)


def new_id() -> str:
    return str(uuid7())


def utc_now() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None
