"""Simulate the logs: day-partitioned gzipped JSONL events plus the hidden per-impression truth.

Per day, impressions are drawn in time-ordered chunks (bounded memory at 10M+/day), labelled
from the vectorised truth, and turned into JSON lines from pre-escaped fragments. Clicks and
conversions land in the partition of their own timestamp: those past the current day wait in
a buffer for their day; those past the last simulated day are dropped (not happened yet).
Delivery noise (duplicates, corrupt lines) is injected at write time. Every day partition,
raw and truth, is written aside and renamed into place.
"""
from __future__ import annotations

import collections
import dataclasses
import gzip
import hashlib
import math
import time
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from plumbing import atomic
from plumbing.dates import day_bounds_ms, shift_ds
from plumbing.logs import get_logger
from relate_sim import content, grammar
from relate_sim.champion import serve_champion
from relate_sim.config import SimulateConfig
from relate_sim.logging_policy import ServingPolicy, Traffic, build_policy, sample_rows, sample_traffic
from relate_sim.truth import (TruthTables, build_tables, combo_parts, fatigue_factor, feed_logits_vec,
                              search_logits_vec, sigmoid)
from plumbing.errors import MissingArtifact
from relate_sim.drift import text_key
from relate_sim.market import market_as_of
from relate_sim.streams import stream_rng
from relate_sim.world import World, build_world

log = get_logger(__name__)
DAY_MS = 86_400_000
TRUTH_SCHEMA = pa.schema([("impression_id", pa.string()), ("p_click", pa.float64()),
                          ("p_conv_given_click", pa.float64())])
CORRUPTION_MODES = ("truncated_json", "ts_as_string", "missing_id", "unknown_event_type")


def text_id(served_text: str) -> str:
    return hashlib.sha1(served_text.encode("utf-8")).hexdigest()[:16]


def _json(value) -> str:
    return orjson.dumps(value).decode()


class ExposureCounter:
    """Per (user, creative signature) exposure counts, kept as sorted numpy arrays."""

    def __init__(self) -> None:
        self.keys = np.zeros(0, dtype=np.int64)
        self.counts = np.zeros(0, dtype=np.int64)

    def count_and_update(self, keys: np.ndarray) -> np.ndarray:
        """Earlier exposures of each key, for keys given in time order; then record them."""
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.r_[0, np.flatnonzero(np.diff(sorted_keys)) + 1]
        group_sizes = np.diff(np.r_[starts, len(keys)])
        within = np.arange(len(keys)) - np.repeat(starts, group_sizes)
        idx = np.searchsorted(self.keys, sorted_keys)
        idx_clipped = np.minimum(idx, max(len(self.keys) - 1, 0))
        found = (idx < len(self.keys)) & (self.keys[idx_clipped] == sorted_keys) if len(self.keys) else np.zeros(len(keys), bool)
        prior = np.where(found, self.counts[idx_clipped] if len(self.keys) else 0, 0)
        exposures = np.empty(len(keys), dtype=np.int64)
        exposures[order] = prior + within
        all_keys = np.concatenate([self.keys, sorted_keys[starts]])
        all_counts = np.concatenate([self.counts, group_sizes])
        self.keys, inverse = np.unique(all_keys, return_inverse=True)
        self.counts = np.bincount(inverse, weights=all_counts).astype(np.int64)
        return exposures


class PartWriter:
    """Gzipped JSONL part files of one partition; injects duplicates and corrupt lines."""

    def __init__(self, directory: Path, cfg: SimulateConfig, rng: np.random.Generator):
        self.directory, self.cfg, self.rng = directory, cfg, rng
        self.part, self.in_part, self.fh, self.gz = 0, 0, None, None
        self.stats = collections.Counter()

    def _open(self) -> None:
        path = self.directory / f"part-{self.part:05d}.jsonl.gz"
        self.fh = open(path, "wb")
        # mtime=0 and no file name in the header keep reruns byte-identical
        self.gz = gzip.GzipFile(filename="", mode="wb", fileobj=self.fh, mtime=0, compresslevel=self.cfg.gzip_level)

    def _close_part(self) -> None:
        if self.gz is not None:
            self.gz.close()
            self.fh.close()
            self.gz = self.fh = None
            self.part += 1
            self.in_part = 0

    def write(self, lines: list[str]) -> None:
        if not lines:
            return
        dup = np.flatnonzero(self.rng.random(len(lines)) < self.cfg.duplicate_rate)
        if len(dup):
            # redeliveries arrive a little later in the stream, same content
            lines = lines + [lines[i] for i in dup]
        self.stats["duplicates"] += len(dup)
        corrupt = np.flatnonzero(self.rng.random(len(lines)) < self.cfg.corrupt_rate)
        if len(corrupt):
            lines = list(lines)
            modes = self.rng.integers(0, len(CORRUPTION_MODES), size=len(corrupt))
            for i, mode in zip(corrupt.tolist(), modes.tolist()):
                lines[i] = corrupt_line(lines[i], CORRUPTION_MODES[mode])
                self.stats[f"corrupt_{CORRUPTION_MODES[mode]}"] += 1
        self.stats["corrupt"] += len(corrupt)
        self.stats["lines"] += len(lines)
        start = 0
        while start < len(lines):
            if self.gz is None:
                self._open()
            take = min(len(lines) - start, self.cfg.part_size - self.in_part)
            self.gz.write(("\n".join(lines[start:start + take]) + "\n").encode("utf-8"))
            self.in_part += take
            start += take
            if self.in_part >= self.cfg.part_size:
                self._close_part()

    def close(self) -> None:
        if self.gz is None and self.part == 0:
            self._open()  # an empty day still gets one (empty) part file
        self._close_part()


def corrupt_line(line: str, mode: str) -> str:
    """Damage a line the way real log shippers do."""
    if mode == "truncated_json":
        return line[: max(1, len(line) // 2)]
    event = orjson.loads(line)
    if mode == "ts_as_string":
        event["ts"] = str(event["ts"])
    elif mode == "missing_id":
        event.pop("impression_id" if "impression_id" in event else "click_id", None)
    else:
        event["event_type"] = {"impression": "view", "click": "tap", "conversion": "purchase_v2"}[event["event_type"]]
    return _json(event)


@dataclasses.dataclass
class Fragments:
    """Pre-escaped JSON fragments, so an impression line is one f-string."""

    ad: list[str]
    text: list[list[str]]
    query: list[list[list[str]]]
    combo: list[list[str]]
    user: list[str]
    segment: list[str]


def build_fragments(world: World, tables: TruthTables) -> Fragments:
    cfg = world.config
    ad_frag, text_frag, query_frag, combo_frag = [], [], [], []
    n_combos = cfg.titles_per_ad * cfg.images_per_ad * cfg.highlights_per_ad
    for a, ad in enumerate(world.ads):
        product = world.products[ad["product"]]
        ad_frag.append(
            f'"vertical":{_json(world.verticals[product["vertical"]])},'
            f'"advertiser_id":{_json(world.advertisers[product["advertiser"]]["id"])},'
            f'"product_id":{_json(product["id"])},"ad_id":{_json(ad["id"])}')
        text_frag.append([f'"text_id":"{text_id(s)}","ad_text":{_json(s)}' for s in tables.served_text[a]])
        query_frag.append([[
            '"query":{},"keyword":{}'.format(*map(_json, world.keyword_query(a, k, m)[::-1]))
            for m in range(len(grammar.QUERY_MODIFIERS))] for k in range(cfg.keywords_per_product)])
        t, i, h = combo_parts(world, np.arange(n_combos))
        combo_frag.append([
            f'"title_id":"{world.title_id(a, tt)}","image_id":"{world.image_id(a, ii)}",'
            f'"highlight_id":"{world.highlight_id(a, hh)}"' for tt, ii, hh in zip(t.tolist(), i.tolist(), h.tolist())])
    users = [f'"u{u:07d}"' for u in range(cfg.users)]
    segments = [_json(s) for s in world.segments]
    return Fragments(ad=ad_frag, text=text_frag, query=query_frag, combo=combo_frag, user=users, segment=segments)


def day_offset(ts_ms: np.ndarray, first_day_start_ms: int) -> np.ndarray:
    """Which simulated day (0-based) an event timestamp falls in: events go to their own ts's partition."""
    return (np.asarray(ts_ms) - first_day_start_ms) // DAY_MS


@dataclasses.dataclass
class Simulation:
    """One day's market: the world as of the day, its truth tables, logging policy and JSON fragments."""

    world: World
    tables: TruthTables
    policy: ServingPolicy
    frags: Fragments | None = None
    phrase_incidence: np.ndarray | None = None  # [A * T, P] the pool texts' lexicon phrases
    text_keys: np.ndarray | None = None  # [A, T] drift.text_key of each pool text (its first-served memory)
    champion: object | None = None  # champion.ChampionMixture when serving tables are given


def prepare(config: SimulateConfig, day: int = 0, phrase_shares: dict | None = None,
            base: World | None = None, first_served: dict | None = None) -> Simulation:
    """The market of `day` (0 = start_date; see relate_sim/drift.py)."""
    world = market_as_of(base or build_world(config), day, phrase_shares, first_served)
    tables = build_tables(world)
    return Simulation(world=world, tables=tables, policy=build_policy(world, tables))


def _with_fragments(sim: Simulation) -> Simulation:
    world, cfg = sim.world, sim.world.config
    sim.frags = build_fragments(world, sim.tables)
    incidence = np.zeros((world.n_ads * cfg.texts_per_ad, len(grammar.LEXICON)))
    keys = np.zeros((world.n_ads, cfg.texts_per_ad), dtype=np.int64)
    for a, pool in enumerate(world.texts):
        for t, text in enumerate(pool):
            analysis = grammar.analyze_text(text, cfg.text_max_chars)
            incidence[a * cfg.texts_per_ad + t, list(analysis.phrase_ids)] = 1.0
            keys[a, t] = text_key(a, analysis.signature)
    sim.phrase_incidence, sim.text_keys = incidence, keys
    return sim


@dataclasses.dataclass
class CarryState:
    """What day D needs from the days before it (each day's part: data/sim_truth/state/dt=<ds>/).

    exposures: per (user, creative signature) showings so far (user fatigue); pending: click and
    conversion lines of earlier impressions that fall on later days, per day index; phrase_shares:
    each earlier day's share of served search impressions per lexicon phrase (phrase fatigue);
    first_served: {drift.text_key: the day an ad first served the text signature} (text wear-out)."""

    exposures: ExposureCounter
    pending: dict[int, list[str]]
    phrase_shares: dict[int, np.ndarray]
    first_served: dict[int, int] = dataclasses.field(default_factory=dict)


def _state_ok(folder: Path, fingerprint: str) -> bool:
    path = folder / "phrases.json"
    return path.is_file() and orjson.loads(path.read_bytes()).get("world_fingerprint") == fingerprint


def first_unsimulated_day(config: SimulateConfig, truth_root: Path, fingerprint: str, day: int) -> int:
    """The first day before `day` without a state folder of this world (`day` if there is none)."""
    for d in range(day):
        if not _state_ok(truth_root / "state" / f"dt={shift_ds(config.start_date, d)}", fingerprint):
            return d
    return day


def load_state(config: SimulateConfig, truth_root: Path, day: int, fingerprint: str | None = None) -> CarryState:
    """The carry state before `day`, from the state files of days 0 .. day - 1 (MissingArtifact if one is missing)."""
    state = CarryState(ExposureCounter(), collections.defaultdict(list), {})
    keys, counts = [], []
    for d in range(day):
        ds = shift_ds(config.start_date, d)
        folder = truth_root / "state" / f"dt={ds}"
        if not _state_ok(folder, build_world(config).fingerprint() if fingerprint is None else fingerprint):
            raise MissingArtifact(f"day {ds} has not been simulated ({folder} missing): simulate the days before "
                                  f"{shift_ds(config.start_date, day)} first, in order")
        with np.load(folder / "exposures.npz") as npz:
            keys.append(npz["keys"])
            counts.append(npz["counts"])
            for key in npz["first_served"].tolist():
                state.first_served.setdefault(key, d)
        for target, lines in orjson.loads(gzip.decompress((folder / "pending.json.gz").read_bytes())).items():
            if int(target) >= day:
                state.pending[int(target)].extend(lines)
        state.phrase_shares[d] = np.asarray(orjson.loads((folder / "phrases.json").read_bytes())["shares"])
    if keys:
        state.exposures.keys, inverse = np.unique(np.concatenate(keys), return_inverse=True)
        state.exposures.counts = np.bincount(inverse, weights=np.concatenate(counts)).astype(np.int64)
    return state


def simulate(config: SimulateConfig, raw_root: Path, truth_root: Path, days: list[int] | None = None,
             serving=None, elements_root: Path | None = None, embedding_dim: int | None = None) -> dict:
    """Write the partitions of `days` (default: all, in order) and their truth; return a summary.

    Each day is a pure function of (seed, day, the carry state of the days before it, `serving`):
    simulating every day in one call writes the same bytes as simulating them one by one in order.
    `serving`: the champion's serving tables (serving_tables.ServingTables) served on `days` mixed
    with the logging policy's exploration (relate_sim/champion.py); None = the logging policy. Days
    before `days[0]` without state are simulated first, served by the logging policy. With `embedding_dim`
    (the element table's image embedding length), each day's element table goes to `elements_root`
    (default: the `elements` folder beside `raw_root`); without it no element table is written."""
    t0 = time.monotonic()
    elements_root = Path(raw_root).parent / "elements" if elements_root is None else Path(elements_root)
    days = list(range(config.days)) if days is None else days
    base = build_world(config)
    atomic.clean_stale_staging(raw_root)
    atomic.clean_stale_staging(truth_root / "impressions")
    atomic.write_json(truth_root / "world.json", {"fingerprint": base.fingerprint(), **base.to_dict()})
    served_days = set(days)  # catch-up days are served by the logging policy
    if days and days[0] > 0:  # catch up: the days before the first one that have no state of this world yet
        days = list(range(first_unsimulated_day(config, truth_root, base.fingerprint(), days[0]), days[0])) + days
    state, prev = None, None
    sim0 = _with_fragments(prepare(config, 0, base=base)) if not config.drift.enabled and serving is None else None
    for day in days:
        if prev is None or day != prev + 1:
            state = load_state(config, truth_root, day, base.fingerprint())
        sim = sim0 or prepare(config, day, state.phrase_shares, base, state.first_served)
        if serving is not None and day in served_days:
            sim = serve_champion(sim, serving)
        sim = sim if sim is sim0 else _with_fragments(sim)
        if day == 0:
            log.info("world: %d ads, %d users, %d texts (%d blocked by review), built in %.1fs", base.n_ads,
                     config.users, base.n_ads * config.texts_per_ad, int(base.text_blocked.sum()),
                     time.monotonic() - t0)
        simulate_day(sim, state, raw_root, truth_root, day)
        if embedding_dim is not None:
            write_elements(sim.world, elements_root, shift_ds(config.start_date, day), embedding_dim)
        prev = day
    return summarize(config, truth_root, base, time.monotonic() - t0)


def write_elements(world: World, elements_root: Path, ds: str, embedding_dim: int) -> None:
    """The day's element table (docs/data_contract.md): one JSON line per live feed element, gzipped."""
    lines = "".join(_json(row) + "\n" for row in content.element_rows(world, embedding_dim))
    with atomic.directory(Path(elements_root) / f"dt={ds}") as out:
        with open(out / "part-00000.jsonl.gz", "wb") as fh, \
                gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0, compresslevel=world.config.gzip_level) as gz:
            gz.write(lines.encode("utf-8"))


def summarize(config: SimulateConfig, truth_root: Path, world: World, wall_s: float) -> dict:
    """Counts per simulated day (from the state folders) and their totals."""
    summary_days = {}
    for day in range(config.days):
        ds = shift_ds(config.start_date, day)
        path = truth_root / "state" / f"dt={ds}" / "summary.json"
        if path.is_file():
            summary_days[ds] = orjson.loads(path.read_bytes())
    totals = collections.Counter()
    for c in summary_days.values():
        totals.update(c)
    return {"days": summary_days, "totals": dict(sorted(totals.items())),
            "ctr": totals["impression_clicked"] / max(totals["impression"], 1),
            "cvr": totals["click_converted"] / max(totals["impression_clicked"], 1),
            "noncompliant_served_share": totals["search_noncompliant"] / max(totals["search"], 1),
            "wall_s": wall_s, "world_fingerprint": world.fingerprint()}


def simulate_day(sim: Simulation, state: CarryState, raw_root: Path, truth_root: Path, day: int) -> dict:
    """Write day `day`'s raw partition, its truth and its state folder; advance `state` past the day."""
    config = sim.world.config
    ds = shift_ds(config.start_date, day)
    first_ms, _ = day_bounds_ms(config.start_date)
    t_day = time.monotonic()
    counts = collections.Counter()
    day_state = _DayState()
    with atomic.directory(raw_root / f"dt={ds}") as raw_dir, \
            atomic.directory(truth_root / "impressions" / f"dt={ds}") as truth_dir:
        parts = PartWriter(raw_dir, config, stream_rng(config.seed, 3, day))
        carried = state.pending.pop(day, [])
        counts["carried_in"] = len(carried)
        for line in carried:
            counts[line[line.index('"event_type":"') + 14:].split('"', 1)[0]] += 1
        parts.write(carried)
        truth_writer = pq.ParquetWriter(truth_dir / "part-00000.parquet", TRUTH_SCHEMA, compression="zstd")
        n_chunks = max(1, math.ceil(config.impressions_per_day / config.chunk_size))
        sizes = np.diff(np.linspace(0, config.impressions_per_day, n_chunks + 1).round().astype(np.int64))
        offset = 0
        for chunk, n in enumerate(sizes.tolist()):
            rng = stream_rng(config.seed, 2, day, chunk)
            lo = first_ms + day * DAY_MS + chunk * DAY_MS // n_chunks
            hi = first_ms + day * DAY_MS + (chunk + 1) * DAY_MS // n_chunks
            chunk_counts, truth = _simulate_chunk(sim, rng, state, day_state, parts, day, ds, offset, n, lo, hi,
                                                  first_ms)
            counts.update(chunk_counts)
            truth_writer.write_table(truth)
            offset += n
        truth_writer.close()
        parts.close()
        counts.update(parts.stats)
    summary = dict(sorted(counts.items()))
    _write_state(truth_root / "state" / f"dt={ds}", day_state, summary, sim.world.fingerprint(), served_record(sim, day_state))
    state.phrase_shares[day] = day_state.shares(len(grammar.LEXICON))
    for key in day_state.first_served:
        state.first_served.setdefault(key, day)
    log.info("%s: %d impressions, %d clicks, %d conversions (%d carried in), %d lines, %d duplicates, "
             "%d corrupt, %.1fs", ds, counts["impression"], counts["click"], counts["conversion"],
             counts["carried_in"], counts["lines"], counts["duplicates"], counts["corrupt"], time.monotonic() - t_day)
    return summary


@dataclasses.dataclass
class _DayState:
    """What one day adds to the carry state."""

    keys: list = dataclasses.field(default_factory=list)
    pending: dict = dataclasses.field(default_factory=lambda: collections.defaultdict(list))
    phrase_counts: np.ndarray | None = None
    search: int = 0
    first_served: set = dataclasses.field(default_factory=set)  # text keys first served this day
    text_served: np.ndarray | None = None  # [A * T] search impressions per pool text
    truth_sums: dict = dataclasses.field(default_factory=dict)  # placement -> sums of the true rates (served.json)

    def add_truth(self, placement: str, p_click: np.ndarray, p_conv: np.ndarray, champion: np.ndarray,
                  compliant: np.ndarray) -> None:
        """Accumulate what the served impressions' true rates sum to (means and CIs need only sums); the
        `_compliant` sums value a non-compliant text's conversions at nothing, as the oracle does."""
        x, y = p_click, p_click * p_conv
        sums = self.truth_sums.setdefault(placement, collections.Counter())
        sums.update({"n": len(x), "champion": int(champion.sum()), "compliant": int(compliant.sum()),
                     "champion_compliant": int((champion & compliant).sum()), "sum_ctr": float(x.sum()),
                     "sum_ctr2": float(x @ x), "sum_ctcvr": float(y.sum()), "sum_ctcvr2": float(y @ y),
                     "sum_ctr_ctcvr": float(x @ y), **compliant_ctcvr_sums(y, compliant)})

    def shares(self, n_phrases: int) -> np.ndarray:
        counts = self.phrase_counts if self.phrase_counts is not None else np.zeros(n_phrases)
        return counts / max(self.search, 1)


def compliant_ctcvr_sums(ctcvr: np.ndarray, compliant: np.ndarray) -> dict:
    """Sums of served impressions' true CTCVR (and its square) with a non-compliant text's valued at nothing."""
    weight = compliant.astype(np.float64)
    return {"sum_ctcvr_compliant": float(ctcvr @ weight), "sum_ctcvr_compliant2": float((ctcvr * ctcvr) @ weight)}


def served_record(sim: Simulation, day_state: _DayState) -> dict:
    """What the day served, from the truth: who served (the champion's version or the logging policy),
    per placement the sums of the served impressions' true rates, and each served search text's
    impressions and compliance (the closed loop's measurements, pipelines.closed_loop_metrics)."""
    world, T = sim.world, sim.world.config.texts_per_ad
    counts = day_state.text_served if day_state.text_served is not None else np.zeros(world.n_ads * T)
    texts = collections.Counter()
    compliant = {}
    for i in np.flatnonzero(counts).tolist():
        a, t = divmod(i, T)
        texts[world.texts[a][t]] += int(counts[i])
        compliant[world.texts[a][t]] = bool(sim.tables.text_compliant[a, t])
    return {"served_by": sim.champion.version if sim.champion is not None else None,
            "truth_sums": {k: dict(v) for k, v in sorted(day_state.truth_sums.items())},
            "search_texts": [[text, n, compliant[text]] for text, n in sorted(texts.items())]}


def _write_state(folder: Path, day_state: _DayState, summary: dict, fingerprint: str, served: dict) -> None:
    keys = np.concatenate(day_state.keys) if day_state.keys else np.zeros(0, dtype=np.int64)
    uniq, counts = np.unique(keys, return_counts=True)
    with atomic.directory(folder) as out:
        with open(out / "exposures.npz", "wb") as fh:
            np.savez(fh, keys=uniq, counts=counts.astype(np.int64),
                     first_served=np.array(sorted(day_state.first_served), dtype=np.int64))
        pending = {str(k): v for k, v in sorted(day_state.pending.items())}
        (out / "pending.json.gz").write_bytes(gzip.compress(orjson.dumps(pending), mtime=0))
        shares = day_state.shares(len(grammar.LEXICON))
        (out / "phrases.json").write_bytes(orjson.dumps({
            "world_fingerprint": fingerprint, "search_impressions": day_state.search, "shares": shares.tolist(),
            "phrases": [p for p, _, _ in grammar.LEXICON]}))
        (out / "summary.json").write_bytes(orjson.dumps(summary))
        (out / "served.json").write_bytes(orjson.dumps(served))


def _simulate_chunk(sim: Simulation, rng: np.random.Generator, state: CarryState, day_state: _DayState,
                    parts: PartWriter, day: int, ds: str, offset: int, n: int, lo: int, hi: int, first_ms: int):
    """Draw, label and write `n` impressions in [lo, hi); return the chunk's counts and truth table."""
    world, tables, cfg = sim.world, sim.tables, sim.world.config
    traffic = sample_traffic(world, rng, n, cfg.search_share)
    ts = np.sort(rng.integers(lo, hi, size=n))
    creative, propensity, by_champion = serve_impressions(sim, rng, traffic)
    p_click, p_conv, seen, keys = _true_probabilities(world, tables, state.exposures, traffic, creative)
    day_state.keys.append(keys)
    out = _draw_outcomes(rng, world, traffic.ad, ts, p_click, p_conv)

    s_idx = np.flatnonzero(traffic.search)
    served = np.bincount(traffic.ad[s_idx] * cfg.texts_per_ad + creative[s_idx], minlength=len(sim.phrase_incidence))
    day_state.text_served = served if day_state.text_served is None else day_state.text_served + served
    compliant = np.ones(n, dtype=bool)  # feed combinations carry no ad text to judge
    compliant[s_idx] = tables.text_compliant[traffic.ad[s_idx], creative[s_idx]]
    for placement, rows in (("search", s_idx), ("feed", np.flatnonzero(~traffic.search))):
        day_state.add_truth(placement, p_click[rows], p_conv[rows], by_champion[rows], compliant[rows])
    day_state.phrase_counts = (0 if day_state.phrase_counts is None else day_state.phrase_counts) \
        + served @ sim.phrase_incidence
    day_state.search += len(s_idx)
    day_state.first_served.update(k for k in np.unique(sim.text_keys[traffic.ad[s_idx], creative[s_idx]]).tolist()
                                  if k not in state.first_served)
    counts = collections.Counter()
    counts["impression"] = n
    counts["search"] = len(s_idx)
    counts["search_noncompliant"] = int((~compliant[s_idx]).sum())
    counts["impression_clicked"] = int(out.clicked.sum())
    counts["click_converted"] = int(out.converted.sum())
    counts["repeat_exposures"] = int((seen > 0).sum())
    if sim.champion is not None:
        counts["champion_search"] = int(by_champion[s_idx].sum())
        counts["champion_feed"] = int(by_champion.sum()) - counts["champion_search"]

    ids = [f"{ds.replace('-', '')}{offset + i:09d}" for i in range(n)]
    lines = _impression_lines(sim.frags, traffic, ids, ts, creative, propensity)
    _route_events(out, ids, day, cfg.days - 1, first_ms, lines, (state.pending, day_state.pending), counts)
    parts.write(lines)
    truth = pa.table({"impression_id": pa.array(["i" + s for s in ids], pa.string()),
                      "p_click": pa.array(p_click, pa.float64()),
                      "p_conv_given_click": pa.array(p_conv, pa.float64())}, schema=TRUTH_SCHEMA)
    return counts, truth


def serve_impressions(sim: Simulation, rng: np.random.Generator, traffic: Traffic):
    """The creative per impression (text index on search, combination index on feed), its propensity,
    and whether it is one of the champion's (all False without serving tables)."""
    search = traffic.search
    s_idx, f_idx = np.flatnonzero(search), np.flatnonzero(~search)
    creative = np.zeros(len(search), dtype=np.int64)
    if sim.champion is None:
        policy = sim.policy
        creative[s_idx] = sample_rows(rng, policy.text_probs, traffic.ad[s_idx])
        creative[f_idx] = sample_rows(rng, policy.combo_probs, traffic.ad[f_idx])
        propensity = np.where(search, policy.text_probs[traffic.ad, np.where(search, creative, 0)],
                              policy.combo_probs[traffic.ad, np.where(search, 0, creative)])
        return creative, propensity, np.zeros(len(search), dtype=bool)
    mix, K = sim.champion, sim.world.config.keywords_per_product
    row = traffic.ad * K + traffic.keyword
    creative[s_idx] = sample_rows(rng, mix.text_probs, row[s_idx])
    creative[f_idx] = sample_rows(rng, mix.combo_probs, traffic.ad[f_idx])
    s_creative, f_creative = np.where(search, creative, 0), np.where(search, 0, creative)
    propensity = np.where(search, mix.text_probs[row, s_creative], mix.combo_probs[traffic.ad, f_creative])
    by_champion = np.where(search, mix.text_champion[row, s_creative], mix.combo_champion[traffic.ad, f_creative])
    return creative, propensity, by_champion


def _true_probabilities(world: World, tables: TruthTables, exposures: ExposureCounter, traffic: Traffic,
                        creative: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """True P(click) (fatigue included), P(conversion | click), the earlier exposures of each
    impression's creative to its user (recorded in `exposures`) and the exposure keys."""
    search = traffic.search
    s_idx, f_idx = np.flatnonzero(search), np.flatnonzero(~search)
    click_logit, conv_logit = np.zeros(len(search)), np.zeros(len(search))
    click_logit[s_idx], conv_logit[s_idx] = search_logits_vec(
        world, tables, traffic.ad[s_idx], traffic.segment[s_idx], traffic.position[s_idx], creative[s_idx],
        traffic.keyword[s_idx], traffic.modifier[s_idx])
    click_logit[f_idx], conv_logit[f_idx] = feed_logits_vec(
        world, tables, traffic.ad[f_idx], traffic.segment[f_idx], traffic.position[f_idx], creative[f_idx])
    signature = np.where(search, tables.text_signature[traffic.ad, np.where(search, creative, 0)],
                         tables.combo_signature[traffic.ad, np.where(search, 0, creative)])
    # one key per (user, signature): the 62-bit signature hash mixed with the user (collisions ~ n^2 / 2^64)
    keys = (signature.astype(np.uint64) ^ (traffic.user.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15))).view(np.int64)
    seen = exposures.count_and_update(keys)
    return sigmoid(click_logit) * fatigue_factor(world, seen), sigmoid(conv_logit), seen, keys


@dataclasses.dataclass
class _Outcomes:
    clicked: np.ndarray
    converted: np.ndarray
    click_ts: np.ndarray
    conv_ts: np.ndarray
    value: np.ndarray


def _draw_outcomes(rng: np.random.Generator, world: World, ad: np.ndarray, ts: np.ndarray, p_click: np.ndarray,
                   p_conv: np.ndarray) -> _Outcomes:
    """Clicks, conversions, their delays after the impression and the conversion values."""
    n, cfg = len(ts), world.config
    clicked = rng.random(n) < p_click
    converted = clicked & (rng.random(n) < p_conv)
    click_ts = ts + np.clip(np.exp(rng.normal(np.log(25_000), 1.0, size=n)), 1_000, 1_800_000).astype(np.int64)
    max_delay = cfg.max_conversion_delay_days * DAY_MS - 60_000
    conv_ts = click_ts + np.clip(np.exp(rng.normal(np.log(4 * 3_600_000), 1.2, size=n)), 60_000, max_delay).astype(np.int64)
    value = np.round(np.array([world.products[world.ads[a]["product"]]["price"] for a in range(world.n_ads)])[ad]
                     * np.exp(rng.normal(0.0, 0.3, size=n)), 2)
    return _Outcomes(clicked=clicked, converted=converted, click_ts=click_ts, conv_ts=conv_ts, value=value)


def _route_events(out: _Outcomes, ids: list[str], day: int, last_day: int, first_ms: int, lines: list[str],
                  pending: tuple[dict, ...], counts: collections.Counter) -> None:
    """Click and conversion lines into today's `lines`, a later day's list in each `pending` buffer,
    or (after the last simulated day) only a count."""
    click_rows = np.flatnonzero(out.clicked)
    click_lines = [f'{{"event_id":"ec{ids[i]}","event_type":"click","ts":{t},"impression_id":"i{ids[i]}",'
                   f'"click_id":"c{ids[i]}"}}' for i, t in zip(click_rows.tolist(), out.click_ts[click_rows].tolist())]
    conv_rows = np.flatnonzero(out.converted)
    conv_lines = [f'{{"event_id":"ev{ids[i]}","event_type":"conversion","ts":{t},"click_id":"c{ids[i]}",'
                  f'"value":{v!r}}}' for i, t, v in zip(conv_rows.tolist(), out.conv_ts[conv_rows].tolist(),
                                                        out.value[conv_rows].tolist())]
    for kind, rows_lines, when in (("click", click_lines, out.click_ts[click_rows]),
                                   ("conversion", conv_lines, out.conv_ts[conv_rows])):
        days_of = day_offset(when, first_ms).tolist()
        for line, d in zip(rows_lines, days_of):
            if d == day:
                lines.append(line)
                counts[kind] += 1
            elif d <= last_day:
                for buffer in pending:  # the in-memory carry state and the day's own state file
                    buffer[d].append(line)
            else:  # after the last simulated day: it has not happened yet
                counts[f"{kind}_after_last_day"] += 1


def _impression_lines(frags: Fragments, traffic, ids, ts, creative, propensity) -> list[str]:
    out = []
    for sfx, t, u, s, a, srch, k, m, pos, c, prop in zip(
            ids, ts.tolist(), traffic.user.tolist(), traffic.segment.tolist(), traffic.ad.tolist(),
            traffic.search.tolist(), traffic.keyword.tolist(), traffic.modifier.tolist(), traffic.position.tolist(),
            creative.tolist(), propensity.tolist()):
        if srch:
            out.append(f'{{"event_id":"ei{sfx}","event_type":"impression","ts":{t},"impression_id":"i{sfx}",'
                       f'"user_id":{frags.user[u]},"user_segment":{frags.segment[s]},"placement":"search",'
                       f'{frags.ad[a]},"position":{pos},{frags.query[a][k][m]},{frags.text[a][c]},'
                       f'"propensity":{prop!r}}}')
        else:
            out.append(f'{{"event_id":"ei{sfx}","event_type":"impression","ts":{t},"impression_id":"i{sfx}",'
                       f'"user_id":{frags.user[u]},"user_segment":{frags.segment[s]},"placement":"feed",'
                       f'{frags.ad[a]},"position":{pos},{frags.combo[a][c]},"propensity":{prop!r}}}')
    return out
