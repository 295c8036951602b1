"""Warm-started training: a training stage continues from the champion's model, or rebuilds in full.

`training.mode` is `full` (train from scratch, as every stage always did) or `warm`: the stage
loads the current champion's artifact (`registry/<version>/<artifact>/`) and trains on the days
after the last day that artifact trained on, with its own budget (`<stage>.warm_*`). A warm
run falls back to `full`, with the reason logged and recorded, when
- there is no champion, its artifact is not here, or it has no lineage (published before it);
- no version in the champion's history trained before this run's last day (a warm run continues
  from the newest one that did: a rerun of a day, or a backfill, never sees its own or later days);
- the chain's last full retrain is `training.full_every_days` or more days old (the cadence);
- the stage finds data the loaded model cannot represent (`Start.full(reason)`): the
  tokenizer's out-of-vocabulary rate on the new days above `training.max_oov_rate`, or ads
  and elements the model has no rows for.

Each training stage writes `lineage.json` into its model directory, so it is published with
the artifact: mode and reason, the version it continued from, the last day it trained on and
the chain of versions back to the last full retrain. publish gathers them into the manifest
and the model card.
"""
from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from plumbing import atomic
from plumbing.config import load_config, load_params, require
from plumbing.dates import parse_ds
from plumbing.logs import get_logger

log = get_logger("warm_start")

FULL, WARM = "full", "warm"
MODES = (FULL, WARM)
LINEAGE_FILE = "lineage.json"
_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass
class TrainingConfig:
    """The `training:` params section."""

    mode: str
    full_every_days: int
    max_oov_rate: float

    def __post_init__(self) -> None:
        require(self.mode in MODES, "training.mode", f"must be one of {', '.join(MODES)}, got {self.mode!r}")
        require(self.full_every_days >= 1, "training.full_every_days", f"must be >= 1, got {self.full_every_days}")
        require(0 <= self.max_oov_rate <= 1, "training.max_oov_rate", f"must be in [0, 1], got {self.max_oov_rate}")


@dataclass(frozen=True)
class Start:
    """How a training stage trains today: in full, or warm from `source` (the champion's artifact)."""

    stage: str
    mode: str
    reason: str
    source: Path | None = None
    version: str | None = None  # the champion version `source` belongs to
    trained_through: str | None = None  # the last day `source` trained on: warm trains on the days after it
    last_full: str | None = None  # the last day the chain's full retrain trained on
    chain: tuple[str, ...] = ()  # versions from the last full retrain to `version`
    max_oov_rate: float = 1.0

    @property
    def warm(self) -> bool:
        return self.mode == WARM

    def full(self, reason: str) -> Start:
        """Fall back to a full retrain, saying why."""
        log.warning("%s: full retrain instead of warm: %s", self.stage, reason)
        return Start(self.stage, FULL, reason, max_oov_rate=self.max_oov_rate)

    def new_days(self, days: Iterable[str]) -> list[str]:
        """The days of `days` the warm source has not trained on (all of them for a full run)."""
        return [d for d in days if self.trained_through is None or d > self.trained_through]

    def check_vocabulary(self, tokenizer, texts: Iterable[str], known_texts: Iterable[str] = ()) -> Start:
        """`self`, or a full retrain when too many of the new texts' words are new to the tokenizer: words
        none of `known_texts` (the days it trained on) holds, which it splits into pieces."""
        if not self.warm:
            return self
        rate, words = oov_rate(tokenizer, texts, known_texts)
        if rate > self.max_oov_rate:
            return self.full(f"tokenizer out-of-vocabulary rate {rate:.3f} on the new days' {words} distinct words "
                             f"> training.max_oov_rate {self.max_oov_rate}")
        return self

    def check_known(self, what: str, known: Iterable[str], seen: Iterable[str]) -> Start:
        """`self`, or a full retrain when the new days hold `what` (ads, elements, ...) the model has no rows for."""
        if not self.warm:
            return self
        unknown = sorted(set(seen) - set(known))
        if unknown:
            shown = ", ".join(map(str, unknown[:5])) + (" ..." if len(unknown) > 5 else "")
            return self.full(f"{len(unknown)} new {what} the champion's model has no rows for ({shown})")
        return self

    def lineage(self, trained_through: str, **extra) -> dict:
        """What `write_lineage` records for a model trained through `trained_through` this way."""
        return {
            "stage": self.stage, "mode": self.mode, "reason": self.reason,
            "continued_from": self.version, "trained_through": trained_through,
            "last_full_trained_through": self.last_full if self.warm else trained_through,
            "chain": list(self.chain), **extra,
        }


def plan(stage: str, artifact: str, params: Path, through: str) -> Start:
    """How `stage` trains a model through day `through`: warm from the champion's `artifact`, or full."""
    cfg = _training_config(params)
    full = Start(stage, FULL, "training.mode is full", max_oov_rate=cfg.max_oov_rate)
    if cfg.mode == FULL:
        return full
    from pipelines.publish_registry import check_registry_dir, read_champion

    written = (load_params(params).get("publish") or {}).get("registry_dir")
    registry = check_registry_dir(written) if written else None
    champion = read_champion(registry) if registry is not None else None
    if champion is None:
        return full.full("no champion to continue from")
    found = _source(registry, champion, artifact, through)
    if isinstance(found, str):
        return full.full(found)
    version, source, lineage = found
    age = (parse_ds(through) - parse_ds(lineage["last_full_trained_through"])).days
    if age >= cfg.full_every_days:
        return full.full(f"the last full retrain trained through {lineage['last_full_trained_through']}, {age} days "
                         f"before {through}: training.full_every_days is {cfg.full_every_days}")
    reason = (f"continues from champion {version}" if version == champion["version"] else
              f"continues from {version}, the champion before day {through} (a rerun or a backfill)")
    start = Start(stage, WARM, reason, source, version, lineage["trained_through"],
                  lineage["last_full_trained_through"], (*lineage["chain"], version), cfg.max_oov_rate)
    log.info("%s: warm start from %s (trained through %s; chain of %d since the last full retrain)",
             stage, source, start.trained_through, len(start.chain))
    return start


def _source(registry: Path, champion: dict, artifact: str, through: str) -> tuple[str, Path, dict] | str:
    """(version, artifact folder, lineage) of the newest version in the champion's history that
    trained before `through`, so that a rerun of a day, or a backfill, continues from what served
    before that day and sees no later day; or why there is none."""
    versions = list(reversed(champion.get("history") or [])) or [champion["version"]]
    for version in versions:
        source = registry / version / artifact
        lineage = read_lineage(source)
        if version == champion["version"] and not source.is_dir():
            return f"the champion {version} has no {artifact} artifact here ({source}; dvc pull?)"
        if version == champion["version"] and lineage is None:
            return f"the champion's {artifact} has no {LINEAGE_FILE} (published before warm starts)"
        if lineage is not None and lineage["trained_through"] < through:
            return version, source, lineage
    return f"no version in the champion's history trained {artifact} before {through} (a backfill of an early day)"


def _training_config(params: Path) -> TrainingConfig:
    return load_config(TrainingConfig, "training", params)


def training_block(start: Start, days: list[str]) -> dict:
    """A stage's metrics `training` entry: how the run started and the days it trained on."""
    return {"mode": start.mode, "reason": start.reason, "continued_from": start.version, "trained_days": list(days)}


def write_lineage(directory: Path, lineage: dict) -> None:
    """Record how the model in `directory` (a staging directory, before its rename) was trained."""
    atomic.write_json(Path(directory) / LINEAGE_FILE, lineage)


def read_lineage(directory: Path) -> dict | None:
    """The lineage of a model directory; None when it has none (or none that this code wrote)."""
    path = Path(directory) / LINEAGE_FILE
    if not path.is_file():
        return None
    try:
        lineage = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        log.warning("unreadable %s (%s): treated as no lineage", path, err)
        return None
    needed = ("mode", "trained_through", "last_full_trained_through", "chain")
    if not isinstance(lineage, dict) or any(k not in lineage for k in needed):
        log.warning("%s lacks one of %s: treated as no lineage", path, ", ".join(needed))
        return None
    return lineage


def oov_rate(tokenizer, texts: Iterable[str], known_texts: Iterable[str] = ()) -> tuple[float, int]:
    """(share of the distinct words of `texts` that no known text holds and the tokenizer splits, distinct words).

    A byte-level BPE encodes any word, so "out of vocabulary" means split into pieces; rare words of
    the days it trained on are split too (about 7% of a day's distinct words at the default scale),
    so only words new to those days count."""
    words = _words(texts)
    if not words:
        return 0.0, 0
    vocab, known = tokenizer.get_vocab(), _words(known_texts)
    split = sum(1 for w in words - known if "\u0120" + w not in vocab and w not in vocab)  # Ġ: a word after a space
    return split / len(words), len(words)


def _words(texts: Iterable[str]) -> set[str]:
    return {w for t in texts if isinstance(t, str) for w in _WORD.findall(t)}
