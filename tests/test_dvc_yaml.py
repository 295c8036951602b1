"""dvc.yaml stays true to the code: exact params keys per stage, code deps that exist, one module per stage."""
from __future__ import annotations

import importlib

import yaml

from plumbing.config import load_params
from tests.conftest import ROOT, TINY_OVERLAY, TINY_PARAMS

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def test_each_stage_lists_existing_keys_and_all_of_its_own_section():
    for name, stage in DVC.items():
        listed = stage.get("params", [])
        for key in listed:
            section, _, field = key.partition(".")
            assert section in PARAMS and field in PARAMS[section], f"{name}: {key} is not in params.yaml"
        own = [s for s in PARAMS if s == name or (name == "sft" and s == "policy")]
        for section in own:
            missing = {f"{section}.{k}" for k in PARAMS[section]} - set(listed)
            assert not missing, f"{name}: does not list its own keys {sorted(missing)}"


def test_every_params_section_is_read_by_some_stage_or_command():
    used = {key.split(".")[0] for stage in DVC.values() for key in stage.get("params", [])}
    # sections read by commands outside `dvc repro`'s default run
    outside = {"ablation", "closed_loop"}
    assert set(PARAMS) - used - outside == set()


def test_tiny_overlay_holds_only_what_differs_and_merges_to_every_key():
    overlay = yaml.safe_load(TINY_OVERLAY.read_text())
    assert overlay.pop("extends") == "../params.yaml"
    for section, values in overlay.items():
        same = sorted(k for k, v in values.items() if PARAMS[section].get(k) == v)
        assert not same, f"configs/tiny.yaml {section}: {same} repeat params.yaml's values"
    tiny = load_params(TINY_OVERLAY)
    assert tiny == yaml.safe_load(TINY_PARAMS.read_text())  # the fixture's full file
    assert {s: set(v) for s, v in tiny.items()} == {s: set(v) for s, v in PARAMS.items()}


def test_real_corpus_stage_sections_hold_only_what_differs():
    overlay = yaml.safe_load((ROOT / "configs" / "real_corpus.yaml").read_text())
    for section in set(overlay) & set(PARAMS):
        same = sorted(k for k, v in overlay[section].items() if PARAMS[section].get(k) == v)
        assert not same, f"configs/real_corpus.yaml {section}: {same} repeat params.yaml's values"


def test_code_deps_exist_and_stage_modules_have_main():
    for name, stage in DVC.items():
        for dep in stage.get("deps", []):
            if not dep.startswith(("data/", "models/", "metrics/")):  # produced by stages
                assert (ROOT / dep).exists(), f"{name}: dep {dep} does not exist"
        module = stage["cmd"].split("-m ")[1].split()[0]
        assert callable(importlib.import_module(module).main), module


def _project_imports(path) -> set[str]:
    """Modules of the project a file imports at any depth of its body (lazy imports count)."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in ("plumbing", "pipelines", "relate_models", "relate_sim")}


def _code_closure(module: str) -> set[str]:
    """The project files a stage module runs, transitively (package __init__ files aside)."""
    seen, stack = set(), [module]
    while stack:
        parts = stack.pop().split(".")
        path = next((p for p in (ROOT.joinpath(*parts).with_suffix(".py"), ROOT.joinpath(*parts, "__init__.py"))
                     if p.is_file()), None)
        if path is not None and path not in seen:
            seen.add(path)
            stack += _project_imports(path)
    return {str(p.relative_to(ROOT)) for p in seen if p.name != "__init__.py"}


def test_each_stage_depends_on_all_the_code_it_runs():
    for name, stage in DVC.items():
        deps = [d if isinstance(d, str) else next(iter(d)) for d in stage["deps"]]
        module = stage["cmd"].split("-m ", 1)[1].split()[0]
        missing = sorted(f for f in _code_closure(module)
                         if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps))
        assert not missing, f"dvc.yaml stage {name}: code it runs is not a dep: {missing}"
