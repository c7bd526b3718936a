"""Rate-limit headers on the create, get and list routes, as the ``rate_limit_headers`` setting asks.

The crawls of Runflow's rate-limit page disagree: the newest says 429s carry no headers, an older
one that every response carries ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and
``X-RateLimit-Reset`` (a unix timestamp) and that 429s carry ``Retry-After`` (seconds). The modes:

- ``none``: no headers at all.
- ``retry_after``: a 429 carries ``Retry-After: ceil(retry_after_s)``.
- ``x_ratelimit``: every answer of those routes (after authentication) carries
  ``X-RateLimit-Limit: 1000``, ``X-RateLimit-Remaining`` and
  ``X-RateLimit-Reset: ceil(now + retry_after_s)``. Remaining is 0 on a 429; otherwise it is the
  limit less the requests answered in the last 60 s, but at least 1, because the emulator refuses
  requests only through the injected ``create_429`` / ``get_429`` faults.
- ``both``: all of the above.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable

LIMIT = 1000
WINDOW_S = 60.0


class RateLimitHeaders:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._recent: deque[float] = deque()

    def headers(self, mode: str, retry_after_s: float, limited: bool) -> dict[str, str]:
        """Headers for one answer (``limited``: it is a 429); also counts the request."""
        now = time.monotonic()
        with self._lock:
            self._recent.append(now)
            while self._recent and (self._recent[0] <= now - WINDOW_S or len(self._recent) > LIMIT):
                self._recent.popleft()
            used = len(self._recent)
        headers: dict[str, str] = {}
        if mode in ("x_ratelimit", "both"):
            headers["X-RateLimit-Limit"] = str(LIMIT)
            headers["X-RateLimit-Remaining"] = "0" if limited else str(max(1, LIMIT - used))
            headers["X-RateLimit-Reset"] = str(math.ceil(self._clock() + retry_after_s))
        if limited and mode in ("retry_after", "both"):
            headers["Retry-After"] = str(math.ceil(retry_after_s))
        return headers
