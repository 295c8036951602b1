"""Warm vs full: one new day trained from the day-before champion, against a full retrain (issue 16).

    python bench/warm_start.py [--params params.yaml] [--workdir runs/bench_warm_start] [--seeds 12 13]

On the static world (simulate.drift off), at the params file's scale:
1. `base`: days 0 .. N-2 simulated (the logging policy serves), ingested and validated; every
   model trained in full through day N-2, evaluated and published (the gates off: this measures
   the update, not the release decision). That is the day-before champion.
2. Day N-1 lands in `base` (simulate, ingest, validate).
3. Two copies of `base` (hard links: every write is write-aside-then-rename) train through day
   N-1, `full` with training.mode full and `warm` with warm, then evaluate and build serving
   tables; every stage is timed.
4. `full` again with the GRPO seeds of --seeds: the seed spread of RELATE's true uplift (the
   warm update must not fall below it).
Each step is skipped when a rerun finds it done. Writes metrics/warm_start.json and
plots/warm_start/stage_seconds.{csv,png} (of the project) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.closed_loop_runner import DayRunner, Workspace  # noqa: E402
from pipelines.stages import STAGES  # noqa: E402
from plumbing import atomic  # noqa: E402
from plumbing.config import load_params  # noqa: E402
from plumbing.dates import shift_ds  # noqa: E402
from plumbing.paths import METRICS, PLOTS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRAINING = [s.name for s in STAGES if s.group in ("reward_models", "policies")]
RELEASE = [s.name for s in STAGES if s.group == "release" and s.name != "publish"]  # table order
NO_GATES = {"min_true_ctcvr_uplift_vs_sft": None, "min_true_ctcvr_uplift_vs_logged": None, "min_compliance_rate": None, "min_combo_ratio_to_oracle": None,
            "min_ctcvr_auc_ratio": None, "min_attribution_auc_ratio": None, "max_regression": None, "push": False}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench_warm_start")
    parser.add_argument("--seeds", type=int, nargs="*", default=[12, 13], help="extra GRPO seeds of the full run")
    parser.add_argument("--data-only", action="store_true", help="land the first days' data and stop")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    days, start = params["simulate"]["days"], params["simulate"]["start_date"]
    last, before = shift_ds(start, days - 1), shift_ds(start, days - 2)
    base = workspace(args.workdir / "base", args.params, days, "full")
    champion(base, range(days - 1), start, before, args.data_only)
    if args.data_only:
        return 0
    land(base, last)
    out = {"params": str(args.params), "new_day": last, "champion_trained_through": before, "runs": {}}
    for mode in ("full", "warm"):
        ws = copy_of(base, args.workdir / mode, args.params, days, mode)
        out["runs"][mode] = train_day(ws, last)
    out["full_seed_uplifts"] = seed_spread(args.workdir / "full", args.params, days, last, args.seeds,
                                           out["runs"]["full"]["relate_true_uplift"], params["grpo"]["seed"])
    out["landing_seconds"] = round(sum(json.loads((base.root / "bench" / "landed.json").read_text())
                                       ["stage_seconds"].values()), 1)
    report(out)
    return 0


def workspace(root: Path, params: Path, days: int, mode: str, **extra) -> Workspace:
    """A run directory on the static world with the gates off, training in `mode`."""
    ws = Workspace.create(root, params, days, mode=mode)
    ws.write_params({"simulate": {"days": days, "drift": {"enabled": False}}, "publish": NO_GATES, **extra})
    return ws


def runner(ws: Workspace, label: str) -> DayRunner:
    cfg = SimpleNamespace(retries=0, kill_after_s=None)
    return DayRunner(ws, cfg, SimpleNamespace(arm=label, faults=SimpleNamespace(kill={}, corrupt=set(), refuse=set())))


def champion(ws: Workspace, days, start: str, through: str, data_only: bool = False) -> None:
    """The day-before champion: the first days landed at once, everything trained through `through`, published."""
    landed, done = ws.root / "bench" / "first_days.json", ws.root / "bench" / "champion.json"
    run = runner(ws, "base")
    if not landed.is_file():
        atomic.write_json(landed, run.warm_up([(d, shift_ds(start, d)) for d in days]))
    if not done.is_file() and not data_only:
        atomic.write_json(done, timed(run, through, TRAINING + RELEASE + ["publish"]))


def land(ws: Workspace, ds: str) -> None:
    done = ws.root / "bench" / "landed.json"
    if not done.is_file():
        atomic.write_json(done, timed(runner(ws, "base"), ds, ["simulate", "ingest", "validate"]))


def copy_of(base: Workspace, root: Path, params: Path, days: int, mode: str) -> Workspace:
    """`base` hard-linked into `root` (once), then its params set to `mode`."""
    if not root.is_dir():
        tmp = root.with_name(f".{root.name}.copying")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(base.root, tmp, symlinks=True, copy_function=os.link,
                        ignore=shutil.ignore_patterns("bench"))
        tmp.rename(root)
    return workspace(root, params, days, mode)


def timed(run: DayRunner, ds: str, stages: list[str]) -> dict:
    rec = {"stage_seconds": {}, "attempts": {}, "faults": []}
    for name in stages:
        run.stage(name, ds, rec)
        print(f"  {run.plan.arm} {ds} {name}: {rec['stage_seconds'][name]:.0f}s", flush=True)
    return rec


def train_day(ws: Workspace, ds: str) -> dict:
    """Train through `ds` in the workspace's mode, evaluate, build the serving tables; timed and measured."""
    done = ws.root / "bench" / "day.json"
    if done.is_file():
        return json.loads(done.read_text())
    rec = timed(runner(ws, ws.mode), ds, TRAINING + RELEASE)
    result = {"stage_seconds": rec["stage_seconds"], **measured(ws.root),
              "training_seconds": round(sum(rec["stage_seconds"][s] for s in TRAINING), 1),
              "seconds": round(sum(rec["stage_seconds"].values()), 1),
              "lineage": lineage_modes(ws.root)}
    atomic.write_json(done, result)
    return result


def measured(root: Path) -> dict:
    ctcvr = json.loads((root / METRICS / "ctcvr.json").read_text())
    evaluate = json.loads((root / METRICS / "evaluate.json").read_text())
    return {"ctcvr_auc_ratio": ctcvr["auc_ratio_ctcvr"],
            "relate_true_uplift": evaluate["relate"]["true_ctcvr_uplift_vs_sft"],
            "combo_ratio_to_oracle": evaluate["combo"]["true_ctr_ratio_to_oracle"]}


def lineage_modes(root: Path) -> dict:
    """Model directory -> (mode, reason) of its lineage.json."""
    out = {}
    for path in sorted((root / "models").glob("*/lineage.json")):
        row = json.loads(path.read_text())
        out[path.parent.name] = f"{row['mode']}: {row.get('reason', '')}"
    return out


def seed_spread(root: Path, params: Path, days: int, ds: str, seeds: list[int], first: float, seed0: int) -> dict:
    """RELATE's true uplift of the full run's GRPO with each seed (the run's own seed first)."""
    found = {str(seed0): first}
    ws = workspace(root, params, days, "full")
    for seed in seeds:
        done = root / "bench" / f"seed_{seed}.json"
        if not done.is_file():
            ws.write_params({"simulate": {"days": days, "drift": {"enabled": False}}, "publish": NO_GATES,
                             "grpo": {"seed": seed}})
            timed(runner(ws, f"full-seed{seed}"), ds, ["grpo", "evaluate"])
            atomic.write_json(done, measured(root))
        found[str(seed)] = json.loads(done.read_text())["relate_true_uplift"]
    workspace(root, params, days, "full")
    return found


def report(out: dict) -> None:
    """metrics/warm_start.json, the stage-time plot and a printed table."""
    full, warm = out["runs"]["full"], out["runs"]["warm"]
    spread = list(out["full_seed_uplifts"].values())
    summary = {
        **out, "warm_seconds": warm["seconds"], "full_seconds": full["seconds"],
        "warm_training_seconds": warm["training_seconds"], "full_training_seconds": full["training_seconds"],
        "speedup": round(full["seconds"] / warm["seconds"], 2),
        # the day's simulate + ingest + validate come first in either mode
        "whole_day_seconds": {"warm": round(warm["seconds"] + out["landing_seconds"], 1),
                              "full": round(full["seconds"] + out["landing_seconds"], 1)},
        **{key: {"warm": warm[key], "full": full[key]} for key in
           ("ctcvr_auc_ratio", "relate_true_uplift", "combo_ratio_to_oracle")},
        "full_seed_uplift_range": [min(spread), max(spread)],
    }
    summary["checks"] = {
        "warm_run_at_most_180s": warm["seconds"] <= 180,
        "ctcvr_auc_ratio_within_0.005": abs(warm["ctcvr_auc_ratio"] - full["ctcvr_auc_ratio"]) <= 0.005,
        "relate_uplift_not_below_full_seed_spread": warm["relate_true_uplift"] >= min(spread),
        "combo_ratio_within_0.01": abs(warm["combo_ratio_to_oracle"] - full["combo_ratio_to_oracle"]) <= 0.01,
    }
    atomic.write_json(ROOT / METRICS / "warm_start.json", summary)
    plot(full["stage_seconds"], warm["stage_seconds"], ROOT / PLOTS / "warm_start")
    print(f"\n{'stage':<22}{'full s':>9}{'warm s':>9}")
    for name in full["stage_seconds"]:
        print(f"{name:<22}{full['stage_seconds'][name]:>9.1f}{warm['stage_seconds'][name]:>9.1f}")
    print(f"{'total':<22}{full['seconds']:>9.1f}{warm['seconds']:>9.1f}   ({summary['speedup']}x)")
    print(f"{'+ landing the day':<22}{summary['whole_day_seconds']['full']:>9.1f}"
          f"{summary['whole_day_seconds']['warm']:>9.1f}   (simulate, ingest, validate: {out['landing_seconds']}s)")
    for key in ("ctcvr_auc_ratio", "relate_true_uplift", "combo_ratio_to_oracle"):
        print(f"{key:<22}{full[key]:>9.4f}{warm[key]:>9.4f}")
    print(f"full seed spread of the true uplift: {summary['full_seed_uplift_range']}")
    for name, ok in summary["checks"].items():
        print(f"{'met' if ok else 'NOT met'}: {name}")


def plot(full: dict, warm: dict, folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(full)
    folder.mkdir(parents=True, exist_ok=True)
    atomic.write_text(folder / "stage_seconds.csv",
                      "stage,full,warm\n" + "".join(f"{n},{full[n]},{warm[n]}\n" for n in names))
    fig, ax = plt.subplots(figsize=(8, 4))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], [full[n] for n in names], 0.4, label="full retrain")
    ax.bar([x + 0.2 for x in xs], [warm[n] for n in names], 0.4, label="warm update")
    ax.set_xticks(list(xs), names, rotation=30, ha="right")
    ax.set_ylabel("seconds (2 cores)")
    ax.set_title("One new day: warm update from the champion vs full retrain")
    ax.legend()
    fig.tight_layout()
    tmp = folder / ".stage_seconds.png"
    fig.savefig(tmp, format="png")
    plt.close(fig)
    os.replace(tmp, folder / "stage_seconds.png")


if __name__ == "__main__":
    t0 = time.monotonic()
    code = main()
    print(f"bench/warm_start.py: {time.monotonic() - t0:.0f}s")
    sys.exit(code)
