"""The platform's compliance policy for ad texts: a lexicon kept as data, turned into spans.

`ComplianceChecker.load()` reads `relate_models/data/compliance_lexicon.yaml` (or another
file with the same shape) and `find(text)` returns the violating character spans. The
GRPO reward uses the spans twice: their count is the sequence-level penalty, and their
characters tell credit assignment which tokens carry it.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_LEXICON = PROJECT_ROOT / "relate_models" / "data" / "compliance_lexicon.yaml"
CATEGORIES = ("absolute_claim", "guarantee", "medical_claim", "financial_claim", "fake_urgency")


@dataclass(frozen=True)
class Violation:
    category: str
    start: int  # character offsets into the checked text, end exclusive
    end: int
    severity: float


class ComplianceChecker:
    """Case-insensitive phrase and regex matching per policy category."""

    def __init__(self, rules: dict[str, tuple[float, list[re.Pattern]]]):
        self.rules = rules

    @classmethod
    def load(cls, path: str | os.PathLike | None = None, as_of: str | None = None) -> "ComplianceChecker":
        """The lexicon at `path` plus the rules of `<its folder>/compliance_rules/*.yaml` that apply to
        it and are in effect on `as_of` (YYYY-MM-DD). None: the lexicon alone. A dated rule belongs to
        the market it was announced in: a run that trains or scores as of a day passes that day."""
        path = Path(path or DEFAULT_LEXICON)
        if not path.is_absolute() and not path.is_file() and (PROJECT_ROOT / path).is_file():
            path = PROJECT_ROOT / path  # a params path relative to the project root, run from elsewhere
        if not path.is_file():
            raise FileNotFoundError(f"compliance lexicon not found: {path}")
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        for rule_path in sorted((path.parent / "compliance_rules").glob("*.yaml")):
            rule = yaml.safe_load(rule_path.read_text(encoding="utf-8")) or {}
            if rule.get("applies_to") == path.name and as_of is not None and str(rule.get("effective")) <= as_of:
                for name, spec in (rule.get("categories") or {}).items():
                    merged = dict(data["categories"].get(name) or {})
                    for key in ("phrases", "patterns"):
                        merged[key] = list(merged.get(key) or []) + list(spec.get(key) or [])
                    data["categories"][name] = merged
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict, source: str = "lexicon") -> "ComplianceChecker":
        if not isinstance(data, dict) or not isinstance(data.get("categories"), dict):
            raise ValueError(f"{source}: expected a mapping with a 'categories' mapping")
        rules: dict[str, tuple[float, list[re.Pattern]]] = {}
        for name, spec in data["categories"].items():
            where = f"{source}: categories.{name}"
            if name not in CATEGORIES:
                raise ValueError(f"{where}: unknown category; known: {', '.join(CATEGORIES)}")
            if not isinstance(spec, dict):
                raise ValueError(f"{where}: expected a mapping")
            unknown = set(spec) - {"severity", "phrases", "patterns"}
            if unknown:
                raise ValueError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
            severity = spec.get("severity", 1.0)
            if not isinstance(severity, (int, float)) or severity <= 0:
                raise ValueError(f"{where}.severity: must be a positive number, got {severity!r}")
            compiled = []
            for phrase in spec.get("phrases") or []:
                # \b only where the phrase starts/ends with a word character ("#1", "no. 1" stay matchable)
                left = r"\b" if re.match(r"\w", phrase) else ""
                right = r"\b" if re.search(r"\w$", phrase) else ""
                body = r"\s+".join(re.escape(w) for w in phrase.split())
                compiled.append(re.compile(left + body + right, re.IGNORECASE))
            for i, pattern in enumerate(spec.get("patterns") or []):
                try:
                    compiled.append(re.compile(pattern, re.IGNORECASE))
                except re.error as err:
                    raise ValueError(f"{where}.patterns[{i}]: invalid regex {pattern!r}: {err}") from None
            if not compiled:
                raise ValueError(f"{where}: no phrases or patterns")
            rules[name] = (float(severity), compiled)
        return cls(rules)

    def find(self, text: str) -> list[Violation]:
        """Violations of one text, sorted by start; overlapping matches of a category merged."""
        found: list[Violation] = []
        for category, (severity, patterns) in self.rules.items():
            spans = sorted((m.start(), m.end()) for p in patterns for m in p.finditer(text) if m.end() > m.start())
            for start, end in merge_spans(spans):
                found.append(Violation(category, start, end, severity))
        return sorted(found, key=lambda v: (v.start, v.end, v.category))

    def penalty(self, text: str) -> float:
        """Sum of severities over merged violating spans (0 for a compliant text)."""
        return float(sum(v.severity for v in self.find(text)))


def merge_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Union of half-open character intervals, sorted."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged
