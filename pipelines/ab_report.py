"""What an A/B evaluation writes besides its numbers: strict-JSON metrics, markdown tables and bar charts.

Shared by the evaluate stage and the ablation ladder. It formats summaries the harness
(pipelines.evaluate_harness) computed and reads nothing itself, so it stays outside the
honesty boundary.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from plumbing.atomic import save_figure, undefined_as_null


def _per_mille_ci(m: dict, key: str) -> str:
    return f"{m[key] * 1e3:.3f} [{m[f'{key}_ci95'][0] * 1e3:.3f}, {m[f'{key}_ci95'][1] * 1e3:.3f}] ‰"


def _percent_ci(m: dict, key: str) -> str:
    return f"{m[key] * 100:.2f}% [{m[f'{key}_ci95'][0] * 100:.2f}, {m[f'{key}_ci95'][1] * 100:.2f}]"


def _pct_ci(m: dict, key: str) -> str:
    if key not in m or m[key] is None or math.isnan(m[key]):
        return "-"
    lo, hi = m[f"{key}_ci95"]
    return f"{m[key] * 100:+.1f}% [{lo * 100:+.1f}, {hi * 100:+.1f}]"


ROWS = (  # (column title, formatter)
    ("true CTCVR (95% CI)", lambda m: _per_mille_ci(m, "true_ctcvr")),
    ("true CTCVR uplift vs SFT (95% CI)", lambda m: _pct_ci(m, "true_ctcvr_uplift_vs_sft")),
    ("A/B CTCVR (95% CI)", lambda m: _per_mille_ci(m, "ctcvr")),
    ("A/B CTCVR uplift (95% CI)", lambda m: _pct_ci(m, "ab_ctcvr_uplift_vs_sft")),
    ("A/B CTR (95% CI)", lambda m: _percent_ci(m, "ctr")),
    ("A/B CVR (95% CI)", lambda m: _percent_ci(m, "cvr")),
    ("compliance (95% CI)", lambda m: _percent_ci(m, "compliance_rate")),
    ("distinct-2", lambda m: f"{m['distinct_2']:.3f}"),
    ("self-BLEU", lambda m: f"{m['self_bleu']:.3f}"),
    ("learned CTCVR uplift", lambda m: f"{m['learned_ctcvr_uplift_vs_sft'] * 100:+.1f}%"
                                       if "learned_ctcvr_uplift_vs_sft" in m else "-"),
    ("hacking gap (learned - true)", lambda m: f"{m['reward_hacking_gap'] * 100:+.1f} pt"
                                               if "reward_hacking_gap" in m else "-"),
)


def markdown_table(arms: dict[str, dict]) -> str:
    names = list(arms)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for title, fmt in ROWS:
        lines.append(f"| {title} | " + " | ".join(fmt(arms[n]) for n in names) + " |")
    return "\n".join(lines)


def examples_table(contexts: list[dict], outcomes: dict, k: int = 3) -> str:
    """The texts each arm served on the first impressions of a few prompts, with their true verdict."""
    lines = ["| prompt | " + " | ".join(outcomes) + " |", "|---|" + "---|" * len(outcomes)]
    shown: set = set()
    for i, ctx in enumerate(contexts):
        if ctx["prompt_id"] in shown:
            continue
        shown.add(ctx["prompt_id"])
        cells = []
        for o in outcomes.values():
            mark = "" if o.compliant[i] else " ⚠ violates policy"
            cells.append(o.served[i].replace("|", "/") + mark)
        lines.append(f"| {ctx['prompt_id'].replace('|', '/')} | " + " | ".join(cells) + " |")
        if len(shown) >= k:
            break
    return "\n".join(lines)


def _ci_arrays(arms: dict[str, dict], names: list[str], key: str, scale: float = 1.0):
    est = np.array([arms[n][key] for n in names]) * scale
    lo = np.array([arms[n][f"{key}_ci95"][0] for n in names]) * scale
    hi = np.array([arms[n][f"{key}_ci95"][1] for n in names]) * scale
    return est, lo, hi


def bar_chart(arms: dict[str, dict], path: Path, title: str) -> None:
    """True CTCVR (oracle probabilities) and A/B CTCVR with 95% CIs, compliance and distinct-2 per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(arms)
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 3, figsize=(4.0 * 3, 3.4))
    ax = axes[0]
    for offset, key, label in ((-0.2, "true_ctcvr", "true (oracle probabilities)"), (0.2, "ctcvr", "A/B observed")):
        est, lo, hi = _ci_arrays(arms, names, key, 1e3)
        ax.bar(x + offset, est, 0.4, yerr=_yerr(est, lo, hi), capsize=3, label=label)
    ax.set_title("CTCVR (per mille), 95% CI", fontsize=9)
    ax.legend(fontsize=7)
    for ax, key, label in ((axes[1], "compliance_rate", "compliance rate, 95% CI"), (axes[2], "distinct_2", "distinct-2")):
        if f"{key}_ci95" in arms[names[0]]:
            est, lo, hi = _ci_arrays(arms, names, key)
            ax.bar(x, est, 0.6, yerr=_yerr(est, lo, hi), capsize=3, color="tab:green")
            ax.set_ylim(max(0.0, float(lo.min()) - 0.05), 1.0)
        else:
            ax.bar(x, np.array([arms[n][key] for n in names]), 0.6, color="tab:purple")
        ax.set_title(label, fontsize=9)
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xticklabels(names, fontsize=7, rotation=20)
        ax.tick_params(labelsize=7)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)


def _yerr(est, lo, hi) -> list:
    """Error-bar lengths; clipped at 0 (a Wilson bound at p = 0 can sit a rounding error above it)."""
    return [np.maximum(est - lo, 0.0), np.maximum(hi - est, 0.0)]


def relate_arms_text(cfg, serving) -> str:
    """The report's description of the RELATE arms, as `serving` serves them."""
    if not serving.pool_candidates:
        return f"`relate` (one of {cfg.texts_per_prompt} GRPO-policy samples at random)"
    return (f"`relate` (one of the {cfg.texts_per_prompt} texts of its serving pool at random: the GRPO policy samples "
            f"{serving.pool_candidates}, the pool keeps the compliant ones with the most new word bigrams, the learned "
            f"CTCVR weighted {serving.pool_ctcvr_weight:g} beside that share; `relate_models/serving.py`), "
            f"`relate_sampled` (one of {cfg.texts_per_prompt} plain policy samples, as `sft`) and `sft_pool` (the "
            f"same pool over SFT samples: what the pool does without GRPO)")


def evaluate_report(harness, arms: dict[str, dict], outcomes: dict, metrics: dict) -> str:
    """reports/evaluate.md: the arms' table, the goals, a few served texts, GenCO's headline numbers."""
    cfg = harness.cfg
    lines = [
        "# RELATE: simulated online A/B test", "",
        f"{cfg.n_impressions:,} logged search impressions of {metrics['setup']['prompts_with_traffic']} held-out "
        f"prompts, served by every arm with the same traffic and random draws; outcomes from the simulator's "
        f"ground truth (fatigue {'on' if cfg.fatigue else 'off'}). Arms: `sft` (one of {cfg.texts_per_prompt} SFT "
        f"samples at random), `two_stage` (the same SFT samples ranked by the learned pCTR per request, top one "
        f"served), {relate_arms_text(cfg, harness.serving)}, and `logged` (the text the logs show served on each "
        f"impression: what serves today, which publish requires RELATE to beat).", "",
        "True CTCVR: the oracle's p_click x p_conv of the served texts averaged over the traffic (no outcome noise; "
        "the interval is over traffic). A/B: observed conversions, Wilson intervals. Uplift intervals are paired "
        "(delta method). Learned uplift: the CTCVR reward model's view of the same served texts; a learned uplift "
        "far above the true one is reward hacking.", "",
        markdown_table(arms), "",
        "## Goals", "",
        *[f"- {name}: {'met' if ok else 'NOT met'}" for name, ok in metrics["goals"].items()], "",
        "## Served texts (first impression of a few prompts)", "",
        examples_table(harness.contexts, outcomes), "",
        "![A/B](../plots/evaluate/ab.png)", "",
        "## GenCO combinations", "",
        "```json", json.dumps(undefined_as_null(_scalars(metrics.get("combo", {}))), indent=2, sort_keys=True), "```", "",
    ]
    return "\n".join(lines)


def _scalars(obj, depth: int = 0):
    """The combo result without long lists (the report shows the headline numbers only)."""
    if isinstance(obj, dict):
        return {k: _scalars(v, depth + 1) for k, v in obj.items() if not (isinstance(v, list) and len(v) > 6)}
    return obj
