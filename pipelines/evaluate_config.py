"""The `evaluate:` params section, and how a policy's candidate texts are sampled under it.

Apart from the A/B harness (pipelines.evaluate_harness, which reads the oracle), so that the
serving side (pipelines.serving_tables) samples exactly as the evaluation does without
crossing the honesty boundary.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from plumbing.config import require
from plumbing.errors import DataError, MissingArtifact
from plumbing.paths import DATA

EVAL_PROMPTS = DATA / "prompts" / "eval.jsonl"  # the held-out prompts grpo writes


@dataclass
class EvaluateConfig:
    """The `evaluate:` params section: the A/B harness's traffic, sampling and goals."""

    n_impressions: int  # simulated impressions per arm (the same ones for every arm)
    seed: int  # traffic sample, serving draws and outcome draws
    texts_per_prompt: int  # N texts sampled per held-out prompt from each policy
    temperature: float
    top_p: float
    max_new_tokens: int
    generation_seed: int
    diversity_texts_per_prompt: int  # diversity: the texts served on a prompt's first impressions
    fatigue: bool  # a user seeing the same (near-duplicate) text again clicks less
    torch_threads: int  # torch intra-op threads; 0 = torch's default
    goal_relate_ctcvr_uplift: float  # recorded in metrics/evaluate.json goals, as a share (0.15 = +15%)
    goal_relate_compliance: float

    def __post_init__(self) -> None:
        p = "evaluate"
        for name in ("n_impressions", "texts_per_prompt", "max_new_tokens", "diversity_texts_per_prompt"):
            require(getattr(self, name) >= 1, f"{p}.{name}", f"must be >= 1, got {getattr(self, name)}")
        require(self.diversity_texts_per_prompt >= 2, f"{p}.diversity_texts_per_prompt",
                "must be >= 2 (self-BLEU compares texts)")
        require(self.temperature >= 0, f"{p}.temperature", f"must be >= 0, got {self.temperature}")
        require(0 < self.top_p <= 1, f"{p}.top_p", f"must be in (0, 1], got {self.top_p}")
        require(self.torch_threads >= 0, f"{p}.torch_threads", f"must be >= 0, got {self.torch_threads}")
        require(0 <= self.goal_relate_compliance <= 1, f"{p}.goal_relate_compliance",
                f"must be in [0, 1], got {self.goal_relate_compliance}")


def generate_candidates(policy_dir: Path, prompts: Sequence[dict], cfg: "EvaluateConfig",
                        n: int | None = None) -> dict[str, list[str]]:
    """prompt_id -> n (default N) texts sampled from the policy (the same seed for every policy)."""
    from relate_models.policy import generate_texts

    texts = generate_texts(policy_dir, prompts, n or cfg.texts_per_prompt, max_new_tokens=cfg.max_new_tokens,
                           temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.generation_seed)
    return {row["prompt_id"]: group for row, group in zip(prompts, texts)}


def load_prompts(path: Path = EVAL_PROMPTS) -> list[dict]:
    """The held-out prompt rows (prompt_id, vertical, keyword, prompt, user_segment) grpo wrote."""
    if not Path(path).is_file():
        raise MissingArtifact(f"no held-out prompts at {path}: run `python -m pipelines.grpo` first")
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise DataError(f"{path} holds no prompts")
    return rows
