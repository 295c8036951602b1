"""The hidden world: market structure, users, creative pools and every true effect, seeded.

`build_world(config)` is deterministic in the config, so the oracle can rebuild the exact
world from the config stored in `world.json` (and checks the fingerprint to prove it).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np

from relate_sim import content, grammar
from relate_sim.config import SimulateConfig
from relate_sim.streams import stream_rng

IMAGE_ATTRIBUTES = ("brightness", "warmth", "has_person", "product_closeup", "text_overlay", "minimalism",
                    "saturation", "lifestyle")
LATENT_DIM = 3
SEARCH_POSITIONS = (1, 2, 3, 4)
SEARCH_POSITION_PROBS = (0.4, 0.3, 0.2, 0.1)
FEED_POSITIONS = (1, 2, 3, 4, 5, 6)
FEED_POSITION_PROBS = (0.3, 0.22, 0.16, 0.13, 0.1, 0.09)
QUERY_MODIFIER_PROBS = (0.4, 0.1, 0.12, 0.08, 0.1, 0.1, 0.1)

# Fixed effect sizes (logits unless said otherwise). Chosen so CTR lands at 2-8% and CVR
# given click at 5-20%, and so the text accounts for a large share of the variation.
COEF = {
    "base_click_search": -3.85,
    "base_click_feed": -3.35,
    "base_conv": -2.3,
    "keyword_match_click": 0.55,
    "keyword_match_conv": 0.2,
    "query_coverage_click": 0.45,
    "no_cta_click": -0.3,
    "no_cta_conv": -0.15,
    "no_known_phrase_click": -1.0,
    "clutter_click": -0.15,  # per phrase beyond one in a slot
    "truncated_click": -0.4,
    "title_image_interaction": 0.45,
    "segment_image_preference": 0.5,
    "fatigue_decay": 0.7,  # CTR multiplier per earlier exposure of the same (near-duplicate) creative
    "fatigue_max_exposures": 8,
    "policy_temperature": 0.5,
    "policy_pairing_bonus": 3.0,
}


@dataclasses.dataclass
class World:
    config: SimulateConfig
    segments: list[str]
    verticals: list[str]
    # traffic and context effects
    segment_vertical_traffic: np.ndarray  # [S, V] P(vertical | segment)
    segment_vertical_click: np.ndarray  # [S, V]
    segment_conv: np.ndarray  # [S]
    search_position_click: np.ndarray  # [len(SEARCH_POSITIONS)]
    feed_position_click: np.ndarray  # [len(FEED_POSITIONS)]
    # phrase effects, aligned with grammar.LEXICON
    phrase_click: np.ndarray  # [P]
    phrase_conv: np.ndarray  # [P]
    phrase_segment_click: np.ndarray  # [P, S], non-zero for benefits only
    # market
    advertisers: list[dict]  # id, name, vertical
    products: list[dict]  # id, advertiser, vertical, noun, keywords, appeal_click, appeal_conv, price
    ads: list[dict]  # id, product
    ads_by_vertical: np.ndarray  # [V, ads per vertical] ad indices
    # search creative pools
    texts: list[list[str]]  # [A][T] raw texts as written by the advertiser
    text_blocked: np.ndarray  # [A, T] caught by the serving-time review (never served)
    # feed creative pools
    titles: list[list[str]]  # [A][Ti]
    highlights: list[list[str]]  # [A][H]
    title_utility: np.ndarray  # [A, Ti]
    image_utility: np.ndarray  # [A, I]
    highlight_utility: np.ndarray  # [A, H]
    highlight_conv: np.ndarray  # [A, H]
    title_latent: np.ndarray  # [A, Ti, L]
    image_latent: np.ndarray  # [A, I, L]
    image_attributes: np.ndarray  # [A, I, len(IMAGE_ATTRIBUTES)] in [0, 1]
    segment_image_preference: np.ndarray  # [S, len(IMAGE_ATTRIBUTES)]
    # content (relate_sim/content.py): the part of each element's utility its content explains
    title_content_weights: np.ndarray  # [hooks + title forms]
    highlight_content_weights: np.ndarray  # [benefits]
    image_attribute_weights: np.ndarray  # [len(IMAGE_ATTRIBUTES)]
    content_norm: np.ndarray  # [3, 2] per kind (content.KINDS): base-world mean and sd of the raw content
    # logging policy
    ad_exploration: np.ndarray  # [A] epsilon per ad
    policy_text_score: np.ndarray  # [A, T]
    policy_title_score: np.ndarray  # [A, Ti]
    policy_image_score: np.ndarray  # [A, I]
    policy_highlight_score: np.ndarray  # [A, H]
    policy_pair_image: np.ndarray  # [A, Ti] the image the policy likes to pair with each title
    # users
    user_segment: np.ndarray  # [U]
    user_activity: np.ndarray  # [U] sums to 1
    coef: dict

    # ---- ids -------------------------------------------------------------------------
    @property
    def n_ads(self) -> int:
        return len(self.ads)

    def ad_index(self, ad_id: str) -> int:
        if getattr(self, "_ad_index", None) is None:
            self._ad_index = {ad["id"]: i for i, ad in enumerate(self.ads)}
        if ad_id not in self._ad_index:
            raise ValueError(f"unknown ad_id {ad_id!r}")
        return self._ad_index[ad_id]

    def segment_index(self, segment: str) -> int:
        try:
            return self.segments.index(segment)
        except ValueError:
            raise ValueError(f"unknown user_segment {segment!r}; known: {self.segments}") from None

    # ---- drift (relate_sim/drift.py sets these on a world as of a later day) -----------------
    @property
    def day(self) -> int:
        """Days since start_date this world's truth holds for (0: the base world)."""
        return self.__dict__.get("day", 0)

    @property
    def banned_phrases(self) -> frozenset:
        """Lexicon indices a compliance rule in force on this day bans (beyond the grammar's categories)."""
        return self.__dict__.get("banned_phrases", frozenset())

    def generation(self, kind: str, ad: int, k: int) -> int:
        gens = self.__dict__.get("generations")
        return 0 if gens is None else int(gens[kind][ad, k])

    def _element_id(self, prefix: str, kind: str, ad: int, k: int) -> str:
        g = self.generation(kind, ad, k)
        return f"{prefix}-{ad:04d}-{k:02d}" + (f"-g{g}" if g else "")

    def title_id(self, ad: int, k: int) -> str:
        return self._element_id("ttl", "title", ad, k)

    def image_id(self, ad: int, k: int) -> str:
        return self._element_id("img", "image", ad, k)

    def highlight_id(self, ad: int, k: int) -> str:
        return self._element_id("hlt", "highlight", ad, k)

    def parse_element_id(self, element_id: str, kind: str, ad: int) -> int:
        """The slot of a live element id of `ad`; a retired (or not yet launched) one raises ValueError."""
        prefix = {"title": "ttl", "image": "img", "highlight": "hlt"}[kind]
        parts = str(element_id).split("-")
        if len(parts) not in (3, 4) or parts[0] != prefix or int(parts[1]) != ad:
            raise ValueError(f"{kind} id {element_id!r} does not belong to ad {ad}")
        k = int(parts[2])
        g = int(parts[3][1:]) if len(parts) == 4 and parts[3].startswith("g") else 0
        if len(parts) == 4 and not parts[3].startswith("g"):
            raise ValueError(f"{kind} id {element_id!r} does not belong to ad {ad}")
        if not 0 <= k < {"title": len(self.titles[ad]), "image": self.image_utility.shape[1],
                         "highlight": len(self.highlights[ad])}[kind]:
            raise ValueError(f"{kind} id {element_id!r}: no slot {k} in ad {ad}")
        if g != self.generation(kind, ad, k):
            raise ValueError(f"{kind} {element_id!r} is not live on day {self.day} "
                             f"(slot {k} holds generation {self.generation(kind, ad, k)})")
        return k

    def keyword_query(self, ad: int, kw: int, mod: int) -> tuple[str, str]:
        keyword = self.products[self.ads[ad]["product"]]["keywords"][kw]
        modifier = grammar.QUERY_MODIFIERS[mod]
        return keyword, f"{keyword} {modifier}".strip()

    # ---- serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict:
        """Everything hidden, human-readable (floats exact, so the fingerprint is stable)."""
        out = {}
        for field in dataclasses.fields(self):  # caches live outside the fields
            value = getattr(self, field.name)
            if isinstance(value, np.ndarray):
                value = value.tolist()
            elif isinstance(value, SimulateConfig):
                value = value.to_dict()
            out[field.name] = value
        out["lexicon"] = [
            {"phrase": p, "slot": slot, "category": cat, "click_effect": self.phrase_click[i].item(),
             "conv_effect": self.phrase_conv[i].item()}
            for i, (p, slot, cat) in enumerate(grammar.LEXICON)
        ]
        out["image_attribute_names"] = list(IMAGE_ATTRIBUTES)
        return out

    def fingerprint(self) -> str:
        if getattr(self, "_fingerprint", None) is None:
            payload = json.dumps(self.to_dict(), sort_keys=True).encode()
            self._fingerprint = hashlib.sha256(payload).hexdigest()
        return self._fingerprint


def _brand_names(rng: np.random.Generator, n: int) -> list[str]:
    names: list[str] = []
    while len(names) < n:
        a, b = rng.choice(len(grammar.BRAND_SYLLABLES), 2, replace=False)
        name = (grammar.BRAND_SYLLABLES[a] + grammar.BRAND_SYLLABLES[b]).capitalize()
        if name not in names:
            names.append(name)
    return names


def _keywords(rng: np.random.Generator, noun: str, k: int) -> list[str]:
    qualifiers = [grammar.KEYWORD_QUALIFIERS[i] for i in rng.permutation(len(grammar.KEYWORD_QUALIFIERS))]
    return [noun] + [f"{q} {noun}" for q in qualifiers[: k - 1]]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _compose_text(rng: np.random.Generator, vertical: str, brand: str, noun: str, keywords: list[str]) -> str:
    lex = grammar.LEXICON
    parts = []
    if rng.random() < 0.75:
        category = "clickbait" if rng.random() < 0.25 else "plain"
        hooks = [p for p, slot, cat in lex if slot == "hook" and cat == category]
        parts.append(_cap(hooks[rng.integers(len(hooks))]))
    template = grammar.PRODUCT_TEMPLATES[rng.integers(len(grammar.PRODUCT_TEMPLATES))]
    keyword = keywords[rng.integers(len(keywords))]
    product = template.format(keyword=keyword, brand=brand, noun=noun)
    parts.append(_cap(product))
    if rng.random() < 0.2:
        allowed = [p for p, slot, cat in lex if slot == "claim"
                   and (cat != "medical_claim" or vertical == "health")
                   and (cat != "financial_claim" or vertical == "finance")]
        claim = allowed[rng.integers(len(allowed))]
        parts.append(grammar.CLAIM_TEMPLATES[claim].format(noun=noun))
    if rng.random() < 0.8:
        benefits = [p for p, slot, _ in lex if slot == "benefit"]
        parts.append(_cap(benefits[rng.integers(len(benefits))]))
    if rng.random() < 0.85:
        ctas = [p for p, slot, _ in lex if slot == "cta"]
        parts.append(_cap(ctas[rng.integers(len(ctas))]) + ("!" if rng.random() < 0.5 else ""))
    sep = [" ", ". ", " - ", ", "][rng.integers(4)]
    text = parts[0]
    for part in parts[1:]:
        text += (" " if text.endswith(("?", "!", ":")) else sep) + part
    return text


def _draw_traffic_effects(rng: np.random.Generator, S: int, V: int) -> dict:
    """Who browses which vertical, and the segment and position effects on clicks and conversions."""
    return {
        "segment_vertical_traffic": rng.dirichlet(np.full(V, 0.8), size=S),
        "segment_vertical_click": rng.normal(0.0, 0.3, size=(S, V)),
        "segment_conv": rng.normal(0.0, 0.2, size=S),
        "search_position_click": -0.3 * np.arange(len(SEARCH_POSITIONS)),
        "feed_position_click": -0.2 * np.arange(len(FEED_POSITIONS)),
    }


def _draw_phrase_effects(rng: np.random.Generator, S: int) -> dict:
    """Click and conversion effects of every lexicon phrase, by slot and category."""
    P = len(grammar.LEXICON)
    phrase_click = np.zeros(P)
    phrase_conv = np.zeros(P)
    phrase_segment_click = np.zeros((P, S))
    for i, (_, slot, cat) in enumerate(grammar.LEXICON):
        if cat == "clickbait":
            phrase_click[i], phrase_conv[i] = rng.normal(0.55, 0.1), rng.normal(-0.7, 0.15)
        elif cat in grammar.NONCOMPLIANT_CATEGORIES:
            phrase_click[i], phrase_conv[i] = rng.normal(0.6, 0.15), rng.normal(0.1, 0.2)
        elif slot == "hook":
            phrase_click[i], phrase_conv[i] = rng.normal(0.1, 0.15), rng.normal(0.0, 0.1)
        elif slot == "benefit":
            phrase_click[i], phrase_conv[i] = rng.normal(0.15, 0.2), rng.normal(0.15, 0.2)
            phrase_segment_click[i] = rng.normal(0.0, 0.25, size=S)
        else:  # cta
            phrase_click[i], phrase_conv[i] = rng.normal(0.1, 0.12), rng.normal(0.1, 0.15)
    return {"phrase_click": phrase_click, "phrase_conv": phrase_conv, "phrase_segment_click": phrase_segment_click}


def _build_market(rng: np.random.Generator, config: SimulateConfig) -> dict:
    """Advertisers per vertical, their products (keywords, appeal, price) and one ad per product."""
    brands = _brand_names(rng, len(config.verticals) * config.advertisers_per_vertical)
    advertisers, products, ads = [], [], []
    ads_by_vertical = []
    for v, vertical in enumerate(config.verticals):
        nouns = grammar.nouns_for(vertical)
        vertical_ads = []
        for a in range(config.advertisers_per_vertical):
            adv_idx = len(advertisers)
            advertisers.append({"id": f"adv-{adv_idx:03d}", "name": brands[adv_idx], "vertical": vertical})
            for _ in range(config.products_per_advertiser):
                noun = nouns[rng.integers(len(nouns))]
                products.append({
                    "id": f"prd-{len(products):04d}", "advertiser": adv_idx, "vertical": v, "noun": noun,
                    "keywords": _keywords(rng, noun, config.keywords_per_product),
                    "appeal_click": float(rng.normal(0.0, 0.3)), "appeal_conv": float(rng.normal(0.0, 0.3)),
                    "price": float(np.round(np.exp(rng.normal(3.5, 0.8)), 2)),
                })
                vertical_ads.append(len(ads))
                ads.append({"id": f"ad-{len(ads):04d}", "product": len(products) - 1})
        ads_by_vertical.append(vertical_ads)
    return {"advertisers": advertisers, "products": products, "ads": ads,
            "ads_by_vertical": np.asarray(ads_by_vertical, dtype=np.int64)}


def _text_pool(rng: np.random.Generator, config: SimulateConfig, vertical: str, brand: str,
               product: dict) -> tuple[list[str], np.ndarray]:
    """One ad's distinct search texts and which of them the serving-time review blocks."""
    pool: list[str] = []
    while len(pool) < config.texts_per_ad:
        text = _compose_text(rng, vertical, brand, product["noun"], product["keywords"])
        if text not in pool:
            pool.append(text)
    blocked = np.zeros(config.texts_per_ad, dtype=bool)
    for t, text in enumerate(pool):
        if not grammar.analyze_text(text, config.text_max_chars).compliant:
            blocked[t] = rng.random() < config.review_catch_rate
    if blocked.all():  # keep the ad servable
        blocked[0] = False
    return pool, blocked


def _titles(rng: np.random.Generator, n: int, brand: str, noun: str, plain_hooks: list[str]) -> list[str]:
    """One ad's `n` distinct feed titles."""
    ad_titles: list[str] = []
    for attempt in range(1000):
        if len(ad_titles) == n:
            break
        hook = plain_hooks[rng.integers(len(plain_hooks))]
        title = f"{_cap(hook)} {noun}" if rng.random() < 0.6 else f"{brand} {noun}"
        if rng.random() < 0.3:
            title += " for you" if title.startswith(brand) else f" by {brand}"
        if attempt > 200:  # small vocabularies: make it unique rather than loop forever
            title += f" {len(ad_titles) + 1}"
        if title not in ad_titles:
            ad_titles.append(title)
    return ad_titles


def _highlights(rng: np.random.Generator, n: int, benefits: list[str]) -> list[str]:
    """One ad's `n` feed highlights: benefits in a random order, numbered once they repeat."""
    picks = rng.permutation(len(benefits))
    return [_cap(benefits[picks[k % len(benefits)]]) + (f" ({k // len(benefits) + 1})" if k >= len(benefits) else "")
            for k in range(n)]


def _build_creatives(rng: np.random.Generator, config: SimulateConfig, market: dict) -> dict:
    """Every ad's creative pools: search texts (with review blocks), feed titles and highlights."""
    advertisers, products, ads = market["advertisers"], market["products"], market["ads"]
    texts, titles, highlights = [], [], []
    text_blocked = np.zeros((len(ads), config.texts_per_ad), dtype=bool)
    plain_hooks = [p for p, slot, cat in grammar.LEXICON if slot == "hook" and cat == "plain"]
    benefits = [p for p, slot, _ in grammar.LEXICON if slot == "benefit"]
    for a, ad in enumerate(ads):
        product = products[ad["product"]]
        brand = advertisers[product["advertiser"]]["name"]
        pool, text_blocked[a] = _text_pool(rng, config, config.verticals[product["vertical"]], brand, product)
        texts.append(pool)
        titles.append(_titles(rng, config.titles_per_ad, brand, product["noun"], plain_hooks))
        highlights.append(_highlights(rng, config.highlights_per_ad, benefits))
    return {"texts": texts, "text_blocked": text_blocked, "titles": titles, "highlights": highlights}


def _draw_element_effects(rng: np.random.Generator, config: SimulateConfig, A: int, S: int) -> dict:
    """Idiosyncratic draws (standard normal, per kind), latent vectors and image attributes of the feed
    elements; `content.attach` turns the draws into utilities."""
    Ti, I, H, L = config.titles_per_ad, config.images_per_ad, config.highlights_per_ad, LATENT_DIM
    D = len(IMAGE_ATTRIBUTES)
    title_z = rng.normal(0.0, 1.0, size=(A, Ti))
    image_attributes = rng.beta(1.5, 1.5, size=(A, I, D))
    attribute_weights = rng.normal(0.0, 0.4, size=D)
    image_z = rng.normal(0.0, 1.0, size=(A, I))
    return {
        "z": {"title": title_z, "image": image_z, "highlight": rng.normal(0.0, 1.0, size=(A, H))},
        "attribute_weights": attribute_weights,
        "image_attributes": image_attributes,
        "highlight_conv": rng.normal(0.0, 0.15, size=(A, H)),
        "title_latent": rng.normal(0.0, 1.0, size=(A, Ti, L)) / np.sqrt(L),
        "image_latent": rng.normal(0.0, 1.0, size=(A, I, L)) / np.sqrt(L),
        "segment_image_preference": rng.normal(0.0, 1.0, size=(S, D)) / np.sqrt(D),
    }


def _draw_logging_policy(rng: np.random.Generator, config: SimulateConfig, title_utility: np.ndarray,
                         image_utility: np.ndarray) -> dict:
    """The logging policy's exploration and beliefs.

    Some ads explore far more than others; beliefs are noisy guesses of the truth; and the
    policy pairs its titles with images against their true quality (the weakest titles get
    the strongest images), which is what confounds naive per-element CTR.
    """
    (A, Ti), I = title_utility.shape, image_utility.shape[1]
    ad_exploration = np.clip(config.exploration * np.exp(rng.normal(0.0, 0.7, size=A)), 0.0, 1.0)
    policy_text_score = rng.normal(0.0, 0.3, size=(A, config.texts_per_ad))  # text-effect part added in truth
    policy_title_score = 0.5 * title_utility + rng.normal(0.0, 0.3, size=(A, Ti))
    policy_image_score = 0.5 * image_utility + rng.normal(0.0, 0.3, size=(A, I))
    policy_highlight_score = rng.normal(0.0, 0.3, size=(A, config.highlights_per_ad))
    policy_pair_image = pair_images(title_utility, image_utility)
    return {"ad_exploration": ad_exploration, "policy_text_score": policy_text_score,
            "policy_title_score": policy_title_score, "policy_image_score": policy_image_score,
            "policy_highlight_score": policy_highlight_score, "policy_pair_image": policy_pair_image}


def pair_images(title_utility: np.ndarray, image_utility: np.ndarray) -> np.ndarray:
    """The image the logging policy pairs with each title: the weakest titles get the strongest images."""
    (A, Ti), I = title_utility.shape, image_utility.shape[1]
    policy_pair_image = np.zeros((A, Ti), dtype=np.int64)
    for a in range(A):
        by_title = np.argsort(title_utility[a])  # worst title first
        by_image = np.argsort(-image_utility[a])  # best image first
        for rank, t in enumerate(by_title):
            policy_pair_image[a, t] = by_image[rank % I]
    return policy_pair_image


def draw_new_element(rng: np.random.Generator, world: World, kind: str, a: int, k: int, banned: frozenset) -> None:
    """Launch a new element of `kind` in slot `k` of ad `a` (in place), drawn like the originals."""
    cfg = world.config
    product = world.products[world.ads[a]["product"]]
    brand = world.advertisers[product["advertiser"]]["name"]
    if kind == "text":
        text = _compose_text(rng, cfg.verticals[product["vertical"]], brand, product["noun"], product["keywords"])
        analysis = grammar.analyze_text(text, cfg.text_max_chars)
        compliant = analysis.compliant and not set(analysis.phrase_ids) & banned
        world.texts[a][k] = text
        world.text_blocked[a, k] = (not compliant) and rng.random() < cfg.review_catch_rate
        world.policy_text_score[a, k] = rng.normal(0.0, 0.3)
    elif kind == "title":
        plain_hooks = [p for p, slot, cat in grammar.LEXICON if slot == "hook" and cat == "plain"]
        hook = plain_hooks[rng.integers(len(plain_hooks))]
        world.titles[a][k] = f"{_cap(hook)} {product['noun']}" if rng.random() < 0.6 else f"{brand} {product['noun']}"
        world.title_utility[a, k] = content.element_content(world, "title", a, k) + float(
            content.idiosyncratic(cfg.content_share, "title", rng.normal()))
        world.title_latent[a, k] = rng.normal(0.0, 1.0, size=LATENT_DIM) / np.sqrt(LATENT_DIM)
        world.policy_title_score[a, k] = 0.5 * world.title_utility[a, k] + rng.normal(0.0, 0.3)
    elif kind == "image":
        world.image_attributes[a, k] = rng.beta(1.5, 1.5, size=len(IMAGE_ATTRIBUTES))
        world.image_utility[a, k] = content.element_content(world, "image", a, k) + float(
            content.idiosyncratic(cfg.content_share, "image", rng.normal()))
        world.image_latent[a, k] = rng.normal(0.0, 1.0, size=LATENT_DIM) / np.sqrt(LATENT_DIM)
        world.policy_image_score[a, k] = 0.5 * world.image_utility[a, k] + rng.normal(0.0, 0.3)
    else:
        benefits = [p for p, slot, _ in grammar.LEXICON if slot == "benefit"]
        world.highlights[a][k] = _cap(benefits[rng.integers(len(benefits))])
        world.highlight_utility[a, k] = content.element_content(world, "highlight", a, k) + float(
            content.idiosyncratic(cfg.content_share, "highlight", rng.normal()))
        world.highlight_conv[a, k] = rng.normal(0.0, 0.15)
        world.policy_highlight_score[a, k] = rng.normal(0.0, 0.3)


def _draw_users(rng: np.random.Generator, config: SimulateConfig, S: int) -> dict:
    """Each user's segment and share of the traffic."""
    user_segment = rng.integers(0, S, size=config.users)
    activity = np.exp(rng.normal(0.0, 0.8, size=config.users))
    return {"user_segment": user_segment, "user_activity": activity / activity.sum()}


def build_world(config: SimulateConfig) -> World:
    """Draw the whole hidden world from `config.seed`."""
    # one stream, drawn in this order: the fingerprint in world.json pins it
    rng = stream_rng(config.seed, 1)
    S, V = len(config.user_segments), len(config.verticals)
    traffic = _draw_traffic_effects(rng, S, V)
    phrases = _draw_phrase_effects(rng, S)
    market = _build_market(rng, config)
    creatives = _build_creatives(rng, config, market)
    elements = _draw_element_effects(rng, config, len(market["ads"]), S)
    elements.update(content.attach(config.content_share, config.seed, creatives["titles"], creatives["highlights"],
                                   elements["image_attributes"], elements.pop("attribute_weights"),
                                   elements.pop("z")))
    policy = _draw_logging_policy(rng, config, elements["title_utility"], elements["image_utility"])
    users = _draw_users(rng, config, S)
    return World(config=config, segments=list(config.user_segments), verticals=list(config.verticals),
                 **traffic, **phrases, **market, **creatives, **elements, **policy, **users, coef=dict(COEF))
