"""The package layers and the honesty boundary, as import-linter contracts (pyproject.toml).

`lint-imports` must pass on the tree, and must refuse a tree with a planted violation.
A second, AST check: no module imports another package's (or another stage's) private names.
"""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import ROOT

PYPROJECT = ROOT / "pyproject.toml"


def root_packages() -> list[str]:
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["tool"]["importlinter"]["root_packages"]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """Run `lint-imports` on the tree at `root` (its pyproject.toml, its packages), no cache."""
    exe = Path(sys.executable).with_name("lint-imports")
    command = [str(exe)] if exe.exists() else [shutil.which("lint-imports") or "lint-imports"]
    env = {**os.environ, "PYTHONPATH": str(root), "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run(command + ["--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_tree_keeps_every_contract():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


@pytest.fixture
def tree_copy(tmp_path) -> Path:
    """The project's packages and pyproject.toml, copied to plant violations in."""
    for package in root_packages():
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(PYPROJECT, tmp_path / "pyproject.toml")
    return tmp_path


PLANTED = {
    # module file: (planted line, the contract that must refuse it)
    "training imports the simulator": ("pipelines/train_ctcvr.py", "import relate_sim.oracle", "honesty boundary"),
    "training reaches it indirectly": ("pipelines/sft.py", "import pipelines.simulate", "honesty boundary"),
    "model code imports the simulator": ("relate_models/ctcvr.py", "from relate_sim import world", "layers"),
    "plumbing imports a stage": ("plumbing/dates.py", "import pipelines.ingest", "plumbing imports nothing"),
    "a lower layer imports a higher": ("pipelines/schema.py", "import relate_real", "layers"),
    "a cycle between two stages": ("pipelines/schema.py", "import pipelines.ingest", "no import cycles"),
}


@pytest.mark.parametrize("case", sorted(PLANTED))
def test_a_planted_violation_is_refused(tree_copy, case):
    rel, line, contract = PLANTED[case]
    module = tree_copy / rel
    module.write_text(module.read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")
    result = lint_imports(tree_copy)
    assert result.returncode != 0, result.stdout
    broken = [ln for ln in result.stdout.splitlines() if ln.startswith(contract)]
    assert broken and any("BROKEN" in ln for ln in broken), result.stdout


# ------------------------------------------------------------------ private names

def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def private_imports(module: str, tree: ast.AST, project: set[str]) -> list[str]:
    """Private names `module` takes from another package, or (a stage) from another stage.

    Covers `from x import _name` and `x._name` on a name bound by `import x` / `from p import x`.
    """
    def foreign(other: str) -> bool:
        if other.split(".")[0] not in project or other == module:
            return False
        return other.split(".")[0] != module.split(".")[0] or module.startswith("pipelines.")

    found, bound = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__") and foreign(node.module):
                    found.append(f"{module}:{node.lineno}: from {node.module} import {alias.name}")
                bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                bound[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name) and node.value.id in bound and foreign(bound[node.value.id])):
            found.append(f"{module}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_no_module_uses_another_packages_or_stages_private_names():
    project = set(root_packages())
    found = []
    for package in sorted(project):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            found += private_imports(module_name(path), tree, project)
    assert not found, "private names used across packages or stages:\n" + "\n".join(found)


def test_the_private_name_check_sees_planted_uses():
    project = {"pipelines", "relate_models", "plumbing"}
    def check(module: str, source: str) -> list[str]:
        return private_imports(module, ast.parse(source), project)

    assert check("pipelines.ablation", "from pipelines import evaluate\nevaluate._finite(1)\n")
    assert check("pipelines.ablation", "from pipelines.evaluate import _finite\n")
    assert check("relate_models.policy", "import plumbing.config as c\nc._check(1)\n")
    assert check("pipelines.sft", "import relate_models.policy\nrelate_models._x\n")
    # inside one package (not a stage) private helpers are shared; a module's own names are its own
    assert not check("relate_models.policy", "from relate_models.ctcvr import _encode\n")
    assert not check("pipelines.sft", "from pandas import _libs\nimport numpy as np\nnp._x\n")
    assert not check("pipelines.sft", "class A:\n    def f(self):\n        return self._y\n")
