"""The Airflow UI in a real browser: headless Chromium (Debian's, driven by Playwright) logs into
a standalone Airflow started with scripts/airflow.sh on a free loopback port, opens a DAG with a
successful run and saves a screenshot (also copied to reports/airflow_ui.png)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.test_dags import airflow_env

CHROMIUM = Path("/usr/bin/chromium")
PASSWORD = "ui-test-password"
SMOKE_DAG = '''
"""A one-task DAG the UI test runs: proves the scheduler-free run path and the UI end to end."""
import pendulum
from airflow.sdk import dag, task


@dag(dag_id="relate_ui_smoke", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
     max_active_runs=1, tags=["relate", "test"], default_args={"retries": 1})
def relate_ui_smoke():
    @task
    def hello(ds=None):
        return f"hello {ds}"

    hello()


relate_ui_smoke()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium is missing (scripts/setup.sh installs it)")
def test_ui_shows_a_successful_run(tmp_path):
    pytest.importorskip("playwright", reason="playwright is missing (pip install -r requirements.txt)")
    from playwright.sync_api import sync_playwright

    home, dags = tmp_path / "airflow", tmp_path / "dags"
    dags.mkdir()
    (dags / "relate_ui_smoke.py").write_text(SMOKE_DAG)
    shutil.copy2(ROOT / "dags" / "relate_daily.py", dags / "relate_daily.py")  # listed, not run
    home.mkdir()
    (home / "simple_auth_manager_passwords.json.generated").write_text(json.dumps({"admin": PASSWORD}))
    port = free_port()
    env = airflow_env(home, dags)
    env.update(AIRFLOW_PORT=str(port), AIRFLOW_LOG_PORT=str(free_port()), AIRFLOW_TRIGGER_LOG_PORT=str(free_port()),
               AIRFLOW_DAGS_FOLDER=str(dags), AIRFLOW_PARALLELISM="2")

    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], env=env, check=True, capture_output=True,
                   timeout=300)
    run = subprocess.run([sys.executable, "-c", (
        "import pendulum; from airflow.dag_processing.dagbag import DagBag; "
        f"r = DagBag({str(dags)!r}).dags['relate_ui_smoke'].test(logical_date=pendulum.parse('2026-01-05')); "
        "print('RUN_STATE=' + str(getattr(r.state, 'value', r.state)))")],
        env=env, capture_output=True, text=True, timeout=300)
    assert "RUN_STATE=success" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]

    script = ROOT / "scripts" / "airflow.sh"
    started = subprocess.run(["bash", str(script), "start"], env=env, capture_output=True, text=True, timeout=400)
    try:
        assert started.returncode == 0, started.stdout + started.stderr + (home / "standalone.log").read_text()[-3000:]
        assert f"http://127.0.0.1:{port}" in started.stdout and "password" in started.stdout
        shot = tmp_path / "airflow_ui.png"
        with sync_playwright() as pw:
            # a fresh profile directory (Playwright passes it as --user-data-dir)
            browser = pw.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=str(CHROMIUM), headless=True,
                viewport={"width": 1400, "height": 900}, args=[
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync"])
            try:
                page = browser.new_page()
                page.goto(f"http://127.0.0.1:{port}/", timeout=60_000)
                page.locator("input[name=username]").fill("admin", timeout=60_000)
                page.locator("input[name=password]").fill(PASSWORD)
                page.locator("button[type=submit]").click()
                page.wait_for_url(lambda url: "/login" not in url, timeout=60_000)
                page.goto(f"http://127.0.0.1:{port}/dags/relate_ui_smoke/runs", timeout=60_000)
                page.get_by_text("relate_ui_smoke").first.wait_for(timeout=90_000)
                page.get_by_text("success", exact=False).first.wait_for(timeout=90_000)
                page.wait_for_timeout(1500)  # let the grid finish painting for the screenshot
                page.screenshot(path=str(shot), full_page=True)
                body = page.inner_text("body").lower()
            finally:
                browser.close()
        assert "relate_ui_smoke" in body and "success" in body
        assert shot.stat().st_size > 10_000
        (ROOT / "reports").mkdir(exist_ok=True)
        shutil.copy2(shot, ROOT / "reports" / "airflow_ui.png")
    finally:
        stopped = subprocess.run(["bash", str(script), "stop"], env=env, capture_output=True, text=True, timeout=120)
        assert stopped.returncode == 0, stopped.stderr
