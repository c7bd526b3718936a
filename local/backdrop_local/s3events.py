"""S3 event notifications as S3 sends them: moto's carry neither ``versionId`` nor ``sequencer``.

S3 names in each record the version it stored (on a versioned bucket) and a ``sequencer``, a hex
string that orders the events of one key (compared as strings once the shorter is right-padded
with zeros). Without them the submit function cannot tell two versions of one key apart from the
notification: an identical re-upload (same ETag) looks like the version already handled, and a
notification for a version that is no longer the newest is read as the newest.

``install()`` wraps moto's event builder in this process, so every moto server run in process (the
local stack's, the tests', the benchmarks') sends both. The version is the one moto stored for
this write; the sequencer comes from one counter for the whole process (so it grows per key too),
seeded from the clock so that it also grows across restarts.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import Any

from moto.s3 import notifications

SEQUENCER_DIGITS = 18  # as long as S3's (e.g. "0055AED6DCD90281E5")

_lock = threading.Lock()
_last = 0
_installed = False


def next_sequencer() -> str:
    """A new sequencer, greater (as S3 compares them) than every one handed out before."""
    global _last
    with _lock:
        _last = max(_last + 1, time.time_ns())
        return f"{_last:0{SEQUENCER_DIGITS}X}"


def _with_version_and_sequencer(
    build: Callable[..., dict[str, list[dict[str, Any]]]],
) -> Callable[..., dict[str, list[dict[str, Any]]]]:
    @functools.wraps(build)
    def built(
        event_name: str, bucket: Any, key: Any, notification_id: str
    ) -> dict[str, list[dict[str, Any]]]:
        event = build(event_name, bucket, key, notification_id)
        for record in event["Records"]:
            obj = record["s3"]["object"]
            version = getattr(key, "version_id", None)
            if version and version != "null":  # S3 leaves it out on a bucket never versioned
                obj["versionId"] = version
            obj["sequencer"] = next_sequencer()
        return event

    return built


def install() -> None:
    """Make moto's S3 notifications carry ``versionId`` and ``sequencer`` (once per process)."""
    global _installed
    with _lock:
        if _installed:
            return
        build = getattr(notifications, "_get_s3_event", None)
        if build is None:  # a moto that builds events elsewhere: say so rather than send bare ones
            raise RuntimeError("moto.s3.notifications._get_s3_event is gone: update backdrop_local.s3events")
        notifications._get_s3_event = _with_version_and_sequencer(build)
        _installed = True
