"""What publish writes for people: the model card of a registered version and the publish report."""
from __future__ import annotations


def fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def gate_table(gates: list[dict]) -> list[str]:
    lines = ["| gate | value | required | margin | passed |", "|---|---|---|---|---|"]
    for g in gates:
        lines.append(f"| {g['gate']} | {fmt(g['value'])} | >= {fmt(g['required'])} | {fmt(g['margin'])} | "
                     f"{'yes' if g['passed'] else 'NO'} |")
    return lines


def evaluation_table(evaluation: dict) -> list[str]:
    """The numeric evaluation metrics of the version (evaluate, ctcvr headline, attribution)."""
    m = evaluation.get("evaluate.json") or {}
    lines = ["| metric | value |", "|---|---|"]
    for section in ("relate", "sft", "two_stage", "combo"):
        for key, value in sorted((m.get(section) or {}).items()):
            if _is_number(value):
                lines.append(f"| {section}.{key} | {fmt(value)} |")
    ctcvr = evaluation.get("ctcvr.json") or {}
    for key in ("auc_ctcvr", "oracle_auc_ctcvr", "auc_ratio_ctcvr", "baseline_auc_ctcvr", "ece_ctcvr"):
        if key in ctcvr:
            lines.append(f"| ctcvr.{key} | {fmt(ctcvr[key])} |")
    attribution = evaluation.get("attribution.json") or {}
    for key, value in sorted(attribution.items()):
        if _is_number(value):
            lines.append(f"| attribution.{key} | {fmt(value)} |")
    return lines


def lineage_lines(lineage: dict) -> list[str]:
    """Per artifact: trained in full, or warm from a champion, with the chain back to the last full retrain."""
    if not lineage:
        return ["No artifact records its lineage (trained before warm starts existed)."]
    lines = ["| artifact | mode | trained through | chain since the last full retrain | why |", "|---|---|---|---|---|"]
    for name, row in sorted(lineage.items()):
        chain = " -> ".join(row.get("chain") or []) or "(this is a full retrain)"
        anchor = f"; KL reference {row['kl_reference']}" if row.get("kl_reference") else ""
        why = row.get("reason", "") + anchor
        lines.append(f"| {name} | {row['mode']} | {row['trained_through']} | {chain} | {why} |")
    return lines


def model_card(manifest: dict, gates: list[dict], evaluation: dict) -> str:
    lines = [
        f"# RELATE model card: {manifest['version']}",
        "",
        f"Run date (ds): {manifest['ds']}. Evaluation day: {manifest['eval_day']}. "
        f"Git: {manifest['git']['commit']}{' (dirty tree)' if manifest['git']['dirty'] else ''}. "
        f"Params hash: {manifest['params_sha256'][:12]}.",
        "",
        "## What it is",
        "- `policy/`: causal LM (save_pretrained, safetensors, with its tokenizer) that writes search ad text "
        "from a `vertical | keyword` prompt, tuned with GRPO on CTCVR, quality (compliance as a constraint) and "
        "diversity rewards (RELATE).",
        "- `combo_policy/`: generator of creative-element combinations (title, image, highlight) trained by RL on "
        "MIL attribution rewards (GenCO).",
        "- `ctcvr/` + `tokenizer/`: the ESMM-style pCTR x pCVR reward model; `attribution/`: the MIL element "
        "attribution model.",
        "",
        "Intended use: offline candidate generation for human-reviewed ad creatives. Trained and evaluated on "
        "logs of the embedded simulated ad market unless `manifest.json` says otherwise; true gains are measured "
        "against the simulator's oracle.",
        "",
        "## Lineage",
        *lineage_lines(manifest.get("lineage") or {}),
        "",
        "## Publish gates",
        *gate_table(gates),
        "", "## Evaluation",
        *evaluation_table(evaluation),
        "",
        "## Limitations",
        "- Learned-reward gains can exceed true gains (reward hacking); compare `relate.*` learned and true "
        "uplifts in `evaluation/evaluate.json` before trusting a gain.",
        "- The compliance check is a lexicon: it catches listed claims only.",
        "",
        "## Data",
        f"Validated days: {', '.join(manifest['data']['validated_days']) or 'none recorded'}.",
        "Full partition lists and training windows: `manifest.json`.",
        "",
    ]
    return "\n".join(lines)


def _champion_note(g: dict) -> str:
    """How a no-regression row's champion value was obtained."""
    if g.get("champion_rescored"):
        how = f"scored again on {g['champion_eval_day']} (recorded on {g['champion_recorded_eval_day']})"
    elif g["same_eval_day"]:
        how = f"recorded on the same eval day {g['champion_eval_day']}"
    else:
        how = (f"recorded on {g['champion_eval_day']}, another day: not scored again (the re-scoring "
               "failed or did not return it: 'Champion metrics' above says why)")
    note = f"champion {g['champion_version']} at {fmt(g['champion_value'])}, allowed drop {fmt(g.get('allowed_drop'))}: {how}"
    return f"{g['reason']}; {note}" if g.get("waived") else note


def publish_report(report: dict) -> str:
    """reports/publish.md: the verdict and one row per gate, with its margin and where the champion's bar came from."""
    verdict = (f"**Published** `{report['version']}`; champion: `{report['champion_before']}` -> "
               f"`{report['champion_after']}`." if report["published"] else
               f"**Refused**: nothing published; the champion stays `{report['champion_before']}`. "
               f"Failed: {', '.join(report['failed_gates'])}.")
    lines = [f"# Publish report for {report['ds']}", "", verdict, "",
             f"Evaluation day: {report['eval_day']}. Champion metrics: "
             f"{report.get('champion_metrics_source', 'n/a')}.", "",
             "| gate | kind | value | required | margin | passed | note |", "|---|---|---|---|---|---|---|"]
    for g in report["gates"]:
        note = _champion_note(g) if g["kind"] == "no_regression" else g.get("reason", "")
        lines.append(f"| {g['gate']} | {g['kind']} | {fmt(g['value'])} | {fmt(g['required'])} | "
                     f"{fmt(g['margin'])} | {'yes' if g['passed'] else 'NO'} | {note} |")
    return "\n".join(lines) + "\n"
