"""The main command's closing summary: goals met or missed with their figures, and the publish verdict."""
from __future__ import annotations

import json

from pipelines import summary


def _write(tmp_path, name, obj):
    (tmp_path / f"{name}.json").write_text(json.dumps(obj))


def test_summary_says_which_goals_are_met_and_what_was_published(tmp_path):
    _write(tmp_path, "ctcvr", {"meets_ratio_goal": False, "ratio_goal": 0.97, "auc_ratio_ctcvr": 0.91})
    _write(tmp_path, "evaluate", {
        "relate": {"true_ctcvr_uplift_vs_sft": 0.5, "true_ctcvr_uplift_vs_logged": -0.05, "compliance_rate": 1.0,
                   "distinct_2": 0.6},
        "sft": {"distinct_2": 0.55}, "two_stage": {"true_ctcvr_uplift_vs_sft": 0.3},
        "goals": {"relate_true_ctcvr_uplift_ge_0.15": True, "relate_compliance_ge_0.995": True,
                  "relate_beats_logged": False},
        "combo": {"meets_goal": True, "goal_ratio": 0.95, "true_ctr_ratio_to_oracle": 0.96}})
    _write(tmp_path, "publish", {"published": True, "version": "2026-01-14-abc", "champion_before": None})
    text = summary.render(tmp_path)
    assert text.splitlines()[0] == "RELATE pipeline summary: 3/5 goals met"
    assert "[MISSED] RELATE beats logged: true CTCVR -5.0% over the texts that served" in text
    assert "[MISSED] CTCVR reward AUC / oracle AUC >= 0.97: 0.910" in text
    assert "true CTCVR uplift vs SFT +50.0%" in text and "compliance 100.0%" in text
    assert "published: 2026-01-14-abc (champion before: none)" in text


def test_summary_names_the_gate_that_refused(tmp_path):
    _write(tmp_path, "publish", {"published": False, "champion_after": "v1", "gates": [
        {"gate": "relate_compliance", "passed": False, "value": 0.9, "required": 0.95},
        {"gate": "ctcvr_auc_ratio", "passed": True, "value": 0.97, "required": 0.9}]})
    text = summary.render(tmp_path)
    assert "refused by relate_compliance 0.9 (needs 0.95) (champion stays v1)" in text
    assert "no metrics yet" in text
