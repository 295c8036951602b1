"""Where the Spark ingest's time goes after the parse: each materialize and each table write timed.

    python bench/ingest_writes.py [--workdir /tmp/relate_writes_bench] [--days 6] [--rounds 2]

Generates (or reuses) bench/ingest.py's raw logs (--days x 240k impressions), then runs
pipelines.ingest.run_days (`--all`, master local[2], 4 shuffle partitions, as bench/ingest.py)
--rounds times in one session (round 1 warms the JIT) and prints, per round, the seconds of
each materialize (parse, link, labels), each table write, and the rest (the counts), with
the JVM's GC time, the Spark jobs/stages/tasks each step ran and the files and bytes each table got.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest import raw_logs  # noqa: E402
from pipelines import ingest  # noqa: E402
from plumbing import paths  # noqa: E402
from plumbing.config import PROJECT_PARAMS, load_config  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/relate_writes_bench"))
    parser.add_argument("--days", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--shuffle-partitions", type=int, default=4)
    args = parser.parse_args(argv)
    raw = args.workdir / "raw"
    lines = raw_logs(raw, "2026-01-01", args.days, 240_000)
    from plumbing.spark import get_spark

    spark = get_spark("local[2]", "relate-writes-bench", args.shuffle_partitions)
    sc = spark.sparkContext
    tracker = sc.statusTracker()
    beans = sc._jvm.java.lang.management.ManagementFactory.getGarbageCollectorMXBeans()

    def gc_ms() -> int:
        return sum(beans.get(i).getCollectionTime() for i in range(beans.size()))
    steps: list[tuple[str, float, str]] = []
    counter = {"n": 0}

    def timed(name, fn, *a, **kw):
        counter["n"] += 1
        group = f"step{counter['n']}"
        sc.setJobGroup(group, name)
        started, gc0 = time.monotonic(), gc_ms()
        try:
            return fn(*a, **kw)
        finally:
            seconds = time.monotonic() - started
            jobs = tracker.getJobIdsForGroup(group)
            stages = [s for j in jobs for s in (tracker.getJobInfo(j).stageIds if tracker.getJobInfo(j) else [])]
            tasks = sum(tracker.getStageInfo(s).numTasks for s in stages if tracker.getStageInfo(s))
            gc = (gc_ms() - gc0) / 1000
            steps.append((name, seconds, f"GC {gc:5.1f}s; {len(jobs)} jobs, {len(stages)} stages, {tasks} tasks"))
            sc.setJobGroup("other", "other")

    real_materialize, real_write = ingest.materialize, ingest.write_partitions
    names = iter(())

    def materialize(df):
        return timed(f"materialize {next(names, '?')}", real_materialize, df)

    def write_partitions(spark_, curated_dir, table, df, owned, nonempty):
        return timed(f"write {table}", real_write, spark_, curated_dir, table, df, owned, nonempty)

    ingest.materialize, ingest.write_partitions = materialize, write_partitions
    out = args.workdir / "spark_out"
    print(f"{lines:,} raw lines in {len(paths.partitions(raw))} day(s)")
    for round_no in range(1, args.rounds + 1):
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        steps.clear()
        names = iter(("parse", "link", "labels"))
        cfg = load_config(ingest.IngestConfig, "ingest", PROJECT_PARAMS,
                          overrides={"master": "local[2]", "shuffle_partitions": args.shuffle_partitions})
        started, gc0 = time.monotonic(), gc_ms()
        metrics = ingest.run_days(spark, cfg, paths.partitions(raw), metrics_path=out / "ingest.json",
                                  raw_dir=raw, curated_dir=out)
        total = time.monotonic() - started
        print(f"round {round_no}: {total:.1f}s, {lines / total:,.0f} events/s "
              f"(kept {metrics['rows_kept']}, quarantined {metrics['rows_quarantined']}), JVM GC {(gc_ms() - gc0) / 1000:.1f}s")
        for name, seconds, what in steps:
            print(f"  {name:<28} {seconds:6.1f}s  {what}")
        print(f"  {'rest (counts, metrics)':<28} {total - sum(s for _, s, _ in steps):6.1f}s")
        for table in sorted(p for p in out.iterdir() if p.is_dir()):
            files = list(table.glob("dt=*/*.parquet"))
            print(f"  {table.name:<28} {len(files):4d} files {sum(f.stat().st_size for f in files) / 1e6:8.1f} MB")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
