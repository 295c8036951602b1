"""Stage train_ctcvr: the ESMM CTCVR reward model and the shared tokenizer, from curated logs.

Reads only data/curated/labeled_impressions (search placement; with feed_conversions also the
feed's clicked rows, for the conversion effects both placements share). The eval day is the last
day whose labels are complete; the model trains on the `train_days` days before it and
is scored on the eval day next to a hashed n-gram logistic-regression baseline.

Warm (`training.mode: warm`, pipelines/warm_start.py): the champion's model and tokenizer
continue on the window's days after the last one they trained on, for `warm_epochs` epochs;
models/tokenizer/ is then the champion's tokenizer, so the policy keeps reading the same ids.
Features (earlier exposures), the eval day and the baseline (fitted on the whole window) are
as in a full run, so the held-out metrics of both modes compare. New values of a categorical
field (an ad, a keyword, a highlight the market launched) get rows of their own, starting as the
unknown row (CTCVRScorer.grown). The run rebuilds in full when the champion cannot represent the
new days: built with other model params, too many words out of its tokenizer's vocabulary, or a
new user segment (the segment x token cross cannot grow).

Writes models/tokenizer/, models/ctcvr/ (model.safetensors, config.json, tokenizer/,
heldout_predictions.parquet, training_curve.json, lineage.json) and metrics/ctcvr_train.json.

    python -m pipelines.train_ctcvr [--ds YYYY-MM-DD] [--params params.yaml]
"""
from __future__ import annotations

import dataclasses
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import torch

from plumbing import atomic
from plumbing.cli import StageContext, run_stage
from plumbing.config import require
from plumbing.dates import shift_ds
from plumbing.errors import DataError
from plumbing.logs import get_logger
from plumbing.paths import CTCVR_DIR, METRICS, TOKENIZER_DIR, curated, partition, partitions
from pipelines.warm_start import Start, plan, write_lineage
from plumbing.metrics import auc, expected_calibration_error, log_loss
from plumbing.runtime import limit_torch_threads
from relate_models import ctcvr
from relate_models.ngram_baseline import NgramBaseline
from relate_models.tokenizer import save_tokenizer, train_tokenizer

log = get_logger(__name__)

SECTION = "train_ctcvr"
FIXED_VOCABULARIES = ("user_segment",)  # the segment x token cross lays its rows out by segment: cannot grow warm
COLUMNS = ["impression_id", "ad_text", "keyword", "vertical", "user_segment", "position", "clicked", "converted"]
EXPOSURE_COLUMNS = ["ts", "user_id", "text_id"]  # earlier showings of a text to a user, from the logs
OPTIONAL_COLUMNS = ["query"]  # query/text word overlap when logged; the keyword stands in otherwise
PREDICTIONS = CTCVR_DIR / "heldout_predictions.parquet"
CURVE = CTCVR_DIR / "training_curve.json"
TRAIN_METRICS = METRICS / "ctcvr_train.json"


@dataclass
class TrainCTCVRConfig:
    seed: int
    train_days: int
    val_fraction: float  # of the training window, for per-epoch val metrics and best-epoch choice
    vocab_size: int
    tokenizer_min_frequency: int
    max_tokens: int
    bigram_buckets: int
    max_position: int
    embed_dim: int
    context_dim: int
    hidden_dim: int
    dropout: float
    wide: bool  # linear part next to each MLP tower (wide & deep)
    id_fields: list[str]  # columns with a learned offset
    id_dropout: float  # share of training rows scored as "id unknown" (the GRPO reward has no ad id)
    max_exposures: int  # earlier showings of the text to the user above this share one offset; 0 = off
    exposure_history_days: int  # days before the training window counted into earlier showings
    segment_token_cross: bool  # pCTR wide weight per (user segment, token)
    feed_conversions: bool  # clicked feed rows of the window also train the shared conversion effects
    feed_fields: list[str]  # feed-only conversion offsets
    epochs: int
    warm_epochs: int  # epochs over the new days when continuing from the champion's model
    ema_decay: float  # validate and keep a moving average of the weights; 0 = the last step's
    batch_size: int
    learning_rate: float
    warm_learning_rate: float  # AdamW learning rate when continuing from the champion's model
    weight_decay: float
    torch_threads: int  # torch intra-op threads; 0 = torch's default
    baseline_n_features: int
    baseline_C: float
    baseline_max_iter: int
    ece_bins: int

    def __post_init__(self):
        require(self.train_days >= 1, f"{SECTION}.train_days", f"must be >= 1, got {self.train_days}")
        require(0 < self.val_fraction < 0.5, f"{SECTION}.val_fraction", f"must be in (0, 0.5), got {self.val_fraction}")
        require(self.vocab_size >= 300, f"{SECTION}.vocab_size", f"must be >= 300 (256 bytes + specials), got {self.vocab_size}")
        require(self.tokenizer_min_frequency >= 1, f"{SECTION}.tokenizer_min_frequency", "must be >= 1")
        for name in ("max_tokens", "bigram_buckets", "max_position", "embed_dim", "context_dim", "epochs", "warm_epochs", "batch_size",
                     "baseline_n_features", "baseline_max_iter", "ece_bins"):
            require(getattr(self, name) >= 1, f"{SECTION}.{name}", f"must be >= 1, got {getattr(self, name)}")
        require(self.hidden_dim >= 2, f"{SECTION}.hidden_dim", f"must be >= 2, got {self.hidden_dim}")
        require(0 <= self.dropout < 1, f"{SECTION}.dropout", f"must be in [0, 1), got {self.dropout}")
        require(0 <= self.ema_decay < 1, f"{SECTION}.ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        for name in ("learning_rate", "warm_learning_rate"):
            require(0 < getattr(self, name) <= 10, f"{SECTION}.{name}", f"must be in (0, 10], got {getattr(self, name)}")
        require(self.torch_threads >= 0, f"{SECTION}.torch_threads", f"must be >= 0, got {self.torch_threads}")
        require(self.weight_decay >= 0, f"{SECTION}.weight_decay", f"must be >= 0, got {self.weight_decay}")
        require(isinstance(self.id_fields, list) and all(isinstance(f, str) and f for f in self.id_fields),
                f"{SECTION}.id_fields", f"must be a list of column names, got {self.id_fields!r}")
        clash = sorted(set(self.id_fields) & set(COLUMNS + EXPOSURE_COLUMNS + OPTIONAL_COLUMNS + ["placement"]))
        require(not clash, f"{SECTION}.id_fields", f"must name id columns, not {clash}")
        require(len(set(self.id_fields)) == len(self.id_fields), f"{SECTION}.id_fields", "has duplicates")
        require(isinstance(self.feed_conversions, bool), f"{SECTION}.feed_conversions",
                f"must be true or false, got {self.feed_conversions!r}")
        require(isinstance(self.feed_fields, list) and all(isinstance(f, str) and f for f in self.feed_fields),
                f"{SECTION}.feed_fields", f"must be a list of column names, got {self.feed_fields!r}")
        clash = sorted(set(self.feed_fields) & set(COLUMNS + self.id_fields + ["placement"]))
        require(not clash, f"{SECTION}.feed_fields", f"must name feed-only columns, not {clash}")
        require(not self.segment_token_cross or self.wide, f"{SECTION}.segment_token_cross",
                "needs wide: true (the cross is a wide weight)")
        require(not self.feed_conversions or self.wide, f"{SECTION}.feed_conversions",
                "needs wide: true (the feed head shares the wide CVR weights)")
        require(0 <= self.id_dropout < 1, f"{SECTION}.id_dropout", f"must be in [0, 1), got {self.id_dropout}")
        require(self.max_exposures >= 0, f"{SECTION}.max_exposures", f"must be >= 0, got {self.max_exposures}")
        require(self.exposure_history_days >= 0, f"{SECTION}.exposure_history_days",
                f"must be >= 0, got {self.exposure_history_days}")
        require(self.baseline_C > 0, f"{SECTION}.baseline_C", f"must be > 0, got {self.baseline_C}")


# ------------------------------------------------------------------------------ window
def label_status(days: list[str]) -> dict[str, tuple[int, bool]]:
    """dt -> (rows, all labels complete), reading only the label_complete column."""
    table_dir = curated("labeled_impressions")
    status = {}
    for ds in days:
        try:
            flags = pq.read_table(partition(table_dir, ds), columns=["label_complete"]).column(0).to_numpy(zero_copy_only=False)
        except (KeyError, ValueError, OSError) as err:
            raise DataError(f"labeled_impressions dt={ds}: cannot read label_complete ({err})") from None
        status[ds] = (len(flags), bool(len(flags)) and bool(np.all(flags == True)))  # noqa: E712 (nulls are incomplete)
    return status


def choose_window(status: dict[str, tuple[int, bool]], train_days: int) -> tuple[list[str], str]:
    """Eval day = the last day with complete labels; train on the up-to `train_days` days before it."""
    complete = [ds for ds, (rows, done) in status.items() if rows and done]
    if not complete:
        raise DataError("labeled_impressions: no partition has complete labels yet (label_complete is false everywhere)")
    eval_day = max(complete)
    wanted = [shift_ds(eval_day, -k) for k in range(train_days, 0, -1)]
    train = [ds for ds in wanted if ds in status]
    if not train:
        raise DataError(f"labeled_impressions: no partitions in the training window {wanted[0]}..{wanted[-1]} before eval day {eval_day}")
    empty = [ds for ds in train if status[ds][0] == 0]
    if empty:
        raise DataError(f"labeled_impressions: empty partition(s) in the training window: {', '.join(empty)}")
    if len(train) < train_days:
        log.warning("only %d of %d training days exist before eval day %s: %s", len(train), train_days, eval_day, train)
    return train, eval_day


def load_search_impressions(days: list[str], extra_columns: list[str] = ()) -> pd.DataFrame:
    """Search-placement rows of labeled_impressions for `days` (COLUMNS + extra_columns), with a dt column."""
    table_dir = curated("labeled_impressions")
    frames = []
    for ds in days:
        path = partition(table_dir, ds)
        files = sorted(f for f in path.glob("*.parquet") if not f.name.startswith((".", "_")))
        if not files:
            raise DataError(f"labeled_impressions dt={ds}: empty partition (no parquet files in {path})")
        schema_names = set(pq.read_schema(files[0]).names)
        missing = [c for c in COLUMNS + list(extra_columns) + ["placement"] if c not in schema_names]
        if missing:
            raise DataError(f"labeled_impressions dt={ds}: missing column(s) {', '.join(missing)}")
        columns = COLUMNS + list(extra_columns) + [c for c in OPTIONAL_COLUMNS if c in schema_names]
        table = pq.read_table(path, columns=columns, filters=[("placement", "=", "search")])
        frame = table.to_pandas()
        if frame.empty:
            raise DataError(f"labeled_impressions dt={ds}: no search-placement impressions")
        frames.append(frame.assign(dt=ds))
    frame = pd.concat(frames, ignore_index=True)
    duplicated = frame["impression_id"].duplicated()
    if duplicated.any():  # the contract says one row per impression; count and keep the first
        log.warning("dropping %d duplicate impression_id rows in %s", int(duplicated.sum()), ", ".join(days))
        frame = frame[~duplicated].reset_index(drop=True)
    frame["clicked"] = frame["clicked"].fillna(0).astype(np.int64).clip(0, 1)
    # a conversion implies a click; the ESMM target is clicked AND converted
    frame["converted"] = (frame["converted"].fillna(0).astype(np.int64).clip(0, 1) * frame["clicked"]).astype(np.int64)
    return frame


def load_feed_clicks(days: list[str], columns: list[str]) -> pd.DataFrame:
    """Clicked feed-placement rows of labeled_impressions for `days`: `columns` + converted + dt."""
    table_dir = curated("labeled_impressions")
    wanted = ["impression_id", "converted", *columns]
    frames = []
    for ds in days:
        path = partition(table_dir, ds)
        files = sorted(f for f in path.glob("*.parquet") if not f.name.startswith((".", "_")))
        missing = [c for c in wanted if files and c not in pq.read_schema(files[0]).names]
        if missing:
            raise DataError(f"labeled_impressions dt={ds}: missing column(s) {', '.join(missing)} (feed_conversions)")
        table = pq.read_table(path, columns=wanted, filters=[("placement", "=", "feed"), ("clicked", "=", 1)])
        frames.append(table.to_pandas().assign(dt=ds))
    frame = pd.concat(frames, ignore_index=True).drop_duplicates("impression_id").reset_index(drop=True)
    frame["converted"] = frame["converted"].fillna(0).astype(np.int64).clip(0, 1)
    return frame


def load_window(cfg: TrainCTCVRConfig, all_days: list[str], train_days: list[str], eval_day: str
                ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, eval) frames; with max_exposures, each row's earlier showings of its text to its user,
    counted over the `exposure_history_days` before the window too (the logs a platform has)."""
    extra = list(cfg.id_fields) + (EXPOSURE_COLUMNS if cfg.max_exposures else [])
    history = []
    if cfg.max_exposures:
        first = shift_ds(train_days[0], -cfg.exposure_history_days)
        history = [ds for ds in all_days if first <= ds < train_days[0]]
    frame = load_search_impressions(history + train_days + [eval_day], extra)
    if cfg.max_exposures:
        frame[ctcvr.EXPOSURES] = ctcvr.prior_exposures(frame["user_id"].astype(str).to_numpy(),
                                                       frame["text_id"].astype(str).to_numpy(), frame["ts"].to_numpy())
    train = frame[frame["dt"].isin(train_days)].reset_index(drop=True)
    return train, frame[frame["dt"] == eval_day].reset_index(drop=True)


def check_labels(frame: pd.DataFrame, what: str) -> None:
    if int(frame["clicked"].sum()) == 0:
        raise DataError(f"{what}: no clicks in {len(frame)} search impressions; cannot train or score CTR")
    if int(frame["converted"].sum()) == 0:
        raise DataError(f"{what}: no conversions in {len(frame)} search impressions; cannot train or score CVR")


def vocab(frame: pd.DataFrame, name: str) -> list[str]:
    return sorted(v for v in frame[name].dropna().astype(str).unique() if v)


# ----------------------------------------------------------------------------- metrics
def heldout_metrics(frame: pd.DataFrame, bins: int) -> dict:
    """Learned metrics on the eval day from the predictions frame (labels from curated logs)."""
    clicked = frame["clicked"].to_numpy()
    ctcvr_label = clicked * frame["converted"].to_numpy()
    out = {
        "auc_ctr": auc(clicked, frame["p_ctr"]),
        "auc_ctcvr": auc(ctcvr_label, frame["p_ctcvr"]),
        "logloss_ctr": log_loss(clicked, frame["p_ctr"]),
        "logloss_ctcvr": log_loss(ctcvr_label, frame["p_ctcvr"]),
        "ece_ctr": expected_calibration_error(clicked, frame["p_ctr"], bins),
        "ece_ctcvr": expected_calibration_error(ctcvr_label, frame["p_ctcvr"], bins),
        "baseline_auc_ctr": auc(clicked, frame["baseline_p_ctr"]),
        "baseline_auc_ctcvr": auc(ctcvr_label, frame["baseline_p_ctcvr"]),
        "baseline_logloss_ctcvr": log_loss(ctcvr_label, frame["baseline_p_ctcvr"]),
        "baseline_ece_ctcvr": expected_calibration_error(ctcvr_label, frame["baseline_p_ctcvr"], bins),
        "mean_p_ctcvr": float(frame["p_ctcvr"].mean()),
        "observed_ctcvr": float(ctcvr_label.mean()),
    }
    out["beats_baseline"] = bool(out["auc_ctcvr"] > out["baseline_auc_ctcvr"])
    return out


# -------------------------------------------------------------------------------- stage
def main(argv: list[str] | None = None) -> int:
    return run_stage(SECTION, __doc__, run, argv)


def run(ctx: StageContext) -> None:
    """Train on the labeled impressions up to the run's day (default: all)."""
    train(ctx.config(TrainCTCVRConfig), ctx.ds, ctx.params)


def train(cfg: TrainCTCVRConfig, ds: str | None, params: Path) -> dict:
    """Fit the CTCVR model and its tokenizer (or continue the champion's), score the eval day next to
    the baseline, write all outputs."""
    started = time.monotonic()
    limit_torch_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)

    days, train_days, eval_day = choose_days(cfg, ds)
    window, eval_frame = load_window(cfg, days, train_days, eval_day)
    feed_window = load_feed_clicks(train_days, [*ctcvr.FEED_SHARED, *cfg.id_fields, *cfg.feed_fields]) \
        if cfg.feed_conversions else None
    check_labels(window, f"training window {train_days[0]}..{train_days[-1]}")
    check_labels(eval_frame, f"eval day {eval_day}")
    start, champion, grown = plan_start(cfg, params, window, feed_window, train_days)
    trained_days = start.new_days(train_days)
    train_frame = window[window["dt"].isin(trained_days)].reset_index(drop=True)
    feed_frame = feed_window[feed_window["dt"].isin(trained_days)].reset_index(drop=True) \
        if feed_window is not None else None
    if feed_frame is not None:
        log.info("feed: %d clicks, %d conversions", len(feed_frame), int(feed_frame["converted"].sum()))
    log.info("%s: train on %d day(s), %d impressions, %d clicks, %d conversions; eval: %d impressions", start.mode,
             len(trained_days), len(train_frame), train_frame["clicked"].sum(), train_frame["converted"].sum(),
             len(eval_frame))

    if champion is None:
        tokenizer = train_tokenizer(window["ad_text"].dropna().astype(str), cfg.vocab_size, cfg.tokenizer_min_frequency)
        log.info("tokenizer: %d tokens from %d distinct texts", len(tokenizer), window["ad_text"].nunique())
        encoder = ctcvr.FeatureEncoder(model_config(cfg, tokenizer, window, feed_window), tokenizer)
    else:
        tokenizer, encoder = champion.tokenizer, champion.encoder  # the champion's ids and vocabularies
    result, fit_part, val_part = fit_model(cfg, encoder, train_frame, feed_frame, champion)
    model_seconds = time.monotonic() - started

    predictions, baseline_seconds = predict_eval_day(cfg, result.model, encoder, window, eval_frame, eval_day)
    metrics = {
        "eval_day": eval_day,
        "train_days": train_days,  # the window the model covers; a warm run trained on training.trained_days of it
        "n_train": int(len(fit_part)),
        "n_val": int(len(val_part)),
        "n_eval": int(len(eval_frame)),
        "train_clicks": int(train_frame["clicked"].sum()),
        "train_conversions": int(train_frame["converted"].sum()),
        "best_epoch": result.best_epoch,
        "model_train_seconds": round(model_seconds, 1),
        "baseline_train_seconds": round(baseline_seconds, 1),
        "n_parameters": int(sum(p.numel() for p in result.model.parameters())),
        "training": {"mode": start.mode, "reason": start.reason, "continued_from": start.version,
                     "trained_days": trained_days, "grown_vocabularies": {k: len(v) for k, v in grown.items()}},
        **heldout_metrics(predictions, cfg.ece_bins),
    }
    save_outputs(result, tokenizer, predictions, metrics, start.lineage(train_days[-1]))
    return metrics


def plan_start(cfg: TrainCTCVRConfig, params: Path, window: pd.DataFrame, feed_window: pd.DataFrame | None,
               train_days: list[str]) -> tuple[Start, ctcvr.CTCVRScorer | None, dict[str, list[str]]]:
    """(how this run trains, the champion's scorer to continue from: None for a full run, the new
    values its vocabularies grew by)."""
    start = plan(SECTION, "ctcvr", params, through=train_days[-1])
    if not start.warm:
        return start, None, {}
    champion = ctcvr.CTCVRScorer.load(start.source)
    new_days = start.new_days(train_days)
    frame = window[window["dt"].isin(new_days)]
    feed = feed_window[feed_window["dt"].isin(new_days)] if feed_window is not None else None
    trained = window.loc[~window["dt"].isin(new_days), "ad_text"].dropna().astype(str).unique()
    start = check_champion(cfg, start, champion, frame, feed, trained)
    if not start.warm:
        return start, None, {}
    unseen = unseen_values(cfg, champion, frame, feed)
    if unseen:
        log.info("warm: new values get rows of their own (starting as the unknown row): %s",
                 ", ".join(f"{name} +{len(values)}" for name, values in unseen.items()))
        champion = champion.grown(unseen)
    return start, champion, unseen


def unseen_values(cfg: TrainCTCVRConfig, champion: ctcvr.CTCVRScorer, frame: pd.DataFrame,
                  feed: pd.DataFrame | None) -> dict[str, list[str]]:
    """field -> the new days' values the champion's vocabulary lacks (fields that can grow)."""
    fields = [(name, frame) for name in (*ctcvr.CONTEXT_FIELDS, *cfg.id_fields) if name not in FIXED_VOCABULARIES]
    fields += [(name, feed) for name in champion.config.feed_fields]
    out = {}
    for name, rows in fields:
        known = set(champion.config.vocabs.get(name, []))
        new = [v for v in vocab(rows, name) if v not in known] if rows is not None else []
        if new:
            out[name] = new
    return out


def check_champion(cfg: TrainCTCVRConfig, start: Start, champion: ctcvr.CTCVRScorer, frame: pd.DataFrame,
                   feed: pd.DataFrame | None, trained_texts) -> Start:
    """`start`, or a full retrain when the champion cannot continue on the new days' rows (`frame`, `feed`;
    `trained_texts`: the ad texts of the window's days it trained on)."""
    wanted = model_config(cfg, champion.tokenizer, frame, feed)
    changed = [f"{k} {v!r} -> {getattr(wanted, k)!r}" for k, v in dataclasses.asdict(champion.config).items()
               if k != "vocabs" and getattr(wanted, k) != v]
    if changed:
        return start.full(f"the champion's model was built with other {SECTION} params: {', '.join(changed)}")
    if len(frame) and (int(frame["clicked"].sum()) == 0 or int(frame["converted"].sum()) == 0):
        # continuing on days without a conversion would only pull every pCVR down
        return start.full(f"the new days' {len(frame)} search impressions hold no clicks or no conversions")
    start = start.check_vocabulary(champion.tokenizer, frame["ad_text"].dropna().astype(str).unique(), trained_texts)
    for name in FIXED_VOCABULARIES:  # every other field's new values get rows of their own (unseen_values)
        start = start.check_known(f"{name} values", champion.config.vocabs.get(name, []), vocab(frame, name))
    return start


def choose_days(cfg: TrainCTCVRConfig, ds: str | None) -> tuple[list[str], list[str], str]:
    """(every labeled day up to ds, the training days, the eval day)."""
    days = partitions(curated("labeled_impressions"))
    if ds is not None:
        days = [d for d in days if d <= ds]  # a run reads nothing newer than its ds
    if not days:
        raise DataError(f"no labeled_impressions partitions under {curated('labeled_impressions')}" + (f" up to {ds}" if ds else ""))
    train_days, eval_day = choose_window(label_status(days), cfg.train_days)
    log.info("eval day %s (last with complete labels); training days %s..%s", eval_day, train_days[0], train_days[-1])
    return days, train_days, eval_day


def model_config(cfg: TrainCTCVRConfig, tokenizer, train_frame: pd.DataFrame,
                 feed_frame: pd.DataFrame | None) -> ctcvr.CTCVRConfig:
    """The model's shape: the stage config plus the vocabularies seen in the training window."""
    feed_vocabs = {name: vocab(feed_frame, name) for name in cfg.feed_fields} if cfg.feed_conversions else {}
    return ctcvr.CTCVRConfig(
        vocab_size=len(tokenizer),
        vocabs={**{name: vocab(train_frame, name) for name in (*ctcvr.CONTEXT_FIELDS, *cfg.id_fields)}, **feed_vocabs},
        id_fields=list(cfg.id_fields), max_exposures=cfg.max_exposures,
        segment_token_cross=cfg.segment_token_cross, feed_conversions=cfg.feed_conversions,
        feed_fields=list(cfg.feed_fields) if cfg.feed_conversions else [],
        max_tokens=cfg.max_tokens, bigram_buckets=cfg.bigram_buckets, max_position=cfg.max_position,
        embed_dim=cfg.embed_dim, context_dim=cfg.context_dim, hidden_dim=cfg.hidden_dim, dropout=cfg.dropout, wide=cfg.wide,
        bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id,
    )


def fit_model(cfg: TrainCTCVRConfig, encoder: ctcvr.FeatureEncoder, train_frame: pd.DataFrame,
              feed_frame: pd.DataFrame | None, champion: ctcvr.CTCVRScorer | None = None
              ) -> tuple[ctcvr.FitResult, pd.DataFrame, pd.DataFrame]:
    """Fit on `train_frame` less a random validation share; return (result, fit rows, validation rows).

    With `champion` (a warm start) training continues from its weights for `warm_epochs`."""
    feed = ctcvr.build_feed_clicks(encoder, feed_frame) if cfg.feed_conversions else None
    rng = np.random.default_rng(cfg.seed)
    is_val = rng.random(len(train_frame)) < cfg.val_fraction
    fit_part, val_part = train_frame[~is_val].reset_index(drop=True), train_frame[is_val].reset_index(drop=True)
    check_labels(fit_part, "training split")
    # a warm start restarts AdamW's moments: no optimizer state is published with the champion, and
    # moments from its last steps (other data) would not fit the new days' gradients anyway
    result = ctcvr.fit(
        encoder.config, encoder, ctcvr.build_train_data(encoder, fit_part), ctcvr.build_train_data(encoder, val_part),
        epochs=cfg.epochs if champion is None else cfg.warm_epochs, batch_size=cfg.batch_size,
        lr=cfg.learning_rate if champion is None else cfg.warm_learning_rate,
        weight_decay=cfg.weight_decay, seed=cfg.seed, id_dropout=cfg.id_dropout, ema_decay=cfg.ema_decay, feed=feed,
        init=champion.model if champion is not None else None, log=log.info,
    )
    return result, fit_part, val_part


def predict_eval_day(cfg: TrainCTCVRConfig, model, encoder: ctcvr.FeatureEncoder, train_frame: pd.DataFrame,
                     eval_frame: pd.DataFrame, eval_day: str) -> tuple[pd.DataFrame, float]:
    """(the eval day's predictions of the model and of the n-gram baseline, with labels; the baseline's
    fit seconds). The baseline is fitted here on `train_frame`: the whole window in both modes, so
    its metrics (the model's yardstick) do not change with the mode."""
    pred = ctcvr.predict(model, encoder, ctcvr.build_train_data(encoder, eval_frame))
    baseline_start = time.monotonic()
    baseline = NgramBaseline(n_features=cfg.baseline_n_features, C=cfg.baseline_C, max_iter=cfg.baseline_max_iter)
    baseline.fit(train_frame, {"ctr": train_frame["clicked"].to_numpy(),
                               "ctcvr": (train_frame["clicked"] * train_frame["converted"]).to_numpy()}, seed=cfg.seed)
    base_pred = baseline.predict(eval_frame)
    baseline_seconds = time.monotonic() - baseline_start
    log.info("baseline fitted in %.1fs", baseline_seconds)
    return pd.DataFrame({
        "impression_id": eval_frame["impression_id"].astype(str),
        "dt": eval_day,
        "p_ctr": pred["p_ctr"].astype(np.float64),
        "p_cvr": pred["p_cvr"].astype(np.float64),
        "p_ctcvr": pred["p_ctcvr"].astype(np.float64),
        "baseline_p_ctr": base_pred["ctr"],
        "baseline_p_ctcvr": base_pred["ctcvr"],
        "clicked": eval_frame["clicked"].astype(np.int8),
        "converted": eval_frame["converted"].astype(np.int8),
    }), baseline_seconds


def save_outputs(result: ctcvr.FitResult, tokenizer, predictions: pd.DataFrame, metrics: dict, lineage: dict) -> None:
    """models/ctcvr/ (scorer, predictions, curve, lineage), models/tokenizer/ (with the same lineage: it is
    published as its own artifact) and the training metrics, each atomically."""
    atomic.require_finite("train_ctcvr", "metrics", metrics)  # a diverged run replaces nothing
    scorer = ctcvr.CTCVRScorer(result.model, tokenizer)
    with atomic.directory(CTCVR_DIR) as staging:
        scorer.save(staging)
        atomic.require_finite_weights("train_ctcvr", staging)
        predictions.to_parquet(staging / PREDICTIONS.name, index=False)
        atomic.write_json(staging / CURVE.name,  # a val AUC without positives is undefined: null
                          atomic.undefined_as_null({"best_epoch": result.best_epoch, "epochs": result.curve}))
        write_lineage(staging, lineage)
    with atomic.directory(TOKENIZER_DIR) as staging:
        save_tokenizer(tokenizer, staging)
        write_lineage(staging, lineage)
    atomic.write_json(TRAIN_METRICS, metrics)
    log.info("eval day %s: auc ctcvr %.4f (baseline %.4f), auc ctr %.4f (baseline %.4f), ece ctcvr %.5f",
             metrics["eval_day"], metrics["auc_ctcvr"], metrics["baseline_auc_ctcvr"], metrics["auc_ctr"],
             metrics["baseline_auc_ctr"], metrics["ece_ctcvr"])


if __name__ == "__main__":
    sys.exit(main())
