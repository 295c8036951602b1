"""A real Airflow: `scripts/airflow.sh start` (standalone on a free loopback port) over a tiny
copy of the project whose simulated days stop before DAYS. Headless Chromium (Debian's, driven by
Playwright) creates the backfill of relate_daily over DAYS the way users do, in the UI (Trigger ->
Backfill, the dates, Run Backfill); without Chromium `airflow backfill create` does. The DAG's
first task simulates each day with the champion then in service, so the backfill is the closed
loop of issue 20. A second backfill, from the CLI, reprocesses the last day (the outputs must not
change: reruns are idempotent); then the UI shows the successful backfill runs (screenshot:
reports/airflow_ui.png).

One module-scoped Airflow serves every test here (starting one costs a minute or two).
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
import yaml

from pipelines.orchestration import LOGGING_POLICY
from plumbing.dates import shift_ds
from tests.conftest import ROOT
from tests.test_dags import airflow_env, make_project, stage

CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "live-test-password"
DAYS = ["2026-01-05", "2026-01-06"]  # inside the tiny simulation (2026-01-01 .. 2026-01-07)
RUN_TIMEOUT_S = 1500
UI = CHROMIUM.exists() and importlib.util.find_spec("playwright") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Airflow:
    """The standalone Airflow of this module: CLI calls and REST reads against it."""

    def __init__(self, project: Path, home: Path):
        self.project, self.home, self.port = project, home, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = airflow_env(home, project / "dags", project)
        self.env.update(AIRFLOW_PORT=str(self.port), AIRFLOW_LOG_PORT=str(free_port()),
                        AIRFLOW_TRIGGER_LOG_PORT=str(free_port()), AIRFLOW_DAGS_FOLDER=str(project / "dags"),
                        AIRFLOW_PARALLELISM="2", AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="5",
                        RELATE_DAG_RETRIES="0",  # a broken stage fails the test now, not after backoff waits
                        RELATE_DAG_END_DATE="2026-01-07",  # unpausing schedules no run for "today"
                        # the CLI calls below share SQLite with the scheduler: wait for its lock
                        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db?timeout=60")
        self._token = None

    def script(self, action: str, timeout: int = 400) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(ROOT / "scripts" / "airflow.sh"), action], env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def cli(self, *args: str, timeout: int = 300, attempts: int = 5) -> str:
        """Run an airflow CLI command; retried while SQLite, shared with the busy scheduler, is locked.

        `backfill create` commits its Backfill row before it creates the runs. When the lock hits
        between the two, Airflow (on SQLite) leaves that row behind with no runs, and the retry is
        refused with AlreadyRunningBackfill until the scheduler clears the orphan (~2 minutes):
        wait for that, then retry."""
        for attempt in range(1, attempts + 1):
            proc = subprocess.run([sys.executable, "-m", "airflow", *args], cwd=self.project, env=self.env,
                                  capture_output=True, text=True, timeout=timeout)
            said = proc.stdout + proc.stderr
            if proc.returncode == 0 or attempt == attempts:
                break
            if "database is locked" in said:
                time.sleep(10 * attempt)
            elif "AlreadyRunningBackfill" in said and attempt > 1:  # the orphan of a locked attempt
                self.wait_for_backfills()
            else:
                break
        assert proc.returncode == 0, f"airflow {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    def api(self, path: str):
        if self._token is None:
            body = json.dumps({"username": "admin", "password": PASSWORD}).encode()
            req = urllib.request.Request(f"{self.url}/auth/token", body, {"Content-Type": "application/json"})
            self._token = json.loads(urllib.request.urlopen(req, timeout=60).read())["access_token"]
        req = urllib.request.Request(f"{self.url}/api/v2{path}", headers={"Authorization": f"Bearer {self._token}"})
        return json.loads(urllib.request.urlopen(req, timeout=60).read())

    def runs(self) -> dict[str, dict]:
        """logical day -> the latest run of relate_daily for it."""
        runs = self.api("/dags/relate_daily/dagRuns?order_by=run_after&limit=100")["dag_runs"]
        return {r["logical_date"][:10]: r for r in runs}

    def wait_for_runs(self, days: list[str], started_after: str = "") -> dict[str, dict]:
        """Poll until every day's run (started after `started_after`) has finished; fail on timeout."""
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            runs = self.runs()
            done = {d: runs[d] for d in days if d in runs and runs[d]["state"] in ("success", "failed")
                    and (runs[d].get("start_date") or "") > started_after}
            if len(done) == len(days):
                return done
            time.sleep(10)
        raise AssertionError(f"runs not finished after {RUN_TIMEOUT_S}s: {self.runs()}\n{self.task_log_tail()}")

    def wait_for_backfills(self) -> None:
        """The scheduler marks a backfill complete a loop after its last run; only then may another start."""
        deadline = time.monotonic() + 300
        while any(b["completed_at"] is None for b in self.api("/backfills?dag_id=relate_daily")["backfills"]):
            assert time.monotonic() < deadline, f"backfill never marked complete: {self.api('/backfills?dag_id=relate_daily')}"
            time.sleep(5)

    def task_states(self, run_id: str) -> dict[str, str]:
        tis = self.api(f"/dags/relate_daily/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {t["task_id"]: t["state"] for t in tis}

    def served_by(self, run_id: str) -> str | None:
        """Who served the run's simulated day: land_raw_logs' XCom (a champion version or LOGGING_POLICY)."""
        path = "/dags/relate_daily/dagRuns/{}/taskInstances/data.land_raw_logs/xcomEntries/return_value"
        value = self.api(path.format(urllib.parse.quote(run_id, safe="")))["value"]
        return (json.loads(value) if isinstance(value, str) else value)["served_by"]

    def task_log_tail(self) -> str:
        logs = sorted((self.home / "logs").rglob("*.log"), key=lambda p: p.stat().st_mtime)
        return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-2500:]}" for p in logs[-2:])


def curated_fingerprint(project: Path, ds: str) -> dict:
    """Rows of every curated partition of `ds`, independent of the file names Spark makes up."""
    out = {}
    for table in sorted(p.name for p in (project / "data" / "curated").iterdir() if p.is_dir()):
        part = project / "data" / "curated" / table / f"dt={ds}"
        if part.is_dir():
            frame = pd.read_parquet(part)
            frame = frame.sort_values(list(frame.columns)).reset_index(drop=True)
            out[table] = (len(frame), int(pd.util.hash_pandas_object(frame.astype(str), index=False).sum()))
    return out


def tree_digests(top: Path) -> dict[str, str]:
    """Relative path -> content digest (publish's: wall-clock timings in JSON logs left out)."""
    from pipelines.publish_registry import file_digest

    return {str(p.relative_to(top)): file_digest(p) for p in sorted(top.rglob("*")) if p.is_file()}


def outputs(project: Path) -> dict:
    """What the runs leave behind: curated rows of every day, models, the publish verdict, the registry."""
    days = sorted(p.name[3:] for p in (project / "data" / "curated" / "labeled_impressions").iterdir())
    publish = json.loads((project / "metrics" / "publish.json").read_text())
    return {"curated": {d: curated_fingerprint(project, d) for d in days},
            "models": tree_digests(project / "models"),
            "publish": {k: publish[k] for k in ("ds", "eval_day", "published", "version", "failed_gates",
                                                "candidate_metrics", "champion_rescored_metrics")},
            "registry": registry_state(project)}


def registry_state(project: Path) -> dict:
    registry = project / "registry"
    return {"versions": sorted(p.name for p in registry.iterdir() if p.is_dir() and not p.name.startswith(".")),
            "champion": json.loads((registry / "champion.json").read_text())["version"]}


@contextlib.contextmanager
def ui_page(af: Airflow, profile: Path):
    """A page of headless Chromium logged into the Airflow UI as admin."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # a fresh profile directory (Playwright passes it as --user-data-dir)
        browser = pw.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, viewport={"width": 1400, "height": 900},
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page()
            page.goto(f"{af.url}/", timeout=60_000)
            page.locator("input[name=username]").fill("admin", timeout=60_000)
            page.locator("input[name=password]").fill(PASSWORD)
            page.locator("button[type=submit]").click()
            page.wait_for_url(lambda url: "/login" not in url, timeout=60_000)
            yield page
        finally:
            browser.close()


def create_backfill_in_ui(af: Airflow, work: Path) -> None:
    """What a user does: open relate_daily, Trigger -> Backfill, the dates of DAYS, missing runs
    only, one run at a time, the DAG unpaused on trigger, Run Backfill."""
    with ui_page(af, work / "chromium-profile") as page:
        page.goto(f"{af.url}/dags/relate_daily", timeout=60_000)
        page.get_by_role("button", name="Trigger").first.click(timeout=90_000)
        dialog = page.get_by_role("dialog")
        dialog.get_by_text("Backfill", exact=True).click()
        for i, day in enumerate((DAYS[0], DAYS[-1])):  # From, To: a date-and-time popover each (UTC)
            dialog.get_by_test_id("datetime-input").nth(i).click()
            # the popover just opened is the newest in the DOM; the From popover's inputs may linger
            page.get_by_placeholder("YYYY/MM/DD").last.fill(day.replace("-", "/"))
            page.get_by_placeholder("HH:mm").last.fill("00:00")
            page.keyboard.press("Escape")  # closes the popover, not the dialog
        dialog.get_by_text("Missing Runs", exact=True).click()
        dialog.locator("input[name=max_active_runs]").fill("1")
        unpause = dialog.get_by_role("checkbox", name="Unpause relate_daily on trigger")
        if not unpause.is_checked():
            unpause.check()
        try:  # the form's dry run counts the runs it would create
            dialog.get_by_text(f"{len(DAYS)} runs will be triggered").wait_for(timeout=60_000)
            dialog.get_by_role("button", name="Run Backfill").click()
            page.get_by_text("Backfill generated").first.wait_for(timeout=120_000)
        finally:
            page.screenshot(path=str(work / "backfill_dialog.png"), full_page=True)


def create_backfill(af: Airflow, work: Path) -> str:
    """The backfill of DAYS: from the UI when Chromium is there, else from the CLI; says which."""
    if UI:
        create_backfill_in_ui(af, work)
        return "ui"
    af.cli("dags", "unpause", "relate_daily")
    af.cli("backfill", "create", "--dag-id", "relate_daily", "--from-date", DAYS[0], "--to-date", DAYS[-1],
           "--max-active-runs", "1")
    return "cli"


@pytest.fixture(scope="module")
def airflow(tmp_path_factory):
    """Tiny project with raw logs and curated history up to the day before DAYS, a running
    standalone Airflow, and a finished backfill of DAYS (one run at a time: the days share the
    project's models, and each day is served by the champion the days before it left)."""
    work = tmp_path_factory.mktemp("live")
    project = make_project(work / "project")
    stage(project, "pipelines.simulate", "--ds", shift_ds(DAYS[0], -1))  # and the days before it
    stage(project, "pipelines.ingest", "--all")
    stage(project, "pipelines.ingest_elements", "--all")  # the element table's history, as a deployment has it
    af = Airflow(project, work / "airflow")
    af.home.mkdir()
    (af.home / "simple_auth_manager_passwords.json.generated").write_text(json.dumps({"admin": PASSWORD}))
    started = af.script("start")
    try:
        log = af.home / "standalone.log"
        assert started.returncode == 0, started.stdout + started.stderr + (log.read_text()[-3000:] if log.exists() else "")
        assert af.url in started.stdout and "password" in started.stdout
        deadline = time.monotonic() + 300
        while "relate_daily" not in af.cli("dags", "list", "-o", "plain"):  # the DAG processor's first pass
            assert time.monotonic() < deadline, "relate_daily never showed up in the metadata database"
            time.sleep(5)
        t0 = time.monotonic()
        af.created_in = create_backfill(af, work)
        af.backfills = af.api("/backfills?dag_id=relate_daily")["backfills"]
        af.backfill_runs = af.wait_for_runs(DAYS)
        af.backfill_seconds = time.monotonic() - t0
        af.outputs = outputs(project)
        yield af
    finally:
        stopped = af.script("stop", timeout=120)
        print(stopped.stdout, stopped.stderr)


def test_backfill_runs_every_day_successfully(airflow):
    for day, run in airflow.backfill_runs.items():
        assert run["state"] == "success", f"{day}: {airflow.task_states(run['dag_run_id'])}\n{airflow.task_log_tail()}"
        assert run["run_type"] == "backfill"
        states = airflow.task_states(run["dag_run_id"])
        assert all(s == "success" for t, s in states.items() if t != "release.publish"), states
        assert states["release.publish"] in ("success", "skipped"), states
    project = airflow.project
    assert (project / "data" / "validation" / "_SUCCESS").read_text().split() == [DAYS[-1]]
    # the window stages read nothing after the run's day
    assert json.loads((project / "metrics" / "ctcvr_train.json").read_text())["train_days"][-1] <= DAYS[-1]
    report = json.loads((project / "metrics" / "publish.json").read_text())
    assert report["ds"] == DAYS[-1]
    print(f"backfill of {len(DAYS)} days: {airflow.backfill_seconds:.0f}s")


@pytest.mark.skipif(not UI, reason="Debian chromium or playwright is missing (scripts/setup.sh installs them)")
def test_the_backfill_was_created_in_the_ui(airflow):
    assert airflow.created_in == "ui"
    (backfill,) = airflow.backfills  # the dialog created exactly one, as filled in
    assert (backfill["from_date"][:10], backfill["to_date"][:10]) == (DAYS[0], DAYS[-1]), backfill
    assert backfill["max_active_runs"] == 1 and backfill["reprocess_behavior"] == "none", backfill
    assert airflow.api("/dags/relate_daily")["is_paused"] is False  # "Unpause relate_daily on trigger"


def champion_after(project: Path, day: str) -> str | None:
    """The champion in service at the end of `day`: the last promotion of a version of that day or before."""
    history = json.loads((project / "registry" / "champion.json").read_text())["history"]
    return next((v for v in reversed(history) if v[:10] <= day), None)


def test_the_backfill_is_the_closed_loop(airflow):
    """The first day is served by the logging policy (no champion yet). The next is served by the
    champion the first left in service when that version carries serving tables, and then the
    champion's creatives take search traffic; otherwise the logging policy serves it too."""
    project = airflow.project
    served = {d: airflow.served_by(r["dag_run_id"]) for d, r in airflow.backfill_runs.items()}
    assert served[DAYS[0]] == LOGGING_POLICY, served
    champion = champion_after(project, DAYS[0]) if (project / "registry" / "champion.json").exists() else None
    has_tables = champion is not None and (project / "registry" / champion / "serving").is_dir()
    publish = yaml.safe_load((project / "params.yaml").read_text()).get("publish", {})
    if champion is not None and "serving" in publish.get("artifacts", []):
        assert has_tables, f"{champion} was published without the serving artifact the params require"
    summary = json.loads((project / "data" / "sim_truth" / "state" / f"dt={DAYS[1]}" / "summary.json").read_text())
    print(f"day 1 left champion {champion} (serving tables: {has_tables}); day 2 served by {served[DAYS[1]]}, "
          f"champion search impressions {summary.get('champion_search')}")
    if has_tables:
        assert served[DAYS[1]] == champion, served
        assert summary["champion_search"] > 0, summary
    else:
        assert served[DAYS[1]] == LOGGING_POLICY, served
        assert "champion_search" not in summary, summary


def test_reprocessing_a_day_is_idempotent(airflow):
    """Reprocess the last day: curated rows, model files (wall-clock timings aside), the publish
    verdict and the registry come out as the backfill left them.

    (Reprocessing an earlier day is not a no-op on the curated tables by design: ingest for D
    relabels D-W..D as of D, rewinding what later days relabeled; reprocess forward from D.)"""
    before = airflow.outputs
    started_after = max(r["end_date"] for r in airflow.backfill_runs.values())
    airflow.wait_for_backfills()
    t0 = time.monotonic()
    airflow.cli("backfill", "create", "--dag-id", "relate_daily", "--from-date", DAYS[-1], "--to-date", DAYS[-1],
                "--reprocess-behavior", "completed", "--max-active-runs", "1")
    rerun = airflow.wait_for_runs([DAYS[-1]], started_after=started_after)[DAYS[-1]]
    print(f"reprocessing {DAYS[-1]}: {time.monotonic() - t0:.0f}s")
    assert rerun["state"] == "success", f"{airflow.task_states(rerun['dag_run_id'])}\n{airflow.task_log_tail()}"
    after = outputs(airflow.project)
    assert after["curated"] == before["curated"]
    changed = sorted(k for k in set(before["models"]) | set(after["models"])
                     if before["models"].get(k) != after["models"].get(k))
    assert not changed, f"model files differ after reprocessing {DAYS[-1]}: {changed}"
    assert after["publish"] == before["publish"]
    assert after["registry"] == before["registry"]


@pytest.mark.skipif(not UI, reason="Debian chromium or playwright is missing (scripts/setup.sh installs them)")
def test_ui_shows_the_successful_backfill_of_relate_daily(airflow, tmp_path):
    assert any(r["state"] == "success" for r in airflow.runs().values())
    shot = tmp_path / "airflow_ui.png"
    with ui_page(airflow, tmp_path / "chromium-profile") as page:
        page.goto(f"{airflow.url}/dags/relate_daily/runs", timeout=60_000)
        page.get_by_text("relate_daily").first.wait_for(timeout=90_000)
        page.get_by_text("backfill__", exact=False).first.wait_for(timeout=90_000)
        page.get_by_text("success", exact=False).first.wait_for(timeout=90_000)
        page.wait_for_timeout(1500)  # let the grid finish painting for the screenshot
        page.screenshot(path=str(shot), full_page=True)
        body = page.inner_text("body").lower()
    assert "relate_daily" in body and "success" in body and f"backfill__{DAYS[-1]}" in body
    assert shot.stat().st_size > 10_000
    (ROOT / "reports").mkdir(exist_ok=True)
    shutil.copy2(shot, ROOT / "reports" / "airflow_ui.png")
