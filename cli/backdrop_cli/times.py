"""Times as operators type them (``--since 24h``, ``--since 2025-06-01``) and as the table stores them."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import click

from backdrop.jobs import format_iso, parse_iso

_RELATIVE = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``90s``, ``30m``, ``24h``, ``7d``, ``2w`` ago, or an ISO date or time (UTC unless it says)."""
    value = text.strip()
    if m := _RELATIVE.fullmatch(value):
        return (now or datetime.now(UTC)) - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        return parse_iso(value)
    except ValueError as exc:
        raise ValueError(f"{text!r} is neither a duration (30m, 24h, 7d) nor an ISO date or time") from exc


class Since(click.ParamType):
    name = "TIME"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> str:
        """The table's own timestamp form, so that comparisons are string comparisons."""
        if isinstance(value, datetime):
            return format_iso(value)
        try:
            return format_iso(parse_since(str(value)))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (parse_iso(end) - parse_iso(start)).total_seconds()


def duration(seconds: float | None) -> str:
    """``850 ms``, ``12.3 s``, ``4 min 05 s``, ``3 h 02 min``, ``2 d 4 h``."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def ago(moment: str | None, now: datetime | None = None) -> str:
    if not moment:
        return "-"
    return duration(((now or datetime.now(UTC)) - parse_iso(moment)).total_seconds()) + " ago"
