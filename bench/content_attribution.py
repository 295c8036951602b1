"""Content-aware MIL attribution at the default scale: warm and cold-start Spearman, the ceilings, and
today's content-free model on the same data, in one run; prints the figures and writes them as JSON.

    python bench/content_attribution.py [--workdir /tmp/relate_content] [--params params.yaml]

In --workdir (its own params.yaml, a copy of --params; its own data/, models/, metrics/; the code is this
checkout's) it runs what is missing of simulate, ingest --all, ingest_elements --all and train_ctcvr (the
shared tokenizer), then train_attribution and evaluate_attribution (the content-aware model: warm and
cold Spearman, content_ceiling, content_share), then fits the content-free model (train_attribution with
content: false) on the same window and scores its warm elements against the same truth.
Validation (GX) is skipped: it checks the data, not the attribution. Figures: <workdir>/content_bench.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREPARE = [(["simulate"], "data/raw/events"), (["ingest", "--all"], "data/curated/combo_stats"),
           (["ingest_elements", "--all"], "data/content/elements"), (["train_ctcvr"], "models/tokenizer")]


def stage(workdir: Path, args: list[str], env: dict) -> float:
    started = time.monotonic()
    print(f"[content] {' '.join(args)} ...", flush=True)
    done = subprocess.run([sys.executable, "-m", f"pipelines.{args[0]}", *args[1:]], cwd=workdir, env=env)
    if done.returncode:
        raise SystemExit(f"[content] {args[0]} failed (exit {done.returncode}); see its log above")
    return round(time.monotonic() - started, 1)


def content_free(workdir: Path, params: Path) -> dict:
    """Today's content-free model on the content model's window, scored against the same truth."""
    os.chdir(workdir)
    from pipelines import evaluate_attribution as ev
    from pipelines import train_attribution as ta
    from plumbing.config import load_config
    from plumbing.metrics import within_group_spearman
    from relate_models import attribution as attr

    cfg = load_config(ta.TrainAttributionConfig, "train_attribution", params, overrides={"content": False})
    scorer = attr.AttributionScorer.load(ta.MODEL_DIR)
    rows = ta.load_rows(cfg, list(scorer.meta["train_days"]))
    started = time.monotonic()
    free, _ = ta.fit(cfg, rows, ta.load_rows(cfg, list(scorer.meta["holdout_days"])), None)
    seconds = time.monotonic() - started
    truth, _ = ev.true_utilities(ev.window_day(scorer))
    frame = free.element_rewards(cfg.max_combinations_per_ad, seed=cfg.seed).merge(truth, on=ev.KEYS)
    rho = within_group_spearman(frame, "reward", "utility", 3)
    return {"spearman_vs_truth": rho["mean_within_ad_slot"], "by_slot": rho["by_slot"], "fit_seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/relate_content"))
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    args = parser.parse_args(argv)
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    params = workdir / "params.yaml"
    shutil.copyfile(args.params, params)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "RELATE_PARAMS": str(params)}
    seconds = {a[0]: stage(workdir, a, env) for a, out in PREPARE if not (workdir / out).exists()}
    for a in (["train_attribution"], ["evaluate_attribution"]):
        seconds[a[0]] = stage(workdir, a, env)
    metrics = json.loads((workdir / "metrics" / "attribution.json").read_text())
    keys = ("spearman_vs_truth", "spearman_cold_start", "content_ceiling", "content_share",
            "baseline_spearman_vs_truth", "spearman_vs_truth_by_slot", "cold_start")
    figures = {"content": {k: metrics.get(k) for k in keys}, "content_free": content_free(workdir, params),
               "stage_seconds": seconds}
    ceiling = metrics["content_ceiling"]
    figures["goals"] = {
        "warm >= ceiling - 0.02": metrics["spearman_vs_truth"] >= ceiling["warm"] - 0.02,
        "warm >= 0.80": metrics["spearman_vs_truth"] >= 0.80,
        "cold >= 0.9 x cold ceiling": (metrics["spearman_cold_start"] or 0) >= 0.9 * (ceiling["cold"] or 1),
        "beats naive marginal CTR": metrics["spearman_vs_truth"] > metrics["baseline_spearman_vs_truth"],
        "beats content-free": metrics["spearman_vs_truth"] > figures["content_free"]["spearman_vs_truth"]}
    (workdir / "content_bench.json").write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
    print(json.dumps(figures, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
