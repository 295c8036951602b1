"""The phrase grammar ad texts are built from, and the pure parse of any text against it.

An ad text is `[hook] product-phrase [claim] [benefit] [call to action]`. The lexicon below
fixes the phrase strings; their hidden effects are drawn per world (see `world.py`). The
parse (`analyze_text`) depends on the text string alone, so texts no pool ever held (the
policy LM's) get a truth too: known phrases are found by case-insensitive whole-token
matching, unknown words are neutral.
"""
from __future__ import annotations

import dataclasses
import re
from functools import lru_cache

SLOTS = ("hook", "claim", "benefit", "cta")
NONCOMPLIANT_CATEGORIES = ("absolute_claim", "guarantee", "medical_claim", "financial_claim", "fake_urgency")

# (phrase, slot, category). Category "plain" is ordinary copy; "clickbait" raises CTR and
# lowers CVR; the non-compliant categories tempt clicks and violate ad policy.
LEXICON: tuple[tuple[str, str, str], ...] = (
    # hooks
    ("discover", "hook", "plain"),
    ("new arrivals", "hook", "plain"),
    ("treat yourself", "hook", "plain"),
    ("upgrade today", "hook", "plain"),
    ("made for you", "hook", "plain"),
    ("top rated", "hook", "plain"),
    ("hello savings", "hook", "plain"),
    ("fresh picks", "hook", "plain"),
    ("handpicked for this season", "hook", "plain"),
    ("you won't believe", "hook", "clickbait"),
    ("shocking", "hook", "clickbait"),
    ("this one trick", "hook", "clickbait"),
    ("what happens next", "hook", "clickbait"),
    ("secret revealed", "hook", "clickbait"),
    ("insiders hate this", "hook", "clickbait"),
    # non-compliant claims
    ("best ever", "claim", "absolute_claim"),
    ("#1", "claim", "absolute_claim"),
    ("number one", "claim", "absolute_claim"),
    ("guaranteed results", "claim", "guarantee"),
    ("risk-free", "claim", "guarantee"),
    ("cures", "claim", "medical_claim"),
    ("clinically proven to", "claim", "medical_claim"),
    ("guaranteed returns", "claim", "financial_claim"),
    ("double your money", "claim", "financial_claim"),
    ("only 1 left", "claim", "fake_urgency"),
    ("offer ends in minutes", "claim", "fake_urgency"),
    # benefits
    ("free shipping", "benefit", "plain"),
    ("save up to 30%", "benefit", "plain"),
    ("no hidden fees", "benefit", "plain"),
    ("24/7 support", "benefit", "plain"),
    ("easy returns", "benefit", "plain"),
    ("trusted by thousands", "benefit", "plain"),
    ("flexible plans", "benefit", "plain"),
    ("fast delivery", "benefit", "plain"),
    ("expert advice", "benefit", "plain"),
    ("price match promise", "benefit", "plain"),
    ("loved by over ten thousand happy customers", "benefit", "plain"),
    ("members get exclusive seasonal discounts", "benefit", "plain"),
    # calls to action
    ("shop now", "cta", "plain"),
    ("book today", "cta", "plain"),
    ("learn more", "cta", "plain"),
    ("sign up", "cta", "plain"),
    ("get a quote", "cta", "plain"),
    ("order now", "cta", "plain"),
    ("try it free", "cta", "plain"),
    ("see offers", "cta", "plain"),
)

# Claim phrases that fit as a lead-in ("Clinically proven to ...") vs as a tail.
CLAIM_TEMPLATES = {
    "best ever": "Best ever {noun}",
    "#1": "#1 choice",
    "number one": "The number one pick",
    "guaranteed results": "Guaranteed results",
    "risk-free": "Risk-free",
    "cures": "Cures fatigue",
    "clinically proven to": "Clinically proven to work",
    "guaranteed returns": "Guaranteed returns",
    "double your money": "Double your money",
    "only 1 left": "Only 1 left",
    "offer ends in minutes": "Offer ends in minutes",
}

PRODUCT_TEMPLATES = (
    "{keyword} from {brand}",
    "Shop {keyword}",
    "{brand} {keyword}",
    "Compare {keyword}",
    "{keyword} made easy",
    "{brand}: {noun}",
    "Your {noun} by {brand}",
)

VERTICAL_NOUNS = {
    "travel": ["flights", "hotels", "cruises", "car rental", "city breaks", "beach resorts", "train tickets", "tours"],
    "finance": ["savings account", "credit card", "mortgage", "car insurance", "personal loan", "index funds",
                "budget app", "pension plan"],
    "health": ["vitamins", "gym membership", "yoga classes", "protein powder", "running shoes", "sleep tracker",
               "massage", "dental care"],
    "electronics": ["laptops", "headphones", "smartphones", "smart watch", "tablets", "gaming console", "4k tv",
                    "wireless speaker"],
    "fashion": ["sneakers", "dresses", "jackets", "handbags", "sunglasses", "jeans", "watches", "boots"],
    "home": ["sofas", "mattress", "kitchen knives", "coffee maker", "bed linen", "desk lamp", "air purifier",
             "garden tools"],
    "education": ["online courses", "language lessons", "coding bootcamp", "math tutoring", "mba program",
                  "exam prep", "music lessons", "ebooks"],
    "auto": ["used cars", "car tires", "car wash", "ev charger", "motor oil", "car parts", "leasing deals",
             "dash cam"],
}
GENERIC_NOUNS = ["deals", "plans", "services", "kits", "bundles", "essentials", "packages", "subscriptions"]
KEYWORD_QUALIFIERS = ["cheap", "premium", "best price", "online", "local", "discount", "top", "new"]
QUERY_MODIFIERS = ["", "near me", "reviews", "2026", "for beginners", "sale", "compare prices"]

BRAND_SYLLABLES = ["nova", "luma", "zen", "kip", "orb", "vela", "tru", "mira", "pix", "quo", "sola", "brio",
                   "fen", "dax", "eli", "rho"]

_NON_TOKEN = re.compile(r"[^a-z0-9#%$']+")
TRUNCATION_MARK = "\u2026"


@lru_cache(maxsize=100_000)
def normalize(text: str) -> str:
    """Lower-case, punctuation to spaces (keeping # % $ '), single-spaced and space-padded."""
    return " " + " ".join(_NON_TOKEN.sub(" ", text.lower()).split()) + " "


@lru_cache(maxsize=100_000)
def tokens(text: str) -> frozenset[str]:
    return frozenset(normalize(text).split())


def nouns_for(vertical: str) -> list[str]:
    """Product nouns of a vertical; unknown vertical names get generic nouns prefixed by the name."""
    if vertical in VERTICAL_NOUNS:
        return list(VERTICAL_NOUNS[vertical])
    word = vertical.replace("_", " ")
    return [f"{word} {noun}" for noun in GENERIC_NOUNS]


def serve(text: str, max_chars: int) -> str:
    """What the page shows: texts over the limit are cut and end with an ellipsis."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    return text[: max_chars - 1].rstrip() + TRUNCATION_MARK


_PHRASES_NORMALIZED = tuple((normalize(p), i) for i, (p, _, _) in enumerate(LEXICON))


@dataclasses.dataclass(frozen=True)
class TextAnalysis:
    """Everything the truth needs from a text string, independent of the context."""

    served: str
    truncated: bool
    phrase_ids: tuple[int, ...]  # indices into LEXICON, sorted
    slot_phrases: dict  # slot -> tuple of phrase ids
    violations: tuple[str, ...]  # non-compliant categories found
    token_set: frozenset
    normalized: str

    @property
    def compliant(self) -> bool:
        return not self.violations

    @property
    def signature(self) -> str:
        """Near-duplicate key for fatigue: the phrase set, or the token set if no phrase is known."""
        if self.phrase_ids:
            return "p:" + ",".join(map(str, self.phrase_ids))
        return "t:" + " ".join(sorted(self.token_set))


@lru_cache(maxsize=200_000)
def analyze_text(text: str, max_chars: int) -> TextAnalysis:
    """Parse `text` as served under `max_chars`: truncation, known phrases per slot, violations."""
    served = serve(text, max_chars)
    truncated = served.endswith(TRUNCATION_MARK)
    norm = normalize(served)
    found = tuple(i for phrase, i in _PHRASES_NORMALIZED if phrase in norm)
    slot_phrases = {slot: tuple(i for i in found if LEXICON[i][1] == slot) for slot in SLOTS}
    violations = tuple(sorted({LEXICON[i][2] for i in found if LEXICON[i][2] in NONCOMPLIANT_CATEGORIES}))
    return TextAnalysis(served, truncated, found, slot_phrases, violations, frozenset(norm.split()), norm)


def keyword_relevance(analysis: TextAnalysis, keyword: str, query: str) -> tuple[bool, float]:
    """(the served text contains the bid keyword as a phrase, share of the query's words it contains)."""
    has_keyword = bool(keyword.strip()) and normalize(keyword) in analysis.normalized
    query_tokens = tokens(query)
    coverage = len(query_tokens & analysis.token_set) / len(query_tokens) if query_tokens else 0.0
    return has_keyword, coverage
