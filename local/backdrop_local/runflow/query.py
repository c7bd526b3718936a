"""``GET /v1/runs`` parameters: the ``q`` filter, ``limit`` and the ``pq`` cursors.

Supported ``q``: terms joined by ``AND``; a term is ``field:value``, ``field=value``,
``field.EQ:value`` or ``field.NE:value``, the value bare or in single/double quotes (quotes allow
spaces; backslash escapes a quote). Fields: ``status_code``, ``client_ref``, ``id``. Anything else
(``OR``, ``NOT``, comparisons, other fields) is refused with 422 rather than silently ignored.

Cursors are opaque to clients: base64url JSON naming the run id the page is anchored on and the
direction. Runs are listed newest first; ``next`` pages to older runs, ``previous`` to newer ones.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from backdrop_local.runflow.errors import field_error, validation_error
from backdrop_local.runflow.store import Run

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
FIELDS: dict[str, Callable[[Run], str | None]] = {
    "status_code": lambda run: run.status_code,
    "client_ref": lambda run: run.client_ref,
    "id": lambda run: run.id,
}
_TERM = re.compile(
    r"""\s*(?P<field>[A-Za-z_][A-Za-z0-9_]*)(?:\.(?P<op>[A-Za-z]+))?\s*[:=]\s*
        (?P<value>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s'"]+)\s*""",
    re.VERBOSE,
)
_AND = re.compile(r"AND\b", re.IGNORECASE)


@dataclass(frozen=True)
class Term:
    field: str
    negate: bool
    value: str

    def matches(self, run: Run) -> bool:
        return (FIELDS[self.field](run) == self.value) != self.negate


def _unquote(raw: str) -> str:
    if len(raw) >= 2 and raw[0] == raw[-1] and raw[0] in "'\"":
        return re.sub(r"\\(.)", r"\1", raw[1:-1])
    return raw


def _bad_q(message: str) -> Exception:
    return validation_error(
        [field_error(["query", "q"], message, "value_error")], "Invalid filter expression"
    )


def parse_filter(q: str | None) -> Callable[[Run], bool]:
    if q is None or not q.strip():
        return lambda run: True
    terms: list[Term] = []
    position = 0
    while True:
        match = _TERM.match(q, position)
        if match is None:
            raise _bad_q(f"cannot parse the filter at position {position}: {q[position : position + 40]!r}")
        field, op = match.group("field"), (match.group("op") or "EQ").upper()
        if field not in FIELDS:
            raise _bad_q(f"unsupported filter field {field!r} (supported: {', '.join(FIELDS)})")
        if op not in ("EQ", "NE"):
            raise _bad_q(f"unsupported operator {op!r} (supported: EQ, NE)")
        terms.append(Term(field, op == "NE", _unquote(match.group("value"))))
        position = match.end()
        if position == len(q):
            break
        joiner = _AND.match(q, position)
        if joiner is None:
            raise _bad_q(f"expected AND at position {position}: {q[position : position + 40]!r}")
        position = joiner.end()
    return lambda run: all(term.matches(run) for term in terms)


def parse_limit(raw: str | None) -> int:
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.strip().isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise validation_error(
            [
                field_error(
                    ["query", "limit"], f"limit must be an integer from 1 to {MAX_LIMIT}", "value_error"
                )
            ]
        )
    return int(raw)


@dataclass(frozen=True)
class Cursor:
    direction: str  # "first", "next" (older than anchor) or "previous" (newer than anchor)
    anchor: str | None

    def encode(self) -> str:
        raw = json.dumps({"d": self.direction, "a": self.anchor}, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str | None) -> Cursor:
        if not token:
            return cls("first", None)
        try:
            data: Any = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        except (ValueError, binascii.Error) as exc:
            raise _bad_pq() from exc
        if not isinstance(data, Mapping) or data.get("d") not in ("first", "next", "previous"):
            raise _bad_pq()
        anchor = data.get("a")
        if data["d"] != "first" and not isinstance(anchor, str):
            raise _bad_pq()
        return cls(str(data["d"]), anchor if isinstance(anchor, str) else None)


def _bad_pq() -> Exception:
    return validation_error([field_error(["query", "pq"], "invalid page cursor", "value_error")])
