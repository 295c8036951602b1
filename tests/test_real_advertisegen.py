"""AdvertiseGen adapter, the Chinese compliance lexicon, the CJK-aware rewards, and a tiny SFT+GRPO run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from plumbing.config import load_config, load_params
from relate_models.compliance import ComplianceChecker
from relate_real import advertisegen as ag

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "advertisegen"
ZH_LEXICON = ROOT / "relate_models" / "data" / "compliance_lexicon_zh.yaml"
REAL_CORPUS = ROOT / "configs" / "real_corpus.yaml"


def test_parse_content_into_attributes():
    assert ag.parse_content("类型#裤*风格#简约*裤长#九分裤") == [("类型", "裤"), ("风格", "简约"), ("裤长", "九分裤")]
    for bad in ("", "类型裤", "类型#裤*#简约", "类型#"):
        with pytest.raises(ValueError):
            ag.parse_content(bad)
    fields = ag.prompt_fields(ag.parse_content("类型#上衣*颜色#白色*衣样式#外套"))
    assert fields == {"vertical": "上衣", "attributes": "颜色#白色*衣样式#外套", "keyword": "衣",
                      "prompt": "上衣 | 颜色#白色*衣样式#外套 |"}


def test_read_corpus_quarantines_and_counts():
    lines = [
        json.dumps({"content": "类型#裙*颜色#红色", "summary": "红色的裙子，很显白。适合夏天穿着，清爽舒适。"}, ensure_ascii=False),
        "{not json",
        json.dumps({"content": "类型#裙"}, ensure_ascii=False),
        json.dumps({"content": "类型裙", "summary": "文案"}, ensure_ascii=False),
    ]
    corpus = ag.read_corpus(lines, max_target_chars=12)
    assert corpus.rows_in == 4 and len(corpus.rows) == 1
    assert corpus.quarantined == {"malformed_json": 1, "missing_field": 1, "bad_content": 1}
    assert corpus.rows["target"][0] == "红色的裙子，很显白。"  # cut at the last sentence end within 12 characters


def test_zh_lexicon_flags_article_9_terms_and_not_clean_copy():
    checker = ComplianceChecker.load(ZH_LEXICON)
    flagged = checker.find("这款外套是今年最佳的选择")
    assert [(v.category, "这款外套是今年最佳的选择"[v.start:v.end]) for v in flagged] == [("absolute_claim", "最佳")]
    for text in ("国家级面料，顶级做工", "全网第一的牛仔裤", "绝对百搭"):
        assert checker.find(text), text
    clean = "简约而不简单的牛仔外套，白色的衣身十分百搭。衣身后背处有趣味刺绣装饰，第一眼就很吸睛。"
    assert checker.find(clean) == []
    assert checker.find("这件衬衫最大的亮点是领口") == []  # the design's own feature, not a comparison


def test_rewards_treat_cjk_characters_as_words():
    from relate_models.grpo_trainer import GRPOStageConfig, reward_context
    from relate_models.rewards import build_rewards, structural_score, words_with_offsets

    assert [w for w, _, _ in words_with_offsets("简约 tee's")] == ["简", "约", "tee's"]
    text = "简约而不简单的牛仔外套，白色的衣身十分百搭。"
    assert structural_score(text, "外套", 10, 40, latin_script=False) == pytest.approx(1.0)
    assert structural_score(text, "外套", 10, 40) < 1.0  # the Latin default keeps its mostly-ASCII check
    cfg = load_config(GRPOStageConfig, "grpo", REAL_CORPUS, overrides={"group_ngram": 3, "copy_ngram": 50})
    (diversity,) = build_rewards(["diversity"], reward_context(cfg, None, [], latin_script=False))
    same = diversity.score([text, text], prompts=["p", "p"])
    different = diversity.score([text, "红色连衣裙，清新又显白。"], prompts=["p", "p"])
    assert same == [0.0, 0.0] and different == [1.0, 1.0]


def test_text_metrics_are_character_level():
    checker = ComplianceChecker.load(ZH_LEXICON)
    m = ag.text_metrics([["红色的裙子", "红色的裙子"], ["最佳的裤子", "蓝色的外套"]], checker)
    assert m["compliance_rate"] == 0.75
    assert m["self_bleu"] < 1.0 and m["distinct_2"] < 1.0
    assert ag.text_metrics([["红色的裙子", "红色的裙子"]], checker)["self_bleu"] == pytest.approx(1.0)


@pytest.mark.skipif(not (DATA / "advertisegen_train5000.json").is_file(),
                    reason=f"AdvertiseGen not found at {DATA} (public data kept outside the repo; see docs/real_data.md)")
def test_tiny_real_corpus_sft_then_grpo(tmp_path):
    from evals import advertisegen_check

    config = load_params(REAL_CORPUS)  # merged onto params.yaml: the copy written below is a full params file
    config["advertisegen"].update(train_json=str(DATA / "advertisegen_train5000.json"),
                                  dev_json=str(DATA / "advertisegen_dev.json"), workdir=str(tmp_path / "work"),
                                  train_rows=48, dev_prompts=3, generations_per_prompt=2, max_new_tokens=12,
                                  tokenizer_vocab=600, samples_in_report=2)
    config["policy"].update(hidden_size=32, intermediate_size=64, num_heads=2, num_layers=1)
    config["sft"].update(epochs=1, batch_size=16, warmup_steps=2)
    config["grpo"].update(lexicon=str(ZH_LEXICON), max_steps=2, prompts_per_step=2, num_generations=2,
                          logging_steps=1)
    params = tmp_path / "real.yaml"
    params.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    out, report = tmp_path / "m.json", tmp_path / "r.md"
    assert advertisegen_check.main(["--params", str(params), "--out", str(out), "--report", str(report)]) == 0
    m = json.loads(out.read_text(encoding="utf-8"))
    assert m["sizes"]["grpo_steps"] == 2 and m["sizes"]["train_rows_used"] == 48
    for stage in ("before_grpo", "after_grpo"):
        assert m[stage]["texts"] == 6
        assert 0.0 <= m[stage]["compliance_rate"] <= 1.0
        assert set(m[stage]["rewards"]) == {"quality_structural", "quality_compliance", "diversity", "violation_rate"}
    assert (tmp_path / "work" / "models" / "relate" / "config.json").is_file()
    assert "after GRPO" in report.read_text(encoding="utf-8")
    # a CTCVR reward is refused by name: the corpus has no clicks
    config["grpo"]["rewards"]["ctcvr"] = 1.0
    params.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    assert advertisegen_check.main(["--params", str(params), "--out", str(out)]) == 2
