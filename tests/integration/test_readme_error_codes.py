"""The README's error code table documents exactly the codes Backdrop records (``ErrorCode``)."""

from __future__ import annotations

import re
from pathlib import Path

from backdrop.errors import ErrorCode, run_ended_code

README = Path(__file__).resolve().parents[2] / "README.md"
CODE = re.compile(r"`([A-Z][A-Z0-9_]*)`")


def error_table() -> list[tuple[str, str]]:
    """The rows (first cell, meaning) of the table headed ``| `error_code` | Meaning |``."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.replace(" ", "") == "|`error_code`|Meaning|")
    rows: list[tuple[str, str]] = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        first, meaning = (cell.strip() for cell in line.strip().strip("|").split("|", 1))
        rows.append((first, meaning))
    return rows


def documented_codes() -> list[str]:
    """Backdrop's codes named in the table's first column. Runflow's own codes (their row) and the
    ``RUN_<STATUS>`` family are not Backdrop's vocabulary: they pass through as Runflow sent them."""
    codes: list[str] = []
    for first, _meaning in error_table():
        if first.startswith("Runflow's codes") or "<" in first:
            continue
        codes.extend(CODE.findall(first))
    return codes


def test_readme_error_table_lists_every_error_code_once() -> None:
    documented = documented_codes()
    assert sorted(documented) == sorted(set(documented)), "a code is documented twice"
    assert set(documented) == {code.value for code in ErrorCode}


def test_readme_documents_the_run_status_family() -> None:
    families = [first for first, _meaning in error_table() if "<" in first]
    assert families == ["`RUN_<STATUS>` (`RUN_EXPIRED`, `RUN_TIMED_OUT`, …)"]
    assert run_ended_code("expired") == "RUN_EXPIRED"
    assert run_ended_code("timed_out") not in {code.value for code in ErrorCode}
