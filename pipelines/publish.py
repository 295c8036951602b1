"""Stage `publish`: gate the run's models, then register one versioned artifact set with DVC.

    python -m pipelines.publish --ds 2026-01-07 [--params params.yaml] [--refused-exit-code 99]
    python -m pipelines.publish --rollback [--to VERSION]

Gates (thresholds in the `publish:` params section; `null` turns one off): each gated
metric must reach its minimum, and must not fall more than `max_regression` below the
current champion's value on the same evaluation day (one number for every gate, or a mapping
gate name -> allowed drop, so that each gate tolerates its own run-to-run noise): when the champion was evaluated on
another day, its artifacts are scored again on the candidate's data
(`pipelines.evaluate_champion`; the gates it cannot score again compare with the recorded
value, and the report says which). On pass, `registry/<version>/` gets the policy (save_pretrained,
with its tokenizer), the shared tokenizer, the CTCVR and MIL models, the combo generator,
the evaluation metrics, MODEL_CARD.md and manifest.json (data partitions, git revision,
params hash, metrics); it is `dvc add`-ed and pushed to the DVC remote `remote_url`
(a local directory by default; `s3://...` or `gs://...` with dvc-s3 / dvc-gs installed and
the usual cloud credentials), and `registry/champion.json` moves to it atomically.
On refusal nothing is written under registry/ and the champion stays.
Either way reports/publish.md and metrics/publish.json say which gate passed or failed and
by how much.

Exit codes: 0 published, or refused by a gate (a verdict, not a crash: dvc repro goes on
and metrics/publish.json says `published: false`); `--refused-exit-code N` makes a refusal
exit N instead (the Airflow task uses it to show the run as skipped); 2 bad config or
input, or a failed DVC command.

The version is `<ds>-<content hash>`: a rerun of the same day with the same models is
the same version, so publishing is idempotent.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from plumbing import atomic
from plumbing.dates import parse_ds
from plumbing.logs import get_logger
from plumbing.config import ConfigError, load_config, load_params, params_path, require
from plumbing.paths import CURATED_TABLES, METRICS, MODELS, VALIDATION, curated, partitions

log = get_logger(__name__)

SECTION = "publish"
REPORT = Path("reports") / "publish.md"
METRICS_FILE = METRICS / "publish.json"
CHAMPION_FILE = "champion.json"

# The artifact set: name in the registry -> source directory. The policy directory holds
# its own tokenizer (save_pretrained); `tokenizer` is the shared BPE the CTCVR model reads.
ARTIFACTS: dict[str, Path] = {
    "policy": MODELS / "relate",
    "tokenizer": MODELS / "tokenizer",
    "ctcvr": MODELS / "ctcvr",
    "attribution": MODELS / "attribution",
    "combo_policy": MODELS / "combo_policy",
}
# Metrics files copied into the artifact set as its evaluation report (those that exist).
EVALUATION_FILES = ("evaluate.json", "ctcvr.json", "attribution.json", "grpo.json", "sft.json",
                    "ctcvr_train.json", "train_attribution.json", "validate.json", "ingest.json")


@dataclass(frozen=True)
class Gate:
    name: str
    metrics_file: str  # under metrics/
    key: str  # dotted path inside it
    threshold_field: str  # PublishConfig field with the minimum
    meaning: str


GATES = (
    Gate("relate_true_ctcvr_uplift", "evaluate.json", "relate.true_ctcvr_uplift_vs_sft",
         "min_true_ctcvr_uplift_vs_sft", "true CTCVR uplift of the RELATE policy over SFT (oracle A/B)"),
    Gate("relate_compliance", "evaluate.json", "relate.compliance_rate",
         "min_compliance_rate", "share of generated texts that pass the compliance check"),
    Gate("combo_ratio_to_oracle", "evaluate.json", "combo.true_ctr_ratio_to_oracle",
         "min_combo_ratio_to_oracle", "true CTR of the combo generator / the oracle's best combination"),
    Gate("ctcvr_auc_ratio", "ctcvr.json", "auc_ratio_ctcvr",
         "min_ctcvr_auc_ratio", "CTCVR model AUC / oracle AUC on the held-out day"),
    Gate("attribution_auc_ratio", "attribution.json", "holdout_auc/oracle_auc",
         "min_attribution_auc_ratio", "MIL attribution model holdout AUC / oracle AUC (same impressions)"),
)


@dataclass
class PublishConfig:
    """The `publish:` params section."""

    registry_dir: str
    remote_name: str
    remote_url: str  # relative paths: to the project root
    push: bool
    artifacts: list[str]
    min_true_ctcvr_uplift_vs_sft: float | None
    min_compliance_rate: float | None
    min_combo_ratio_to_oracle: float | None
    min_ctcvr_auc_ratio: float | None
    min_attribution_auc_ratio: float | None
    # allowed drop below the champion: one number for every gate, or gate name -> number (a gate
    # left out, or null, is not compared); null: no comparison at all
    max_regression: float | dict[str, float | None] | None

    def __post_init__(self) -> None:
        p = SECTION
        require(bool(self.registry_dir.strip()), f"{p}.registry_dir", "must not be empty")
        require(bool(self.remote_name.strip()) and " " not in self.remote_name, f"{p}.remote_name",
                f"must be a non-empty name without spaces, got {self.remote_name!r}")
        require(bool(self.remote_url.strip()), f"{p}.remote_url", "must not be empty")
        unknown = sorted(set(self.artifacts) - set(ARTIFACTS))
        require(not unknown, f"{p}.artifacts", f"unknown artifact(s) {unknown}; known: {', '.join(ARTIFACTS)}")
        require(len(self.artifacts) > 0, f"{p}.artifacts", "must name at least one artifact")
        for name in ("min_compliance_rate", "min_combo_ratio_to_oracle", "min_ctcvr_auc_ratio",
                     "min_attribution_auc_ratio"):
            value = getattr(self, name)
            require(value is None or 0 <= value <= 1.5, f"{p}.{name}", f"must be in [0, 1.5] or null, got {value}")
        if isinstance(self.max_regression, dict):
            unknown = sorted(set(self.max_regression) - {g.name for g in GATES})
            require(not unknown, f"{p}.max_regression", f"unknown gate(s) {unknown}; known: "
                    f"{', '.join(g.name for g in GATES)}")
            for name, drop in self.max_regression.items():
                require(drop is None or (isinstance(drop, (int, float)) and not isinstance(drop, bool) and drop >= 0),
                        f"{p}.max_regression.{name}", f"must be a number >= 0 or null, got {drop!r}")
        else:
            require(self.max_regression is None or self.max_regression >= 0, f"{p}.max_regression",
                    f"must be >= 0, a mapping gate -> number, or null, got {self.max_regression}")

    def allowed_drop(self, gate: str) -> float | None:
        """How far `gate` may fall below the champion; None: not compared."""
        if isinstance(self.max_regression, dict):
            drop = self.max_regression.get(gate)
            return None if drop is None else float(drop)
        return self.max_regression

    @property
    def compares_with_champion(self) -> bool:
        return any(self.allowed_drop(g.name) is not None for g in GATES)

    def remote_location(self, root: Path) -> str:
        if "://" in self.remote_url:
            return self.remote_url
        return str((root / self.remote_url).resolve())


class PublishError(RuntimeError):
    """A failed DVC command or an unusable registry (not a gate refusal)."""


# ---------------------------------------------------------------- gates

def _lookup(obj: Any, dotted: str) -> Any:
    """`a.b` is a nested key; `x/y` the ratio of two keys (None when either is missing or y is 0)."""
    if "/" in dotted:
        num, den = (_lookup(obj, part) for part in dotted.split("/", 1))
        ok = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (num, den))
        return num / den if ok and den else None
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None


def candidate_metrics(metrics_dir: Path = METRICS) -> dict[str, float | None]:
    """The gated metrics of this run's models (None where a metric is missing)."""
    files: dict[str, dict | None] = {}
    values: dict[str, float | None] = {}
    for gate in GATES:
        if gate.metrics_file not in files:
            files[gate.metrics_file] = _read_json(metrics_dir / gate.metrics_file)
        value = _lookup(files[gate.metrics_file], gate.key)
        values[gate.name] = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    return values


def latest_ingested_day() -> str:
    """The version's day when no --ds is given (dvc repro): the newest curated partition."""
    days = partitions(curated("labeled_impressions"))
    if not days:
        raise ConfigError("no --ds given and no curated partitions to take the day from")
    return days[-1]


def eval_day(metrics_dir: Path = METRICS) -> str | None:
    """The held-out evaluation day the gated metrics were measured on."""
    for name in ("evaluate.json", "ctcvr.json"):
        day = _lookup(_read_json(metrics_dir / name), "eval_day")
        if isinstance(day, str):
            return day
    return None


def eval_serving(metrics_dir: Path = METRICS) -> dict | None:
    """How the evaluated policy was served (evaluate.json setup.serving): recorded metrics compare only alike."""
    serving = _lookup(_read_json(metrics_dir / "evaluate.json"), "setup.serving")
    return serving if isinstance(serving, dict) else None


def champion_on_candidate_day(cfg: PublishConfig, champion: dict | None, day: str | None, ds: str,
                              params_file: Path, serving: dict | None = None) -> tuple[dict[str, float | None], str]:
    """The champion's gated metrics measured like the candidate's, and how they were obtained.

    Same evaluation day and the same serving settings: its recorded metrics. Another day, or
    serving settings that changed since: its artifacts scored again on the candidate's data (only gates whose metrics file that covers; the others keep the recorded
    value). A champion that cannot be scored again (artifacts missing, incompatible with the
    current code) keeps its recorded values, with the reason in the report.
    """
    if champion is None:
        return {}, "no champion"
    if not cfg.compares_with_champion:
        return {}, "not compared (max_regression: null)"
    if champion.get("eval_day") == day and champion.get("serving") == serving:
        return {}, "recorded on the same evaluation day"
    from pipelines.evaluate_champion import RESCORED_FILES, champion_metrics

    try:
        files = champion_metrics(Path(champion["path"]), ds, params_file)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        log.warning("champion %s could not be scored on %s (%s): comparing with its recorded metrics",
                    champion.get("version"), day, err)
        return {}, f"recorded on {champion.get('eval_day')}: scoring it again on {day} failed ({err})"
    values = {}
    for gate in GATES:
        if gate.metrics_file in RESCORED_FILES:
            value = _lookup(files.get(gate.metrics_file), gate.key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                values[gate.name] = float(value)
    return values, f"scored again on {day}"


def check_gates(cfg: PublishConfig, values: dict[str, float | None], day: str | None,
                champion: dict | None, rescored: dict[str, float | None] | None = None) -> list[dict]:
    """One row per enabled check: threshold and no-regression-vs-champion.

    `rescored`: the champion's metrics on the candidate's evaluation day (gate name -> value);
    a gate missing from it compares with the champion's recorded value.
    """
    rescored = rescored or {}
    rows = []
    for gate in GATES:
        minimum = getattr(cfg, gate.threshold_field)
        if minimum is None:
            continue
        value = values.get(gate.name)
        row = {"gate": gate.name, "kind": "threshold", "metric": f"{gate.metrics_file}:{gate.key}",
               "value": value, "required": minimum}
        if value is None:
            row.update(passed=False, margin=None, reason=f"metric missing ({gate.metrics_file}: {gate.key})")
        else:
            row.update(passed=value >= minimum, margin=value - minimum)
        rows.append(row)
    if champion is not None:
        for gate in GATES:
            allowed_drop = cfg.allowed_drop(gate.name)
            if getattr(cfg, gate.threshold_field) is None or allowed_drop is None:
                continue
            same_day = gate.name in rescored or champion.get("eval_day") == day
            best = rescored.get(gate.name, champion.get("metrics", {}).get(gate.name))
            value = values.get(gate.name)
            if best is None:
                continue  # the champion never measured it: nothing to regress against
            required = best - allowed_drop
            row = {"gate": f"{gate.name}_vs_champion", "kind": "no_regression", "metric": gate.name,
                   "value": value, "required": required, "allowed_drop": allowed_drop,
                   "champion_version": champion.get("version"),
                   "champion_value": best, "champion_eval_day": day if same_day else champion.get("eval_day"),
                   "champion_recorded_eval_day": champion.get("eval_day"),
                   "champion_rescored": gate.name in rescored, "same_eval_day": same_day}
            if value is None:
                row.update(passed=False, margin=None, reason="metric missing")
            else:
                row.update(passed=value >= required, margin=value - required)
            rows.append(row)
    return rows


# ---------------------------------------------------------------- registry

def read_champion(registry: Path) -> dict | None:
    return _read_json(registry / CHAMPION_FILE)


@contextlib.contextmanager
def registry_lock(registry: Path):
    """One publisher at a time (an Airflow run and a `dvc repro` may overlap)."""
    registry.mkdir(parents=True, exist_ok=True)
    with open(registry / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# Wall-clock timings in training logs and metrics (seconds, train_seconds, steps_per_second):
# they change on every rerun of the same seeded training, so the content digest, and with it
# the version, leaves them out; otherwise reprocessing a day would register a new version.
TIMING_KEY = re.compile(r"(^|_)seconds$|_per_second$")


def _without_timings(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _without_timings(v) for k, v in obj.items() if not TIMING_KEY.search(str(k))}
    if isinstance(obj, list):
        return [_without_timings(v) for v in obj]
    return obj


def _update_with_content(digest, path: Path) -> None:
    """A file's content into `digest`: JSON without its timing fields, anything else byte for byte."""
    if path.suffix == ".json":
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass
        else:
            digest.update(json.dumps(_without_timings(obj), sort_keys=True).encode())
            return
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    _update_with_content(digest, path)
    return digest.hexdigest()


def tree_digest(root: Path) -> str:
    """sha256 over relative paths and contents (timings left out) of every file under `root`."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        _update_with_content(digest, path)
        digest.update(b"\0")
    return digest.hexdigest()


def params_hash(path: Path) -> str:
    """Hash of the parsed params (formatting and comments do not change it)."""
    return hashlib.sha256(json.dumps(load_params(path), sort_keys=True).encode()).hexdigest()


def git_revision(root: Path) -> dict:
    def git(*args):
        proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else None

    return {"commit": git("rev-parse", "HEAD") or "none (no commit yet or not a git repository)",
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def data_partitions(ds: str, metrics_dir: Path = METRICS) -> dict:
    """Which partitions the models saw: curated partitions up to ds, the validated days, training windows."""
    success = VALIDATION / "_SUCCESS"
    windows = {}
    for name in ("ctcvr_train.json", "train_attribution.json"):
        m = _read_json(metrics_dir / name) or {}
        windows[name.removesuffix(".json")] = {k: v for k, v in m.items()
                                              if any(w in k for w in ("day", "window", "dt", "ds"))}
    return {
        "run_ds": ds,
        "curated": {t: [d for d in partitions(curated(t)) if d <= ds] for t in CURATED_TABLES},
        "validated_days": success.read_text(encoding="utf-8").split() if success.is_file() else [],
        "training_windows": windows,
    }


def model_card(manifest: dict, gates: list[dict], evaluation: dict) -> str:
    m = evaluation.get("evaluate.json") or {}
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
        "## Publish gates",
        "| gate | value | required | margin | passed |",
        "|---|---|---|---|---|",
    ]
    for g in gates:
        lines.append(f"| {g['gate']} | {_fmt(g['value'])} | >= {_fmt(g['required'])} | {_fmt(g['margin'])} | "
                     f"{'yes' if g['passed'] else 'NO'} |")
    lines += ["", "## Evaluation", "| metric | value |", "|---|---|"]
    for section in ("relate", "sft", "two_stage", "combo"):
        for key, value in sorted((m.get(section) or {}).items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                lines.append(f"| {section}.{key} | {_fmt(value)} |")
    ctcvr = evaluation.get("ctcvr.json") or {}
    for key in ("auc_ctcvr", "oracle_auc_ctcvr", "auc_ratio_ctcvr", "baseline_auc_ctcvr", "ece_ctcvr"):
        if key in ctcvr:
            lines.append(f"| ctcvr.{key} | {_fmt(ctcvr[key])} |")
    attribution = evaluation.get("attribution.json") or {}
    for key, value in sorted(attribution.items()):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            lines.append(f"| attribution.{key} | {_fmt(value)} |")
    lines += [
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


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# ---------------------------------------------------------------- DVC

def dvc(root: Path, *args: str) -> str:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PublishError(f"dvc {' '.join(args)} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc.stdout


def ensure_dvc(root: Path, cfg: PublishConfig) -> None:
    if not (root / ".dvc").is_dir():
        dvc(root, "init", "-q", *([] if (root / ".git").exists() else ["--no-scm"]))
    # --local: the remote is machine configuration (params decide it), not a committed setting
    dvc(root, "remote", "add", "--local", "--force", cfg.remote_name, cfg.remote_location(root))


def track_and_push(root: Path, cfg: PublishConfig, version_dir: Path) -> None:
    ensure_dvc(root, cfg)
    rel = str(version_dir.relative_to(root))
    dvc(root, "add", "-q", rel)
    if cfg.push:
        dvc(root, "push", "-q", "-r", cfg.remote_name, f"{rel}.dvc")


# ---------------------------------------------------------------- publish

def assemble(staging: Path, cfg: PublishConfig, metrics_dir: Path) -> dict:
    """Copy the artifacts and the evaluation report into `staging`; return the evaluation files read."""
    for name in cfg.artifacts:
        shutil.copytree(ARTIFACTS[name], staging / name, ignore=shutil.ignore_patterns(".*", "__pycache__"))
    evaluation = {}
    (staging / "evaluation").mkdir()
    for name in EVALUATION_FILES:
        if (metrics_dir / name).is_file():
            shutil.copy2(metrics_dir / name, staging / "evaluation" / name)
            evaluation[name] = _read_json(metrics_dir / name)
    return evaluation


def publish(ds: str, cfg: PublishConfig, params_file: Path, root: Path | None = None) -> dict:
    """Gate, and on pass register and promote. Returns the publish report (also written)."""
    root = (root or Path.cwd()).resolve()
    registry = Path(cfg.registry_dir)
    with registry_lock(registry):
        champion = read_champion(registry)
        values = candidate_metrics()
        day, serving = eval_day(), eval_serving()
        rescored, champion_source = champion_on_candidate_day(cfg, champion, day, ds, params_file, serving)
        gates = check_gates(cfg, values, day, champion, rescored)
        missing = [n for n in cfg.artifacts if not ARTIFACTS[n].is_dir() or not any(ARTIFACTS[n].iterdir())]
        for name in missing:
            gates.append({"gate": f"artifact_{name}", "kind": "artifact", "metric": str(ARTIFACTS[name]),
                          "value": None, "required": "a non-empty directory", "margin": None, "passed": False,
                          "reason": f"{ARTIFACTS[name]} is missing or empty"})
        failed = [g for g in gates if not g["passed"]]
        report = {"ds": ds, "eval_day": day, "published": False, "version": None, "gates": gates,
                  "failed_gates": [g["gate"] for g in failed], "candidate_metrics": values,
                  "champion_before": champion.get("version") if champion else None,
                  "champion_metrics_source": champion_source, "champion_rescored_metrics": rescored}
        if failed:
            report["champion_after"] = report["champion_before"]
            return report

        staging_parent = registry / ".incoming"
        with atomic.directory(staging_parent / ds) as staging:
            evaluation = assemble(staging, cfg, METRICS)
            digest = tree_digest(staging)
        candidate = staging_parent / ds
        version = f"{ds}-{digest[:10]}"
        version_dir = registry / version
        manifest = {
            "version": version, "ds": ds, "eval_day": day, "serving": serving, "content_sha256": digest,
            "artifacts": {n: str(ARTIFACTS[n]) for n in cfg.artifacts},
            "data": data_partitions(ds), "git": git_revision(root),
            "params_file": str(params_file), "params_sha256": params_hash(params_file),
            "metrics": values, "gates": gates, "evaluation": evaluation,
        }
        if version_dir.is_dir():
            log.info("version %s is already registered (same content): reusing it", version)
            shutil.rmtree(candidate)
        else:
            atomic.write_json(candidate / "manifest.json", manifest)
            atomic.write_text(candidate / "MODEL_CARD.md", model_card(manifest, gates, evaluation))
            os.replace(candidate, version_dir)
        shutil.rmtree(staging_parent, ignore_errors=True)
        track_and_push(root, cfg, root / version_dir)

        history = list(champion.get("history", [])) if champion else []
        if not history or history[-1] != version:
            history.append(version)
        pointer = {"version": version, "path": str(version_dir), "ds": ds, "eval_day": day, "serving": serving,
                   "metrics": values, "history": history}
        atomic.write_json(registry / CHAMPION_FILE, pointer)
        report.update(published=True, version=version, champion_after=version,
                      remote=cfg.remote_location(root) if cfg.push else None)
        return report


def rollback(cfg: PublishConfig, to: str | None, root: Path) -> dict:
    """Point the champion at the previous version (or `to`), pulling it from the remote when missing."""
    registry = Path(cfg.registry_dir)
    with registry_lock(registry):
        champion = read_champion(registry)
        if not champion:
            raise PublishError(f"no champion to roll back: {registry / CHAMPION_FILE} is missing")
        history = list(champion.get("history", [champion["version"]]))
        if to is None:
            if len(history) < 2:
                raise PublishError(f"nothing to roll back to: {champion['version']} is the only version promoted")
            history.pop()
            target = history[-1]
        else:
            if not (registry / to / "manifest.json").is_file() and not (registry / f"{to}.dvc").is_file():
                raise PublishError(f"unknown version {to!r}: no {registry / to} and no {registry / to}.dvc")
            target = to
            history.append(target)
        target_dir = registry / target
        if not target_dir.is_dir():
            ensure_dvc(root, cfg)
            dvc(root, "pull", "-q", "-r", cfg.remote_name, str(target_dir) + ".dvc")
        manifest = _read_json(target_dir / "manifest.json") or {}
        pointer = {"version": target, "path": str(target_dir), "ds": manifest.get("ds"),
                   "eval_day": manifest.get("eval_day"), "serving": manifest.get("serving"),
                   "metrics": manifest.get("metrics", {}),
                   "history": history, "rolled_back_from": champion["version"]}
        atomic.write_json(registry / CHAMPION_FILE, pointer)
        return pointer


def write_report(report: dict) -> None:
    atomic.write_json(METRICS_FILE, report)
    verdict = (f"**Published** `{report['version']}`; champion: `{report['champion_before']}` -> "
               f"`{report['champion_after']}`." if report["published"] else
               f"**Refused**: nothing published; the champion stays `{report['champion_before']}`. "
               f"Failed: {', '.join(report['failed_gates'])}.")
    lines = [f"# Publish report for {report['ds']}", "", verdict, "",
             f"Evaluation day: {report['eval_day']}. Champion metrics: "
             f"{report.get('champion_metrics_source', 'n/a')}.", "",
             "| gate | kind | value | required | margin | passed | note |", "|---|---|---|---|---|---|---|"]
    for g in report["gates"]:
        note = g.get("reason", "")
        if g["kind"] == "no_regression":
            if g.get("champion_rescored"):
                how = f"scored again on {g['champion_eval_day']} (recorded on {g['champion_recorded_eval_day']})"
            elif g["same_eval_day"]:
                how = f"recorded on the same eval day {g['champion_eval_day']}"
            else:
                how = (f"recorded on {g['champion_eval_day']}, another day: not scored again (see "
                       "pipelines/evaluate_champion.py), an oracle-normalised metric")
            note = (f"champion {g['champion_version']} at {_fmt(g['champion_value'])}, allowed drop "
                    f"{_fmt(g.get('allowed_drop'))}: {how}")
        lines.append(f"| {g['gate']} | {g['kind']} | {_fmt(g['value'])} | {_fmt(g['required'])} | "
                     f"{_fmt(g['margin'])} | {'yes' if g['passed'] else 'NO'} | {note} |")
    atomic.write_text(REPORT, "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.publish", description=__doc__.splitlines()[0])
    parser.add_argument("--ds", help="run date YYYY-MM-DD (the version's day; default: the newest curated day)")
    parser.add_argument("--rollback", action="store_true", help="move the champion back to the previous version")
    parser.add_argument("--to", help="with --rollback: the version to point the champion at")
    parser.add_argument("--refused-exit-code", type=int, default=0,
                        help="exit code when a gate refuses (default 0; Airflow uses 99 to mark the task skipped)")
    parser.add_argument("--params", help="params file (default: $RELATE_PARAMS or params.yaml)")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(PublishConfig, SECTION, args.params)
        root = Path.cwd()
        if args.rollback:
            pointer = rollback(cfg, args.to, root)
            log.info("rolled back: champion %s -> %s", pointer["rolled_back_from"], pointer["version"])
            return 0
        ds = args.ds or latest_ingested_day()
        parse_ds(ds)
        report = publish(ds, cfg, params_path(args.params), root)
        write_report(report)
    except (ConfigError, ValueError, PublishError, yaml.YAMLError) as err:
        log.error("publish stopped: %s", err)
        return 2
    if report["published"]:
        log.info("published %s and made it the champion (was %s)", report["version"], report["champion_before"])
        return 0
    for g in report["gates"]:
        if not g["passed"]:
            log.warning("gate %s failed: value %s, required %s, margin %s %s", g["gate"], _fmt(g["value"]),
                        _fmt(g["required"]), _fmt(g["margin"]), g.get("reason", ""))
    log.warning("nothing published; the champion stays %s (see %s)", report["champion_before"], REPORT)
    return args.refused_exit_code


if __name__ == "__main__":
    sys.exit(main())
