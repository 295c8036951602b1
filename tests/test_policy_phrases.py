"""evals.policy_phrases: the most common bigram of texts sampled from a published version's policies."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from tests.test_grpo import VERTICALS, small_policy, world  # noqa: F401 (fixture)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_it_samples_both_policies_of_a_version_deterministically(world, capsys):  # noqa: F811
    from evals import policy_phrases
    from pipelines.evaluate_config import EvaluateConfig
    from plumbing.config import load_config
    from relate_models.policy import build_policy, save_policy
    from relate_models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(world / "models/tokenizer")
    version = world / "registry/2026-01-05-0123456789"
    for artifact in ("sft", "policy"):
        save_policy(build_policy(small_policy(), tokenizer), tokenizer, version / artifact)
    (version / "serving").mkdir()
    rows = [{"vertical": v, "keyword": k} for v, ks in VERTICALS.items() for k in ks]
    pd.DataFrame(rows * 2).to_parquet(version / "serving/prompt_pools.parquet")  # a prompt per pooled text

    args = [str(version), "--prompts", "3"]
    per_prompt = load_config(EvaluateConfig, "evaluate", world / "params.yaml").texts_per_prompt
    assert policy_phrases.main(args) == 0
    first = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["artifact"] for r in first] == ["sft", "policy"]
    assert all(r["texts"] == 3 * per_prompt and 0 <= r["share"] <= 1 for r in first)
    assert policy_phrases.main(args) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == first

    with pytest.raises(SystemExit, match="not a published policy: .*nothing/sft"):
        policy_phrases.main([str(world / "nothing")])
