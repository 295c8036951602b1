"""Seconds of a closed-loop day's policy sampling: this checkout against a baseline tree (issue 20).

    python bench/loop_day.py --source /work/main [--baseline-ref main] [--workdir runs/bench_loop_day]

What a warm loop day spends in the release stages before publish's gates: serving_tables and
evaluate (`python -m pipelines.<stage>`, in the tree's own stage-table order), then publish's
re-scoring of a champion (`evaluate_champion.champion_metrics` on the newest curated day). The
champion is this run's models with the serving tables the tree just wrote, as if published the
day before: the baseline's have no prompt pools, so it samples the champion's policy as before
issue 20; this checkout's have them. Every step runs in a fresh process with the tree on
PYTHONPATH, in <workdir>/work: a copy of the source project's data/ (once), and of its models/
and metrics/ before each tree (a tree's writes never reach the next one or the source).
The baseline tree is `git archive <ref>` of this repository (read-only for the repository).
Prints a table and writes <workdir>/loop_day.json: wall and CPU seconds (the child processes'
user + system) per step and tree, and the ratio of this checkout's totals to the baseline's.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES_BEFORE_PUBLISH = "from pipelines.stages import STAGES; print(' '.join(s.name for s in STAGES " \
                        "if s.group == 'release' and s.name != 'publish'))"
RESCORE = ("import sys; from pipelines.evaluate_champion import champion_metrics; "
           "out = champion_metrics(sys.argv[1], sys.argv[2], 'params.yaml')['evaluate.json']; "
           "print('champion relate true CTCVR', out['relate']['true_ctcvr'], out.get('champion_pools'))")
CHAMPION_PARTS = {"policy": "relate", "attribution": "attribution", "ctcvr": "ctcvr", "combo_policy": "combo_policy",
                  "serving": "serving"}  # registry/<version>/<artifact>: the models/ folder it is a copy of


def baseline_tree(ref: str, out: Path) -> Path:
    """The baseline's code, exported from this repository at `ref` (nothing written to the repository)."""
    if not (out / "pipelines").is_dir():
        out.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def fresh_work(source: Path, work: Path) -> None:
    """The source's data/ (copied once), models/ and metrics/ (copied again for every tree)."""
    work.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "params.yaml", work / "params.yaml")
    if not (work / "data" / "curated").is_dir():
        shutil.copytree(source / "data", work / "data", symlinks=True)
    shutil.rmtree(work / "data" / "evaluate", ignore_errors=True)  # this checkout's evaluate writes it
    for name in ("models", "metrics"):
        shutil.rmtree(work / name, ignore_errors=True)
        shutil.copytree(source / name, work / name, symlinks=True)


def timed(tree: Path, work: Path, argv: list[str], log: Path) -> dict:
    """Wall and CPU seconds of `python argv` with `tree` as the code, in `work`."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    with open(log, "w", encoding="utf-8") as fh:
        done = subprocess.run([sys.executable, *argv], cwd=work, env=env, stdout=fh, stderr=subprocess.STDOUT)
    wall, after = time.monotonic() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{argv} failed with {done.returncode}: see {log}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}


def champion_from(work: Path) -> Path:
    """A registry-like version folder of the work's models (its serving tables as just written)."""
    version = work / "champion" / "2026-01-00-bench"
    shutil.rmtree(version.parent, ignore_errors=True)
    for part, models in CHAMPION_PARTS.items():
        shutil.copytree(work / "models" / models, version / part)
    return version


def newest_day(work: Path) -> str:
    days = sorted(p.name.split("=", 1)[1] for p in (work / "data/curated/labeled_impressions").glob("dt=*"))
    return days[-1]


def run_tree(name: str, tree: Path, source: Path, work: Path, logs: Path) -> dict:
    """Every step's seconds for one code tree, from a fresh copy of the source's models and metrics."""
    fresh_work(source, work)
    order = subprocess.run([sys.executable, "-c", STAGES_BEFORE_PUBLISH], cwd=tree, check=True, capture_output=True,
                           text=True, env={**os.environ, "PYTHONPATH": str(tree)}).stdout.split()
    steps = {}
    for stage in order:
        steps[stage] = timed(tree, work, ["-m", f"pipelines.{stage}"], logs / f"{name}-{stage}.log")
        print(f"{name} {stage}: {steps[stage]}", flush=True)
    version = champion_from(work)
    steps["champion_rescore"] = timed(tree, work, ["-c", RESCORE, str(version), newest_day(work)],
                                      logs / f"{name}-champion_rescore.log")
    print(f"{name} champion_rescore: {steps['champion_rescore']}", flush=True)
    steps["total"] = {k: round(sum(s[k] for s in steps.values()), 1) for k in ("wall_s", "cpu_s")}
    return {"order": order, "steps": steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True, help="a project with a default run's data/, models/")
    parser.add_argument("--baseline-ref", default="main")
    parser.add_argument("--workdir", type=Path, default=ROOT / "runs" / "bench_loop_day")
    parser.add_argument("--order", nargs=2, default=["baseline", "this"], choices=["baseline", "this"])
    args = parser.parse_args(argv)
    work, logs = args.workdir / "work", args.workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    trees = {"baseline": baseline_tree(args.baseline_ref, args.workdir / "baseline_code"), "this": ROOT}
    out = {"source": str(args.source), "baseline_ref": args.baseline_ref, "trees": {}}
    for name in args.order:
        out["trees"][name] = run_tree(name, trees[name], args.source.resolve(), work, logs)
    base, this = (out["trees"][n]["steps"]["total"] for n in ("baseline", "this"))
    out["ratio_this_to_baseline"] = {k: round(this[k] / base[k], 3) for k in ("wall_s", "cpu_s")}
    (args.workdir / "loop_day.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print("| step | baseline wall / CPU s | this wall / CPU s |\n|---|---|---|")
    for step in dict.fromkeys([*out["trees"]["baseline"]["steps"], *out["trees"]["this"]["steps"]]):
        cells = [out["trees"][n]["steps"].get(step, {}) for n in ("baseline", "this")]
        print(f"| {step} | " + " | ".join(f"{c.get('wall_s', '-')} / {c.get('cpu_s', '-')}" for c in cells) + " |")
    print(f"ratio this / baseline: {out['ratio_this_to_baseline']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
