"""Benchmark: the Spark ingest job vs DuckDB doing the same transformation on the same files.

    python bench/ingest.py [--workdir /tmp/relate_ingest_bench] [--days 20] [--impressions-per-day 240000]

Generates (or reuses) raw logs per docs/data_contract.md in --workdir (default >= 5M events:
impressions, clicks, late conversions, duplicates, corrupt lines), then times
1. DuckDB: the same rules in one SQL pass over all files (parse, validate, dedupe, link,
   label, aggregate, write Parquet),
2. Spark: pipelines.ingest `--all` (run_days: one pass that gives the final state of the
   daily runs; parse, validate, dedupe, link, label, aggregate, write Parquet for every
   day) with master local[2], and
3. the same Spark job through Spark Connect: a Connect server (JVM Spark on the same master)
   started by plumbing.spark_services (skip with --no-connect),
checks that all keep and quarantine the same number of rows, and prints events/s for each
and its ratio to DuckDB.
"""
from __future__ import annotations

import argparse
import datetime as dt
import gzip
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from plumbing.dates import day_bounds_ms, ds_range, shift_ds  # noqa: E402

VERTICALS = ["travel", "finance", "health", "electronics", "fashion", "home", "education", "auto"]
WORDS = "fast cheap best new save today free premium trusted local official deal offer top easy smart".split()


def generate(raw_dir: Path, start: str, days: int, impressions_per_day: int, seed: int = 7) -> int:
    """Write gzipped JSONL partitions; return the number of lines written."""
    rng = np.random.default_rng(seed)
    dates = ds_range(start, shift_ds(start, days - 1))
    n_ads = 96
    ad_vertical = rng.integers(0, len(VERTICALS), n_ads)
    texts = [" ".join(rng.choice(WORDS, 8)) for _ in range(n_ads * 24)]
    pending: dict[str, list[bytes]] = {d: [] for d in dates}  # late events land in later partitions
    total = 0
    for day_index, ds in enumerate(dates):
        start_ms, end_ms = day_bounds_ms(ds)
        n = impressions_per_day
        ts = np.sort(rng.integers(start_ms, end_ms, n))
        ad = rng.integers(0, n_ads, n)
        search = rng.random(n) < 0.6
        text = ad * 24 + rng.integers(0, 24, n)
        clicked = rng.random(n) < 0.05
        click_ts = ts + rng.integers(1_000, 3_000_000, n)
        converted = clicked & (rng.random(n) < 0.1)
        conv_ts = click_ts + rng.integers(60_000, 3 * 86_400_000 - 3_600_000, n)
        lines = pending[ds]
        for i in range(n):
            imp_id = f"imp-{ds}-{i}"
            a = int(ad[i])
            ev = {"event_id": f"e-{imp_id}", "event_type": "impression", "ts": int(ts[i]), "impression_id": imp_id,
                  "user_id": f"u{int(ts[i]) % 50000}", "user_segment": f"seg{a % 5}",
                  "placement": "search" if search[i] else "feed", "vertical": VERTICALS[ad_vertical[a]],
                  "advertiser_id": f"adv{a // 12}", "product_id": f"p{a // 4}", "ad_id": f"ad{a}",
                  "position": int(1 + i % 4), "propensity": 0.25}
            if search[i]:
                t = int(text[i])
                ev.update(query=f"q {WORDS[t % 16]}", keyword=f"kw{a}-{t % 4}", text_id=f"t{t}", ad_text=texts[t])
            else:
                ev.update(title_id=f"ti{a}-{i % 6}", image_id=f"im{a}-{i % 5}", highlight_id=f"hl{a}-{i % 4}")
            lines.append(orjson.dumps(ev))
            if clicked[i]:
                c = {"event_id": f"e-c-{imp_id}", "event_type": "click", "ts": int(click_ts[i]),
                     "impression_id": imp_id, "click_id": f"c-{imp_id}"}
                cds = dt.datetime.fromtimestamp(c["ts"] / 1000, dt.timezone.utc).date().isoformat()
                if cds in pending:
                    pending[cds].append(orjson.dumps(c))
                if converted[i]:
                    v = {"event_id": f"e-v-{imp_id}", "event_type": "conversion", "ts": int(conv_ts[i]),
                         "click_id": f"c-{imp_id}", "value": round(float(rng.gamma(2.0, 30.0)), 2)}
                    vds = dt.datetime.fromtimestamp(v["ts"] / 1000, dt.timezone.utc).date().isoformat()
                    if vds in pending:
                        pending[vds].append(orjson.dumps(v))
        # at-least-once delivery and a few corrupt lines, as in real logs
        dup = rng.choice(len(lines), len(lines) // 500, replace=False)
        lines.extend(lines[j] for j in dup)
        bad = rng.choice(len(lines), len(lines) // 2000, replace=False)
        for j in bad:
            lines[j] = lines[j][: len(lines[j]) // 2]
        part = raw_dir / f"dt={ds}"
        part.mkdir(parents=True, exist_ok=True)
        with gzip.open(part / "part-00000.jsonl.gz", "wb", compresslevel=1) as fh:
            fh.write(b"\n".join(lines) + b"\n")
        total += len(lines)
        del pending[ds]
        print(f"generated {ds}: {len(lines)} lines", flush=True)
    return total


DUCKDB_SQL = """
CREATE OR REPLACE TEMP TABLE parsed AS
WITH lines AS (
  SELECT line AS raw_line, regexp_extract(filename, 'dt=([0-9-]+)', 1) AS dt
  FROM read_csv({files}, columns={{'line': 'VARCHAR'}}, header=false, delim='\\x1f', quote='', escape='',
                filename=true, auto_detect=false, compression='gzip')
),
j AS (
  SELECT raw_line, dt, coalesce(try(json_type(raw_line)) = 'OBJECT', false) AS ok,
         try(json_extract_string(raw_line, ['event_id','event_type','ts','impression_id','click_id','user_id',
           'user_segment','placement','vertical','advertiser_id','product_id','ad_id','position','query','keyword',
           'text_id','ad_text','title_id','image_id','highlight_id','propensity','value'])) AS f
  FROM lines
),
typed AS (
  SELECT raw_line, dt, ok, f[1] event_id, f[2] event_type, f[3] ts_raw, TRY_CAST(f[3] AS BIGINT) ts,
         f[4] impression_id, f[5] click_id, f[6] user_id, f[7] user_segment, f[8] placement, f[9] vertical,
         f[10] advertiser_id, f[11] product_id, f[12] ad_id, f[13] position_raw, TRY_CAST(f[13] AS INT) position,
         f[14] query, f[15] keyword, f[16] text_id, f[17] ad_text, f[18] title_id, f[19] image_id, f[20] highlight_id,
         f[21] propensity_raw, TRY_CAST(f[21] AS DOUBLE) propensity, f[22] value_raw, TRY_CAST(f[22] AS DOUBLE) value,
         epoch_ms(CAST(dt AS DATE)::TIMESTAMP) AS day_start
  FROM j
),
checked AS (
  SELECT *, CASE
    WHEN NOT ok THEN 'malformed_json'
    WHEN event_id IS NULL OR event_type IS NULL OR ts_raw IS NULL THEN 'missing_field'
    WHEN event_type NOT IN ('impression','click','conversion') THEN 'unknown_event_type'
    WHEN event_type = 'impression' AND (impression_id IS NULL OR user_id IS NULL OR user_segment IS NULL
         OR placement IS NULL OR vertical IS NULL OR advertiser_id IS NULL OR product_id IS NULL OR ad_id IS NULL
         OR position_raw IS NULL OR propensity_raw IS NULL
         OR (placement = 'search' AND (text_id IS NULL OR ad_text IS NULL OR keyword IS NULL OR query IS NULL))
         OR (placement = 'feed' AND (title_id IS NULL OR image_id IS NULL OR highlight_id IS NULL))) THEN 'missing_field'
    WHEN event_type = 'click' AND (impression_id IS NULL OR click_id IS NULL) THEN 'missing_field'
    WHEN event_type = 'conversion' AND (click_id IS NULL OR value_raw IS NULL) THEN 'missing_field'
    WHEN ts IS NULL THEN 'bad_type'
    WHEN event_type = 'impression' AND (position IS NULL OR position < 1 OR placement NOT IN ('search','feed')
         OR propensity IS NULL OR NOT (propensity > 0 AND propensity <= 1)) THEN 'bad_type'
    WHEN event_type = 'conversion' AND (value IS NULL OR NOT (value >= 0 AND value < 1e12)) THEN 'bad_type'
    WHEN ts < day_start OR ts >= day_start + 86400000 THEN 'ts_outside_partition'
  END AS reason
  FROM typed
)
SELECT * EXCLUDE (reason),
  CASE WHEN reason IS NULL AND row_number() OVER (PARTITION BY dt, reason IS NULL, event_id ORDER BY ts, raw_line) > 1
       THEN 'duplicate_event_id' ELSE reason END AS reason
FROM checked;

CREATE OR REPLACE TEMP TABLE linked AS
WITH v AS (SELECT * FROM parsed WHERE reason IS NULL),
lc AS (SELECT DISTINCT c.dt, c.event_id, c.click_id, c.ts FROM v c JOIN v i
         ON i.event_type = 'impression' AND i.impression_id = c.impression_id
        AND c.ts >= i.ts AND c.ts <= i.ts + {click_window_ms}
        WHERE c.event_type = 'click'),
lv AS (SELECT DISTINCT x.dt, x.event_id FROM v x JOIN lc
         ON lc.click_id = x.click_id AND x.ts >= lc.ts AND x.ts <= lc.ts + {attribution_window_ms}
        WHERE x.event_type = 'conversion')
SELECT v.*, CASE WHEN v.event_type = 'click' AND lc.event_id IS NULL THEN 'orphan_click'
                 WHEN v.event_type = 'conversion' AND lv.event_id IS NULL THEN 'orphan_conversion' END AS link_reason
FROM v LEFT JOIN lc ON v.event_type = 'click' AND lc.dt = v.dt AND lc.event_id = v.event_id
       LEFT JOIN lv ON v.event_type = 'conversion' AND lv.dt = v.dt AND lv.event_id = v.event_id;

CREATE OR REPLACE TEMP TABLE labeled AS
WITH v AS (SELECT * FROM linked WHERE link_reason IS NULL),
ic AS (SELECT i.dt, i.event_id, c.click_id, c.ts AS click_ts FROM v i JOIN v c
         ON c.event_type = 'click' AND c.impression_id = i.impression_id
        AND c.ts >= i.ts AND c.ts <= i.ts + {click_window_ms} WHERE i.event_type = 'impression'),
l AS (SELECT ic.dt, ic.event_id, bool_or(x.event_id IS NOT NULL) AS converted,
             coalesce(sum(x.value), 0) AS conversion_value
      FROM ic LEFT JOIN v x ON x.event_type = 'conversion' AND x.click_id = ic.click_id
       AND x.ts >= ic.click_ts AND x.ts <= ic.click_ts + {attribution_window_ms}
      GROUP BY ic.dt, ic.event_id)
SELECT i.*, CAST(l.event_id IS NOT NULL AS INT) AS clicked, CAST(coalesce(l.converted, false) AS INT) AS converted,
       coalesce(l.conversion_value, 0) AS conversion_value
FROM v i LEFT JOIN l ON l.dt = i.dt AND l.event_id = i.event_id WHERE i.event_type = 'impression';

COPY (SELECT * EXCLUDE (ok, ts_raw, position_raw, propensity_raw, value_raw, day_start, reason, link_reason, raw_line)
      FROM linked WHERE link_reason IS NULL) TO '{out}/events' (FORMAT parquet, PARTITION_BY (dt), OVERWRITE);
COPY (SELECT raw_line, reason, event_id, dt FROM parsed WHERE reason IS NOT NULL
      UNION ALL SELECT raw_line, link_reason, event_id, dt FROM linked WHERE link_reason IS NOT NULL)
  TO '{out}/quarantine' (FORMAT parquet, PARTITION_BY (dt), OVERWRITE);
COPY (SELECT * EXCLUDE (ok, ts_raw, position_raw, propensity_raw, value_raw, day_start, reason, link_reason, raw_line)
      FROM labeled) TO '{out}/labeled_impressions' (FORMAT parquet, PARTITION_BY (dt), OVERWRITE);
COPY (SELECT dt, ad_id, text_id, min(ad_text) ad_text, max(keyword) keyword, min(vertical) vertical,
             count(*) impressions, sum(clicked) clicks, sum(converted) conversions,
             sum(clicked) / count(*) ctr, CASE WHEN sum(clicked) > 0 THEN sum(converted) / sum(clicked) ELSE 0 END cvr,
             sum(converted) / count(*) ctcvr
      FROM labeled WHERE placement = 'search' GROUP BY ALL) TO '{out}/text_stats' (FORMAT parquet, PARTITION_BY (dt), OVERWRITE);
COPY (SELECT dt, ad_id, title_id, image_id, highlight_id, min(product_id) product_id, min(vertical) vertical,
             count(*) impressions, sum(clicked) clicks, sum(converted) conversions, sum(clicked) / count(*) ctr,
             avg(propensity) mean_propensity
      FROM labeled WHERE placement = 'feed' GROUP BY ALL) TO '{out}/combo_stats' (FORMAT parquet, PARTITION_BY (dt), OVERWRITE);
"""



def raw_logs(raw_dir: Path, start: str, days: int, impressions_per_day: int) -> int:
    """Generate the raw logs into raw_dir, or reuse a complete earlier generation (its _LINES
    marker is written last, so a killed generation is redone); returns the line count."""
    marker = raw_dir / "_LINES"
    if marker.exists():
        lines = int(marker.read_text())
        print(f"reusing {raw_dir}: {lines} lines")
        return lines
    shutil.rmtree(raw_dir, ignore_errors=True)
    t = time.monotonic()
    lines = generate(raw_dir, start, days, impressions_per_day)
    marker.write_text(str(lines))
    print(f"generated {lines} lines in {time.monotonic() - t:.0f}s")
    return lines

def run_duckdb(raw_dir: Path, out: Path, threads: int) -> tuple[float, int, int]:
    """DuckDB over all days at once (its natural mode); return seconds, kept, quarantined."""
    import duckdb

    files = sorted(str(p) for p in raw_dir.glob("dt=*/*.jsonl.gz"))
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    con.execute(f"SET temp_directory = '{out.parent / 'duckdb_tmp'}'")  # not ./.tmp in the project
    sql = DUCKDB_SQL.format(files=files, out=out, click_window_ms=60 * 60_000, attribution_window_ms=3 * 86_400_000)
    started = time.monotonic()
    for statement in [s for s in sql.split(";") if s.strip()]:
        con.execute(statement)
    seconds = time.monotonic() - started
    kept = con.execute("SELECT count(*) FROM linked WHERE link_reason IS NULL").fetchone()[0]
    quarantined = con.execute(
        "SELECT (SELECT count(*) FROM parsed WHERE reason IS NOT NULL) + "
        "(SELECT count(*) FROM linked WHERE link_reason IS NOT NULL)").fetchone()[0]
    return seconds, kept, quarantined


def run_spark(raw_dir: Path, out: Path, master: str, shuffle_partitions: int) -> tuple[float, int, int]:
    from plumbing import paths
    from pipelines.ingest import IngestConfig, run_days
    from plumbing.config import PROJECT_PARAMS, load_config
    from plumbing.spark import get_spark

    cfg = load_config(IngestConfig, "ingest", PROJECT_PARAMS,
                      overrides={"master": master, "shuffle_partitions": shuffle_partitions})
    spark = get_spark(master, "relate-ingest-bench", shuffle_partitions)
    started = time.monotonic()
    metrics = run_days(spark, cfg, paths.partitions(raw_dir), metrics_path=out / "ingest.json",
                       raw_dir=raw_dir, curated_dir=out)
    seconds = time.monotonic() - started
    spark.stop()
    return seconds, metrics["rows_kept"], metrics["rows_quarantined"]


def run_connect(raw_dir: Path, workdir: Path, master: str, shuffle_partitions: int) -> tuple[float, int, int]:
    """The same job through a Spark Connect server (JVM Spark on `master`, started here, stopped after);
    the time is the job's, not the server's start."""
    from plumbing.spark_services import connect_server

    out = workdir / "connect_out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.monotonic()
    with connect_server(workdir / "connect_server", master=master, driver_memory="4g") as url:
        print(f"connect server up in {time.monotonic() - started:.1f}s at {url}", flush=True)
        return run_spark(raw_dir, out, url, shuffle_partitions)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/relate_ingest_bench"))
    parser.add_argument("--start", default="2026-01-01")
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument("--impressions-per-day", type=int, default=240_000)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--shuffle-partitions", type=int, default=4)
    parser.add_argument("--no-connect", action="store_true", help="skip the Spark Connect run")
    args = parser.parse_args(argv)

    raw_dir = args.workdir / f"raw_{args.start}_{args.days}x{args.impressions_per_day}"
    lines = raw_logs(raw_dir, args.start, args.days, args.impressions_per_day)

    threads = int(args.master[6:-1]) if args.master.startswith("local[") and args.master[6:-1].isdigit() else os.cpu_count()
    spark_out, duck_out = args.workdir / "spark_out", args.workdir / "duckdb_out"
    for out in (spark_out, duck_out):
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
    d_s, d_kept, d_q = run_duckdb(raw_dir, duck_out, threads)
    print(f"duckdb ({threads} threads): {d_s:.1f}s, {lines / d_s:,.0f} events/s (kept {d_kept}, quarantined {d_q})")
    runs = {f"spark ({args.master})": run_spark(raw_dir, spark_out, args.master, args.shuffle_partitions)}
    if not args.no_connect:
        runs[f"spark connect (server on {args.master})"] = run_connect(raw_dir, args.workdir, args.master,
                                                                      args.shuffle_partitions)
    agree = True
    for label, (s_s, s_kept, s_q) in runs.items():
        print(f"{label}: {s_s:.1f}s, {lines / s_s:,.0f} events/s (kept {s_kept}, quarantined {s_q}); "
              f"ratio to duckdb (events/s): {d_s / s_s:.2f}")
        agree = agree and (s_kept, s_q) == (d_kept, d_q)
    if not agree:
        print("WARNING: spark and duckdb disagree on kept/quarantined counts")
        return 1
    return 0

if __name__ == "__main__":
    sys.exit(main())
