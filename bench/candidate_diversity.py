"""How diverse each policy's candidates are, before serving: per held-out prompt, the N texts
the evaluate stage samples (same prompts, seed and sampling settings), then averaged.

    python bench/candidate_diversity.py [EXTRA_POLICY_DIR ...]   # needs models/sft, models/relate

Prints, per policy: distinct-2 over the N candidates (the evaluate stage's own metric is over
the texts served on the first impressions, drawn with replacement from them), the share of
unique texts, mean words per text, and the most common word bigrams across all prompts (the
phrases a policy leans on).
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.evaluate import EvaluateConfig  # noqa: E402
from pipelines.evaluate_harness import generate_candidates, load_prompts  # noqa: E402
from plumbing.config import load_config  # noqa: E402
from plumbing.paths import SFT_DIR  # noqa: E402
from relate_models.text_metrics import distinct_n, ngrams, words  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    extra = list(sys.argv[1:] if argv is None else argv)
    cfg = load_config(EvaluateConfig, "evaluate")
    prompts = load_prompts()
    for name in [str(SFT_DIR), "models/relate", *extra]:
        if not Path(name).is_dir():
            print(f"{name}: no such policy directory", file=sys.stderr)
            return 2
        candidates = generate_candidates(Path(name), prompts, cfg)
        groups = [candidates[row["prompt_id"]] for row in prompts]
        bigrams = Counter(g for texts in groups for t in texts for g in ngrams(words(t), 2))
        total = sum(bigrams.values())
        top = ", ".join(f"'{' '.join(g)}' {c / total:.1%}" for g, c in bigrams.most_common(5))
        print(f"{name}: distinct-2 over {cfg.texts_per_prompt} candidates {np.nanmean([distinct_n(t) for t in groups]):.3f}, "
              f"unique texts {np.mean([len(set(t)) / len(t) for t in groups]):.3f}, "
              f"words {np.mean([len(words(t)) for texts in groups for t in texts]):.1f}; top bigrams: {top}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
