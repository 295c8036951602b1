"""The Upworthy Research Archive as the pipeline's own curated inputs, and the checks run on them.

The archive (Matias et al., Scientific Data 2021) holds real randomized headline x image
tests. One CSV row is a *package* (one arm of a test). The adapter lands the archive's
CSV as is under `data/raw/upworthy/` and runs the Spark report ingest on it
(`pipelines.ingest_reports`, SQL in `sql/upworthy_*.sql`), which maps it onto the data
contract's feed placement:

    ad_id = product_id = clickability_test_id   (the product bias is the test effect)
    title_id = sha1(headline)[:16], image_id = eyecatcher_id,
    highlight_id = sha1(excerpt + lede)[:16]    (constant in most tests)
    dt = the Monday of %W week test_week, conversions = 0, mean_propensity = 1 / arms

and writes curated `combo_stats` (one row per distinct combination of a test: arms that
show the same three elements are summed, which leaves the binomial likelihood unchanged),
`text_stats` (one row per headline of a test), `quarantine` and `ingest_quality`
partitions, relative to the working directory like every stage. Rows the archive's
columns cannot support are quarantined with a reason and counted:
rows_in = rows_kept + rows_quarantined. The element table (docs/data_contract.md) is filled
from the headlines (`land_elements`: one title row per headline of a test, with its text,
landed by pipelines.ingest_elements' rules under data/content/; images have an id but no
pixels, so no content rows). The tables are then checked by the validate stage's GX suites.

    python -m relate_real.upworthy --csv PATH --workdir runs/upworthy   # land, ingest, validate

The checks (`attribution_check`, `text_check`) are what `python -m evals.upworthy_check`
prints.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pipelines import ingest_reports
from plumbing import atomic, paths
from plumbing.cli import StageContext, run_stage
from plumbing.config import PROJECT_PARAMS, load_config, require, require_spark_master
from plumbing.errors import DataError, MissingArtifact
from plumbing.logs import get_logger
from plumbing.metrics import binomial_nll, binomial_nll_per_impression

if TYPE_CHECKING:  # annotations only: the fits import torch lazily, inside them
    import torch

    from relate_models.ctcvr import CTCVRModel, FeatureEncoder

log = get_logger("real.upworthy")

VERTICAL = "upworthy"


@dataclass
class UpworthyConfig:
    """The `upworthy:` section of configs/real_corpus.yaml."""

    csv: str  # relative to the project root
    workdir: str  # the stages' cwd: its own data/, models/, metrics/
    broken_weeks: list[int]  # first, last test_week (inclusive)
    exclude_broken: bool  # False: keep those tests in, flagged in the metrics
    max_tests: int  # 0 = every test; else a seeded sample of tests (fast tests)
    seed: int
    mil_steps: int
    mil_learning_rate: float
    mil_l2: float
    mil_l2_bias: float
    mil_embed_dim: int
    mil_content_max_tokens: int  # mil_content: tokens of a headline its text encoder reads
    mil_l2_residual: float  # mil_content: prior precision of an element's residual beyond its content
    mil_l2_content: float  # mil_content: prior precision of the content encoder's weights
    additive_l2: float  # prior precision of headline/image/highlight effects, in impressions
    additive_test_l2: float  # of the test effects (nearly free: every test has thousands of impressions)
    text_test_fraction: float  # share of tests (by id) held out for the text check
    text_val_fraction: float  # share of the training tests used to pick the epoch / C
    text_epochs: int
    text_batch_size: int
    text_learning_rate: float
    text_weight_decay: float
    tokenizer_vocab: int
    bow_c_grid: list[float]
    threads: int  # torch and BLAS threads of the checks' fits (tiny models: more threads only contend); 0 = default
    spark_master: str  # the report ingest's Spark session
    spark_shuffle_partitions: int

    def __post_init__(self) -> None:
        p = "upworthy"
        require(bool(self.csv.strip()), f"{p}.csv", "must be a path")
        require(bool(self.workdir.strip()), f"{p}.workdir", "must be a path")
        require(len(self.broken_weeks) == 2 and self.broken_weeks[0] <= self.broken_weeks[1], f"{p}.broken_weeks",
                f"must be [first, last] test_week, got {self.broken_weeks}")
        require(self.max_tests >= 0, f"{p}.max_tests", "must be >= 0")
        for name in ("mil_steps", "mil_embed_dim", "mil_content_max_tokens", "text_epochs", "text_batch_size", "tokenizer_vocab"):
            require(getattr(self, name) >= 1, f"{p}.{name}", f"must be >= 1, got {getattr(self, name)}")
        for name in ("mil_learning_rate", "additive_l2", "additive_test_l2", "text_learning_rate"):
            require(getattr(self, name) > 0, f"{p}.{name}", f"must be > 0, got {getattr(self, name)}")
        for name in ("mil_l2", "mil_l2_bias", "mil_l2_residual", "mil_l2_content", "text_weight_decay"):
            require(getattr(self, name) >= 0, f"{p}.{name}", f"must be >= 0, got {getattr(self, name)}")
        require(0 < self.text_test_fraction < 0.5, f"{p}.text_test_fraction", "must be in (0, 0.5)")
        require(0 < self.text_val_fraction < 0.5, f"{p}.text_val_fraction", "must be in (0, 0.5)")
        require(bool(self.bow_c_grid) and all(c > 0 for c in self.bow_c_grid), f"{p}.bow_c_grid",
                "must be a non-empty list of positive numbers")
        require(self.threads >= 0, f"{p}.threads", "must be >= 0")
        require_spark_master(f"{p}.spark_master", self.spark_master)
        require(self.spark_shuffle_partitions >= 1, f"{p}.spark_shuffle_partitions", "must be >= 1")
        for name, week in zip(("first", "last"), self.broken_weeks):
            try:
                week_monday(week)
            except (TypeError, ValueError) as err:
                require(False, f"{p}.broken_weeks", f"{name} week: {err}")


def week_monday(test_week: int) -> str:
    """test_week YYYYWW -> the date of that week's Monday; ValueError if no such week.

    The archive numbers weeks like strftime's %W (Monday-based, 00..53: week 00 holds the days
    before the year's first Monday, e.g. 201500), not ISO weeks, so week 00's Monday can fall
    in December of the year before.
    """
    year, week = divmod(int(test_week), 100)
    if not (1970 <= year <= 9998 and 0 <= week <= 53):
        raise DataError(f"test_week {test_week}: not YYYYWW with week 00..53")
    monday = dt.datetime.strptime(f"{year} {week} 1", "%Y %W %w").date()
    if monday.year > year:
        raise DataError(f"test_week {test_week}: week {week} starts after {year}")
    return monday.isoformat()


# ------------------------------------------------------------------------------ landing and ingest


def land(csv: Path, max_tests: int = 0, seed: int = 0) -> Path:
    """Put the archive's CSV under data/raw/upworthy/ (replacing an earlier delivery) for the ingest.

    The file is copied as is. `max_tests` > 0 lands a seeded sample of that many test ids
    instead (every row of a sampled test, bad rows included, so the counts still conserve;
    a file without a test id column is landed whole for the ingest to reject by name).
    """
    target_dir = ingest_reports.raw_dir(VERTICAL)
    with atomic.directory(target_dir) as staging:
        sample = _sample_tests(csv, max_tests, seed) if max_tests else None
        if sample is None:
            shutil.copyfile(csv, staging / Path(csv).name)
        else:
            sample.to_csv(staging / "packages_sample.csv", index=False)
    return target_dir


def _sample_tests(csv: Path, max_tests: int, seed: int) -> pd.DataFrame | None:
    """The rows of `max_tests` seeded test ids (every column, text as written), or None to land the whole file."""
    try:
        raw = pd.read_csv(csv, dtype=str, keep_default_na=False, compression="infer")
    except (OSError, pd.errors.ParserError, UnicodeDecodeError, EOFError) as err:
        raise DataError(f"upworthy: cannot read {csv}: {err}") from None
    if "clickability_test_id" not in raw.columns:
        return None
    tests = np.sort(raw.loc[raw["clickability_test_id"] != "", "clickability_test_id"].unique())
    if len(tests) <= max_tests:
        return None
    chosen = set(np.random.default_rng(seed).choice(tests, size=max_tests, replace=False))
    return raw[raw["clickability_test_id"].isin(chosen)]


def ingest(cfg: UpworthyConfig) -> dict[str, int]:
    """The Spark report ingest (pipelines.ingest_reports) on the landed delivery; its ingest_quality row."""
    from pipelines.ingest import IngestConfig
    from plumbing.spark import stage_session

    spark_cfg = load_config(IngestConfig, "ingest", PROJECT_PARAMS,
                            overrides={"master": cfg.spark_master, "shuffle_partitions": cfg.spark_shuffle_partitions})
    with stage_session(spark_cfg.master, "relate-ingest-upworthy", spark_cfg.shuffle_partitions) as spark:
        return ingest_reports.run_source(spark, VERTICAL, spark_cfg)


def read_curated() -> dict[str, pd.DataFrame]:
    """The four tables the ingest wrote (cwd-relative), dt as a string column, in contract column order."""
    from pipelines.expectations import COMBO_STATS_COLUMNS, TEXT_STATS_COLUMNS

    order = {"combo_stats": COMBO_STATS_COLUMNS, "text_stats": TEXT_STATS_COLUMNS,
             "quarantine": ("dt", "raw_line", "reason", "event_id"),
             "ingest_quality": ("dt",) + ingest_reports.QUALITY_COLUMNS}
    tables = {}
    for name, columns in order.items():
        table = paths.curated(name)
        if paths.partitions(table):
            frame = pd.read_parquet(table)
            frame["dt"] = frame["dt"].astype(str)
        else:
            frame = pd.DataFrame(columns=list(columns))
        tables[name] = frame[list(columns)].sort_values(list(columns[:5]), kind="stable").reset_index(drop=True)
    return tables


def validate_curated(tables: dict[str, pd.DataFrame], max_quarantine_rate: float = 0.05) -> dict:
    """Run the validate stage's GX suites (combo_stats, text_stats, ingest_quality; elements and
    element_quality when `tables` has the element table) on the adapter's tables.

    The suites are per table and hold across partitions, so each table is validated once
    over all its partitions (one GX run per suite, not one per week). The events table
    does not exist here: the ingest_quality suite's rows_kept check is made against the
    kept package count; element_quality checks the element counts summed over the weeks.
    """
    from pipelines import validate

    gate = validate.Gate(load_config(validate.ValidateConfig, "validate", PROJECT_PARAMS, overrides={
        "volume_drift_tolerance": 1.0, "volume_history_days": 0, "max_quarantine_rate": max_quarantine_rate}),
        embedding_dim())
    frames = {
        "combo_stats": tables["combo_stats"].copy(),
        "text_stats": tables["text_stats"].copy(),
        "ingest_quality": validate.derive_quality_columns(tables["ingest_quality"],
                                                          int(tables["ingest_quality"]["rows_kept"].iloc[0])),
        **{name: tables[name].copy() for name in ("elements", "element_quality") if name in tables},
    }
    report = {"success": True, "suites": {}}
    for name, frame in frames.items():
        result = gate.run_suite(name, frame, {"embedding_dim": gate.embedding_dim}).to_json_dict()
        failures = [validate.failure_summary(name, r) for r in result["results"] if not r["success"]]
        report["suites"][name] = {"success": bool(result["success"]), "evaluated": len(result["results"]),
                                  "failed": failures}
        report["success"] &= bool(result["success"])
    return report


# ------------------------------------------------------------------------------ element table


def land_elements(text_stats: pd.DataFrame, embedding_dim: int) -> dict[str, int]:
    """The element table (docs/data_contract.md) from the headlines, landed by pipelines.ingest_elements' rules.

    One `title` row per (test, headline) of `text_stats` (element_id = its text_id, the title_id the
    combinations carry; text = the headline), delivered under data/raw/elements/dt=D (the first week the
    test shows it: 11 tests span two weeks), replacing an earlier delivery whole, and landed into
    data/content/ with ingest_elements' checks:
    a headline the contract refuses (a control character, > 200 characters) is quarantined with its
    reason and keeps an id-only residual. No image rows: the archive has an eyecatcher id but no pixels
    or embedding; no highlight rows (constant within most tests). Returns the summed quality counts.
    """
    from pipelines import ingest_elements as ie

    text_stats = text_stats.sort_values(["dt", "ad_id", "text_id"]).drop_duplicates(["ad_id", "text_id"])
    days = sorted(text_stats["dt"].unique())
    with atomic.directory(paths.RAW_ELEMENTS) as staging:
        for ds, week in text_stats.groupby("dt", sort=True):
            lines = [json.dumps({"element_id": e, "ad_id": a, "kind": "title", "text": t}, ensure_ascii=False)
                     for a, e, t in week[["ad_id", "text_id", "ad_text"]].itertuples(index=False)]
            (staging / f"dt={ds}").mkdir()
            (staging / f"dt={ds}" / "part-00000.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    shutil.rmtree(paths.CONTENT, ignore_errors=True)  # the partitions of an earlier delivery go with it
    for ds in days:
        ie.land_day(ds, embedding_dim)
    return ie.quality_metrics()["totals"]


def embedding_dim() -> int:
    """The element contract's image embedding length (params.yaml `ingest_elements`)."""
    from pipelines.ingest_elements import IngestElementsConfig

    return load_config(IngestElementsConfig, "ingest_elements", PROJECT_PARAMS).embedding_dim


def element_counts(tables: dict[str, pd.DataFrame]) -> dict[str, int]:
    """rows_in / kept / quarantined and the q_<reason> counts of the element table, summed over its weeks."""
    from pipelines.ingest_elements import QUALITY_COLUMNS

    row = tables["element_quality"].iloc[0]
    return {c: int(row[c]) for c in QUALITY_COLUMNS}


def read_elements(days: list[str]) -> dict[str, pd.DataFrame]:
    """The landed element table of `days` (with validate's derived columns) and one quality row summed over them."""
    from pipelines import validate
    from pipelines.ingest_elements import QUALITY_COLUMNS

    frames = [validate.element_frames(ds) for ds in days]
    elements = pd.concat([f["elements"] for f in frames], ignore_index=True)
    quality = pd.concat([f["element_quality"][list(QUALITY_COLUMNS)] for f in frames], ignore_index=True)
    # one row of sums: the element_quality suite checks one row, and its equalities hold for the sums
    summed = validate.derive_quality_columns(quality.sum().to_frame().T, len(elements),
                                             kept_column="kept_partition_rows")
    return {"elements": elements, "element_quality": summed}


def broken_tests(frame: pd.DataFrame, cfg: UpworthyConfig) -> pd.Series:
    """Rows of tests in the broken-randomization weeks, by their dt (the Monday of their test week)."""
    first, last = (week_monday(w) for w in cfg.broken_weeks)
    return frame["dt"].between(first, last)


# ------------------------------------------------------------------------------ attribution check


def loo_folds(combos: pd.DataFrame) -> np.ndarray:
    """Leave-one-out fold of each combination: its rank inside its test (in row order).

    Fold k holds out at most one combination per test, so each one is predicted by fits that
    saw every other combination of its test (and all but one of every other test): leave-one-out
    from the test's point of view, in as many fits as the largest test has combinations.
    """
    return combos.groupby("ad_id", sort=False).cumcount().to_numpy()


def pair_folds(combos: pd.DataFrame) -> np.ndarray:
    """Leave-pair-out fold of each combination: rank // 2 inside its test, -1 for one held out by no fold.

    Fold k holds out the pair of ranks (2k, 2k + 1) of every test, both arms together. Only
    pairs that leave at least one arm of their test in training are held out (a test of two
    arms would lose its test effect: both arms would get the same prediction); the last arm
    of a test of odd size has no partner and stays in training.
    """
    rank = combos.groupby("ad_id", sort=False).cumcount().to_numpy()
    size = combos.groupby("ad_id", sort=False)["ad_id"].transform("size").to_numpy()
    paired = (size >= 3) & (rank < size - size % 2)
    return np.where(paired, rank // 2, -1)


def log_loss_difference(p: np.ndarray, reference: np.ndarray, clicks: np.ndarray, impressions: np.ndarray,
                        groups: np.ndarray) -> tuple[float, float]:
    """Log loss per impression of p minus that of `reference`, and its standard error with the
    groups (tests) as independent clusters: arms of one test share their test's level."""
    return clustered_mean(binomial_nll(p, clicks, impressions) - binomial_nll(reference, clicks, impressions),
                          groups, impressions.sum())


def clustered_mean(values: np.ndarray, clusters: np.ndarray, total: float) -> tuple[float, float]:
    """sum(values) / total and its standard error with the clusters as independent units."""
    per_cluster = pd.Series(values).groupby(clusters).sum().to_numpy()
    n = len(per_cluster)
    se = math.sqrt(n / (n - 1) * ((per_cluster - per_cluster.mean()) ** 2).sum()) / total if n > 1 else float("nan")
    return float(per_cluster.sum() / total), se


def pair_hits(groups: np.ndarray, observed: np.ndarray, predicted: np.ndarray,
              mask_pair=None) -> tuple[np.ndarray, np.ndarray]:
    """Per pair inside a group, with different observed values (and kept by `mask_pair(i, j)`): 1 when
    ordered like the observation, 1/2 for a predicted tie, else 0; and the pair's group."""
    order = np.argsort(groups, kind="stable")
    g, o, p = groups[order], observed[order], predicted[order]
    bounds = np.flatnonzero(np.r_[True, g[1:] != g[:-1], True])
    hits, of = [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        for i in range(a, b):
            for j in range(i + 1, b):
                if o[i] == o[j] or (mask_pair is not None and not mask_pair(order[i], order[j])):
                    continue
                d = (p[i] - p[j]) * (o[i] - o[j])
                hits.append(1.0 if d > 0 else 0.5 if d == 0 else 0.0)
                of.append(g[i])
    return np.asarray(hits, dtype=np.float64), np.asarray(of, dtype=groups.dtype)


def pairwise_accuracy(groups: np.ndarray, observed: np.ndarray, predicted: np.ndarray,
                      mask_pair=None) -> tuple[float, int]:
    """Share of pairs inside a group, with different observed values, ordered like the observation
    (a predicted tie counts 1/2). `mask_pair(i, j)` filters pairs. Returns (accuracy, pairs)."""
    hits, _ = pair_hits(groups, observed, predicted, mask_pair)
    return (float(hits.mean()) if len(hits) else float("nan")), len(hits)


def paired_accuracy_difference(groups: np.ndarray, observed: np.ndarray, predicted: np.ndarray,
                               reference: np.ndarray, clusters, mask_pair=None) -> tuple[float, float]:
    """Rank accuracy of `predicted` minus that of `reference` on the same pairs, and its standard error
    with `clusters(group)` (the test of a pair) as independent units."""
    hits, of = pair_hits(groups, observed, predicted, mask_pair)
    reference_hits, _ = pair_hits(groups, observed, reference, mask_pair)
    return clustered_mean(hits - reference_hits, np.asarray([clusters(g) for g in of]), len(hits))


def significant_pair(clicks: np.ndarray, impressions: np.ndarray, z: float = 1.96):
    """A pair filter: the two CTRs differ by more than z standard errors (two-proportion test)."""
    rate = clicks / impressions

    def ok(i, j) -> bool:
        pooled = (clicks[i] + clicks[j]) / (impressions[i] + impressions[j])
        se = math.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / impressions[i] + 1 / impressions[j]))
        return abs(rate[i] - rate[j]) > z * se

    return ok


def fit_additive(train: pd.DataFrame, cfg: UpworthyConfig):
    """Regularised logistic model: logit = test effect + headline + image + highlight effects.

    Binomial likelihood on (clicks, impressions) with Gaussian priors (precision in units of
    one impression, as the MIL model's l2_bias), fitted by L-BFGS. Returns a predict(frame) function.
    """
    import scipy.optimize as so
    import scipy.sparse as sp

    slots = ("title_id", "image_id", "highlight_id")
    vocab: dict[str, int] = {}
    keys_train = _additive_keys(train, slots)
    for col in keys_train:
        for k in col:
            vocab.setdefault(k, len(vocab))
    n_feat = len(vocab)
    is_test = np.array([k.startswith("t\x1f") for k in vocab], dtype=bool)
    precision = np.where(is_test, cfg.additive_test_l2, cfg.additive_l2)

    def design(frame, keys):
        rows, cols = [], []
        for col in keys:
            for i, k in enumerate(col):
                j = vocab.get(k)
                if j is not None:
                    rows.append(i)
                    cols.append(j)
        return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(frame), n_feat))

    x = design(train, keys_train)
    c = train["clicks"].to_numpy(np.float64)
    n = train["impressions"].to_numpy(np.float64)
    ctr = c.sum() / n.sum()
    b0 = math.log(ctr / (1 - ctr))

    def objective(w):
        z = b0 + w[-1] + x @ w[:-1]
        # binomial NLL: n log(1 + e^z) - c z
        nll = (n * np.logaddexp(0, z) - c * z).sum()
        grad_z = n / (1 + np.exp(-z)) - c
        grad = np.r_[x.T @ grad_z + precision * w[:-1], grad_z.sum()]
        return nll + 0.5 * (precision * w[:-1] ** 2).sum(), grad

    # run to convergence (~600 iterations here): the test effects and the intercept are nearly collinear, and
    # the 200 iterations of before stopped short by ~100 nats, worth 3e-5 of held-out log loss per impression
    res = so.minimize(objective, np.zeros(n_feat + 1), jac=True, method="L-BFGS-B", options={"maxiter": 5000})
    if not res.success:
        log.warning("additive model: L-BFGS did not converge (%s)", res.message)
    w = res.x

    def predict(frame: pd.DataFrame) -> np.ndarray:
        z = b0 + w[-1] + design(frame, _additive_keys(frame, slots)) @ w[:-1]
        return 1 / (1 + np.exp(-z))

    return predict


def _additive_keys(frame: pd.DataFrame, slots) -> list[list[str]]:
    test = frame["ad_id"].astype(str)
    keys = [("t\x1f" + test).tolist()]
    for s in slots:
        keys.append((s + "\x1f" + test + "\x1f" + frame[s].astype(str)).tolist())
    return keys


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return np.log(p) - np.log1p(-p)


def predict_held_out(combos: pd.DataFrame, folds: np.ndarray, cfg: UpworthyConfig, name: str,
                     elements: pd.DataFrame | None = None) -> dict[str, np.ndarray]:
    """Each model's p_click of every combination, from fits on the other folds (NaN where fold < 0).

    Models: `test_mean` (pooled CTR of the test's training combinations), `additive`
    (fit_additive), `mil` (relate_models.attribution.fit; held-out elements it never saw
    are scored with its content-hash fallback) and, given the element table, `mil_content`
    (fit_mil_content: a held-out headline it never saw is scored from its text). Logs each
    fold's size and timings.
    """
    from relate_models import attribution as attr

    settings = attr.FitSettings(steps=cfg.mil_steps, learning_rate=cfg.mil_learning_rate, l2=cfg.mil_l2,
                                l2_bias=cfg.mil_l2_bias, seed=cfg.seed, log_every=cfg.mil_steps)
    model_cfg = {"embed_dim": cfg.mil_embed_dim, "attention_dim": cfg.mil_embed_dim, "hash_buckets": 1024}
    quiet = get_logger("real.upworthy.mil")
    models = ("test_mean", "additive", "mil") + (("mil_content",) if elements is not None else ())
    pred = {model: np.full(len(combos), np.nan) for model in models}
    for k in range(int(folds.max()) + 1):
        held = folds == k
        train, test = combos[~held], combos[held]
        started = time.monotonic()
        sums = train.groupby("ad_id")[["clicks", "impressions"]].sum()
        pred["test_mean"][held] = (test["ad_id"].map(sums["clicks"]) / test["ad_id"].map(sums["impressions"])).to_numpy()
        pred["additive"][held] = fit_additive(train, cfg)(test)
        seconds = {"additive": time.monotonic() - started}
        scorer, _ = attr.fit(train, settings, model_cfg, log=quiet)
        pred["mil"][held] = scorer.score_frame(test, on_unknown="fallback").p_click
        seconds["mil"] = time.monotonic() - started - sum(seconds.values())
        if elements is not None:
            scorer = fit_mil_content(train, elements, cfg, settings, model_cfg)
            pred["mil_content"][held] = scorer.score_frame(test, on_unknown="fallback").p_click
            seconds["mil_content"] = time.monotonic() - started - sum(seconds.values())
        log.info("attribution %s fold %d/%d: %d held out, %d in training; %s", name, k + 1, int(folds.max()) + 1,
                 int(held.sum()), len(train), ", ".join(f"{m} {s:.1f}s" for m, s in seconds.items()))
    return pred


def fit_mil_content(train: pd.DataFrame, elements: pd.DataFrame, cfg: UpworthyConfig, settings, model_cfg: dict):
    """The content-aware MIL (as train_attribution fits it with `content: true`) on `train`: its scorer.

    Tokenizer: the project's byte-level BPE (relate_models.tokenizer, as train_ctcvr builds the shared
    one) trained on the headlines of `train`'s combinations only, `tokenizer_vocab` types. Its content
    table holds every headline of `elements` (a held-out headline's text is known when it is scored,
    as a new element's is on the platform; rows no training combination uses get no gradient), so a
    headline with no clicks in `train` is scored from its text alone; images have no content rows and
    keep their id-only residual.
    """
    import dataclasses

    from relate_models import attribution as attr
    from relate_models.content_encoder import ContentTable
    from relate_models.tokenizer import train_tokenizer

    titles = elements[elements["kind"] == "title"]
    seen = set(zip(train["ad_id"].astype(str), train["title_id"].astype(str)))
    in_train = [key in seen for key in zip(titles["ad_id"].astype(str), titles["element_id"].astype(str))]
    tokenizer = train_tokenizer(titles.loc[in_train, "text"].tolist(), vocab_size=cfg.tokenizer_vocab)
    table = ContentTable.build(elements, tokenizer, cfg.mil_content_max_tokens, embedding_dim())
    content_settings = dataclasses.replace(settings, l2_residual=cfg.mil_l2_residual, l2_content=cfg.mil_l2_content)
    scorer, _ = attr.fit(train, content_settings, {**model_cfg, "token_vocab": len(tokenizer),
                                                   "content_dim": table.embedding_dim},
                         log=get_logger("real.upworthy.mil"), content=table, tokenizer=tokenizer)
    return scorer


def attribution_check(combos: pd.DataFrame, cfg: UpworthyConfig, elements: pd.DataFrame | None = None) -> dict:
    """Prediction of each combination's CTR from the other arms of its test: per-test mean, additive, MIL
    (and, given the element table, the content-aware MIL).

    Log loss: leave-one-out within each test (loo_folds), on every combination of a test of two
    or more. Rank accuracy: leave-pair-out (pair_folds), over the two arms of one test held out
    together, so neither arm's outcome entered the other's prediction and both share one estimate
    of the test effect. Pairs of leave-one-out predictions would leak: arm A's test effect is
    fitted on arm B and vice versa, so the better arm gets the worse reference (the per-test mean
    then ranks pairs below chance by construction). The per-test mean gives both arms of a pair
    the same value: 0.5 by ties. Rank accuracy is also reported on the held-out pairs with a cold
    headline (one no training combination of its fold shows: only its text can tell it apart).
    """
    combos = combos[combos.groupby("ad_id")["ad_id"].transform("size") >= 2].reset_index(drop=True)
    started = time.monotonic()
    loo = loo_folds(combos)
    loo_pred = predict_held_out(combos, loo, cfg, "leave-one-out", elements)
    loo_s = time.monotonic() - started
    pairs = pair_folds(combos)
    pair_pred = predict_held_out(combos, pairs, cfg, "leave-pair-out", elements)
    pair_s = time.monotonic() - started - loo_s
    imps = combos["impressions"].to_numpy(np.float64)
    out = {
        "protocol": f"log loss: leave-one-out within each test ({int(loo.max()) + 1} fits per model, fold = rank "
                    "in test; every combination is predicted by models that saw every other combination of its "
                    f"test); rank accuracy: leave-pair-out ({int(pairs.max()) + 1} fits per model, fold = rank "
                    "in test // 2, tests of 3+ combinations; the two arms of a pair are held out together, the "
                    "rest of their test is in training)",
        "tests": int(combos["ad_id"].nunique()),
        "combinations": len(combos),
        "impressions": int(imps.sum()),
        "clicks": int(combos["clicks"].sum()),
        "fits_per_model": {"leave_one_out": int(loo.max()) + 1, "leave_pair_out": int(pairs.max()) + 1},
        "seconds": {"leave_one_out": round(loo_s, 1), "leave_pair_out": round(pair_s, 1)},
    }
    return {**out, **score_models(combos, loo_pred, pairs, pair_pred)}


def cold_titles(combos: pd.DataFrame, folds: np.ndarray) -> np.ndarray:
    """Per combination: its headline is shown by no combination outside its own fold (cold in that fold's fit)."""
    key = combos["ad_id"].astype(str) + "\x1f" + combos["title_id"].astype(str)
    folds_of = pd.Series(folds).groupby(key.to_numpy()).nunique()
    return (key.map(folds_of) == 1).to_numpy()


def score_models(combos: pd.DataFrame, loo_pred: dict[str, np.ndarray], pairs: np.ndarray,
                 pair_pred: dict[str, np.ndarray]) -> dict:
    """Per model: leave-one-out log loss (and its difference to the per-test mean, tests as clusters) and
    leave-pair-out rank accuracy on all, significant and cold-headline pairs; and the pair counts."""
    clicks = combos["clicks"].to_numpy(np.float64)
    imps = combos["impressions"].to_numpy(np.float64)
    tests = combos["ad_id"].astype(str).to_numpy()
    in_pair = pairs >= 0
    groups = (tests + "\x1f" + pairs.astype(str))[in_pair]
    observed = (clicks / imps)[in_pair]
    significant = significant_pair(clicks[in_pair], imps[in_pair])
    cold = cold_titles(combos, pairs)[in_pair]

    def cold_pair(i, j) -> bool:
        return bool(cold[i] or cold[j])

    out = {"models": {}}
    for name in loo_pred:
        acc, n_pairs = pairwise_accuracy(groups, observed, pair_pred[name][in_pair])
        acc_sig, n_sig = pairwise_accuracy(groups, observed, pair_pred[name][in_pair], significant)
        acc_cold, n_cold = pairwise_accuracy(groups, observed, pair_pred[name][in_pair], cold_pair)
        difference, se = log_loss_difference(loo_pred[name], loo_pred["test_mean"], clicks, imps, tests)
        out["models"][name] = {
            "log_loss": binomial_nll_per_impression(loo_pred[name], clicks, imps),
            "log_loss_minus_test_mean": difference,
            "log_loss_minus_test_mean_se": se,  # tests as clusters
            "rank_accuracy": acc,
            "rank_accuracy_significant_pairs": acc_sig,
            "rank_accuracy_cold_title_pairs": acc_cold,
        }
    out["pairs"], out["significant_pairs"], out["cold_title_pairs"] = n_pairs, n_sig, n_cold
    if "mil_content" in pair_pred:  # the content's own effect: the two MILs on the same pairs
        out["mil_content_minus_mil"] = {}
        for label, mask in (("rank_accuracy", None), ("rank_accuracy_significant_pairs", significant),
                            ("rank_accuracy_cold_title_pairs", cold_pair)):
            difference, se = paired_accuracy_difference(groups, observed, pair_pred["mil_content"][in_pair],
                                                        pair_pred["mil"][in_pair], lambda g: g.split("\x1f")[0], mask)
            out["mil_content_minus_mil"][label] = {"difference": difference, "se": se}  # tests as clusters
    return out


# ------------------------------------------------------------------------------ text check


def split_tests(test_ids: pd.Series, fraction: float, salt: str) -> pd.Series:
    from relate_models.policy import stable_fraction

    return test_ids.map(lambda t: stable_fraction(salt, str(t)) < fraction)


def _text_frame(stats: pd.DataFrame) -> pd.DataFrame:
    """NgramBaseline / CTCVR feature columns; the test id rides in `vertical` (a per-test effect in training,
    unknown - one constant - at prediction, which pairwise comparisons inside a test ignore)."""
    return pd.DataFrame({
        "ad_text": stats["ad_text"].to_numpy(), "keyword": "", "vertical": stats["ad_id"].to_numpy(),
        "user_segment": "", "position": 1, "query": "",
    })


def fit_bow(train: pd.DataFrame, val: pd.DataFrame, cfg: UpworthyConfig) -> tuple[object, float, dict]:
    """Bag-of-words (hashed word 1-2-grams) logistic regression with a per-test effect, on click counts.

    Features are relate_models.ngram_baseline's; each row enters twice (clicked / not clicked)
    weighted by its counts (scaled to mean 1 per row, so C means the same at any data size).
    C is picked on the validation tests' pairwise accuracy.
    """
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression

    from relate_models.ngram_baseline import NgramBaseline

    feats = NgramBaseline(n_features=2**18)
    x = feats.features(_text_frame(train))
    x2 = sp.vstack([x, x], format="csr")
    y2 = np.r_[np.ones(len(train)), np.zeros(len(train))]
    w2 = np.r_[train["clicks"].to_numpy(np.float64), (train["impressions"] - train["clicks"]).to_numpy(np.float64)]
    w2 = w2 / w2.mean()
    xv = feats.features(_text_frame(val))
    scores, best = {}, None
    for c in cfg.bow_c_grid:
        model = LogisticRegression(C=c, max_iter=300, solver="lbfgs", random_state=cfg.seed).fit(x2, y2, sample_weight=w2)
        acc, _ = pairwise_accuracy(val["ad_id"].to_numpy(), val["ctr"].to_numpy(), model.decision_function(xv))
        scores[str(c)] = acc
        if best is None or acc > best[0]:
            best = (acc, c, model)
    _, c, model = best

    def predict(frame: pd.DataFrame) -> np.ndarray:
        return model.decision_function(feats.features(_text_frame(frame)))

    return predict, c, scores


def fit_ctr_tower(train: pd.DataFrame, val: pd.DataFrame, cfg: UpworthyConfig):
    """The CTCVR model's CTR tower (relate_models.ctcvr) fitted on headline click counts.

    Binomial loss on (clicks, impressions) per headline with the test's pooled CTR as a fixed
    logit offset; the pCVR tower is unused (no conversions). Tokenizer: the project's byte-level BPE trained on the training headlines. The epoch is
    picked on the validation tests' pairwise accuracy.
    """
    import torch

    from relate_models import ctcvr
    from relate_models.tokenizer import train_tokenizer

    torch.manual_seed(cfg.seed)
    tokenizer = train_tokenizer(train["ad_text"].tolist(), vocab_size=cfg.tokenizer_vocab)
    config = ctcvr.CTCVRConfig(vocab_size=len(tokenizer), max_tokens=40, bos_id=tokenizer.bos_token_id,
                               eos_id=tokenizer.eos_token_id)  # no context vocabularies: every context is unknown
    encoder = ctcvr.FeatureEncoder(config, tokenizer)
    model = ctcvr.CTCVRModel(config)
    train_batch, val_batch = _tower_batch(encoder, train), _tower_batch(encoder, val)
    clicks = torch.tensor(train["clicks"].to_numpy(np.float32))
    imps = torch.tensor(train["impressions"].to_numpy(np.float32))
    # the test effect as a fixed offset (logit of the test's pooled CTR): the text features then
    # only have to explain how a headline moves CTR inside its test, which is what is asked of them
    pooled = train.groupby("ad_id")[["clicks", "impressions"]].transform("sum")
    offset = torch.tensor(_logit(((pooled["clicks"] + 0.5) / (pooled["impressions"] + 1.0)).to_numpy()),
                          dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.text_learning_rate, weight_decay=cfg.text_weight_decay)
    generator = torch.Generator().manual_seed(cfg.seed)
    best, curve = None, []
    for epoch in range(1, cfg.text_epochs + 1):
        total = _ctr_tower_epoch(model, optimizer, generator, train_batch, clicks, imps, offset, cfg.text_batch_size)
        model.eval()
        with torch.no_grad():
            val_logit = model(val_batch)[0].numpy()
        acc, _ = pairwise_accuracy(val["ad_id"].to_numpy(), val["ctr"].to_numpy(), val_logit)
        curve.append({"epoch": epoch, "train_nll": total / len(train), "val_pairwise_accuracy": acc})
        log.info("ctr tower epoch %d/%d: train nll %.5f, val pairwise acc %.4f", epoch, cfg.text_epochs,
                 total / len(train), acc)
        if best is None or acc > best[0]:
            best = (acc, epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[2])
    model.eval()

    def predict(frame: pd.DataFrame) -> np.ndarray:
        with torch.no_grad():
            return model(_tower_batch(encoder, frame))[0].numpy()

    return predict, best[1], curve


def _tower_batch(encoder: FeatureEncoder, frame: pd.DataFrame) -> dict:
    """The CTCVR encoder's inputs for headline rows (see `_text_frame`)."""
    f = _text_frame(frame)
    return encoder.encode(f["ad_text"].tolist(), f[["keyword", "vertical", "user_segment", "position"]]
                          .to_dict("records"))


def _ctr_tower_epoch(model: CTCVRModel, optimizer: torch.optim.Optimizer, generator: torch.Generator, train_batch: dict,
                     clicks: torch.Tensor, imps: torch.Tensor, offset: torch.Tensor, batch_size: int) -> float:
    """One shuffled pass of the binomial loss (per impression of each batch); return the
    row-weighted sum of the batch losses."""
    import torch
    import torch.nn.functional as F

    model.train()
    order = torch.randperm(len(clicks), generator=generator)
    total = 0.0
    for s in range(0, len(order), batch_size):
        rows = order[s : s + batch_size]
        logit, _ = model({k: v[rows] for k, v in train_batch.items()})
        logit = logit + offset[rows]
        loss = (clicks[rows] * F.softplus(-logit) + (imps[rows] - clicks[rows]) * F.softplus(logit)).sum()
        loss = loss / imps[rows].sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(rows)
    return total


def text_check(stats: pd.DataFrame, cfg: UpworthyConfig) -> dict:
    """Which headline of a test wins, from the headline text alone; tests split by id."""
    stats = stats[stats.groupby("ad_id")["ad_id"].transform("size") >= 2].reset_index(drop=True)
    is_test = split_tests(stats["ad_id"], cfg.text_test_fraction, "upworthy-text-test")
    train_all, test = stats[~is_test], stats[is_test].reset_index(drop=True)
    is_val = split_tests(train_all["ad_id"], cfg.text_val_fraction, "upworthy-text-val")
    train, val = train_all[~is_val].reset_index(drop=True), train_all[is_val].reset_index(drop=True)
    log.info("text check: %d/%d/%d headlines in %d/%d/%d train/val/test tests", len(train), len(val), len(test),
             train["ad_id"].nunique(), val["ad_id"].nunique(), test["ad_id"].nunique())
    bow_predict, bow_c, bow_grid = fit_bow(train, val, cfg)
    tower_predict, tower_epoch, tower_curve = fit_ctr_tower(train, val, cfg)
    groups, observed = test["ad_id"].to_numpy(), test["ctr"].to_numpy()
    significant = significant_pair(test["clicks"].to_numpy(np.float64), test["impressions"].to_numpy(np.float64))
    out = {"train_headlines": len(train), "val_headlines": len(val), "test_headlines": len(test),
           "test_tests": int(test["ad_id"].nunique()), "models": {}}
    rng = np.random.default_rng(cfg.seed)
    predictions = {
        "ctcvr_ctr_tower": tower_predict(test),
        "bag_of_words_logreg": bow_predict(test),
        "length_longer_wins": test["ad_text"].str.len().to_numpy(np.float64),
        "random": rng.random(len(test)),
    }
    for name, p in predictions.items():
        acc, pairs = pairwise_accuracy(groups, observed, p)
        acc_sig, pairs_sig = pairwise_accuracy(groups, observed, p, significant)
        out["models"][name] = {"pairwise_accuracy": acc, "pairwise_accuracy_significant_pairs": acc_sig}
    out["pairs"], out["significant_pairs"] = pairs, pairs_sig
    out["bow_c"], out["bow_val_accuracy_by_c"] = bow_c, bow_grid
    out["ctr_tower_epoch"], out["ctr_tower_curve"] = tower_epoch, tower_curve
    return out


# ------------------------------------------------------------------------------ wiring


def adapt(cfg: UpworthyConfig, csv: Path) -> tuple[dict[str, int], dict[str, pd.DataFrame], dict]:
    """Land the CSV, ingest it with Spark, land the element table of its headlines (land_elements), read
    back and validate the curated tables (cwd = the work dir).

    Returns the ingest_quality counts, the curated and element tables and the GX report.
    """
    land(csv, cfg.max_tests, cfg.seed)
    quality = ingest(cfg)
    counts = {c: quality[c] for c in ingest_reports.QUALITY_COLUMNS}
    tables = read_curated()
    land_elements(tables["text_stats"], embedding_dim())
    tables.update(read_elements(paths.partitions(paths.content_table("elements"))))
    report = validate_curated(tables)
    atomic.write_json(paths.METRICS / "upworthy_adapter.json", {
        **counts,
        "validation": {k: {"success": v["success"], "failed": len(v["failed"])} for k, v in report["suites"].items()},
        "partitions": int(tables["combo_stats"]["dt"].nunique()),
        "combinations": len(tables["combo_stats"]),
        "headlines": len(tables["text_stats"]),
        "element_table": element_counts(tables),
    })
    return counts, tables, report


@contextlib.contextmanager
def model_threads(threads: int):
    """Torch and BLAS (threadpoolctl) limited to `threads` inside the block (0: left as they are).

    Why BLAS too: scipy's L-BFGS calls OpenBLAS on tiny vectors; with its default 2 threads on a
    loaded 2-core machine one additive fit took 1-33 s instead of 0.5 s (spinning threads).
    """
    if not threads:
        yield
        return
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def working_dir(path: Path):
    path.mkdir(parents=True, exist_ok=True)
    with contextlib.chdir(path):
        yield


def main(argv: list[str] | None = None) -> int:
    return run_stage("relate_real.upworthy", __doc__, run, argv, ds=None, add_arguments=add_arguments)


def add_arguments(parser) -> None:
    parser.set_defaults(params="configs/real_corpus.yaml")  # the real-corpus params, not params.yaml
    parser.add_argument("--csv", help="the archive's CSV (default: upworthy.csv of the params)")
    parser.add_argument("--workdir", help="where data/curated is written (default: upworthy.workdir)")


def run(ctx: StageContext) -> int:
    """Land, ingest and validate the archive; 1 when a GX suite failed."""
    cfg = ctx.config(UpworthyConfig, "upworthy")
    csv = Path(ctx.args.csv or cfg.csv).resolve()
    if not csv.is_file():
        raise MissingArtifact(f"upworthy CSV not found: {csv}")
    with working_dir(Path(ctx.args.workdir or cfg.workdir)):
        counts, tables, report = adapt(cfg, csv)
    log.info("upworthy: %s", json.dumps(counts))
    if not report["success"]:
        for suite in report["suites"].values():
            for f in suite["failed"]:
                log.error("FAILED %s.%s %s: %s", f["suite"], f["expectation"], f["columns"], f["observed"])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
