"""Publishing: gates, the versioned artifact set, DVC add + push, the champion pointer, rollback.

Runs `pipelines.publish` on small stand-in artifacts and metrics files (the gate logic and the
registry do not care how big the models are); tests/test_dags.py publishes real ones.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import TINY_PARAMS

DAYS = ("2026-01-05", "2026-01-06", "2026-01-07")  # validated, with curated data
ARTIFACT_DIRS = {"policy": "models/relate", "sft": "models/sft", "tokenizer": "models/tokenizer", "ctcvr": "models/ctcvr",
                 "attribution": "models/attribution", "combo_policy": "models/combo_policy",
                 "serving": "models/serving"}


def _metrics(uplift=0.05, compliance=0.99, combo=0.8, ctcvr=0.95, attr_auc=0.70, oracle_auc=0.72, day="2026-01-04",
             serving=None, over_logged=0.02):
    return {
        "evaluate.json": {"relate": {"true_ctcvr_uplift_vs_sft": uplift, "compliance_rate": compliance,
                                     "true_ctcvr_uplift_vs_logged": over_logged},
                          "sft": {"distinct_2": 0.5}, "combo": {"true_ctr_ratio_to_oracle": combo},
                          "setup": {"serving": serving or {"pool_candidates": 32}}},
        "ctcvr.json": {"auc_ratio_ctcvr": ctcvr, "eval_day": day},
        "attribution.json": {"holdout_auc": attr_auc, "oracle_auc": oracle_auc},
    }


def _write_run(root: Path, seed: str, **metrics) -> None:
    """Stand-in models (content varies with `seed`) and the metrics files publish gates on."""
    for name, rel in ARTIFACT_DIRS.items():
        d = root / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.json").write_text(json.dumps({"name": name, "seed": seed}))
        (d / "model.safetensors").write_bytes((name + seed).encode() * 100)
    (root / "metrics").mkdir(exist_ok=True)
    for name, obj in _metrics(**metrics).items():
        (root / "metrics" / name).write_text(json.dumps(obj))
    # the days publish may name a version after: validated, with data (publish checks both)
    (root / "data" / "validation").mkdir(parents=True, exist_ok=True)
    (root / "data" / "validation" / "_SUCCESS").write_text("".join(f"{d}\n" for d in DAYS))
    for day in DAYS:
        part = root / "data" / "curated" / "labeled_impressions" / f"dt={day}"
        part.mkdir(parents=True, exist_ok=True)
        (part / "part-0.parquet").write_bytes(b"stand-in")


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["publish"].update(min_true_ctcvr_uplift_vs_sft=0.0, min_true_ctcvr_uplift_vs_logged=0.0,
                             min_compliance_rate=0.95, min_combo_ratio_to_oracle=0.5,
                             min_ctcvr_auc_ratio=0.9, min_attribution_auc_ratio=0.9, max_regression=0.0,
                             remote_url=str(tmp_path / "remote"))
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def publish(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    env.pop("RELATE_PARAMS", None)
    return subprocess.run([sys.executable, "-m", "pipelines.publish", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def champion(root: Path) -> dict:
    return json.loads((root / "registry" / "champion.json").read_text())


def versions(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "registry").iterdir() if p.is_dir() and not p.name.startswith("."))


def test_pass_publishes_a_tracked_pushed_versioned_set_and_moves_the_champion(project, tmp_path):
    _write_run(project, "a")
    warm = {"stage": "grpo", "mode": "warm", "reason": "continues from champion 2026-01-06-0123456789",
            "continued_from": "2026-01-06-0123456789", "trained_through": "2026-01-06",
            "last_full_trained_through": "2026-01-05", "chain": ["2026-01-05-abcdefabcd", "2026-01-06-0123456789"],
            "kl_reference": "2026-01-05-abcdefabcd/sft"}
    (project / "models" / "relate" / "lineage.json").write_text(json.dumps(warm))
    proc = publish(project, "--ds", "2026-01-07")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((project / "metrics" / "publish.json").read_text())
    assert report["published"] is True and report["failed_gates"] == []
    version = report["version"]
    assert version.startswith("2026-01-07-") and versions(project) == [version]
    vdir = project / "registry" / version
    for name in ARTIFACT_DIRS:
        assert (vdir / name / "model.safetensors").is_file()
    assert (vdir / "evaluation" / "evaluate.json").is_file()
    manifest = json.loads((vdir / "manifest.json").read_text())
    assert manifest["data"]["validated_days"] == list(DAYS)
    assert report["verified"]["newest_trained_day"] == {"metrics/ctcvr.json:eval_day": "2026-01-04"}
    assert len(manifest["params_sha256"]) == 64 and "commit" in manifest["git"]
    assert manifest["metrics"]["attribution_auc_ratio"] == pytest.approx(0.70 / 0.72)
    assert manifest["lineage"] == {"policy": warm}  # the artifacts that record how they were trained
    card = (vdir / "MODEL_CARD.md").read_text()
    assert version in card and "relate.true_ctcvr_uplift_vs_sft" in card
    assert "| policy | warm | 2026-01-06 | 2026-01-05-abcdefabcd -> 2026-01-06-0123456789 |" in card
    assert "2026-01-06-0123456789; KL reference 2026-01-05-abcdefabcd/sft |" in card
    # tracked by DVC and pushed: the remote holds the objects of the .dvc file's directory hash
    dvc_file = yaml.safe_load((project / "registry" / f"{version}.dvc").read_text())
    md5 = dvc_file["outs"][0]["md5"]
    assert md5.endswith(".dir")
    remote_files = [p.name for p in (tmp_path / "remote").rglob("*") if p.is_file()]
    assert md5.split(".")[0][2:] + ".dir" in remote_files
    assert len(remote_files) >= 2 * len(ARTIFACT_DIRS)
    assert champion(project)["version"] == version
    assert "Published" in (project / "reports" / "publish.md").read_text()


def test_rerun_of_the_same_day_is_idempotent(project):
    _write_run(project, "a")
    assert publish(project, "--ds", "2026-01-07").returncode == 0
    first = champion(project)
    proc = publish(project, "--ds", "2026-01-07")
    assert proc.returncode == 0, proc.stderr
    assert champion(project) == first
    assert versions(project) == [first["version"]]


def test_failed_threshold_publishes_nothing_and_says_by_how_much(project):
    _write_run(project, "a", compliance=0.90)
    proc = publish(project, "--ds", "2026-01-07")
    assert proc.returncode == 0, "a refusal is a verdict, not a crash (dvc repro goes on)"
    report = json.loads((project / "metrics" / "publish.json").read_text())
    assert report["published"] is False and report["failed_gates"] == ["relate_compliance"]
    gate = next(g for g in report["gates"] if g["gate"] == "relate_compliance")
    assert gate["margin"] == pytest.approx(-0.05)
    assert not (project / "registry" / "champion.json").exists()
    assert versions(project) == []
    text = (project / "reports" / "publish.md").read_text()
    assert "Refused" in text and "relate_compliance" in text and "-0.05" in text
    assert publish(project, "--ds", "2026-01-07", "--refused-exit-code", "99").returncode == 99


def test_a_policy_worse_than_what_served_is_refused(project):
    """Better than SFT is not enough: the first champion would replace the logging policy's texts."""
    _write_run(project, "a", uplift=0.16, over_logged=-0.055)
    assert publish(project, "--ds", "2026-01-07").returncode == 0
    report = json.loads((project / "metrics" / "publish.json").read_text())
    assert report["published"] is False and report["failed_gates"] == ["relate_true_ctcvr_uplift_vs_logged"]
    assert not (project / "registry" / "champion.json").exists()


def test_regression_against_the_champion_is_refused_then_rollback(project):
    _write_run(project, "a", uplift=0.10)
    assert publish(project, "--ds", "2026-01-06").returncode == 0
    v1 = champion(project)["version"]
    _write_run(project, "b", uplift=0.04)  # passes the threshold, but worse than the champion
    assert publish(project, "--ds", "2026-01-07").returncode == 0
    report = json.loads((project / "metrics" / "publish.json").read_text())
    assert report["failed_gates"] == ["relate_true_ctcvr_uplift_vs_champion"]
    assert next(g for g in report["gates"] if g["kind"] == "no_regression" and not g["passed"])["margin"] == \
        pytest.approx(-0.06)
    assert champion(project)["version"] == v1 and versions(project) == [v1]

    _write_run(project, "c", uplift=0.12)
    assert publish(project, "--ds", "2026-01-07").returncode == 0
    v2 = champion(project)["version"]
    assert v2 != v1 and champion(project)["history"] == [v1, v2]

    proc = publish(project, "--rollback")
    assert proc.returncode == 0, proc.stderr
    assert champion(project)["version"] == v1 and champion(project)["rolled_back_from"] == v2
    # a second rollback has nowhere to go: a clear error, the champion stays
    proc = publish(project, "--rollback")
    assert proc.returncode == 2 and "nothing to roll back" in proc.stderr
    assert champion(project)["version"] == v1


def test_per_gate_tolerance_lets_noise_pass_and_still_refuses_a_real_drop(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["publish"]["max_regression"] = {"relate_true_ctcvr_uplift": 0.05, "attribution_auc_ratio": 0.001,
                                           "relate_compliance": None}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    _write_run(project, "a", uplift=0.10, compliance=0.999)
    assert publish(project, "--ds", "2026-01-06").returncode == 0
    v1 = champion(project)["version"]
    # within the uplift's allowance; compliance is not compared; a MIL AUC ratio lower by 1e-8 is noise
    _write_run(project, "b", uplift=0.07, compliance=0.96, attr_auc=0.70 - 0.72e-8)
    assert publish(project, "--ds", "2026-01-07").returncode == 0
    report = json.loads((project / "metrics" / "publish.json").read_text())
    assert report["published"] is True, report["failed_gates"]
    compared = {g["metric"]: g["allowed_drop"] for g in report["gates"] if g["kind"] == "no_regression"}
    assert compared == {"relate_true_ctcvr_uplift": 0.05, "attribution_auc_ratio": 0.001}
    v2 = champion(project)["version"]
    assert v2 != v1
    # a drop beyond the allowance is refused
    _write_run(project, "c", uplift=0.01)
    assert publish(project, "--ds", "2026-01-07").returncode == 0
    report = json.loads((project / "metrics" / "publish.json").read_text())
    assert report["failed_gates"] == ["relate_true_ctcvr_uplift_vs_champion"]
    assert champion(project)["version"] == v2
    assert "allowed drop 0.05" in (project / "reports" / "publish.md").read_text()


def test_rollback_pulls_a_version_missing_locally_from_the_remote(project):
    import shutil

    _write_run(project, "a", uplift=0.10)
    assert publish(project, "--ds", "2026-01-06").returncode == 0
    v1 = champion(project)["version"]
    _write_run(project, "b", uplift=0.20)
    assert publish(project, "--ds", "2026-01-07").returncode == 0
    shutil.rmtree(project / "registry" / v1)
    shutil.rmtree(project / ".dvc" / "cache")
    proc = publish(project, "--rollback")
    assert proc.returncode == 0, proc.stderr
    assert (project / "registry" / v1 / "policy" / "model.safetensors").read_bytes() == b"policya" * 100


def test_bad_config_is_refused_naming_the_field(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["publish"]["min_compliance_rate"] = "high"
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    proc = publish(project, "--ds", "2026-01-07")
    assert proc.returncode == 2 and "publish.min_compliance_rate" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = publish(project, "--ds", "2026-13-01")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    for bad, named in (({"relate_uplift": 0.1}, "unknown gate(s) ['relate_uplift']"),
                       ({"relate_compliance": -0.1}, "publish.max_regression.relate_compliance"),
                       ("a lot", "publish.max_regression")):
        params["publish"].update(min_compliance_rate=0.95, max_regression=bad)
        (project / "params.yaml").write_text(yaml.safe_dump(params))
        proc = publish(project, "--ds", "2026-01-07")
        assert proc.returncode == 2 and named in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def _rescored(uplift: float, compliance: float = 0.99):
    """A stand-in for pipelines.evaluate_champion.champion_metrics that records its calls."""
    calls = []

    def champion_metrics(version_dir, ds, params_path=None):
        calls.append((Path(version_dir).name, ds))
        return {"evaluate.json": {"relate": {"true_ctcvr_uplift_vs_sft": uplift, "compliance_rate": compliance}},
                "attribution.json": {"holdout_auc": 0.70, "oracle_auc": 0.72}, "ctcvr.json": {"auc_ratio_ctcvr": 0.91}}

    return champion_metrics, calls


def _publish_in_process(project: Path, monkeypatch, ds: str) -> dict:
    from pipelines import publish as pub

    monkeypatch.chdir(project)
    monkeypatch.delenv("RELATE_PARAMS", raising=False)
    assert pub.main(["--ds", ds]) == 0
    return json.loads((project / "metrics" / "publish.json").read_text())


def test_champion_from_another_day_is_scored_again_on_the_candidates_day(project, monkeypatch):
    from pipelines import evaluate_champion

    _write_run(project, "a", uplift=0.10, day="2026-01-05")
    assert publish(project, "--ds", "2026-01-05").returncode == 0
    v1 = champion(project)["version"]
    # the candidate's day is harder: the champion scores 0.03 on it, below its recorded 0.10
    rescore, calls = _rescored(uplift=0.03)
    monkeypatch.setattr(evaluate_champion, "champion_metrics", rescore)
    _write_run(project, "b", uplift=0.05, day="2026-01-06")
    report = _publish_in_process(project, monkeypatch, "2026-01-06")

    assert calls == [(v1, "2026-01-06")]
    assert report["published"] is True and report["champion_metrics_source"] == "scored again on 2026-01-06"
    rows = {g["gate"]: g for g in report["gates"] if g["kind"] == "no_regression"}
    uplift = rows["relate_true_ctcvr_uplift_vs_champion"]
    assert uplift["champion_rescored"] and uplift["champion_value"] == pytest.approx(0.03)
    assert uplift["margin"] == pytest.approx(0.02) and uplift["champion_eval_day"] == "2026-01-06"
    ctcvr = rows["ctcvr_auc_ratio_vs_champion"]
    assert ctcvr["champion_rescored"] and ctcvr["champion_value"] == pytest.approx(0.91)
    # a gate the re-scoring did not return (here the combination ratio) compares with the recorded value, and says so
    combo = rows["combo_ratio_to_oracle_vs_champion"]
    assert not combo["champion_rescored"] and combo["champion_eval_day"] == "2026-01-05"
    text = (project / "reports" / "publish.md").read_text()
    assert "scored again on 2026-01-06 (recorded on 2026-01-05)" in text and "not scored again" in text


def test_the_prompt_pools_ship_with_the_serving_artifact_and_the_report_counts_their_use(project, monkeypatch):
    """A champion's re-scoring serves its published prompt pools; the report says how many prompts came from them."""
    from pipelines import evaluate_champion

    _write_run(project, "a", uplift=0.10, day="2026-01-05")
    (project / "models/serving/prompt_pools.parquet").write_bytes(b"the day's pools")
    assert publish(project, "--ds", "2026-01-05").returncode == 0
    v1 = champion(project)["version"]
    assert (project / "registry" / v1 / "serving" / "prompt_pools.parquet").read_bytes() == b"the day's pools"
    rescore, _ = _rescored(uplift=0.03)

    def with_pools(version_dir, ds, params_path=None):
        files = rescore(version_dir, ds, params_path)
        files["evaluate.json"]["champion_pools"] = {"published": 56, "sampled": 1}
        return files

    monkeypatch.setattr(evaluate_champion, "champion_metrics", with_pools)
    _write_run(project, "b", uplift=0.05, day="2026-01-06")
    report = _publish_in_process(project, monkeypatch, "2026-01-06")
    assert report["champion_metrics_source"] == ("scored again on 2026-01-06 (its texts: 56 held-out prompt(s) from "
                                                 "its published pools, 1 sampled from its policy)")


def test_a_champion_failing_a_gate_on_the_candidates_day_sets_no_bar(project, monkeypatch):
    """A compliance rule that starts after the champion was published: it serves non-compliant texts."""
    from pipelines import evaluate_champion

    _write_run(project, "a", uplift=0.10, day="2026-01-05")
    assert publish(project, "--ds", "2026-01-05").returncode == 0
    v1 = champion(project)["version"]
    monkeypatch.setattr(evaluate_champion, "champion_metrics", _rescored(uplift=0.10, compliance=0.90)[0])
    _write_run(project, "b", uplift=0.02, day="2026-01-06")  # 0.08 below the champion's uplift
    report = _publish_in_process(project, monkeypatch, "2026-01-06")
    assert report["published"] is True and report["failed_gates"] == []
    uplift = next(g for g in report["gates"] if g["gate"] == "relate_true_ctcvr_uplift_vs_champion")
    assert uplift["waived"] and uplift["margin"] < 0
    assert f"champion {v1} fails relate_compliance on 2026-01-06" in uplift["reason"]
    assert f"waived: champion {v1} fails relate_compliance" in (project / "reports" / "publish.md").read_text()
    # the same champion still compliant holds its bar: the candidate is refused
    _write_run(project, "c", uplift=0.10, day="2026-01-05")
    assert publish(project, "--ds", "2026-01-05").returncode == 0
    monkeypatch.setattr(evaluate_champion, "champion_metrics", _rescored(uplift=0.10, compliance=0.99)[0])
    _write_run(project, "d", uplift=0.02, day="2026-01-06")
    report = _publish_in_process(project, monkeypatch, "2026-01-06")
    assert report["published"] is False and report["failed_gates"] == ["relate_true_ctcvr_uplift_vs_champion"]


def test_a_champion_that_has_served_its_max_age_sets_no_bar(project, monkeypatch):
    """Re-scoring cannot see what serving costs a champion (its phrases and texts wear out): once it
    has served publish.champion_max_age_days days, a candidate meeting every minimum replaces it."""
    from pipelines import evaluate_champion
    from pipelines import publish as pub

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["publish"]["champion_max_age_days"] = 2
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    _write_run(project, "a", uplift=0.10, day="2026-01-05")
    assert publish(project, "--ds", "2026-01-05").returncode == 0
    v1 = champion(project)["version"]
    rescore, calls = _rescored(uplift=0.10)
    monkeypatch.setattr(evaluate_champion, "champion_metrics", rescore)
    monkeypatch.chdir(project)
    monkeypatch.delenv("RELATE_PARAMS", raising=False)
    _write_run(project, "b", uplift=0.02, day="2026-01-06")  # has served 1 day: its bar holds
    assert pub.main(["--ds", "2026-01-06", "--refused-exit-code", "99"]) == 99
    report = json.loads((project / "metrics" / "publish.json").read_text())
    assert report["failed_gates"] == ["relate_true_ctcvr_uplift_vs_champion"] and calls == [(v1, "2026-01-06")]
    _write_run(project, "d", uplift=-0.01, day="2026-01-07")  # 2 days: the minimums still hold
    assert pub.main(["--ds", "2026-01-07", "--refused-exit-code", "99"]) == 99
    assert json.loads((project / "metrics" / "publish.json").read_text())["failed_gates"] == ["relate_true_ctcvr_uplift"]
    _write_run(project, "c", uplift=0.02, day="2026-01-07")  # and a candidate that meets them replaces it
    report = _publish_in_process(project, monkeypatch, "2026-01-07")
    assert report["published"] is True and len(calls) == 1  # a stale champion is not scored again
    assert report["champion_metrics_source"] == (f"not scored again: champion {v1} has served 2 days by "
                                                 "2026-01-07 (publish.champion_max_age_days 2)")
    uplift = next(g for g in report["gates"] if g["gate"] == "relate_true_ctcvr_uplift_vs_champion")
    assert uplift["waived"] and uplift["margin"] < 0 and "has served 2 days" in uplift["reason"]


def test_same_day_champion_is_not_scored_again_and_a_failed_rescore_keeps_the_recorded_bar(project, monkeypatch):
    from pipelines import evaluate_champion

    _write_run(project, "a", uplift=0.10, day="2026-01-05")
    assert publish(project, "--ds", "2026-01-05").returncode == 0
    rescore, calls = _rescored(uplift=0.0)
    monkeypatch.setattr(evaluate_champion, "champion_metrics", rescore)
    _write_run(project, "b", uplift=0.05, day="2026-01-05")
    report = _publish_in_process(project, monkeypatch, "2026-01-05")
    assert calls == [] and report["champion_metrics_source"] == "recorded on the same evaluation day"
    assert report["failed_gates"] == ["relate_true_ctcvr_uplift_vs_champion"]

    def broken(version_dir, ds, params_path=None):
        raise FileNotFoundError(f"{version_dir}/policy is missing")

    monkeypatch.setattr(evaluate_champion, "champion_metrics", broken)
    _write_run(project, "c", uplift=0.05, day="2026-01-06")
    report = _publish_in_process(project, monkeypatch, "2026-01-06")
    assert report["published"] is False and report["failed_gates"] == ["relate_true_ctcvr_uplift_vs_champion"]
    assert "scoring it again on 2026-01-06 failed" in report["champion_metrics_source"]


def test_champion_served_otherwise_is_scored_again_on_the_same_day(project, monkeypatch):
    from pipelines import evaluate_champion

    _write_run(project, "a", uplift=0.10, day="2026-01-05", serving={"pool_candidates": 0})
    assert publish(project, "--ds", "2026-01-05").returncode == 0
    v1 = champion(project)["version"]
    assert champion(project)["serving"] == {"pool_candidates": 0}
    # the candidate is served through a pool: the champion's recorded 0.10 (plain samples) is no bar for it
    rescore, calls = _rescored(uplift=0.12)
    monkeypatch.setattr(evaluate_champion, "champion_metrics", rescore)
    _write_run(project, "b", uplift=0.15, day="2026-01-05", serving={"pool_candidates": 32})
    report = _publish_in_process(project, monkeypatch, "2026-01-05")
    assert calls == [(v1, "2026-01-05")] and report["published"] is True
    uplift = {g["gate"]: g for g in report["gates"]}["relate_true_ctcvr_uplift_vs_champion"]
    assert uplift["champion_rescored"] and uplift["champion_value"] == pytest.approx(0.12)


def test_version_digest_ignores_wall_clock_timings_only(tmp_path):
    from pipelines.publish_registry import tree_digest

    def tree(seconds: float, loss: float) -> Path:
        root = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        root.mkdir()
        (root / "history.json").write_text(json.dumps([{"step": 1, "loss": loss, "seconds": seconds,
                                                        "steps_per_second": 1 / seconds}]))
        (root / "model.safetensors").write_bytes(b"weights")
        return root

    assert tree_digest(tree(0.5, 0.1)) == tree_digest(tree(0.7, 0.1))  # a rerun: only timings differ
    assert tree_digest(tree(0.5, 0.1)) != tree_digest(tree(0.5, 0.2))  # the model's numbers do count
