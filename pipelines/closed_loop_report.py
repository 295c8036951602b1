"""The closed loop's report: metrics/closed_loop.json, the per-day CSV (the DVC plot), the
trajectory plot and reports/closed_loop.md, from each arm's day records (pipelines.closed_loop).

Goals (issue 20, over the loop's last `closed_loop.last_days` days), for each retraining arm run
(`daily`, `daily_warm`): true CTCVR of served search traffic >= +30% over `logging` and >= +5% over
`frozen`; feed true CTR >= +100% over `logging`; the compliance of the texts the champion served
>= 99.5% on every loop day (`served_compliance_min`: daily's, else daily_warm's).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from pipelines.closed_loop_metrics import pooled, uplift
from plumbing import atomic
from plumbing.paths import METRICS, PLOTS, REPORTS

RETRAINING_ARMS = ("daily", "daily_warm")
# beside each uplift, the same with non-compliant texts valued at nothing (the offline evaluation's rule)
VALUED, VALUED_SUFFIX = "true_ctcvr_compliant_valued", "compliant_valued"
GOALS = {"uplift_{arm}_vs_logging": 0.30, "uplift_{arm}_vs_frozen": 0.05, "feed_ctr_uplift_{arm}_vs_logging": 1.00,
         "served_compliance_min_{arm}": 0.995}


def loop_days(records: list[dict], cfg) -> list[dict]:
    return [r for r in records if r["day"] >= cfg.warmup_days]


def arm_summary(records: list[dict], cfg) -> dict:
    """One arm: the last days pooled, verdict counts, wall time per stage."""
    days = loop_days(records, cfg)
    last = days[-cfg.last_days:]
    runs = [r for r in records if r["day"] >= cfg.warmup_days - 1]  # the first training is on the last warm-up day
    measures = [r["measure"] for r in last]
    search, feed = pooled(measures, "search"), pooled(measures, "feed")
    compliance = [r["measure"]["search"]["champion_compliance"] for r in days]
    stage_seconds: dict[str, list[float]] = {}
    for r in runs:
        for name, s in r["stage_seconds"].items():
            stage_seconds.setdefault(name, []).append(s)
    return {
        "last7": {"true_ctcvr": search["true_ctcvr"], "true_ctcvr_ci95": search["true_ctcvr_ci95"],
                  "feed_true_ctr": feed["true_ctr"], "feed_true_ctr_ci95": feed["true_ctr_ci95"],
                  "search": search, "feed": feed,
                  "distinct2": _mean([r["measure"]["search_distinct2"] for r in last])},
        "window": [last[0]["ds"], last[-1]["ds"]] if last else None,
        "first_day_served_by_a_champion": next((r["ds"] for r in records if r.get("served_by")), None),
        "published_days": [r["ds"] for r in runs if r.get("published")],
        "refused_days": [r["ds"] for r in runs if r.get("published") is False],
        "validation_failed_days": [r["ds"] for r in records if not r.get("validated", True)],
        "champion_compliance_min": min((c for c in compliance if c is not None), default=None),
        "served_compliance_min": min((r["measure"]["search"]["compliance"] for r in days), default=None),
        "stage_seconds_mean": {k: round(sum(v) / len(v), 1) for k, v in stage_seconds.items()},
        "day_seconds_total": round(sum(r["seconds"] for r in days), 1),
    }


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def build_summary(records: dict[str, list[dict]], cfg, params: Path) -> dict:
    """metrics/closed_loop.json: the arms, the uplifts with CIs, the goals."""
    # arms still running (or stopped) are compared on the days every arm has run
    end = min((max(r["day"] for r in recs) for recs in records.values() if recs), default=-1)
    records = {arm: [r for r in recs if r["day"] <= end] for arm, recs in records.items()}
    arms = {arm: arm_summary(recs, cfg) for arm, recs in records.items()}
    out = {"params": str(params), "days": cfg.total_days, "warmup_days": cfg.warmup_days, "loop_days": cfg.days,
           "last_days": cfg.last_days, "compared_through_day": end, "arms": arms}
    last = {arm: [r["measure"] for r in loop_days(recs, cfg)[-cfg.last_days:]] for arm, recs in records.items()}
    for arm in RETRAINING_ARMS:
        out.update(_uplifts_over_baselines(arm, arms, last))
    if "daily" in arms and "daily_warm" in arms:  # issue 16: no worse than daily beyond the CIs, at <= 1/3 of its compute
        up = uplift(pooled(last["daily_warm"], "search"), pooled(last["daily"], "search"), "true_ctcvr")
        out["uplift_daily_warm_vs_daily"], out["uplift_daily_warm_vs_daily_ci95"] = up["uplift"], up["ci95"]
        out["compute_ratio_daily_warm_vs_daily"] = _compute_ratio(arms["daily_warm"], arms["daily"])
    retraining = [arm for arm in RETRAINING_ARMS if arm in arms]
    for arm in retraining:
        out[f"served_compliance_min_{arm}"] = arms[arm]["champion_compliance_min"]
    if retraining:
        out["served_compliance_min"] = arms[retraining[0]]["champion_compliance_min"]
        out["served_compliance_all_min"] = arms[retraining[0]]["served_compliance_min"]
    goals = {k.format(arm=arm): v for arm in retraining for k, v in GOALS.items()}
    out["goals"] = {k: {"target": v, "value": out.get(k), "met": out.get(k) is not None and out[k] >= v}
                    for k, v in goals.items() if k in out}
    out["headline"] = headline(out)
    return out


def _uplifts_over_baselines(arm: str, arms: dict, last: dict) -> dict:
    """`arm`'s search true CTCVR uplift over logging and frozen, and its feed true CTR uplift over logging."""
    out = {}
    for other, placement, metric, key in (("logging", "search", "true_ctcvr", f"uplift_{arm}_vs_logging"),
                                          ("frozen", "search", "true_ctcvr", f"uplift_{arm}_vs_frozen"),
                                          ("logging", "feed", "true_ctr", f"feed_ctr_uplift_{arm}_vs_logging"),
                                          *((o, "search", VALUED, f"uplift_{arm}_vs_{o}_{VALUED_SUFFIX}")
                                            for o in ("logging", "frozen"))):
        if arm not in arms or other not in arms:
            continue
        a, b = pooled(last[arm], placement), pooled(last[other], placement)
        if metric in a and metric in b:  # the compliant-valued sums: only served records that have them
            up = uplift(a, b, metric)
            out[key], out[f"{key}_ci95"] = up["uplift"], up["ci95"]
    return out


def _compute_ratio(arm: dict, baseline: dict) -> float | None:
    """Mean seconds per day of the training and release stages, arm over baseline."""
    def spent(a: dict) -> float:
        return sum(v for k, v in a["stage_seconds_mean"].items() if k not in ("simulate", "ingest", "validate"))

    return spent(arm) / spent(baseline) if spent(baseline) else None


def headline(out: dict) -> str:
    parts = [f"{k} {_pct(g['value'], 'uplift' in k)} (goal {_pct(g['target'], 'uplift' in k)}: "
             f"{'met' if g['met'] else 'NOT met'})" for k, g in out["goals"].items()]
    parts += [f"{k} {_pct(out[k])}" for k in ("uplift_daily_warm_vs_daily",) if k in out]
    return "; ".join(parts) or "no retraining arm to compare"


def _pct(x, signed: bool = True) -> str:
    return "n/a" if x is None else f"{x:+.1%}" if signed else f"{x:.1%}"


def days_csv(records: dict[str, list[dict]]) -> str:
    """One row per (day): each arm's search true CTCVR, feed true CTR, champion share, compliance."""
    by_day: dict[str, dict] = {}
    for arm, recs in records.items():
        for r in recs:
            row = by_day.setdefault(r["ds"], {"ds": r["ds"], "day": r["day"]})
            m = r["measure"]
            top = m.get("search_top_bigram") or {}  # absent from records measured before it existed
            row.update({f"{arm}_top_bigram": top.get("bigram"), f"{arm}_top_bigram_share": top.get("share"),
                        f"{arm}_search_true_ctcvr": m["search"]["true_ctcvr"],
                        f"{arm}_search_true_ctcvr_{VALUED_SUFFIX}": m["search"].get(VALUED),
                        f"{arm}_feed_true_ctr": m["feed"]["true_ctr"],
                        f"{arm}_champion_share": m["search"]["champion_share"],
                        f"{arm}_served_compliance": m["search"]["compliance"],
                        f"{arm}_distinct2": m["search_distinct2"]})
    rows = [by_day[d] for d in sorted(by_day)]
    fields = sorted({k for row in rows for k in row}, key=lambda k: (k not in ("ds", "day"), k))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def trajectory_plot(records: dict[str, list[dict]], cfg, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("search true CTCVR", lambda m: m["search"]["true_ctcvr"]),
              ("feed true CTR", lambda m: m["feed"]["true_ctr"]),
              ("champion share of search", lambda m: m["search"]["champion_share"]),
              ("served search compliance", lambda m: m["search"]["compliance"]),
              ("distinct-2 of served search texts", lambda m: m["search_distinct2"]),
              ("share of search carrying the most served bigram",
               lambda m: (m.get("search_top_bigram") or {}).get("share")))
    fig, axes = plt.subplots(2, 3, figsize=(15, 7), sharex=True)
    for ax, (title, value) in zip(axes.flat, panels):
        for arm, recs in records.items():
            ax.plot([r["day"] for r in recs], [_nan(value(r["measure"])) for r in recs], marker=".", label=arm)
        ax.axvline(cfg.warmup_days - 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0, 0].legend()
    for ax in axes[1]:
        ax.set_xlabel("day (dotted: end of the warm-up)")
    atomic.save_figure(fig, path)


def _nan(x) -> float:
    return float("nan") if x is None else x


def markdown(out: dict) -> str:
    lines = ["# Closed loop", "", f"{out['days']} days ({out['warmup_days']} warm-up), params `{out['params']}`; "
             f"last {out['last_days']} days pooled{_partial(out)}. How to read it: docs/operations.md "
             "\"The closed loop\".", "",
             "| arm | search true CTCVR (95% CI) | feed true CTR (95% CI) | distinct-2 | published days | refused | "
             "validation failed |", "|---|---|---|---|---|---|---|"]
    for arm, a in out["arms"].items():
        last = a["last7"]
        lines.append(f"| {arm} | {last['true_ctcvr']:.5f} ({_ci(last['true_ctcvr_ci95'])}) | "
                     f"{last['feed_true_ctr']:.4f} "
                     f"({_ci(last['feed_true_ctr_ci95'])}) | {_num(last['distinct2'])} | {len(a['published_days'])} | "
                     f"{len(a['refused_days'])} | {len(a['validation_failed_days'])} |")
    lines += ["", "| goal | value | target | met |", "|---|---|---|---|"]
    for name, g in out["goals"].items():
        ci = out.get(f"{name}_ci95")
        signed = "uplift" in name
        lines.append(f"| {name} | {_pct(g['value'], signed)}{f' ({_ci(ci, pct=True)})' if ci else ''} | "
                     f"{_pct(g['target'], signed)} | "
                     f"{'yes' if g['met'] else '**no**'} |")
    valued = [(arm, other) for arm in RETRAINING_ARMS for other in ("logging", "frozen")
              if f"uplift_{arm}_vs_{other}_{VALUED_SUFFIX}" in out]
    if valued:
        lines += ["", "Valued as the offline evaluation values them (a non-compliant text's conversions count for "
                      "nothing), search true CTCVR: " + "; ".join(
                          f"{arm} vs {other} {_pct(out[f'uplift_{arm}_vs_{other}_{VALUED_SUFFIX}'])} "
                          f"({_ci(out[f'uplift_{arm}_vs_{other}_{VALUED_SUFFIX}_ci95'], pct=True)})"
                          for arm, other in valued) + "."]
    if "uplift_daily_warm_vs_daily" in out:
        lines += ["", f"daily_warm vs daily (full retrains): search true CTCVR "
                      f"{_pct(out['uplift_daily_warm_vs_daily'])} ({_ci(out['uplift_daily_warm_vs_daily_ci95'], pct=True)}), "
                      f"compute ratio {fmt_ratio(out['compute_ratio_daily_warm_vs_daily'])}."]
    for arm in ("daily", "daily_warm"):
        if arm in out["arms"]:
            lines += ["", f"Mean seconds per stage, {arm} arm: " + ", ".join(
                f"{k} {v}" for k, v in out["arms"][arm]["stage_seconds_mean"].items())]
    return "\n".join(lines) + "\n"


def _partial(out: dict) -> str:
    """The note of a run stopped early: every arm is compared on the days all of them ran."""
    through = out["compared_through_day"]
    return "" if through >= out["days"] - 1 else f" (stopped early: compared on days 1-{through + 1} only)"


def fmt_ratio(x) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def _ci(ci, pct: bool = False) -> str:
    if not ci:
        return "n/a"
    return f"{ci[0]:+.1%} .. {ci[1]:+.1%}" if pct else f"{ci[0]:.5f} .. {ci[1]:.5f}"


def _num(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def write_report(records: dict[str, list[dict]], cfg, params: Path) -> dict:
    """Write the four outputs under the params file's run root (the working directory); return the summary."""
    out = build_summary(records, cfg, params)
    atomic.write_json(METRICS / "closed_loop.json", atomic.undefined_as_null(out))
    atomic.write_text(PLOTS / "closed_loop" / "days.csv", days_csv(records))
    trajectory_plot(records, cfg, PLOTS / "closed_loop" / "trajectories.png")
    atomic.write_text(REPORTS / "closed_loop.md", markdown(out))
    return out
