"""A one-line progress report: rewritten in place on a terminal, a new line per change elsewhere."""

from __future__ import annotations

import sys
from typing import TextIO


class ProgressLine:
    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.interactive = self.stream.isatty()
        self._last = ""
        self._width = 0

    def update(self, text: str, *, key: str | None = None) -> None:
        """Show ``text``. Off a terminal a line is printed only when ``key`` (default: the text) changes."""
        if self.interactive:
            padding = " " * max(self._width - len(text), 0)
            self.stream.write("\r" + text + padding)
            self.stream.flush()
            self._width = len(text)
            return
        marker = text if key is None else key
        if marker != self._last:
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last = marker

    def close(self) -> None:
        """End the line, so what is printed next starts on a fresh one."""
        if self.interactive and self._width:
            self.stream.write("\n")
            self.stream.flush()
        self._width = 0
