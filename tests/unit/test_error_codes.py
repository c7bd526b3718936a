"""Error codes are spelled once, in ``backdrop.errors``: the rest of the core names the enum."""

from __future__ import annotations

import ast
from pathlib import Path

import backdrop
from backdrop.errors import ErrorCode

CORE = Path(backdrop.__file__).resolve().parent


def test_no_core_module_spells_an_error_code_as_a_string() -> None:
    codes = {code.value for code in ErrorCode}
    spelled: list[str] = []
    for module in sorted(CORE.glob("*.py")):
        if module.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and node.value in codes:
                spelled.append(f"{module.name}:{node.lineno} {node.value}")
    assert spelled == []


def test_error_codes_are_stored_as_their_names() -> None:
    assert all(code.value == code.name for code in ErrorCode)
