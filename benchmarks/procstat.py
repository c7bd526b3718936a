"""CPU time of processes, to the nanosecond, from Linux's scheduler statistics.

Backdrop's own time in an invocation is the CPU its worker process used: waiting on moto, on the
local Runflow or on the network costs it no CPU, and what those peers do runs in other processes.
"""

from __future__ import annotations

import os
from pathlib import Path


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far (0 once it is gone)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def _children(parent: int | None) -> list[tuple[int, list[bytes]]]:
    """(pid, argv) of every process whose parent is ``parent`` (this process by default)."""
    parent = os.getpid() if parent is None else parent
    found: list[tuple[int, list[bytes]]] = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) != parent:
                continue
            found.append((int(entry), Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")))
        except (OSError, ValueError, IndexError):
            continue
    return found


def workers(function_name: str, parent: int | None = None) -> list[int]:
    """Local Lambda worker processes of one function (``worker.py --name <function>``), children
    of ``parent`` (this process by default)."""
    return [
        pid
        for pid, argv in _children(parent)
        if b"--name" in argv[:-1] and argv[argv.index(b"--name") + 1].decode() == function_name
    ]


def all_workers(parent: int | None = None) -> list[int]:
    """Every local Lambda worker process under ``parent``."""
    return [pid for pid, argv in _children(parent) if any(b"worker.py" in arg for arg in argv)]
