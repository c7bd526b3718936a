"""The README's jobs-table attribute list documents exactly the job record (``Job``'s fields)."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

from backdrop.jobs import Job

README = Path(__file__).resolve().parents[2] / "README.md"
NAME = re.compile(r"`([a-z][a-z0-9_]*)`")


def documented_attributes() -> list[str]:
    """The attribute names in the first column of the table headed ``| Attribute | Type | Meaning |``."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.replace(" ", "") == "|Attribute|Type|Meaning|")
    names: list[str] = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        names.extend(NAME.findall(line.strip().strip("|").split("|", 1)[0]))
    return names


def test_readme_jobs_table_lists_every_attribute_of_the_record_once() -> None:
    documented = documented_attributes()
    assert sorted(documented) == sorted(set(documented)), "an attribute is documented twice"
    # ``open_shard`` is stored but not a field: it follows the status (the OpenJobs index).
    assert set(documented) == {f.name for f in fields(Job)} | {"open_shard"}
