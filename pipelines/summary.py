"""The main command's last words: each goal met or missed with its figure, what was published
or which gate refused, and where the reports are. Reads only metrics/*.json.

`python -m pipelines.summary` (scripts/run_pipeline.sh runs it after `dvc repro`).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from plumbing.paths import METRICS

REPORTS_LINE = "reports: reports/evaluate.md, reports/publish.md; plots: `dvc plots show`; every figure: `dvc metrics show`"


def _read(name: str, metrics_dir: Path) -> dict | None:
    try:
        return json.loads((metrics_dir / f"{name}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def goal_lines(metrics_dir: Path = METRICS) -> list[tuple[bool | None, str]]:
    """(met, text) per goal; met is None when the stage has no metrics yet."""
    ctcvr, attribution, evaluate = (_read(n, metrics_dir) for n in ("ctcvr", "attribution", "evaluate"))
    lines: list[tuple[bool | None, str]] = []
    if ctcvr:
        lines.append((ctcvr["meets_ratio_goal"], f"CTCVR reward AUC / oracle AUC >= {ctcvr['ratio_goal']}: "
                                                 f"{ctcvr['auc_ratio_ctcvr']:.3f}"))
    if attribution:
        lines.append((attribution["meets_goal"], f"MIL attribution Spearman vs truth >= {attribution['goal_spearman']}: "
                                                 f"{attribution['spearman_vs_truth']:.3f}"))
    if evaluate:
        relate, sft, two = evaluate["relate"], evaluate["sft"], evaluate["two_stage"]
        figures = {  # goal prefix -> its figure, rendered only for the goals the metrics hold
            "relate_true_ctcvr_uplift": lambda: f"true CTCVR uplift vs SFT {_pct(relate['true_ctcvr_uplift_vs_sft'])}",
            "relate_beats_two_stage": lambda: f"{_pct(relate['true_ctcvr_uplift_vs_sft'])} vs two-stage "
                                              f"{_pct(two['true_ctcvr_uplift_vs_sft'])}",
            "relate_beats_logged": lambda: f"true CTCVR {_pct(relate['true_ctcvr_uplift_vs_logged'])} over the texts "
                                           f"that served",
            "relate_compliance": lambda: f"compliance {100 * relate['compliance_rate']:.1f}%",
            "relate_distinct_2": lambda: f"distinct-2 {relate['distinct_2']:.3f} vs SFT {sft['distinct_2']:.3f}",
        }
        for goal, met in evaluate["goals"].items():
            figure = next((text() for key, text in figures.items() if goal.startswith(key)), "")
            lines.append((met, f"RELATE {_goal_label(goal)}: {figure}"))
        combo = evaluate["combo"]
        lines.append((combo["meets_goal"], f"GenCO generator true CTR / oracle best >= {combo['goal_ratio']}: "
                                           f"{combo['true_ctr_ratio_to_oracle']:.3f}"))
    return lines


def _goal_label(goal: str) -> str:
    """`relate_distinct_2_ge_sft` -> `distinct-2 >= sft`."""
    label = goal.removeprefix("relate_").replace("_ge_", " >= ").replace("distinct_2", "distinct-2")
    return label.replace("_", " ")


def publish_line(metrics_dir: Path = METRICS) -> str:
    publish = _read("publish", metrics_dir)
    if publish is None:
        return "published: nothing (publish has not run)"
    if publish.get("published"):
        return f"published: {publish['version']} (champion before: {publish.get('champion_before') or 'none'})"
    refused = [f"{g['gate']} {g['value']} (needs {g['required']})" for g in publish.get("gates", []) if not g["passed"]]
    return f"published: nothing; refused by {'; '.join(refused) or 'the gates'} (champion stays {publish.get('champion_after')})"


def render(metrics_dir: Path = METRICS) -> str:
    marks = {True: "met   ", False: "MISSED", None: "n/a   "}
    goals = goal_lines(metrics_dir)
    met = sum(1 for ok, _ in goals if ok)
    body = [f"  [{marks[ok]}] {text}" for ok, text in goals] or ["  (no metrics yet: run the pipeline)"]
    return "\n".join([f"RELATE pipeline summary: {met}/{len(goals)} goals met", *body,
                      publish_line(metrics_dir), REPORTS_LINE])


def main() -> int:
    print(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
