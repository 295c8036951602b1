"""The shape the code keeps: no function longer than 60 lines outside tests/ and bench/."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("plumbing", "pipelines", "relate_models", "relate_sim", "relate_real", "evals", "dags")
MAX_FUNCTION_LINES = 60


def long_functions(root: Path, packages=PACKAGES, max_lines: int = MAX_FUNCTION_LINES) -> list[str]:
    """`path:line name (N lines)` for each function longer than `max_lines`, def line to last line."""
    found = []
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = node.end_lineno - node.lineno + 1
                    if length > max_lines:
                        found.append(f"{path.relative_to(root)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_is_longer_than_60_lines():
    assert long_functions(ROOT) == []


def test_a_planted_long_method_is_found(tmp_path):
    body = "\n".join(f"        x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text(f"class A:\n    def short(self):\n        pass\n\n    def long(self):\n{body}\n")
    assert long_functions(tmp_path, ("pkg",)) == [f"pkg/mod.py:5 long ({MAX_FUNCTION_LINES + 1} lines)"]
