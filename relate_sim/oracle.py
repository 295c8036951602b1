"""The evaluation oracle: true probabilities of any text or combination, and simulated A/B tests.

Used by `pipelines.evaluate` only. The truth of a text is a pure function of the string and
its context (see `truth.search_logits`), so texts no pool ever held are scored too. Unlike
the logs (where a share of non-compliant texts slips past review and earns clicks), the
oracle counts every non-compliant text as a violation that earns nothing.

    oracle = Oracle.load()                      # from data/sim_truth/world.json
    p_click, p_conv, ok = oracle.true_text_probs(
        {"ad_id": "ad-0003", "keyword": "cheap flights", "query": "cheap flights 2026",
         "user_segment": "students", "position": 1}, "Shop cheap flights. Free shipping. Book today")
    result = oracle.ab_test_texts(lambda ctx: my_text_for(ctx), n_impressions=50_000, seed=1)
    result.ctcvr  # (estimate, lo, hi), 95% Wilson interval
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Union

import numpy as np

from plumbing.config import build_config, load_params
from plumbing.metrics import wilson
from plumbing.errors import MissingArtifact
from relate_sim import content, grammar
from plumbing.dates import shift_ds
from relate_sim.config import SimulateConfig
from relate_sim.drift import day_index
from relate_sim.market import market_as_of
from relate_sim.logging_policy import sample_traffic, segment_weights_for_ad
from relate_sim.truth import (build_tables, fatigue_factor, feed_logits, feed_logits_vec, is_compliant, search_logits,
                              sigmoid)
from relate_sim.world import FEED_POSITION_PROBS, FEED_POSITIONS, World, build_world
from relate_sim.streams import stream_rng

TextPolicy = Union[Callable[[dict], str], Mapping[Any, Union[str, list]]]
ComboPolicy = Union[Callable[[dict], tuple], Mapping[Any, Union[tuple, list]]]


@dataclasses.dataclass
class ABResult:
    """Outcome of one simulated arm. Rates are (estimate, low, high) with 95% Wilson intervals.

    `expected_*` are the sums of the true probabilities over the simulated impressions: the
    value the observed counts estimate (the noise-free result of this traffic sample).
    """

    impressions: int
    clicks: int
    conversions: int
    violations: int
    expected_clicks: float
    expected_conversions: float
    repeat_exposures: int

    @property
    def ctr(self):
        return wilson(self.clicks, self.impressions)

    @property
    def cvr(self):
        return wilson(self.conversions, self.clicks)

    @property
    def ctcvr(self):
        return wilson(self.conversions, self.impressions)

    @property
    def compliance(self):
        return wilson(self.impressions - self.violations, self.impressions)

    @property
    def expected_ctr(self) -> float:
        return self.expected_clicks / max(self.impressions, 1)

    @property
    def expected_ctcvr(self) -> float:
        return self.expected_conversions / max(self.impressions, 1)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        for name in ("ctr", "cvr", "ctcvr", "compliance"):
            est, lo, hi = getattr(self, name)
            out[name] = {"estimate": est, "ci95": [lo, hi]}
        out["expected_ctr"], out["expected_ctcvr"] = self.expected_ctr, self.expected_ctcvr
        return out


class Oracle:
    """Ground truth over one world. Build with `Oracle.load()`, `Oracle.from_params()` or `Oracle(world)`."""

    def __init__(self, world: World, truth_dir: str | Path | None = None):
        self.world = world
        self._tables = None
        self._seg_mass = None
        self._truth_dir = truth_dir

    def as_of(self, day: int | str, phrase_shares: Mapping[int, Any] | None = None,
              first_served: Mapping[int, int] | None = None) -> "Oracle":
        """The oracle of the market on `day` (days since start_date, or a YYYY-MM-DD date).

        True probabilities then use that day's drifted truth (relate_sim/drift.py): live
        elements, appeal, preferences, season, wear-out, phrase fatigue and compliance rules.
        The market's memory of the days before: `phrase_shares` {day index: served share per
        lexicon phrase} (e.g. `drift.served_phrase_shares`) and `first_served` {drift.text_key:
        day}; when `phrase_shares` is None both come from the simulator's state files of the
        truth dir this oracle was loaded from. An oracle without as_of is the day-0 market."""
        base = self.world.__dict__.get("_base") or self.world
        if isinstance(day, str):
            day = day_index(base.config.start_date, day)
        if phrase_shares is None:
            phrase_shares, first_served = self._stored_memory(base, day)
        world = market_as_of(base, day, {int(d): np.asarray(v, dtype=float) for d, v in phrase_shares.items()},
                             dict(first_served or {}))
        world.__dict__["_base"] = base
        return Oracle(world, self._truth_dir)

    def _stored_memory(self, base: World, day: int) -> tuple[dict, dict]:
        if not base.config.drift.enabled or day == 0:
            return {}, {}
        if self._truth_dir is None:
            raise ValueError("as_of needs phrase_shares (or an oracle from Oracle.load(), which reads the simulator's)")
        shares, first = {}, {}
        for d in range(day):
            folder = Path(self._truth_dir) / "state" / f"dt={shift_ds(base.config.start_date, d)}"
            if not (folder / "phrases.json").is_file():
                raise MissingArtifact(f"{folder} is missing: the market of day {day} needs the days before it simulated")
            shares[d] = json.loads((folder / "phrases.json").read_text())["shares"]
            with np.load(folder / "exposures.npz") as npz:
                for key in npz["first_served"].tolist():
                    first.setdefault(key, d)
        return shares, first

    # ---- construction ------------------------------------------------------------------
    @classmethod
    def load(cls, truth_dir: str | Path | None = None) -> "Oracle":
        """Rebuild the world recorded in `<truth_dir>/world.json` and check its fingerprint."""
        from plumbing.paths import SIM_TRUTH

        path = Path(truth_dir or SIM_TRUTH) / "world.json"
        if not path.is_file():
            raise MissingArtifact(f"no simulated world at {path}: run `python -m pipelines.simulate` first")
        stored = json.loads(path.read_text())
        config = build_config(SimulateConfig, "simulate", stored["config"])
        world = build_world(config)
        if world.fingerprint() != stored.get("fingerprint"):
            raise ValueError(f"{path} does not match the world this code builds from its config "
                             "(simulator code changed?): rerun `python -m pipelines.simulate`")
        return cls(world, path.parent)

    @classmethod
    def from_params(cls, params_path: str | Path | None = None) -> "Oracle":
        """Build the world from the `simulate:` section of a params file."""
        return cls(build_world(build_config(SimulateConfig, "simulate", load_params(params_path)["simulate"])))

    # ---- single-item truth ---------------------------------------------------------------
    @property
    def ad_ids(self) -> list[str]:
        return [ad["id"] for ad in self.world.ads]

    def ad_info(self, ad_id: str) -> dict:
        """Public description of an ad: vertical, product, brand, keywords, its pools' ids."""
        w = self.world
        a = w.ad_index(ad_id)
        product = w.products[w.ads[a]["product"]]
        return {"ad_id": ad_id, "vertical": w.verticals[product["vertical"]], "product_id": product["id"],
                "advertiser_id": w.advertisers[product["advertiser"]]["id"],
                "brand": w.advertisers[product["advertiser"]]["name"], "noun": product["noun"],
                "keywords": list(product["keywords"]), "pool_texts": list(w.texts[a]),
                "title_ids": [w.title_id(a, k) for k in range(len(w.titles[a]))],
                "image_ids": [w.image_id(a, k) for k in range(w.image_utility.shape[1])],
                "highlight_ids": [w.highlight_id(a, k) for k in range(len(w.highlights[a]))]}

    def analyze(self, text: str) -> grammar.TextAnalysis:
        return grammar.analyze_text(text, self.world.config.text_max_chars)

    def true_text_probs(self, context: Mapping, text: str, exposures: int = 0) -> tuple[float, float, bool]:
        """(p_click, p_conv_given_click, compliant) of `text` in a search context.

        context: ad_id, keyword, query, user_segment, position (1-4). `exposures`: how often
        this user saw the same (near-duplicate) text before. Non-compliant: (0.0, 0.0, False).
        """
        w = self.world
        ad = w.ad_index(context["ad_id"])
        click, conv, analysis = search_logits(w, ad, w.segment_index(context["user_segment"]),
                                              int(context["position"]), text, str(context["keyword"]),
                                              str(context.get("query") or context["keyword"]))
        if not is_compliant(w, analysis):
            return 0.0, 0.0, False
        return float(sigmoid(click) * fatigue_factor(w, exposures)), float(sigmoid(conv)), True

    def _combo_indices(self, ad: int, title_id: str, image_id: str, highlight_id: str) -> tuple[int, int, int]:
        w = self.world
        return (w.parse_element_id(title_id, "title", ad), w.parse_element_id(image_id, "image", ad),
                w.parse_element_id(highlight_id, "highlight", ad))

    def true_combo_probs(self, context: Mapping, title_id: str, image_id: str, highlight_id: str
                         ) -> tuple[float, float]:
        """(p_click, p_conv_given_click) of a combination for context ad_id, user_segment, position (1-6)."""
        w = self.world
        ad = w.ad_index(context["ad_id"])
        t, i, h = self._combo_indices(ad, title_id, image_id, highlight_id)
        click, conv = feed_logits(w, ad, w.segment_index(context["user_segment"]), int(context["position"]), t, i, h)
        return float(sigmoid(click)), float(sigmoid(conv))

    def _combo_ctr_table(self, ad: int) -> np.ndarray:
        """True CTR of every combo of `ad` averaged over segments and feed positions as served, [Ti, I, H]."""
        w = self.world
        if self._tables is None:
            self._tables = build_tables(w)
        tables = self._tables
        seg_w = segment_weights_for_ad(w, ad)
        pos_w = np.asarray(FEED_POSITION_PROBS)
        n_combos = tables.combo_click.shape[1]
        combos = np.arange(n_combos)
        total = np.zeros(n_combos)
        for s, sw in enumerate(seg_w):
            for p, pw in zip(FEED_POSITIONS, pos_w):
                click, _ = feed_logits_vec(w, tables, np.full(n_combos, ad), np.full(n_combos, s),
                                           np.full(n_combos, p), combos)
                total += sw * pw * sigmoid(click)
        cfg = w.config
        return total.reshape(cfg.titles_per_ad, cfg.images_per_ad, cfg.highlights_per_ad)

    def true_combo_ctr(self, ad_id: str, title_id: str, image_id: str, highlight_id: str) -> float:
        """True CTR of a combination, averaged over user segments and feed positions as served."""
        ad = self.world.ad_index(ad_id)
        t, i, h = self._combo_indices(ad, title_id, image_id, highlight_id)
        return float(self._combo_ctr_table(ad)[t, i, h])

    def oracle_best_combo(self, ad_id: str) -> dict:
        """The combination with the highest true CTR: {title_id, image_id, highlight_id, ctr}."""
        w = self.world
        ad = w.ad_index(ad_id)
        table = self._combo_ctr_table(ad)
        t, i, h = np.unravel_index(int(np.argmax(table)), table.shape)
        return {"ad_id": ad_id, "title_id": w.title_id(ad, int(t)), "image_id": w.image_id(ad, int(i)),
                "highlight_id": w.highlight_id(ad, int(h)), "ctr": float(table[t, i, h])}

    def element_utilities(self) -> list[dict]:
        """One row per creative element: ad_id, element_type, element_id, utility (true logit effect),
        uniform_marginal_ctr (true CTR averaged over all combos holding it: the unconfounded marginal),
        content_utility (the part of the utility its content explains: relate_sim/content.py),
        text (titles and highlights)."""
        w = self.world
        rows = []
        for a in range(w.n_ads):
            table = self._combo_ctr_table(a)
            for kind, utilities, axis, names in (
                    ("title", w.title_utility[a], (1, 2), w.titles[a]),
                    ("image", w.image_utility[a], (0, 2), None),
                    ("highlight", w.highlight_utility[a], (0, 1), w.highlights[a])):
                marginal = table.mean(axis=axis)
                id_fn = {"title": w.title_id, "image": w.image_id, "highlight": w.highlight_id}[kind]
                for k, u in enumerate(utilities.tolist()):
                    rows.append({"ad_id": w.ads[a]["id"], "element_type": kind, "element_id": id_fn(a, k),
                                 "utility": u, "uniform_marginal_ctr": float(marginal[k]),
                                 "content_utility": content.element_content(w, kind, a, k),
                                 "text": names[k] if names is not None else None})
        return rows

    def content_share(self) -> dict:
        """Measured share of the live elements' utility variance their content explains: R^2 of the
        utility on its content part, per kind and over all elements (relate_sim/content.py)."""
        return content.content_share(self.element_utilities())

    # ---- simulated A/B tests -----------------------------------------------------------
    def sample_contexts(self, n: int, seed: int, placement: str = "search") -> list[dict]:
        """`n` impression contexts drawn from the world's traffic (the same ones an A/B test with `seed` uses)."""
        if placement not in ("search", "feed"):
            raise ValueError(f"placement must be 'search' or 'feed', got {placement!r}")
        w = self.world
        traffic = sample_traffic(w, stream_rng(seed, 101), n, 1.0 if placement == "search" else 0.0)
        out = []
        for i, (u, s, a, k, m, p) in enumerate(zip(traffic.user.tolist(), traffic.segment.tolist(), traffic.ad.tolist(),
                                                  traffic.keyword.tolist(), traffic.modifier.tolist(),
                                                  traffic.position.tolist())):
            product = w.products[w.ads[a]["product"]]
            ctx = {"impression": i, "user_id": f"u{u:07d}", "user_segment": w.segments[s], "ad_id": w.ads[a]["id"],
                   "vertical": w.verticals[product["vertical"]], "product_id": product["id"], "position": p,
                   "placement": placement}
            if placement == "search":
                ctx["keyword"], ctx["query"] = w.keyword_query(a, k, m)
            out.append(ctx)
        return out

    @staticmethod
    def _choose(policy, context: dict, keys: tuple, rng: np.random.Generator):
        if callable(policy):
            return policy(context)
        for key in keys:
            if key in policy:
                choice = policy[key]
                break
        else:
            raise KeyError(f"policy has no entry for any of {keys}")
        if isinstance(choice, list):
            if not choice:
                raise ValueError(f"policy entry for {keys[0]} is an empty list")
            return choice[int(rng.integers(len(choice)))]
        return choice

    def ab_test_texts(self, policy: TextPolicy, n_impressions: int, seed: int, fatigue: bool = True) -> ABResult:
        """Serve `n_impressions` search impressions with `policy` and draw outcomes from the truth.

        policy: `fn(context) -> text` (context as in `sample_contexts`, incl. user_id), or a mapping
        keyed by (ad_id, keyword) or ad_id to a text or a list of texts (one drawn uniformly per
        impression). The same `seed` gives every arm the same traffic and the same random draws
        (common random numbers), so arms compare with less noise. With `fatigue`, a user who sees
        the same (near-duplicate) text again clicks less.
        """
        w = self.world
        contexts = self.sample_contexts(n_impressions, seed, "search")
        choice_rng, outcome_rng = stream_rng(seed, 102), stream_rng(seed, 103)
        u_click, u_conv = outcome_rng.random(n_impressions), outcome_rng.random(n_impressions)
        seen: dict[tuple, int] = {}
        clicks = conversions = violations = repeats = 0
        exp_clicks = exp_conv = 0.0
        for i, ctx in enumerate(contexts):
            text = self._choose(policy, ctx, ((ctx["ad_id"], ctx["keyword"]), ctx["ad_id"]), choice_rng)
            if not isinstance(text, str):
                raise TypeError(f"text policy returned {type(text).__name__}, expected str")
            analysis = self.analyze(text)
            key = (ctx["user_id"], analysis.signature)
            earlier = seen.get(key, 0) if fatigue else 0
            seen[key] = earlier + 1
            repeats += earlier > 0
            p_click, p_conv, compliant = self.true_text_probs(ctx, text, exposures=earlier)
            violations += not compliant
            exp_clicks += p_click
            exp_conv += p_click * p_conv
            if u_click[i] < p_click:
                clicks += 1
                conversions += bool(u_conv[i] < p_conv)
        return ABResult(n_impressions, clicks, conversions, violations, exp_clicks, exp_conv, repeats)

    def ab_test_combos(self, policy: ComboPolicy, n_impressions: int, seed: int, fatigue: bool = True) -> ABResult:
        """Serve `n_impressions` feed impressions with `policy` and draw outcomes from the truth.

        policy: `fn(context) -> (title_id, image_id, highlight_id)`, or a mapping ad_id -> such a
        tuple or a list of them (one drawn uniformly per impression). Fatigue is per user and
        (title, image) pair. Combinations are always compliant (violations stay 0).
        """
        w = self.world
        contexts = self.sample_contexts(n_impressions, seed, "feed")
        choice_rng, outcome_rng = stream_rng(seed, 104), stream_rng(seed, 105)
        u_click, u_conv = outcome_rng.random(n_impressions), outcome_rng.random(n_impressions)
        seen: dict[tuple, int] = {}
        clicks = conversions = repeats = 0
        exp_clicks = exp_conv = 0.0
        for i, ctx in enumerate(contexts):
            combo = self._choose(policy, ctx, (ctx["ad_id"],), choice_rng)
            if not isinstance(combo, (tuple, list)) or len(combo) != 3:
                raise TypeError(f"combo policy must return (title_id, image_id, highlight_id), got {combo!r}")
            key = (ctx["user_id"], combo[0], combo[1])
            earlier = seen.get(key, 0) if fatigue else 0
            seen[key] = earlier + 1
            repeats += earlier > 0
            p_click, p_conv = self.true_combo_probs(ctx, *combo)
            p_click *= float(fatigue_factor(w, earlier))
            exp_clicks += p_click
            exp_conv += p_click * p_conv
            if u_click[i] < p_click:
                clicks += 1
                conversions += bool(u_conv[i] < p_conv)
        return ABResult(n_impressions, clicks, conversions, 0, exp_clicks, exp_conv, repeats)
