"""Result images: kept on disk, handed out at presigned-style URLs that expire.

A URL reads ``{base}/outputs/{run_id}/{n}.png?expires=<unix seconds>&signature=<hex>``; the
signature is HMAC-SHA256 under a key made fresh for each emulator instance over
``"{run_id}/{n}.png\\n{expires}"``. Anything altered (path, expiry, signature) fails the check, and a
URL past its expiry is refused: both answer 403, as storage does. Every read of a run re-signs, so
a client that comes back later always gets a URL that works for the full TTL.

Files live in a private temporary directory (or one the caller names), not in memory, so thousands
of runs do not pile megabytes of PNG into the process. Files are written from parts (padding is
one shared 1 MiB block repeated) and served in 1 MiB blocks, so a 200 MB output costs no more
memory than a small one. A run's file may be a hard link to a shared file (instant processing
reuses one file for identical outputs).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlencode

_RUN_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
READ_BLOCK = 1024 * 1024


class OutputDirectory:
    def __init__(self, root: Path | None = None) -> None:
        self._owned = root is None
        self.root = Path(tempfile.mkdtemp(prefix="local-runflow-")) if root is None else root
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, run_id: str, index: int) -> Path:
        if not _RUN_ID.fullmatch(run_id) or index < 0:
            raise ValueError("bad output reference")
        return self.root / run_id / f"{index}.png"

    def write_parts(self, run_id: str, index: int, parts: Iterable[bytes | memoryview]) -> int:
        """Write the concatenation of ``parts``; returns its size."""
        path = self._path(run_id, index)
        path.parent.mkdir(exist_ok=True)
        partial = path.with_suffix(".part")
        size = 0
        with partial.open("wb") as out:
            for part in parts:
                out.write(part)
                size += len(part)
        partial.replace(path)  # readers never see half a file
        return size

    def link(self, run_id: str, index: int, source: Path) -> int:
        """Make ``source`` (a file under ``root``) this output too, without copying it."""
        path = self._path(run_id, index)
        path.parent.mkdir(exist_ok=True)
        partial = path.with_suffix(".part")
        partial.unlink(missing_ok=True)
        os.link(source, partial)
        partial.replace(path)
        return path.stat().st_size

    def scratch(self, name: str) -> Path:
        """A directory under ``root`` that no run's outputs use (run directories are UUIDs)."""
        if _RUN_ID.fullmatch(name) or not re.fullmatch(r"_[a-z]+", name):
            raise ValueError("scratch directories are named _lowercase")
        path = self.root / name
        path.mkdir(exist_ok=True)
        return path

    def open(self, run_id: str, index: int) -> tuple[BinaryIO, int] | None:
        """The output opened for reading, and its size; None if there is none."""
        try:
            handle = self._path(run_id, index).open("rb")
        except (OSError, ValueError):
            return None
        return handle, os.fstat(handle.fileno()).st_size

    def remove(self, run_id: str, keep: int = 0) -> None:
        """Delete the run's outputs from index ``keep`` on (all of them with the default)."""
        try:
            directory = self._path(run_id, 0).parent
            names = list(directory.iterdir())
        except (OSError, ValueError):
            return
        for path in names:
            stem = path.name.split(".", 1)[0]
            if not stem.isdigit() or int(stem) >= keep:
                path.unlink(missing_ok=True)

    def close(self) -> None:
        if self._owned:
            shutil.rmtree(self.root, ignore_errors=True)


class FileStream:
    """A WSGI body that reads an open file in blocks. The file is closed by the server's
    ``close()``, and also when iteration ends or is abandoned: werkzeug skips ``close()`` when the
    client resets the connection mid-answer."""

    def __init__(self, handle: BinaryIO, block: int = READ_BLOCK) -> None:
        self._handle = handle
        self._block = block

    def __iter__(self) -> Iterator[bytes]:
        try:
            while data := self._handle.read(self._block):
                yield data
        finally:
            self._handle.close()

    def close(self) -> None:
        self._handle.close()


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
