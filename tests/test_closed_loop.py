"""The closed loop (pipelines.closed_loop) on the tiny market, with faults injected.

One run of the `daily` arm over 8 days (5 warm-up days; the first training is on day 5):
- day 5 (2026-01-05): grpo's first attempt is SIGKILLed; its retry completes and the day publishes;
- day 6: served by that champion; its publish runs with a gate no model meets (refused);
- day 7: its raw logs are garbled after simulation; the validation gate blocks the day;
- day 8: served by the same champion, validated again.
The determinism of a day given its champion is tests/test_drift.py's (serving tables).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.closed_loop import ArmPlan, ClosedLoopConfig
from pipelines.closed_loop_runner import Faults
from pipelines.closed_loop_report import build_summary
from tests.conftest import ROOT, TINY_PARAMS

KILL, REFUSE, CORRUPT, LAST = "2026-01-05", "2026-01-06", "2026-01-07", "2026-01-08"
FAULTS = f"kill@{KILL}:grpo,refuse@{REFUSE},corrupt@{CORRUPT}"


def loop(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RELATE_PARAMS", None)
    return subprocess.run([sys.executable, "-m", "pipelines.closed_loop", "--params", str(project / "params.yaml"),
                           *args], cwd=project, env=env, capture_output=True, text=True, timeout=2400)


@pytest.fixture(scope="module")
def daily(tmp_path_factory):
    project = tmp_path_factory.mktemp("loop")
    (project / "params.yaml").write_text(TINY_PARAMS.read_text())
    done = loop(project, "--arm", "daily", "--faults", FAULTS)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ws = project / "runs" / "loop_params" / "daily"
    records = {r["ds"]: r for r in json.loads((ws / "loop" / "records.json").read_text())}
    return project, ws, records


def test_every_day_is_recorded_once_and_serves_traffic(daily):
    _, _, records = daily
    assert list(records) == [f"2026-01-0{d}" for d in range(1, 9)]
    for r in records.values():
        assert r["measure"]["search"]["impressions"] > 0 and r["measure"]["feed"]["impressions"] > 0


def test_the_champion_serves_from_the_day_after_its_publish(daily):
    _, ws, records = daily
    first = records[KILL]
    assert first["published"] and first["served_by"] is None
    assert first["measure"]["search"]["champion_share"] == 0
    for ds in (REFUSE, CORRUPT, LAST):
        assert records[ds]["served_by"] == first["champion_after"]
        assert records[ds]["measure"]["search"]["champion_share"] > 0.5
        assert records[ds]["measure"]["feed"]["champion_share"] > 0.5
    assert (ws / "registry" / first["champion_after"] / "serving" / "text_pools.parquet").is_file()


def test_a_killed_training_stage_is_retried_to_completion(daily):
    _, _, records = daily
    r = records[KILL]
    assert any(f.startswith("kill: grpo SIGKILLed") for f in r["faults"]), r["faults"]
    assert r["attempts"]["grpo"] == 2 and r["published"]


def test_a_refused_publish_keeps_the_champion(daily):
    _, ws, records = daily
    r = records[REFUSE]
    assert r["trained"] and r["published"] is False and "relate_compliance" in r["refused_gates"]
    assert r["champion_after"] == records[KILL]["champion_after"]
    assert "min_compliance_rate" not in (ws / "params.yaml").read_text()  # the fault's gate is gone again


def test_a_corrupt_day_is_blocked_and_the_next_day_resumes(daily):
    _, _, records = daily
    r = records[CORRUPT]
    assert any(f.startswith("corrupt:") for f in r["faults"])
    assert r["validated"] is False and r["trained"] is False
    assert r["champion_after"] == records[KILL]["champion_after"]
    assert records[LAST]["validated"] is True


def test_nothing_half_written_is_left(daily):
    project, _, _ = daily
    leftovers = [p for p in project.rglob("*") if p.name.startswith(".") and (
        "copying" in p.name or ".staging-" in p.name or p.name.endswith(".tmp") or p.name == ".incoming")]
    assert not leftovers, leftovers


def test_the_report_holds_the_trajectories(daily):
    project, _, _ = daily
    summary = json.loads((project / "metrics" / "closed_loop.json").read_text())
    last = summary["arms"]["daily"]["last7"]
    assert summary["days"] == 8 and 0 < last["true_ctcvr"] < 1 and 0 < last["feed_true_ctr"] < 1
    assert summary["served_compliance_min"] is not None
    assert summary["arms"]["daily"]["validation_failed_days"] == [CORRUPT]
    assert summary["arms"]["daily"]["refused_days"] == [REFUSE]
    rows = (project / "plots" / "closed_loop" / "days.csv").read_text().splitlines()
    assert len(rows) == 9 and rows[0].startswith("day,ds,") and "daily_top_bigram_share" in rows[0]
    assert (project / "plots" / "closed_loop" / "trajectories.png").stat().st_size > 10_000


def test_compliant_valued_ctcvr_is_recorded_and_a_redraw_gives_the_same_sums(daily):
    """The simulator's served record values non-compliant texts at nothing beside the market's view;
    evals.loop_report re-draws a day exactly (how it fills runs recorded before those sums existed)."""
    from evals.loop_report import filled

    _, ws, records = daily
    for r in records.values():
        search = r["measure"]["search"]
        assert 0 < search["true_ctcvr_compliant_valued"] <= search["true_ctcvr"]
    logging_day = records["2026-01-02"]  # the logging policy serves non-compliant texts too
    assert logging_day["measure"]["search"]["true_ctcvr_compliant_valued"] < logging_day["measure"]["search"]["true_ctcvr"]
    stripped = json.loads(json.dumps([records[LAST], logging_day]))
    for r in stripped:
        for key in ("sum_ctcvr_compliant", "sum_ctcvr_compliant2"):
            del r["measure"]["sums"]["search"][key]
    for before, after in zip((records[LAST], logging_day), filled(ws, stripped)):
        assert after["measure"]["sums"]["search"] == pytest.approx(before["measure"]["sums"]["search"], rel=1e-9)


def test_the_champion_is_scored_again_on_every_gate_and_a_model_scored_so_gets_its_own_values(daily, monkeypatch):
    """publish's bar is the champion measured like the candidate: scoring the day's own models with
    evaluate_champion's code gives their recorded metrics, and the refused day compared on its own data."""
    from pipelines import evaluate_champion, evaluate_combo
    from plumbing.config import load_config

    _, ws, records = daily
    report = json.loads((ws / "metrics" / "publish.json").read_text())
    assert report["ds"] == REFUSE and report["champion_metrics_source"].startswith(f"scored again on {REFUSE} (its texts: ")
    compared = [g for g in report["gates"] if g["kind"] == "no_regression"]
    assert compared and all(g["champion_rescored"] for g in compared), compared
    monkeypatch.chdir(ws)
    params = ws / "params.yaml"
    recorded = json.loads((ws / "metrics" / "ctcvr.json").read_text())["auc_ratio_ctcvr"]
    assert evaluate_champion.ctcvr_on_day(ws / "models" / "ctcvr", params)["auc_ratio_ctcvr"] == pytest.approx(recorded)
    combo = json.loads((ws / "metrics" / "evaluate.json").read_text())["combo"]
    cfg = load_config(evaluate_combo.EvaluateComboConfig, "evaluate_combo", params)
    ratio = evaluate_combo.ratio_to_oracle(cfg, evaluate_combo.load_serving(), combo["eval_day"])
    assert ratio == pytest.approx(combo["true_ctr_ratio_to_oracle"])


def test_a_rerun_resumes_after_the_last_recorded_day(daily):
    project, ws, records = daily
    before = (ws / "loop" / "records.json").read_bytes()
    done = loop(project, "--arm", "daily")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (ws / "loop" / "records.json").read_bytes() == before


def test_a_fork_at_a_day_resumes_to_the_same_next_day(daily, tmp_path):
    """evals.loop_fork: the arm as it stood after CORRUPT, run again, serves LAST exactly as before."""
    from evals.loop_fork import fork

    project, ws, records = daily
    other = tmp_path / "project"
    other.mkdir()
    (other / "params.yaml").write_text((project / "params.yaml").read_text())
    dst = other / "runs" / "loop_params" / "daily"
    assert fork(ws, CORRUPT, dst) == records[CORRUPT]["champion_after"]
    assert [r["ds"] for r in json.loads((dst / "loop" / "records.json").read_text())] == sorted(records)[:-1]
    assert not list((dst / "data").rglob(f"dt={LAST}")) and not (dst / "logs" / LAST).exists()
    assert (dst.parent / "_warmup" / "loop").is_dir()
    done = loop(other, "--arm", "daily")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    again = {r["ds"]: r for r in json.loads((dst / "loop" / "records.json").read_text())}
    assert again[LAST]["served_by"] == records[LAST]["served_by"]
    assert again[LAST]["measure"]["search"] == records[LAST]["measure"]["search"]
    with pytest.raises(SystemExit, match="exists"):
        fork(ws, CORRUPT, dst)


def test_the_most_served_bigram_and_its_share():
    from pipelines.closed_loop_metrics import top_bigram

    served = [["Fresh picks for you", 60, True], ["fresh picks, fresh picks", 20, True], ["Shop now", 20, False]]
    assert top_bigram(served) == {"bigram": "fresh picks", "share": 0.8}  # a text counts once per bigram
    assert top_bigram([["one", 5, True]]) is None and top_bigram([]) is None


@pytest.mark.parametrize("args, field", [(["--arm", "weekly"], "--arm"), (["--faults", "melt@2026-01-02"], "--faults"),
                                         (["--faults", "kill@2026-01-02:nope"], "STAGE"),
                                         (["--days", "0"], "closed_loop.days")])
def test_bad_arguments_exit_2_naming_the_field(tmp_path, args, field):
    (tmp_path / "params.yaml").write_text(TINY_PARAMS.read_text())
    done = loop(tmp_path, *args)
    assert done.returncode == 2 and field in done.stderr, done.stderr[-1000:]
    assert not (tmp_path / "runs").exists()


def _records(arm: str, ctcvr: float, ctr: float, days: int = 8, n: int = 10_000) -> list[dict]:
    def sums(mean: float) -> dict:
        return {"n": n, "champion": n // 2, "compliant": n, "champion_compliant": n // 2, "sum_ctr": mean * n,
                "sum_ctr2": (mean ** 2 + 1e-6) * n, "sum_ctcvr": mean * n / 10,
                "sum_ctcvr2": ((mean / 10) ** 2 + 1e-8) * n,
                "sum_ctr_ctcvr": (mean ** 2 / 10) * n}

    out = []
    for day in range(days):
        s, f = sums(ctcvr * 10), sums(ctr)
        out.append({"day": day, "ds": f"2026-01-0{day + 1}", "published": None, "stage_seconds": {}, "seconds": 1.0,
                    "validated": True, "measure": {"sums": {"search": s, "feed": f}, "search_distinct2": 0.5,
                                                   "search": {"champion_compliance": 1.0, "compliance": 0.99}}})
    return out


def test_summary_computes_uplifts_with_intervals_and_goals():
    params = yaml.safe_load(TINY_PARAMS.read_text())["closed_loop"]
    cfg = ClosedLoopConfig(**params)
    records = {"logging": _records("logging", 0.004, 0.02), "frozen": _records("frozen", 0.005, 0.04),
               "daily": _records("daily", 0.006, 0.05)}
    out = build_summary(records, cfg, Path("p.yaml"))
    assert out["uplift_daily_vs_logging"] == pytest.approx(0.5)
    assert out["uplift_daily_vs_frozen"] == pytest.approx(0.2)
    lo, hi = out["uplift_daily_vs_logging_ci95"]
    assert lo < 0.5 < hi
    assert out["feed_ctr_uplift_daily_vs_logging"] == pytest.approx(1.5)
    assert out["goals"]["uplift_daily_vs_logging"]["met"] and out["goals"]["uplift_daily_vs_frozen"]["met"]
    assert out["goals"]["served_compliance_min_daily"]["met"] and out["served_compliance_min"] == 1.0
    assert "uplift_daily_warm_vs_daily" not in out  # no daily_warm arm run
    assert not any("daily_warm" in k for k in out["goals"])
    assert "uplift_daily_vs_logging_compliant_valued" not in out  # records without the compliant-valued sums


def test_summary_values_non_compliant_texts_at_nothing_beside_the_market_view():
    cfg = ClosedLoopConfig(**yaml.safe_load(TINY_PARAMS.read_text())["closed_loop"])
    records = {"logging": _records("logging", 0.004, 0.02), "daily": _records("daily", 0.006, 0.05)}
    for arm, share in (("logging", 0.75), ("daily", 1.0)):  # the share of each arm's CTCVR from compliant texts
        for r in records[arm]:
            s = r["measure"]["sums"]["search"]
            s["sum_ctcvr_compliant"], s["sum_ctcvr_compliant2"] = share * s["sum_ctcvr"], share * s["sum_ctcvr2"]
    out = build_summary(records, cfg, Path("p.yaml"))
    assert out["uplift_daily_vs_logging"] == pytest.approx(0.5)
    assert out["uplift_daily_vs_logging_compliant_valued"] == pytest.approx(1.5 / 0.75 - 1)
    lo, hi = out["uplift_daily_vs_logging_compliant_valued_ci95"]
    assert lo < 1.0 < hi
    assert "uplift_daily_vs_logging_compliant_valued" not in out["goals"]  # reported, not a goal


def test_summary_compares_warm_updates_with_daily_full_retrains():
    cfg = ClosedLoopConfig(**yaml.safe_load(TINY_PARAMS.read_text())["closed_loop"])
    daily, warm = _records("daily", 0.006, 0.05), _records("daily_warm", 0.0057, 0.05)
    for rec, seconds in ((r, {"ingest": 50, "grpo": 90, "sft": 30}) for r in daily):
        rec["stage_seconds"] = seconds
    for rec in warm:
        rec["stage_seconds"] = {"ingest": 50, "grpo": 30, "sft": 10}
    out = build_summary({"daily": daily, "daily_warm": warm}, cfg, Path("p.yaml"))
    assert out["uplift_daily_warm_vs_daily"] == pytest.approx(-0.05)
    assert out["uplift_daily_warm_vs_daily_ci95"][0] < -0.05 < out["uplift_daily_warm_vs_daily_ci95"][1]
    assert out["compute_ratio_daily_warm_vs_daily"] == pytest.approx(40 / 120)  # landing the day (ingest) aside
    assert "uplift_daily_warm_vs_logging" not in out  # no logging arm run
    out = build_summary({"logging": _records("logging", 0.004, 0.02), "daily_warm": warm}, cfg, Path("p.yaml"))
    assert out["uplift_daily_warm_vs_logging"] == pytest.approx(0.0057 / 0.004 - 1)
    assert out["feed_ctr_uplift_daily_warm_vs_logging"] == pytest.approx(1.5)
    assert out["goals"]["uplift_daily_warm_vs_logging"]["met"] and out["goals"]["feed_ctr_uplift_daily_warm_vs_logging"]["met"]
    assert "uplift_daily_vs_logging" not in out and "uplift_daily_warm_vs_frozen" not in out


@pytest.mark.parametrize("arm, has_champion, lands", [("logging", False, False), ("frozen", False, True),
                                                      ("frozen", True, False), ("daily", True, True),
                                                      ("daily_warm", True, True)])
def test_only_an_arm_that_may_still_train_lands_its_days(arm, has_champion, lands):
    cfg = ClosedLoopConfig(warmup_days=3, days=4, arms=[arm], retries=0, kill_after_s=1.0, corrupt_share=0.1,
                           last_days=2, distinct_sample=10, seed=0)
    assert ArmPlan.of(arm, cfg, Faults()).lands(has_champion) is lands
