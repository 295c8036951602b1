"""The `simulate:` params section as a self-validating dataclass."""
from __future__ import annotations

import dataclasses
import re

from plumbing.dates import parse_ds
from plumbing.config import ConfigError, build_config, require, require_range
from relate_sim.drift import DriftConfig

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclasses.dataclass
class SimulateConfig:
    seed: int
    start_date: str
    days: int
    impressions_per_day: int
    search_share: float
    verticals: list[str]
    advertisers_per_vertical: int
    products_per_advertiser: int
    keywords_per_product: int
    users: int
    texts_per_ad: int
    titles_per_ad: int
    images_per_ad: int
    highlights_per_ad: int
    content_share: float  # share of each feed element kind's utility variance its content explains (relate_sim/content.py)
    image_embedding_noise: float  # sd of the noise on an image's projected attributes in its embedding
    text_max_chars: int
    exploration: float
    review_catch_rate: float
    max_conversion_delay_days: int
    duplicate_rate: float
    corrupt_rate: float
    part_size: int
    user_segments: list[str]
    chunk_size: int  # impressions simulated per vectorised chunk: bounds memory at 10M+/day
    gzip_level: int
    drift: DriftConfig | dict  # the `drift:` mapping, built into a DriftConfig (relate_sim/drift.py)

    def __post_init__(self) -> None:
        p = "simulate"
        require(0 <= self.seed < 2**63, f"{p}.seed", f"must be a non-negative 63-bit int, got {self.seed}")
        try:
            parse_ds(self.start_date)
        except ValueError as err:
            raise ConfigError(f"{p}.start_date: {err}") from None
        # sizes: the upper bounds keep dates within the calendar and counts within int64 arithmetic
        require_range(self, p, {"days": (1, 3660), "impressions_per_day": (1, 10**9), "users": (1, 10**9),
                                "advertisers_per_vertical": (1, 1000), "products_per_advertiser": (1, 1000),
                                "part_size": (1000, 10**9), "chunk_size": (1000, 10**8)})
        for name in ("search_share", "exploration", "review_catch_rate", "duplicate_rate", "corrupt_rate"):
            value = getattr(self, name)
            require(0.0 <= value <= 1.0, f"{p}.{name}", f"must be in [0, 1], got {value}")
        require(self.duplicate_rate <= 0.5, f"{p}.duplicate_rate", f"must be <= 0.5, got {self.duplicate_rate}")
        require(self.corrupt_rate <= 0.5, f"{p}.corrupt_rate", f"must be <= 0.5, got {self.corrupt_rate}")
        require(len(self.verticals) >= 5, f"{p}.verticals", f"need at least 5 verticals, got {len(self.verticals)}")
        require(len(self.user_segments) >= 2, f"{p}.user_segments", "need at least 2 segments")
        for field_name in ("verticals", "user_segments"):
            names = getattr(self, field_name)
            require(len(set(names)) == len(names), f"{p}.{field_name}", f"names must be unique, got {names}")
            bad = [n for n in names if not _NAME_RE.match(n)]
            require(not bad, f"{p}.{field_name}", f"names must match [a-z][a-z0-9_]*, got {bad}")
        require(1 <= self.keywords_per_product <= 8, f"{p}.keywords_per_product", f"must be in [1, 8], got {self.keywords_per_product}")
        require(2 <= self.texts_per_ad <= 200, f"{p}.texts_per_ad", f"must be in [2, 200], got {self.texts_per_ad}")
        for name in ("titles_per_ad", "images_per_ad", "highlights_per_ad"):
            require(2 <= getattr(self, name) <= 50, f"{p}.{name}", f"must be in [2, 50], got {getattr(self, name)}")
        require(0.0 <= self.content_share <= 1.0, f"{p}.content_share", f"must be in [0, 1], got {self.content_share}")
        require(self.image_embedding_noise >= 0, f"{p}.image_embedding_noise",
                f"must be >= 0, got {self.image_embedding_noise}")
        require(30 <= self.text_max_chars <= 1000, f"{p}.text_max_chars", f"must be in [30, 1000], got {self.text_max_chars}")
        require(1 <= self.max_conversion_delay_days <= 30, f"{p}.max_conversion_delay_days",
                f"must be in [1, 30], got {self.max_conversion_delay_days}")
        if isinstance(self.drift, dict):
            self.drift = build_config(DriftConfig, f"{p}.drift", self.drift)
        unknown = sorted(set(self.drift.season_verticals) - set(self.verticals))
        require(not unknown, f"{p}.drift.season_verticals", f"must be among {p}.verticals, got {unknown}")
        require(0 <= self.gzip_level <= 9, f"{p}.gzip_level", f"must be in [0, 9], got {self.gzip_level}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
