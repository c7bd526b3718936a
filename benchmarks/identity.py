"""``BENCH identity``: what content identity adds to a submit, for a 1 MB and a 20 MB photo.

A photo's identity is the SHA-256 of its bytes (``backdrop.identity.content_digest``): one HEAD
with checksum mode on, and, when S3 stores no full-object SHA-256 for the object (an upload sent
without ``ChecksumAlgorithm=SHA256``), one streamed read of the object in 1 MiB chunks. Against
moto in server mode over HTTP (a separate process, so its copy of the objects is not counted),
each size is uploaded both ways to a versioned bucket and its digest taken ``repeats`` times:

- ``mb<N>_streamed_ms`` / ``mb<N>_checksum_ms``: median wall time of ``content_digest``, i.e. the
  time added to the submit; ``mb<N>_ratio`` is the first over the second;
- ``head_ms``: a plain HEAD of the same object, measured alongside (the reference: the checksum
  way is one such request); ``mb20_sha256_cpu_ms``: hashing 20 MB already in memory (the floor of
  the streamed way, whatever the network);
- ``peak_extra_rss_mb``: peak resident memory above the process's own while streaming the 20 MB
  photo through SHA-256, in a fresh process; ``mb1_peak_extra_rss_mb`` the same for 1 MB (equal
  within noise: memory does not grow with the photo), and ``naive_peak_extra_rss_mb`` for reading
  the 20 MB body whole and hashing it, with ``memory_ratio`` the first over the last;
  ``peak_traced_mb`` (and ``mb1_``, ``naive_``): the same digests' peak Python allocations under
  ``tracemalloc``, which the allocator's reuse of freed pages cannot hide.

Every digest is checked against ``hashlib.sha256`` of the uploaded bytes.

    .venv/bin/python -m benchmarks.identity [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3

from backdrop.identity import content_digest, stored_sha256, streamed_sha256
from backdrop.uploads import UploadRef
from benchmarks.common import REGION, emit, free_port, median, note, wait_for_port

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

BUCKET = "uploads"
SIZES_MB = (1, 20)
MB = 1024 * 1024
CHILD_TIMEOUT_S = 120.0
MOTO_SERVER = "import sys; from moto.server import main; main(sys.argv[1:])"


def client(endpoint: str) -> S3Client:
    s3: S3Client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )
    return s3


def upload(s3: S3Client, key: str, body: bytes, *, checksum: bool) -> UploadRef:
    """Put ``body`` as S3 would receive it from a client that does (or does not) send a SHA-256."""
    extra: dict[str, Any] = {"ChecksumAlgorithm": "SHA256"} if checksum else {}
    answer = s3.put_object(Bucket=BUCKET, Key=key, Body=body, **extra)
    return UploadRef(BUCKET, key, answer.get("VersionId"), answer.get("ETag"), len(body))


def timed_ms(action: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        began = time.perf_counter()
        action()
        samples.append((time.perf_counter() - began) * 1000)
    return median(samples)


def digest_figures(s3: S3Client, size_mb: int, repeats: int) -> dict[str, float]:
    """Median ms of ``content_digest`` for one photo of ``size_mb`` uploaded both ways."""
    body = random.Random(size_mb).randbytes(size_mb * MB)
    expected = hashlib.sha256(body).hexdigest()
    plain = upload(s3, f"bench/{size_mb}mb-plain.jpg", body, checksum=False)
    checked = upload(s3, f"bench/{size_mb}mb-sha256.jpg", body, checksum=True)
    # The two ways really are the two paths: S3 holds a SHA-256 for one object only.
    assert stored_sha256(s3.head_object(**plain.object_params(), ChecksumMode="ENABLED")) is None
    assert stored_sha256(s3.head_object(**checked.object_params(), ChecksumMode="ENABLED")) == expected
    for ref in (plain, checked):
        assert content_digest(s3, ref) == expected, f"{ref.key}: wrong digest"
    return {
        f"mb{size_mb}_streamed_ms": timed_ms(lambda: content_digest(s3, plain), repeats),
        f"mb{size_mb}_checksum_ms": timed_ms(lambda: content_digest(s3, checked), repeats),
    }


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def read_whole(s3: S3Client, ref: UploadRef) -> str:
    """The naive peer: the body read into memory, then hashed."""
    return hashlib.sha256(s3.get_object(**ref.object_params())["Body"].read()).hexdigest()


def child(endpoint: str, way: str, key: str, warmup_key: str) -> dict[str, float]:
    """Peak extra RSS of one digest in this fresh process, above its memory once warmed up."""
    s3 = client(endpoint)
    digest = streamed_sha256 if way == "streamed" else read_whole
    warmup = UploadRef(BUCKET, warmup_key, None, None, None)
    digest(s3, warmup)  # imports, connection pool and parsers ready, as in a warm function
    ref = UploadRef(BUCKET, key, None, None, None)
    Path("/proc/self/clear_refs").write_text("5")  # the kernel's high-water mark reset to now
    baseline = _status_mb("VmRSS")
    digest(s3, ref)
    peak = _status_mb("VmHWM") - baseline
    # The same digest again under tracemalloc: Python's own peak allocations, a cross-check of the
    # kernel's figure that page reuse by the allocator cannot hide.
    tracemalloc.start()
    digest(s3, ref)
    traced = tracemalloc.get_traced_memory()[1] / MB
    tracemalloc.stop()
    return {"peak_extra_rss_mb": peak, "peak_traced_mb": traced}


def peak_memory(endpoint: str, way: str, key: str, warmup_key: str) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.identity", "--child", endpoint, way, key, warmup_key],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )
    if done.returncode != 0:
        raise RuntimeError(f"identity memory ({way}, {key}) failed:\n{done.stderr[-3000:]}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def memory_figures(endpoint: str) -> dict[str, float]:
    warmup = "bench/warmup.jpg"
    client(endpoint).put_object(Bucket=BUCKET, Key=warmup, Body=b"\xff\xd8\xff" * 1000)
    streamed_20 = peak_memory(endpoint, "streamed", "bench/20mb-plain.jpg", warmup)
    streamed_1 = peak_memory(endpoint, "streamed", "bench/1mb-plain.jpg", warmup)
    naive_20 = peak_memory(endpoint, "naive", "bench/20mb-plain.jpg", warmup)
    return {
        "peak_extra_rss_mb": streamed_20["peak_extra_rss_mb"],
        "mb1_peak_extra_rss_mb": streamed_1["peak_extra_rss_mb"],
        "naive_peak_extra_rss_mb": naive_20["peak_extra_rss_mb"],
        "memory_ratio": round(streamed_20["peak_extra_rss_mb"] / max(naive_20["peak_extra_rss_mb"], 0.1), 3),
        "peak_traced_mb": streamed_20["peak_traced_mb"],
        "mb1_peak_traced_mb": streamed_1["peak_traced_mb"],
        "naive_peak_traced_mb": naive_20["peak_traced_mb"],
    }


def sha256_cpu_ms(size_mb: int, repeats: int) -> float:
    body = random.Random(size_mb).randbytes(size_mb * MB)
    samples = []
    for _ in range(repeats):
        began = time.process_time()
        hashlib.sha256(body).hexdigest()
        samples.append((time.process_time() - began) * 1000)
    return median(samples)


def measure(repeats: int) -> dict[str, float]:
    """Every figure of the line, against a moto server of its own, stopped at the end."""
    port = free_port()
    moto = subprocess.Popen(
        [sys.executable, "-c", MOTO_SERVER, "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = f"http://127.0.0.1:{port}"
        wait_for_port(port)
        s3 = client(endpoint)
        s3.create_bucket(Bucket=BUCKET)
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
        figures: dict[str, float] = {}
        for size in SIZES_MB:
            note(f"identity of a {size} MB photo, streamed and from S3's checksum, {repeats} times each")
            figures.update(digest_figures(s3, size, repeats))
        figures["head_ms"] = timed_ms(
            lambda: s3.head_object(Bucket=BUCKET, Key="bench/20mb-sha256.jpg"), repeats
        )
        figures["mb20_sha256_cpu_ms"] = sha256_cpu_ms(20, repeats)
        note("identity: peak memory of hashing in fresh processes")
        figures.update(memory_figures(endpoint))
        return figures
    finally:
        moto.terminate()
        moto.wait(timeout=10)


def report(figures: dict[str, float], repeats: int) -> None:
    emit(
        "identity",
        mb1_streamed_ms=figures["mb1_streamed_ms"],
        mb1_checksum_ms=figures["mb1_checksum_ms"],
        mb20_streamed_ms=figures["mb20_streamed_ms"],
        mb20_checksum_ms=figures["mb20_checksum_ms"],
        peak_extra_rss_mb=figures["peak_extra_rss_mb"],
        mb1_ratio=round(figures["mb1_streamed_ms"] / figures["mb1_checksum_ms"], 2),
        mb20_ratio=round(figures["mb20_streamed_ms"] / figures["mb20_checksum_ms"], 2),
        head_ms=figures["head_ms"],
        mb20_sha256_cpu_ms=figures["mb20_sha256_cpu_ms"],
        mb20_streamed_mb_per_s=20 / figures["mb20_streamed_ms"] * 1000,
        mb1_peak_extra_rss_mb=figures["mb1_peak_extra_rss_mb"],
        naive_peak_extra_rss_mb=figures["naive_peak_extra_rss_mb"],
        memory_ratio=figures["memory_ratio"],
        peak_traced_mb=figures["peak_traced_mb"],
        mb1_peak_traced_mb=figures["mb1_peak_traced_mb"],
        naive_peak_traced_mb=figures["naive_peak_traced_mb"],
        chunk_mb=1,
        repeats=repeats,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer repeats, for a smoke test")
    parser.add_argument("--child", nargs=4, metavar=("ENDPOINT", "WAY", "KEY", "WARMUP_KEY"))
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    repeats = 3 if args.quick else 9
    report(measure(repeats), repeats)


if __name__ == "__main__":
    main()
