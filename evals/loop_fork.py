"""A closed-loop arm's run directory as it stood at the end of a day: the start of a what-if.

    python -m evals.loop_fork --src runs/loop_params/daily_warm --at 2026-01-19 --dst runs/loop_wear/daily_warm
    python -m pipelines.closed_loop --params wear.yaml --arm daily_warm

Copies the arm and drops everything after `--at`: every `dt=` partition and validation day
under data/, the days' logs, the registry versions published later (and their .dvc files) and
the later records; the champion pointer goes back to the version that served the day after
`--at`, with its manifest's fields and the history up to it. Beside the copy go the loop's
warm-up and DVC remote (when the destination lacks them), and the other arms' records only, for
the report. The source is only read.

The loop of a params file `<stem>.yaml` lives in runs/loop_<stem>/ and its arms extend that
file, so a what-if is a params file that `extends:` the run's and changes some keys, with the
fork under its run folder; the loop run with it resumes after `--at`.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from pipelines.closed_loop import WARMUP
from pipelines.publish_registry import read_champion, write_champion
from plumbing import atomic
from plumbing.dates import parse_ds, shift_ds

VERSION_DATE = slice(0, 10)  # registry versions are <YYYY-MM-DD>-<digest>


def prune_days(arm: Path, at: str) -> int:
    """Remove every `dt=` partition, validation day and day's logs after `at` in the arm; how many."""
    later = [p for p in (arm / "data").rglob("dt=*") if p.is_dir() and p.name[3:] > at]
    for dated in (arm / "data" / "validation", arm / "logs"):
        if dated.is_dir():
            later += [p for p in dated.iterdir() if p.is_dir() and p.name[:10] > at]
    for path in later:
        shutil.rmtree(path)
    return len(later)


def rewind_registry(records: list[dict], registry: Path, at: str) -> str:
    """Drop the versions published after `at`; point the champion at the one serving the next day
    (`records`: the source arm's)."""
    nxt = next((r for r in records if r["ds"] == shift_ds(at, 1)), None)
    if nxt is None or not nxt.get("served_by"):
        raise SystemExit(f"no champion served {shift_ds(at, 1)}; fork at a later day")
    version = nxt["served_by"]
    champion = read_champion(registry)  # before its version goes
    if champion is None or version not in champion["history"]:
        raise SystemExit(f"{registry}: no champion history with {version}")
    for path in registry.iterdir():
        name = path.name.removesuffix(".dvc")
        if name[VERSION_DATE] > at and name != version:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    history = champion["history"][: champion["history"].index(version) + 1]
    manifest = json.loads((registry / version / "manifest.json").read_text())
    write_champion(registry, {"version": version, "path": f"{registry.name}/{version}",
                              **{k: manifest[k] for k in ("ds", "eval_day", "metrics", "serving")},
                              "history": history})
    return version


def copy_siblings(src: Path, dst: Path) -> None:
    """The loop's warm-up and DVC remote, and the other arms' records, beside the fork."""
    for sibling in sorted(p for p in src.parent.iterdir() if p.is_dir() and p.name != src.name):
        target = dst.parent / sibling.name
        records = sibling / "loop" / "records.json"
        if target.exists():
            continue
        if sibling.name == WARMUP or not records.is_file():
            shutil.copytree(sibling, target, symlinks=True)
        else:
            (target / "loop").mkdir(parents=True)
            shutil.copy2(records, target / "loop" / "records.json")


def fork(src: Path, at: str, dst: Path) -> str:
    """Copy `src` to `dst` as of the end of `at`; the champion version it resumes with."""
    parse_ds(at)
    if dst.exists():
        raise SystemExit(f"{dst} exists; pick a new --dst")
    if not (src / "loop" / "records.json").is_file():
        raise SystemExit(f"{src}: not a closed-loop arm (no loop/records.json)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.forking")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, symlinks=True)
    records = json.loads((src / "loop" / "records.json").read_text())
    dropped = prune_days(tmp, at)
    version = rewind_registry(records, tmp / "registry", at)
    records = [r for r in records if r["ds"] <= at]
    atomic.write_json(tmp / "loop" / "records.json", records)
    copy_siblings(src, dst)
    tmp.rename(dst)
    print(f"{dst}: {len(records)} records to {at}, {dropped} later partitions dropped, champion {version}")
    return version


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, required=True, help="an arm's run directory (runs/loop_<stem>/<arm>)")
    ap.add_argument("--at", required=True, help="the last day the fork keeps")
    ap.add_argument("--dst", type=Path, required=True, help="the new arm directory (runs/loop_<stem>/<arm>)")
    args = ap.parse_args(argv)
    fork(args.src, args.at, args.dst)
    return 0


if __name__ == "__main__":
    sys.exit(main())
