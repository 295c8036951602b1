"""The honesty boundary: training code never touches the simulator's hidden truth.

The import-linter contract `honesty-boundary` (pyproject.toml, checked in tests/test_layers.py)
keeps the modules it lists from importing `relate_sim`, directly or not. It cannot see a path
string or a dynamic import, so this AST check reads the same module list and refuses, in those
modules, any naming of the truth (`SIM_TRUTH`, "sim_truth", "relate_sim") and any dynamic
import; plumbing/paths.py only defines the path.
"""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from tests.conftest import ROOT

PATH_DEFINITION = "plumbing/paths.py"


def boundary_modules() -> list[str]:
    """The modules the honesty-boundary contract keeps away from relate_sim."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c.get("id") == "honesty-boundary"]
    return contract["source_modules"]


def boundary_violations(path: Path, rel: str) -> list[str]:
    """Why module `path` (repo-relative name `rel`) names the truth; [] if it does not."""
    source = path.read_text(encoding="utf-8")
    try:
        tree = ast.parse(source, filename=rel)
    except SyntaxError as err:
        return [f"{rel}: cannot be parsed ({err.msg}), so it cannot be checked"]
    docstrings = {
        id(node.body[0].value) for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
        and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }  # prose may say "never reads sim_truth"; code may not name it
    found = []
    for node in ast.walk(tree):
        line = f"{rel}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{line}: imports {a.name}" for a in node.names if a.name.split(".")[0] == "relate_sim"]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and (node.module or "").split(".")[0] == "relate_sim":
                found.append(f"{line}: imports from {node.module}")
            if rel != PATH_DEFINITION:
                found += [f"{line}: imports {a.name}" for a in node.names if a.name == "SIM_TRUTH"]
        elif rel == PATH_DEFINITION:
            continue
        elif isinstance(node, ast.Name) and node.id == "SIM_TRUTH":
            found.append(f"{line}: uses SIM_TRUTH")
        elif isinstance(node, ast.Attribute) and node.attr == "SIM_TRUTH":
            found.append(f"{line}: uses .SIM_TRUTH")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings and (
                "sim_truth" in node.value.lower() or "relate_sim" in node.value):
            found.append(f"{line}: names {node.value!r}")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in (
                "import_module", "__import__"):
            found.append(f"{line}: dynamic import (not checkable)")
    return found


def scanned_files() -> list[tuple[Path, str]]:
    """(path, repo-relative name) of every file of the contract's modules (a package: all its files)."""
    files = []
    for module in boundary_modules():
        base = ROOT / module.replace(".", "/")
        found = sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]
        assert found and all(f.is_file() for f in found), f"honesty-boundary lists {module}, which has no files"
        files += [(p, p.relative_to(ROOT).as_posix()) for p in found]
    return files


def test_training_code_never_reads_the_ground_truth():
    files = scanned_files()
    assert {"pipelines/train_ctcvr.py", "pipelines/grpo.py", "relate_models/ctcvr.py"} <= {rel for _, rel in files}
    violations = [v for path, rel in files for v in boundary_violations(path, rel)]
    assert not violations, "honesty boundary broken:\n" + "\n".join(violations)


def test_checker_flags_planted_violations(tmp_path):
    cases = {
        "import relate_sim.oracle\n": "imports relate_sim",
        "from relate_sim.world import build_world\n": "imports from relate_sim",
        "from plumbing.paths import SIM_TRUTH\n": "imports SIM_TRUTH",
        "from pipelines import paths\nx = paths.SIM_TRUTH\n": "uses .SIM_TRUTH",
        "import pandas as pd\ndf = pd.read_parquet('data/sim_truth/impressions')\n": "names",
        "import importlib\nm = importlib.import_module('relate_' + 'sim')\n": "dynamic import",
        '"""Never reads sim_truth."""\nTRUTH = "data/" + "sim_truth"\n': "names",
    }
    for source, expected in cases.items():
        planted = tmp_path / "train_ctcvr.py"
        planted.write_text(source)
        found = boundary_violations(planted, "pipelines/train_ctcvr.py")
        assert any(expected in v for v in found), (source, found)
    clean = tmp_path / "clean.py"
    clean.write_text("from plumbing.paths import CURATED\nprint('curated only')\n")
    assert boundary_violations(clean, "relate_models/ctcvr.py") == []
    paths_like = tmp_path / "paths.py"
    paths_like.write_text("from pathlib import Path\nSIM_TRUTH = Path('data') / 'sim_truth'\n")
    assert boundary_violations(paths_like, "plumbing/paths.py") == []
    assert boundary_violations(paths_like, "relate_models/paths.py") != []
