"""The stage table (pipelines/stages.py) is the one list of stages: dvc.yaml runs the same stages
in the same order with the same modules, its data dependencies agree with the table's order,
and orchestration's commands follow the table. The DAG side is in tests/test_dags.py."""
from __future__ import annotations

import ast
import shlex

import pytest
import yaml

from pipelines import stages
from pipelines.orchestration import stage_argv, stage_command
from plumbing.cli import DS_MODES
from tests.conftest import ROOT

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
NAMES = [s.name for s in stages.STAGES]


def _paths(entries) -> list[str]:
    """dvc.yaml lists entries as a path or as {path: options}."""
    return [next(iter(e)) if isinstance(e, dict) else e for e in entries or []]


def producers(name: str) -> set[str]:
    """The stages whose outputs (outs, metrics, plots) stage `name` lists as deps in dvc.yaml."""
    made = {other: _paths(s.get("outs")) + _paths(s.get("metrics")) + _paths(s.get("plots"))
            for other, s in DVC.items() if other != name}
    return {other for dep in _paths(DVC[name].get("deps")) for other, outs in made.items()
            if any(dep == out or dep.startswith(out.rstrip("/") + "/") for out in outs)}


def test_dvc_runs_the_table_stages_in_the_table_order():
    assert list(DVC) == NAMES


@pytest.mark.parametrize("row", stages.STAGES, ids=NAMES)
def test_dvc_cmd_runs_the_table_module(row):
    assert shlex.split(DVC[row.name]["cmd"]) == ["python", "-m", row.module, *row.dvc_args]


@pytest.mark.parametrize("name", NAMES)
def test_dvc_data_deps_come_before_the_stage_in_the_dag(name):
    early = producers(name) - stages.ancestors(name)
    assert not early, f"{name} reads outputs of {sorted(early)}, which the DAG does not run before it"


@pytest.mark.parametrize("row", [s for s in stages.STAGES if s.upstream], ids=lambda s: s.name)
def test_table_upstream_is_a_data_dependency_in_dvc(row):
    assert set(row.upstream) <= producers(row.name), (
        f"{row.name}: the table orders it after {row.upstream}, but dvc.yaml lists none of their outputs as deps")


def test_table_is_consistent():
    assert len(set(NAMES)) == len(NAMES)
    order = {n: i for i, n in enumerate(NAMES)}
    for row in stages.STAGES:
        assert row.ds in DS_MODES, row.name
        for up in row.upstream:
            assert stages.stage(up).group == row.group, f"{row.name}: upstream {up} is in another group"
            assert order[up] < order[row.name], f"{row.name}: upstream {up} comes later in the table"
    groups = [s.group for s in stages.STAGES]
    assert groups == sorted(groups, key=groups.index), "a group's stages must be adjacent in the table"
    assert [s.name for s in stages.STAGES if s.lands_raw_logs] == [stages.RAW_LOGS_STAGE.name]


@pytest.mark.parametrize("row", stages.STAGES, ids=NAMES)
def test_orchestration_commands_follow_the_table(row):
    argv = stage_argv(row.name, "2026-01-05")
    assert argv[1:3] == ["-m", row.module]
    assert ("--ds" in argv) == (row.ds is not None)
    if row.ds is not None:
        assert argv[argv.index("--ds") + 1] == "2026-01-05"
        with pytest.raises(ValueError, match="needs a ds"):
            stage_argv(row.name)
    if row.refused_exit_code is not None:
        assert argv[argv.index("--refused-exit-code") + 1] == str(row.refused_exit_code)
    assert shlex.split(stage_command(row.name, "2026-01-05")) == argv


def ds_mode(module: str) -> str | bool | None:
    """How a stage module's command line takes --ds: run_stage's ds mode (default "as_of"), else
    True when it adds a `--ds` argument itself, else None."""
    tree = ast.parse((ROOT / f"{module.replace('.', '/')}.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    for call in calls:
        if getattr(call.func, "id", None) == "run_stage":
            mode = next((k.value for k in call.keywords if k.arg == "ds"), ast.Constant("as_of"))
            assert isinstance(mode, ast.Constant), f"{module}: run_stage's ds is not a literal"
            return mode.value
    added = any(getattr(c.func, "attr", None) == "add_argument" and c.args
                and getattr(c.args[0], "value", None) == "--ds" for c in calls)
    return True if added else None


@pytest.mark.parametrize("row", stages.STAGES, ids=NAMES)
def test_stages_take_ds_as_the_table_says(row):
    mode = ds_mode(row.module)
    if mode is True:  # not on run_stage yet: it has a --ds of its own
        assert row.ds is not None, f"{row.module} has --ds, but the table passes none"
    else:
        assert mode == row.ds, f"{row.module} reads --ds as {mode!r}, the table says {row.ds!r}"


def test_the_pools_are_sampled_before_evaluate_and_publish_read_them():
    """serving_tables writes the day's prompt pools; evaluate's `relate` arm serves them (issue 20)."""
    assert NAMES.index("serving_tables") < NAMES.index("evaluate") < NAMES.index("publish")
    assert "serving_tables" in stages.ancestors("evaluate") and "models/serving" in _paths(DVC["evaluate"]["deps"])
    assert "data/prompts" in _paths(DVC["serving_tables"]["deps"])  # it pools the held-out prompts too
    assert "evaluate" in producers("publish")  # the SFT texts publish's champion re-scoring reuses


def test_unknown_stage_is_refused():
    with pytest.raises(ValueError, match="unknown stage 'nope'"):
        stages.stage("nope")
