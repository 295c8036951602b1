"""External check on real randomized A/B tests: the Upworthy Research Archive.

    python -m evals.upworthy_check [--params configs/real_corpus.yaml] [--max-tests N]

Lands the archive's CSV under `upworthy.workdir`, ingests it with the Spark report ingest
(pipelines.ingest_reports) into curated combo_stats/text_stats partitions (validated by the
validate stage's GX suites), then
1. attribution: leave-one-out-within-test prediction of each combination's CTR with the MIL model
   (relate_models.attribution, as train_attribution fits it), the content-aware MIL on the
   element table the adapter lands from the headlines, an additive logistic model and the
   per-test mean: log loss per impression and pairwise rank accuracy;
2. text CTR: which headline of a test wins, from the headline alone (tests split by id),
   with the CTCVR model's CTR tower and a bag-of-words logistic regression.
Tests in the broken-randomization weeks are excluded (or kept and flagged). Prints the
figures and writes metrics/real_upworthy.json. Exit 2 when the data or config is missing.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from plumbing import atomic
from plumbing.cli import StageContext, run_stage
from plumbing.errors import DataError, MissingArtifact
from plumbing.logs import get_logger
from relate_real import upworthy as uw

log = get_logger("evals.upworthy_check")
METRICS_FILE = Path("metrics") / "real_upworthy.json"


def check(cfg: uw.UpworthyConfig, csv: Path) -> dict:
    """Land, ingest and validate the archive, then run both checks; the metrics."""
    started = time.monotonic()
    with uw.working_dir(Path(cfg.workdir)):
        counts, tables, report = uw.adapt(cfg, csv)
    if not report["success"]:
        failed = [f"{f['suite']}.{f['expectation']}" for s in report["suites"].values() for f in s["failed"]]
        raise DataError(f"the adapter's curated tables failed validation: {', '.join(failed)}")
    combos, stats = tables["combo_stats"], tables["text_stats"]
    broken_combos, broken_stats = uw.broken_tests(combos, cfg), uw.broken_tests(stats, cfg)
    excluded_tests = int(combos.loc[broken_combos, "ad_id"].nunique())
    if cfg.exclude_broken:
        combos, stats = combos[~broken_combos], stats[~broken_stats]
    combos = combos.sort_values(["ad_id", "title_id", "image_id", "highlight_id"]).reset_index(drop=True)
    stats = stats.sort_values(["ad_id", "text_id"]).reset_index(drop=True)
    adapter_seconds = time.monotonic() - started
    with uw.model_threads(cfg.threads):
        attribution = uw.attribution_check(combos, cfg, tables["elements"])
        attribution_seconds = time.monotonic() - started - adapter_seconds
        text = uw.text_check(stats, cfg)
    return {
        "source": str(csv),
        "adapter": {**counts, "combinations": len(tables["combo_stats"]),
                    "headlines": len(tables["text_stats"]),
                    "partitions": int(tables["combo_stats"]["dt"].nunique()),
                    "element_table": uw.element_counts(tables),
                    "validation_success": report["success"]},
        "broken_randomization": {"weeks": list(cfg.broken_weeks), "tests": excluded_tests,
                                 "excluded": cfg.exclude_broken},
        "attribution": attribution,
        "text": text,
        "seconds": {"adapter": round(adapter_seconds, 1), "attribution": round(attribution_seconds, 1),
                    "total": round(time.monotonic() - started, 1)},
    }


def summary(m: dict) -> str:
    a, t = m["attribution"], m["text"]
    lines = [
        f"Upworthy: {m['adapter']['rows_in']} rows in, {m['adapter']['rows_kept']} kept, "
        f"{m['adapter']['rows_quarantined']} quarantined; {m['adapter']['combinations']} combinations in "
        f"{m['adapter']['partitions']} weekly partitions (GX suites passed: {m['adapter']['validation_success']})",
        f"element table (headlines): {m['adapter']['element_table']['rows_in']} rows in, "
        f"{m['adapter']['element_table']['rows_kept']} kept, {m['adapter']['element_table']['rows_quarantined']} "
        f"quarantined",
        f"broken-randomization weeks {m['broken_randomization']['weeks']}: {m['broken_randomization']['tests']} tests "
        f"{'excluded' if m['broken_randomization']['excluded'] else 'kept (flagged)'}",
        f"attribution ({a['protocol']}): {a['tests']} tests, {a['combinations']} combinations, {a['pairs']} pairs "
        f"({a['significant_pairs']} significant at 5%)",
        f"  {'model':<12} {'log loss':>10} {'- test_mean (SE)':>22} {'rank acc':>9} {'rank acc (sig.)':>16} "
        f"{'rank acc (cold headline, ' + str(a['cold_title_pairs']) + ' pairs)':>36}",
    ]
    for name, r in a["models"].items():
        difference = f"{r['log_loss_minus_test_mean']:+.2e} ({r['log_loss_minus_test_mean_se']:.1e})"
        lines.append(f"  {name:<12} {r['log_loss']:>10.6f} {difference:>22} {r['rank_accuracy']:>9.4f} "
                     f"{r['rank_accuracy_significant_pairs']:>16.4f} {r['rank_accuracy_cold_title_pairs']:>36.4f}")
    for label, r in a.get("mil_content_minus_mil", {}).items():
        lines.append(f"  mil_content - mil, {label}: {r['difference']:+.4f} (SE {r['se']:.4f}, tests as clusters)")
    lines += [
        f"text: {t['test_headlines']} held-out headlines in {t['test_tests']} tests, {t['pairs']} pairs "
        f"({t['significant_pairs']} significant)",
        f"  {'model':<22} {'pairwise acc':>13} {'pairwise acc (sig.)':>20}",
    ]
    for name, r in t["models"].items():
        lines.append(f"  {name:<22} {r['pairwise_accuracy']:>13.4f} {r['pairwise_accuracy_significant_pairs']:>20.4f}")
    lines.append(f"seconds: {m['seconds']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return run_stage("evals.upworthy_check", __doc__, run, argv, ds=None, add_arguments=add_arguments)


def add_arguments(parser) -> None:
    parser.set_defaults(params="configs/real_corpus.yaml")  # a config with an `upworthy:` section
    parser.add_argument("--csv", help="the archive's CSV (default: upworthy.csv)")
    parser.add_argument("--max-tests", type=int, help="a seeded sample of this many tests (default: upworthy.max_tests)")
    parser.add_argument("--out", default=str(METRICS_FILE), help="metrics JSON to write")


def run(ctx: StageContext) -> None:
    """Check, write the metrics and print the summary."""
    cfg = ctx.config(uw.UpworthyConfig, "upworthy")
    if ctx.args.max_tests is not None:
        cfg.max_tests = ctx.args.max_tests
        cfg.__post_init__()
    csv = Path(ctx.args.csv or cfg.csv).resolve()
    if not csv.is_file():
        raise MissingArtifact(f"Upworthy CSV not found: {csv} (see docs/real_data.md)")
    metrics = check(cfg, csv)
    atomic.write_json(ctx.args.out, metrics)
    print(summary(metrics))
    print(f"wrote {ctx.args.out}")


if __name__ == "__main__":
    sys.exit(main())
