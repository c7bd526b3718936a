"""What every part of ``samlocal`` shares: where things are, the region, and its two errors."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
SCRIPTS = ROOT / "local" / "sam"
BUILT_TEMPLATE = ROOT / ".aws-sam" / "build" / "template.yaml"
UNAVAILABLE_EXIT = 3  # what local/sam/*.sh exit with when Docker or the image cannot be had here
REGION = "us-east-1"


class SamLocalUnavailable(RuntimeError):
    """No Docker engine or Lambda image can be had on this machine; ``reason`` says why in one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SamLocalError(RuntimeError):
    """The SAM CLI or a local/sam script failed in a way that is not about this machine's limits."""
