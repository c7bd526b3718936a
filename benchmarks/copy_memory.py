"""Benchmark: streaming a large Runflow output into the results bucket with bounded memory.

Serves a generated output of ``--mb`` megabytes (default 200) from a separate process, copies it
into moto's S3 (also a separate process, so its copy of the object does not count), and prints
throughput and this process's peak memory. ``--peer backdrop`` copies with
``backdrop.outputs.copy_output``; ``--peer naive`` as the handler in AWS's samples does: the whole
body read into memory, then one ``put_object``. ``--json`` prints the figures as one JSON line.

    .venv/bin/python benchmarks/copy_memory.py --mb 200 [--peer naive] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import socket
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import boto3
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "layers" / "core")]

from backdrop.outputs import Destination, OutputPolicy, copy_output  # noqa: E402

SOURCE = textwrap.dedent(
    """
    import sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    SIZE = int(sys.argv[2])
    CHUNK = bytes(range(256)) * 4096
    SIGNATURE = b"\\x89PNG\\r\\n\\x1a\\n"  # the copy stores only what its first bytes say is an image
    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(SIZE))
            self.end_headers()
            self.wfile.write(SIGNATURE)
            left = SIZE - len(SIGNATURE)
            while left:
                piece = CHUNK[: min(left, len(CHUNK))]
                self.wfile.write(piece)
                left -= len(piece)
        def log_message(self, *a):
            pass
    ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
    """
)


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> float:
    """This process's resident memory now, with the kernel's high-water mark reset to it. The
    mark (VmHWM) is this process's own; getrusage's maximum is inherited from whoever forked it."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")
    now = _status_mb("VmRSS")
    return now if now is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss() -> float:
    peak = _status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(port: int) -> None:
    """Until something listens on the loopback port (a GET of the source would download it all)."""
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


# moto's server as the local stack runs it: S3 notifications carry versionId and sequencer.
MOTO_SERVER = (
    "import sys; from backdrop_local import s3events; s3events.install();"
    " from moto.server import main; main(sys.argv[1:])"
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--peer", choices=("backdrop", "naive"), default="backdrop")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = args.mb * 1024 * 1024
    moto_port, source_port = free_port(), free_port()
    moto = subprocess.Popen(
        [sys.executable, "-c", MOTO_SERVER, "-p", str(moto_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    source = subprocess.Popen([sys.executable, "-c", SOURCE, str(source_port), str(size)])
    try:
        endpoint = f"http://127.0.0.1:{moto_port}"
        origin = f"http://127.0.0.1:{source_port}"
        wait_for(moto_port)
        wait_for(source_port)
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        s3.create_bucket(Bucket="results")
        policy = OutputPolicy(allowed_hosts=(), max_bytes=size + 1, insecure_origin=origin)
        baseline_rss = reset_peak_rss()
        tracemalloc.start()
        started = time.perf_counter()
        with httpx.Client() as http:
            if args.peer == "backdrop":
                copied = copy_output(
                    f"{origin}/out.png",
                    s3=s3,
                    place=lambda kind: Destination("results", "results/big.png", {"job-id": "bench"}),
                    policy=policy,
                    http=http,
                    deadline=time.monotonic() + 600,
                ).size
            else:
                body = http.get(f"{origin}/out.png").content
                s3.put_object(Bucket="results", Key="results/big.png", Body=body, ContentType="image/png")
                copied = len(body)
                del body
        elapsed = time.perf_counter() - started
        _, peak_traced = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        peak = peak_rss()
        stored = s3.head_object(Bucket="results", Key="results/big.png")["ContentLength"]
        assert stored == size == copied, (stored, size, copied)
        if args.json:
            figures = {
                "peer": args.peer,
                "mb": args.mb,
                "seconds": elapsed,
                "mb_per_s": args.mb / elapsed,
                "peak_traced_mb": peak_traced / 2**20,
                "peak_rss_mb": peak,
                "baseline_rss_mb": baseline_rss,
                "peak_extra_rss_mb": peak - baseline_rss,
            }
            print(json.dumps(figures))
        else:
            print(
                f"{args.peer}: {args.mb} MB in {elapsed:.2f} s ({args.mb / elapsed:.1f} MB/s); "
                f"peak Python allocations {peak_traced / 2**20:.1f} MiB; "
                f"process peak RSS {peak:.0f} MiB (before the copy {baseline_rss:.0f} MiB); "
                f"stored {stored} bytes"
            )
    finally:
        for proc in (moto, source):
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    main()
