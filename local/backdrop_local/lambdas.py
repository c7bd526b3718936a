"""Local Lambda functions: a pool of worker processes per function, one invocation per worker at
a time (as in Lambda), with the function's timeout enforced and crashed workers replaced."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

WORKER = Path(__file__).with_name("worker.py")

# What the managed python3.12 runtime ships besides the standard library.
RUNTIME_PACKAGES = ("boto3", "botocore", "s3transfer", "jmespath", "dateutil", "six.py", "urllib3")


def runtime_dir(target: Path) -> Path:
    """A folder with only the runtime-provided packages (linked from this environment's site-packages)."""
    import boto3

    site = Path(boto3.__file__).resolve().parent.parent
    target.mkdir(parents=True, exist_ok=True)
    for name in RUNTIME_PACKAGES:
        link = target / name
        if not link.exists():
            link.symlink_to(site / name)
    return target


@dataclass(frozen=True)
class InvokeResult:
    ok: bool
    payload: Any = None
    error_type: str | None = None
    error_message: str | None = None


class _Worker:
    def __init__(self, command: list[str], env: Mapping[str, str], log: IO[bytes]) -> None:
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=dict(env), bufsize=0
        )
        self._buffer = b""
        self.generation = 0  # which configuration of the function it was started with

    def read_line(self, timeout: float) -> bytes | None:
        """One protocol line, or None on timeout or exit."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            ready, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if not ready:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line

    def send(self, request: Mapping[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(request) + "\n").encode())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


class LocalFunction:
    def __init__(
        self,
        name: str,
        *,
        handler: str,
        paths: Sequence[Path],
        env: Mapping[str, str],
        timeout: float,
        max_concurrency: int,
        log_path: Path,
        memory: int = 512,
    ) -> None:
        self.name = name
        self.timeout = timeout
        self._command = [
            sys.executable,
            "-S",
            "-E",
            str(WORKER),
            "--handler",
            handler,
            "--name",
            name,
            "--memory",
            str(memory),
        ]
        for p in paths:
            self._command += ["--path", str(p)]
        self._base_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "AWS_LAMBDA_FUNCTION_NAME": name,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(memory),
            "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12",
            "LAMBDA_TASK_ROOT": str(paths[0]) if paths else "",
            "TZ": "UTC",
        }
        self._env = self._with_base(env)
        self._generation = 0
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - lives as long as the function
        self._idle: list[_Worker] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._closed = False

    def _with_base(self, env: Mapping[str, str]) -> dict[str, str]:
        full = {**self._base_env, **env}
        # Lambda sets both; some SDK paths read only the older name.
        full.setdefault("AWS_DEFAULT_REGION", full.get("AWS_REGION", "us-east-1"))
        full.setdefault("AWS_REGION", full["AWS_DEFAULT_REGION"])
        return full

    def update_environment(self, env: Mapping[str, str]) -> None:
        """New configuration, as Lambda applies it: idle execution environments are discarded, so
        the next invocations start fresh ones with it."""
        with self._lock:
            self._env = self._with_base(env)
            self._generation += 1
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()

    def _spawn(self) -> _Worker:
        worker = _Worker(self._command, self._env, self._log)
        worker.generation = self._generation
        ready = worker.read_line(60.0)
        if ready is None:
            worker.kill()
            raise RuntimeError(f"{self.name}: the function failed to initialise (see its log)")
        return worker

    def invoke(self, event: Any) -> InvokeResult:
        with self._slots:
            with self._lock:
                if self._closed:
                    return InvokeResult(False, error_type="Shutdown", error_message="function stopped")
                worker = self._idle.pop() if self._idle else None
            if worker is None or worker.proc.poll() is not None:
                try:
                    worker = self._spawn()
                except RuntimeError as exc:
                    return InvokeResult(False, error_type="Runtime.InitError", error_message=str(exc))
            worker.send({"event": event, "timeout": self.timeout})
            line = worker.read_line(self.timeout + 1.0)
            if line is None:
                timed_out = worker.proc.poll() is None
                worker.kill()
                if timed_out:
                    return InvokeResult(
                        False,
                        error_type="Sandbox.Timedout",
                        error_message=f"Task timed out after {self.timeout:.2f} seconds",
                    )
                return InvokeResult(
                    False,
                    error_type="Runtime.ExitError",
                    error_message=f"Runtime exited with status {worker.proc.returncode}",
                )
            answer = json.loads(line)
            with self._lock:
                if self._closed or worker.generation != self._generation:
                    worker.kill()  # stopped, or started with a configuration since replaced
                else:
                    self._idle.append(worker)
            if answer.get("ok"):
                return InvokeResult(True, payload=answer.get("result"))
            return InvokeResult(
                False, error_type=answer.get("errorType"), error_message=answer.get("errorMessage")
            )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            if worker.proc.stdin:
                worker.proc.stdin.close()
            worker.kill()
        self._log.close()
