"""Airflow DAGs: integrity (parse with no DB access), structure, and a dag.test() of the whole
relate_daily DAG on the tiny config in a fresh copy of the project (every stage runs)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from plumbing.errors import ConfigError, DataError

from tests.conftest import ROOT, TINY_PARAMS

DAGS = ROOT / "dags"
CODE = ["plumbing", "pipelines", "relate_sim", "relate_models", "sql", "dags"]
RUN_DS = "2026-01-06"  # last tiny day but one: its history is ingested before the DAG runs

PARSE_SCRIPT = r"""
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(sys.argv[1])
out = {"errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": {}}
for dag_id, dag in bag.dags.items():
    out["dags"][dag_id] = {
        "max_active_runs": dag.max_active_runs, "tags": sorted(dag.tags), "doc_md": bool(dag.doc_md),
        "schedule": str(getattr(dag, "schedule", None)), "catchup": dag.catchup,
        "tasks": {t.task_id: {"retries": t.retries, "upstream": sorted(t.upstream_task_ids),
                              "skip_on_exit_code": sorted(getattr(t, "skip_on_exit_code", None) or []),
                              "failure_callback": bool(t.on_failure_callback),
                              "exponential_backoff": bool(t.retry_exponential_backoff),
                              "outlets": [getattr(o, "name", str(o)) for o in t.outlets]}
                  for t in dag.tasks},
    }
print("PARSED=" + json.dumps(out))
"""

RUN_SCRIPT = r"""
import json, sys
import pendulum
from airflow.dag_processing.dagbag import DagBag
from airflow.models import TaskInstance
from airflow.utils.session import create_session

folder, dag_id, ds = sys.argv[1:4]
bag = DagBag(folder)
assert not bag.import_errors, bag.import_errors
run = bag.dags[dag_id].test(logical_date=pendulum.parse(ds))
with create_session() as session:
    tis = session.query(TaskInstance).filter(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run.run_id).all()
    states = {ti.task_id: str(getattr(ti.state, "value", ti.state)) for ti in tis}
print("DAG_STATES=" + json.dumps({"run_state": str(getattr(run.state, "value", run.state)), "tasks": states}))
"""


def airflow_env(home: Path, dags: Path, project: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RELATE_PARAMS", None)
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__PARALLELISM="2",
        PATH=f"{os.path.dirname(sys.executable)}:{env.get('PATH', '')}",
        DVC_NO_ANALYTICS="1",
        SPARK_LOCAL_IP="127.0.0.1",
    )
    if project is not None:
        env["RELATE_HOME"] = str(project)
        env["PYTHONPATH"] = str(project)
    return env


def parse_dags(folder: Path, env: dict[str, str]) -> dict:
    proc = subprocess.run([sys.executable, "-c", PARSE_SCRIPT, str(folder)], env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(l for l in proc.stdout.splitlines() if l.startswith("PARSED="))
    return json.loads(line.removeprefix("PARSED="))


def make_project(work: Path, days_to_ingest: str | None = "all") -> Path:
    """A fresh copy of the project's code with configs/tiny.yaml as params.yaml."""
    work.mkdir(parents=True, exist_ok=True)
    for name in CODE:
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(TINY_PARAMS, work / "params.yaml")
    return work


def stage(project: Path, *args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    env = airflow_env(project / ".airflow", project / "dags", project)
    proc = subprocess.run([sys.executable, "-m", *args], cwd=project, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{args} failed ({proc.returncode}):\n{proc.stderr[-5000:]}"
    return proc


def dag_test(project: Path, ds: str, home: Path, timeout: int = 1800) -> tuple[dict, str]:
    """`airflow db migrate` + dag.test() of relate_daily for `ds`; (states, combined log)."""
    env = airflow_env(home, project / "dags", project)
    env["RELATE_DAG_RETRIES"] = "0"  # a broken stage fails the test now, not after backoff waits
    migrate = subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, capture_output=True,
                             text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stderr[-4000:]
    proc = subprocess.run([sys.executable, "-c", RUN_SCRIPT, str(project / "dags"), "relate_daily", ds], cwd=project,
                          env=env, capture_output=True, text=True, timeout=timeout)
    log = proc.stdout + proc.stderr
    lines = [l for l in proc.stdout.splitlines() if l.startswith("DAG_STATES=")]
    assert lines, f"dag.test did not finish ({proc.returncode}):\n{log[-6000:]}"
    return json.loads(lines[-1].removeprefix("DAG_STATES=")), log


# ---------------------------------------------------------------- integrity (fast)

@pytest.fixture(scope="module")
def parsed(tmp_path_factory):
    """Parse dags/ with the metadata DB pointing to a file that must not come into existence."""
    tmp = tmp_path_factory.mktemp("parse")
    db = tmp / "must_not_exist.db"
    env = airflow_env(tmp / "home", DAGS)
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{db}"
    env["AIRFLOW_CONN_SHOULD_NOT_BE_READ"] = "invalid://"
    result = parse_dags(DAGS, env)
    result["db_created"] = db.exists()
    return result


def test_every_dag_file_imports_without_errors_or_db_access(parsed):
    assert parsed["errors"] == {}
    assert parsed["db_created"] is False, "parsing a DAG file touched the metadata database"
    dag_files = sorted(p.stem for p in DAGS.glob("*.py") if not p.name.startswith("_"))
    assert dag_files and len(parsed["dags"]) >= len(dag_files)


def test_dags_have_retries_tags_docs_and_one_active_run(parsed):
    for dag_id, dag in parsed["dags"].items():
        assert dag["max_active_runs"] == 1, dag_id
        assert dag["tags"] and dag["doc_md"], dag_id
        for task_id, task in dag["tasks"].items():
            assert task["failure_callback"], f"{dag_id}.{task_id} has no failure callback"
            if task_id.endswith(("validate", "publish")):
                assert task["retries"] == 0, f"{task_id}: a gate verdict must not be retried"
            else:
                assert task["retries"] >= 1 and task["exponential_backoff"], f"{dag_id}.{task_id}"


def test_relate_daily_wiring(parsed):
    dag = parsed["dags"]["relate_daily"]
    tasks = dag["tasks"]
    assert dag["schedule"] == "@daily" or "day" in dag["schedule"].lower()
    assert tasks["data.ingest"]["upstream"] == ["data.land_raw_logs"]
    assert tasks["data.validate"]["upstream"] == ["data.ingest", "data.ingest_elements"]
    assert {"data.validate"} <= set(tasks["reward_models.train_ctcvr"]["upstream"])
    assert tasks["release.publish"]["skip_on_exit_code"] == [99]
    assert "relate_published_model" in tasks["release.publish"]["outlets"]
    assert any(o.startswith("relate_curated_") for o in tasks["data.ingest"]["outlets"])
    # nothing after validate can run before it: every task downstream of data.* depends on it transitively
    upstream = {t: set(v["upstream"]) for t, v in tasks.items()}

    def ancestors(t, seen=None):
        seen = set() if seen is None else seen
        for u in upstream[t]:
            if u not in seen:
                seen.add(u)
                ancestors(u, seen)
        return seen

    for t in tasks:
        if not t.startswith("data."):
            assert "data.validate" in ancestors(t), t
    assert "release.publish" in tasks and all(
        t in ancestors("release.publish") for t in tasks if t != "release.publish")


def expected_upstream() -> dict[str, set[str]]:
    """Each task's direct upstream as the stage table says: its upstream stages in the group, and
    for a group's first tasks the last tasks of the group before."""
    from pipelines.stages import groups

    expected, leaves = {}, set()
    for group, rows in groups():
        ids = {row.name: f"{group}.{row.task_id}" for row in rows}
        for row in rows:
            expected[ids[row.name]] = {ids[u] for u in row.upstream} if row.upstream else set(leaves)
        used = {u for row in rows for u in row.upstream}
        leaves = {ids[row.name] for row in rows if row.name not in used}
    return expected


def test_relate_daily_tasks_are_the_stage_table(parsed):
    from pipelines.stages import STAGES

    tasks = parsed["dags"]["relate_daily"]["tasks"]
    assert {t: set(v["upstream"]) for t, v in tasks.items()} == expected_upstream()
    for row in STAGES:
        task = tasks[f"{row.group}.{row.task_id}"]
        assert (task["retries"] == 0) == (not row.retries), row.name
        assert bool(task["outlets"]) == bool(row.outlet), row.name
        if row.refused_exit_code is not None:
            assert task["skip_on_exit_code"] == [row.refused_exit_code], row.name


def fake_simulator(root: Path, calls: list):
    """subprocess.run standing in for the simulator: records the call, lands the day's partition.
    Other children (the champion lookup) run for real."""
    real = subprocess.run

    def run(argv, cwd, env, check, **kwargs):
        if "pipelines.simulate" not in argv:
            return real(argv, cwd=cwd, env=env, check=check, **kwargs)
        calls.append((argv, cwd, env))
        ds = argv[argv.index("--ds") + 1]
        part = root / "data" / "raw" / "events" / f"dt={ds}"
        part.mkdir(parents=True)
        (part / "part-00000.jsonl.gz").write_bytes(b"")
        return subprocess.CompletedProcess(argv, 0)
    return run


@pytest.fixture
def orchestrated(tmp_path, monkeypatch):
    """pipelines.orchestration over a project (the code linked in) whose params name `registry`."""
    from pipelines import orchestration

    root = tmp_path / "project"
    root.mkdir()
    for package in ("pipelines", "plumbing"):
        (root / package).symlink_to(ROOT / package)
    (root / "params.yaml").write_text("publish:\n  registry_dir: registry\n")
    monkeypatch.delenv("RELATE_PARAMS", raising=False)
    monkeypatch.setattr(orchestration, "PROJECT_ROOT", root)
    calls = []
    monkeypatch.setattr(orchestration.subprocess, "run", fake_simulator(root, calls))
    return orchestration, root, calls


def publish_champion(root: Path, registry: str, version: str, serving: bool) -> Path:
    """A registry whose champion.json names `version` as publish writes it (its path relative to
    the project root), with a serving/ folder when `serving`."""
    folder = root / registry / version / "serving"
    (folder if serving else folder.parent).mkdir(parents=True)
    (root / registry / "champion.json").write_text(json.dumps({
        "version": version, "path": f"{registry}/{version}", "history": [version], "metrics": {},
        "ds": version[:10], "eval_day": None, "serving": None}))
    return folder


def test_land_raw_logs_runs_the_simulator_in_the_project_root_without_chdir(orchestrated, monkeypatch):
    orchestration, root, calls = orchestrated
    here = os.getcwd()
    landed = orchestration.ensure_raw_partition("2026-01-02", "simulator")
    assert os.getcwd() == here
    assert landed == {"partition": str(root / "data" / "raw" / "events" / "dt=2026-01-02"),
                      "served_by": orchestration.LOGGING_POLICY}
    (argv, cwd, env), = calls
    # no champion yet: the logging policy serves, the command is the stage table's own
    assert argv == orchestration.stage_argv("simulate", "2026-01-02") and "--serving" not in argv
    assert cwd == root and env["PYTHONPATH"] == str(root)
    # a day already there is not simulated again (its logs never change on a rerun)
    assert orchestration.ensure_raw_partition("2026-01-02", "simulator")["served_by"] is None
    assert len(calls) == 1
    lookup = subprocess.run  # the fake above: runs the champion lookup for real
    monkeypatch.setattr(orchestration.subprocess, "run", lambda argv, **kw: subprocess.CompletedProcess(argv, 1)
                        if "pipelines.simulate" in argv else lookup(argv, **kw))
    with pytest.raises(RuntimeError, match="the simulator failed"):
        orchestration.ensure_raw_partition("2026-01-03", "simulator")
    with pytest.raises(FileNotFoundError, match="raw logs for 2026-01-03 have not landed"):
        orchestration.ensure_raw_partition("2026-01-03", "logs")


def test_land_raw_logs_serves_the_champions_tables(orchestrated):
    orchestration, root, calls = orchestrated
    folder = publish_champion(root, "registry", "2026-01-02-0123456789", serving=True)
    landed = orchestration.ensure_raw_partition("2026-01-03", "simulator")
    assert landed["served_by"] == "2026-01-02-0123456789"
    (argv, _, _), = calls
    assert argv == orchestration.stage_argv("simulate", "2026-01-03", ["--serving", str(folder)])
    assert argv[argv.index("--serving") + 1] == str(folder) and argv[argv.index("--ds") + 1] == "2026-01-03"


def test_land_raw_logs_without_serving_tables_or_with_another_registry(orchestrated, monkeypatch, tmp_path):
    orchestration, root, calls = orchestrated
    # a champion published before serving tables were an artifact: the logging policy serves
    publish_champion(root, "registry", "2026-01-02-0123456789", serving=False)
    assert orchestration.ensure_raw_partition("2026-01-03", "simulator")["served_by"] == orchestration.LOGGING_POLICY
    # the registry is the one the params file the stages read names ($RELATE_PARAMS, relative to the root)
    (root / "other.yaml").write_text("publish:\n  registry_dir: releases\n")
    folder = publish_champion(root, "releases", "2026-01-03-abcdef0123", serving=True)
    monkeypatch.setenv("RELATE_PARAMS", "other.yaml")
    assert orchestration.serving_champion() == ("2026-01-03-abcdef0123", folder)
    assert orchestration.ensure_raw_partition("2026-01-04", "simulator")["served_by"] == "2026-01-03-abcdef0123"
    assert "--serving" not in calls[0][0] and calls[1][0][-2:] == ["--serving", str(folder)]
    (root / "other.yaml").write_text("publish:\n  registry_dir: ''\n")
    with pytest.raises(ConfigError, match="publish.registry_dir: missing or empty"):
        orchestration.serving_champion()
    # a malformed champion pointer fails the day (the simulator does not quietly fall back)
    monkeypatch.delenv("RELATE_PARAMS")
    (root / "registry" / "champion.json").write_text("{}")
    with pytest.raises(DataError, match="champion.json is malformed"):
        orchestration.ensure_raw_partition("2026-01-05", "simulator")


def test_orchestration_and_dags_never_chdir():
    for path in [ROOT / "pipelines" / "orchestration.py", ROOT / "pipelines" / "stages.py", *DAGS.glob("*.py")]:
        assert "chdir" not in path.read_text(), f"{path.name} changes the worker's directory"


def test_stage_commands_validate_ds_and_quote():
    from pipelines.orchestration import PUBLISH_REFUSED_EXIT_CODE, stage_command

    assert stage_command("ingest", "2026-01-05").endswith("-m pipelines.ingest --ds 2026-01-05")
    assert stage_command("publish", "2026-01-05").endswith(f"--ds 2026-01-05 --refused-exit-code {PUBLISH_REFUSED_EXIT_CODE}")
    with pytest.raises(ValueError, match="ds must be a date"):
        stage_command("ingest", "2026-01-05; rm -rf /")
    with pytest.raises(ValueError, match="unknown stage"):
        stage_command("nope", "2026-01-05")


# ---------------------------------------------------------------- the whole DAG (slow)

@pytest.fixture(scope="module")
def daily_run(tmp_path_factory):
    """Tiny project: raw logs and curated history, then dag.test() of relate_daily for RUN_DS."""
    project = make_project(tmp_path_factory.mktemp("dagtest") / "project")
    stage(project, "pipelines.simulate")
    stage(project, "pipelines.ingest", "--all")
    stage(project, "pipelines.ingest_elements", "--all")  # the element table's history, as a deployment has it
    states, log = dag_test(project, RUN_DS, project / ".airflow")
    return project, states, log


def test_dag_test_runs_every_stage_for_the_day(daily_run):
    project, states, log = daily_run
    tasks = states["tasks"]
    failed = {t: s for t, s in tasks.items() if s not in ("success", "skipped")}
    assert not failed, f"tasks not successful: {failed}\n{log[-8000:]}"
    assert tasks["release.publish"] in ("success", "skipped")
    assert all(s == "success" for t, s in tasks.items() if t != "release.publish")
    assert (project / "data" / "validation" / "_SUCCESS").read_text().split() == [RUN_DS]
    assert json.loads((project / "metrics" / "ctcvr_train.json").read_text())["train_days"][-1] <= RUN_DS


def test_dag_publish_outcome_matches_its_report(daily_run):
    project, states, _ = daily_run
    report = json.loads((project / "metrics" / "publish.json").read_text())
    assert report["ds"] == RUN_DS
    if states["tasks"]["release.publish"] == "success":
        assert report["published"] is True
        champion = json.loads((project / "registry" / "champion.json").read_text())
        assert champion["version"] == report["version"]
        assert (project / "registry" / f"{report['version']}.dvc").is_file()
        remote = (project / yaml.safe_load((project / "params.yaml").read_text())["publish"]["remote_url"]).resolve()
        assert any(remote.rglob("*.dir"))
        manifest = json.loads((project / "registry" / report["version"] / "manifest.json").read_text())
        assert RUN_DS in manifest["data"]["validated_days"]
    else:
        assert report["published"] is False and report["failed_gates"]
        assert not (project / "registry" / "champion.json").exists()


def test_publish_refused_callback_names_the_failed_gates(tmp_path, monkeypatch, caplog):
    from pipelines import orchestration

    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "publish.json").write_text(json.dumps(
        {"ds": "2026-01-05", "gates": [{"gate": "relate_compliance", "value": 0.9, "required": 0.95, "passed": False}]}))
    monkeypatch.setattr(orchestration, "PROJECT_ROOT", tmp_path)
    caplog.set_level("WARNING", logger="relate.orchestration")
    orchestration.on_publish_refused({"ds": "2026-01-05"})
    assert "relate_compliance: 0.9 < 0.95" in caplog.text
