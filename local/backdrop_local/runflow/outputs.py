"""Result images: kept on disk, handed out at presigned-style URLs that expire.

A URL reads ``{base}/outputs/{run_id}/{n}.png?expires=<unix seconds>&signature=<hex>``; the
signature is HMAC-SHA256 under a key made fresh for each emulator instance over
``"{run_id}/{n}.png\\n{expires}"``. Anything altered (path, expiry, signature) fails the check, and a
URL past its expiry is refused: both answer 403, as storage does. Every read of a run re-signs, so
a client that comes back later always gets a URL that works for the full TTL.

Files live in a private temporary directory (or one the caller names), not in memory, so thousands
of runs do not pile megabytes of PNG into the process.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

_RUN_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


class OutputDirectory:
    def __init__(self, root: Path | None = None) -> None:
        self._owned = root is None
        self.root = Path(tempfile.mkdtemp(prefix="local-runflow-")) if root is None else root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, run_id: str, index: int) -> Path:
        if not _RUN_ID.fullmatch(run_id) or index < 0:
            raise ValueError("bad output reference")
        return self.root / run_id / f"{index}.png"

    def write(self, run_id: str, index: int, data: bytes) -> None:
        path = self._path(run_id, index)
        path.parent.mkdir(exist_ok=True)
        partial = path.with_suffix(".part")
        partial.write_bytes(data)
        partial.replace(path)  # readers never see half a file

    def read(self, run_id: str, index: int) -> bytes | None:
        try:
            return self._path(run_id, index).read_bytes()
        except (OSError, ValueError):
            return None

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self.root, ignore_errors=True)


@dataclass(frozen=True)
class UrlCheck:
    ok: bool
    reason: str = ""


class OutputSigner:
    def __init__(
        self,
        base_url: Callable[[], str],
        ttl_seconds: float,
        *,
        key: bytes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl_seconds <= 0:
            raise ValueError("output TTL must be positive")
        self._base_url = base_url
        self._ttl = ttl_seconds
        self._key = key or secrets.token_bytes(32)
        self._clock = clock

    def _signature(self, run_id: str, index: int, expires: int) -> str:
        message = f"{run_id}/{index}.png\n{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def url(self, run_id: str, index: int) -> str:
        expires = math.ceil(self._clock() + self._ttl)
        query = urlencode({"expires": expires, "signature": self._signature(run_id, index, expires)})
        return f"{self._base_url()}/outputs/{run_id}/{index}.png?{query}"

    def check(self, run_id: str, index: int, expires: str | None, signature: str | None) -> UrlCheck:
        if not expires or not signature or not expires.isdigit():
            return UrlCheck(False, "Request is missing a valid expires or signature parameter")
        expected = self._signature(run_id, index, int(expires))
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            return UrlCheck(False, "The request signature does not match")
        if self._clock() > int(expires):
            return UrlCheck(False, "Request has expired")
        return UrlCheck(True)
