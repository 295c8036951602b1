"""Publish's registry: the versioned artifact sets under registry/, the champion pointer, DVC.

`registry/<version>/` holds the artifacts, their evaluation metrics, manifest.json and
MODEL_CARD.md; `<version>.dvc` tracks it and `dvc push` copies it to the remote. The
version is `<ds>-<content hash>` (wall-clock timings left out), so a rerun of the same day
with the same models is the same version. `champion.json` names the version in service and
the history that rollback walks back; one publisher at a time holds the registry lock.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from plumbing import atomic
from plumbing.config import load_params
from plumbing.errors import ConfigError, DataError, StageError
from plumbing.logs import get_logger
from plumbing.paths import (ATTRIBUTION_DIR, COMBO_POLICY_DIR, CTCVR_DIR, CURATED_TABLES, METRICS, RELATE_DIR,
                            SERVING_DIR, SFT_DIR, TOKENIZER_DIR, VALIDATION, curated, partitions)

log = get_logger("publish")
CHAMPION_FILE = "champion.json"
VALIDATED_MARKER = VALIDATION / "_SUCCESS"  # pipelines.validate writes the days that passed, one a line
# A version is `<ds>-<first 10 hex digits of the content sha256>` (pipelines.publish.release).
VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}-[0-9a-f]{10}$")
# publish.registry_dir is never one of these, nor inside one (besides "/" itself).
SYSTEM_DIRS = tuple(Path(p) for p in ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib32", "/lib64", "/libx32", "/proc",
                                      "/root", "/run", "/sbin", "/sys", "/usr", "/var"))

# The artifact set: name in the registry -> source directory. The policy directory holds
# its own tokenizer (save_pretrained); `tokenizer` is the shared BPE the CTCVR model reads;
# `sft` is the policy before GRPO: a warm start continues it, and a full retrain's is the KL reference
# of the warm GRPO updates that follow it (pipelines.grpo.kl_reference).
ARTIFACTS: dict[str, Path] = {
    "policy": RELATE_DIR,
    "sft": SFT_DIR,
    "tokenizer": TOKENIZER_DIR,
    "ctcvr": CTCVR_DIR,
    "attribution": ATTRIBUTION_DIR,
    "combo_policy": COMBO_POLICY_DIR,
    "serving": SERVING_DIR,
}
# Metrics files copied into the artifact set as its evaluation report (those that exist).
EVALUATION_FILES = ("evaluate.json", "ctcvr.json", "attribution.json", "grpo.json", "sft.json",
                    "ctcvr_train.json", "train_attribution.json", "validate.json", "ingest.json")


class PublishError(StageError):
    """A failed DVC command or an unusable registry (not a gate refusal)."""


def read_json(path: Path) -> Any:
    """A JSON file's content; None when the file is absent."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError, IsADirectoryError) as err:
        raise DataError(f"{path} is not valid JSON: {err}") from None


# ---------------------------------------------------------------- the registry's place

def _system_dir(path: Path) -> Path | None:
    """The system directory `path` is, or lies under (None: not a system path)."""
    if path == Path(path.anchor):
        return path
    return next((s for s in SYSTEM_DIRS if path == s or s in path.parents), None)


def check_registry_dir(value: str, root: Path | None = None) -> Path:
    """`publish.registry_dir` as a path; refused (naming the field) when it cannot be the registry.

    As written (the config check): an absolute path must not be a system directory nor lie in
    one; a relative one must name a directory inside the project (no '..' out of it). With
    `root`, also as resolved from the project root, links followed: it must lie inside the
    project, since DVC tracks (`dvc add`) only paths inside its project.
    """
    field, written = "publish.registry_dir", Path(os.path.normpath(value))
    if written.is_absolute():
        system = _system_dir(written)
        if system is not None:
            raise ConfigError(f"{field}: {value!r} is a system path (under {system}); give a directory of the project")
    elif written == Path(".") or written.parts[0] == "..":
        raise ConfigError(f"{field}: {value!r} must be a directory inside the project (relative, without '..')")
    if root is None:
        return Path(value)
    resolved, project = (root / value).resolve(), root.resolve()
    if project not in resolved.parents:
        raise ConfigError(f"{field}: {value!r} resolves to {resolved}, outside the project {project} (a link?): "
                          "DVC tracks registry versions only inside the project")
    return Path(value)


# ---------------------------------------------------------------- champion.json

# key -> the JSON types its value may have; every key is required and no other is allowed,
# except `rolled_back_from` (a rollback's pointer).
CHAMPION_SCHEMA: dict[str, tuple[type, ...]] = {
    "version": (str,), "path": (str,), "history": (list,), "metrics": (dict,),
    "ds": (str, type(None)), "eval_day": (str, type(None)), "serving": (dict, type(None)),
}
CHAMPION_OPTIONAL: dict[str, tuple[type, ...]] = {"rolled_back_from": (str,)}


def champion_problem(obj: Any, registry: Path) -> str | None:
    """What is wrong with a champion pointer of `registry` (None: it fits the schema)."""
    if not isinstance(obj, dict):
        return f"a JSON object expected, got {type(obj).__name__}"
    missing = sorted(set(CHAMPION_SCHEMA) - set(obj))
    unknown = sorted(set(obj) - set(CHAMPION_SCHEMA) - set(CHAMPION_OPTIONAL))
    if missing or unknown:
        return f"missing key(s) {missing}" if missing else f"unknown key(s) {unknown}"
    for key, types in {**CHAMPION_SCHEMA, **CHAMPION_OPTIONAL}.items():
        if key in obj and not isinstance(obj[key], types):
            return f"{key} must be {' or '.join('null' if t is type(None) else t.__name__ for t in types)}, " \
                   f"got {type(obj[key]).__name__}"
    names = [obj["version"], *obj["history"], *([obj["rolled_back_from"]] if "rolled_back_from" in obj else [])]
    bad = [n for n in names if not isinstance(n, str) or not VERSION_RE.match(n)]
    if bad:
        return f"not a version name (YYYY-MM-DD-<10 hex digits>): {bad[0]!r}"
    if obj["history"][-1:] != [obj["version"]]:
        return f"history must end with the version {obj['version']!r}"
    path = Path(obj["path"])  # as publish wrote it: relative to the project root, or absolute
    if path.parts[-2:] != (registry.name, obj["version"]) or \
            (path.is_absolute() and path.resolve() != (registry / obj["version"]).resolve()):
        return f"path {obj['path']!r} is not the version's directory {registry / obj['version']}"
    if any(v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))) for v in obj["metrics"].values()):
        return "metrics must map gate names to numbers or null"
    return None


def champion_serving(registry: Path) -> tuple[str, Path] | None:
    """(version, serving-table folder) of the champion an ad server would serve today; None: no
    champion, or one published before serving tables were part of the artifact set (the logging
    policy then serves)."""
    champion = read_champion(registry)
    if champion is None:
        return None
    folder = serving_folder(registry, champion["version"])
    return (champion["version"], folder) if folder.is_dir() else None


def serving_folder(registry: Path, version: str) -> Path:
    """Where a registered version's serving tables (the `serving` artifact) lie."""
    return registry / version / "serving"


def read_champion(registry: Path) -> dict | None:
    """The champion pointer (None: no champion yet); a malformed one is refused and left as it is."""
    path = registry / CHAMPION_FILE
    try:
        obj = read_json(path)
    except DataError as err:
        raise DataError(f"{err}; left as it is: repair it (its history names the versions) or move it away") from None
    if obj is None:
        return None
    problem = champion_problem(obj, registry)
    if problem:
        raise DataError(f"{path} is malformed ({problem}); left as it is: repair it (its history names the "
                        "versions) or move it away")
    return obj


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


def missing_artifacts(names: list[str]) -> dict[str, Path]:
    """The artifacts among `names` whose source directory is missing or empty."""
    return {n: ARTIFACTS[n] for n in names if not ARTIFACTS[n].is_dir() or not any(ARTIFACTS[n].iterdir())}


# ---------------------------------------------------------------- hashing

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


# ---------------------------------------------------------------- provenance

def git_revision(root: Path) -> dict:
    def git(*args):
        proc = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return proc.stdout.strip() if proc.returncode == 0 else None

    return {"commit": git("rev-parse", "HEAD") or "none (no commit yet or not a git repository)",
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def validated_days() -> list[str]:
    """The days the last validation run passed (pipelines.validate's marker; [] when absent)."""
    try:
        return VALIDATED_MARKER.read_text(encoding="utf-8").split()
    except (FileNotFoundError, IsADirectoryError, UnicodeDecodeError):
        return []


def data_partitions(ds: str, metrics_dir: Path = METRICS) -> dict:
    """Which partitions the models saw: curated partitions up to ds, the validated days, training windows."""
    windows = {}
    for name in ("ctcvr_train.json", "train_attribution.json"):
        m = read_json(metrics_dir / name) or {}
        windows[name.removesuffix(".json")] = {k: v for k, v in m.items()
                                              if any(w in k for w in ("day", "window", "dt", "ds"))}
    return {
        "run_ds": ds,
        "curated": {t: [d for d in partitions(curated(t)) if d <= ds] for t in CURATED_TABLES},
        "validated_days": validated_days(),
        "training_windows": windows,
    }


# ---------------------------------------------------------------- DVC

def dvc(root: Path, *args: str) -> str:
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PublishError(f"dvc {' '.join(args)} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc.stdout


def ensure_dvc(root: Path, cfg) -> None:
    if not (root / ".dvc").is_dir():
        dvc(root, "init", "-q", *([] if (root / ".git").exists() else ["--no-scm"]))
    # --local: the remote is machine configuration (params decide it), not a committed setting
    dvc(root, "remote", "add", "--local", "--force", cfg.remote_name, cfg.remote_location(root))


def track_and_push(root: Path, cfg, version_dir: Path) -> None:
    ensure_dvc(root, cfg)
    rel = str(version_dir.relative_to(root))
    dvc(root, "add", "-q", rel)
    if cfg.push:
        dvc(root, "push", "-q", "-r", cfg.remote_name, f"{rel}.dvc")


# ---------------------------------------------------------------- versions and the champion

def assemble(staging: Path, artifacts: list[str], metrics_dir: Path) -> dict:
    """Copy the artifacts and the evaluation report into `staging`; return the evaluation files read."""
    for name in artifacts:
        shutil.copytree(ARTIFACTS[name], staging / name, ignore=shutil.ignore_patterns(".*", "__pycache__"))
        if name == "policy":  # an adapter policy (adapter + base reference) also ships merged
            from relate_models.policy import ship_merged

            ship_merged(staging / name, staging / "policy_merged")
    evaluation = {}
    (staging / "evaluation").mkdir()
    for name in EVALUATION_FILES:
        if (metrics_dir / name).is_file():
            shutil.copy2(metrics_dir / name, staging / "evaluation" / name)
            evaluation[name] = read_json(metrics_dir / name)
    return evaluation


def stage_version(registry: Path, ds: str, artifacts: list[str]) -> tuple[Path, str, dict]:
    """(staging directory, content digest, evaluation files) of the candidate artifact set."""
    with atomic.directory(registry / ".incoming" / ds) as staging:
        evaluation = assemble(staging, artifacts, METRICS)
        digest = tree_digest(staging)
    return registry / ".incoming" / ds, digest, evaluation


def register(registry: Path, candidate: Path, version: str, manifest: dict, card: str) -> Path:
    """Move the staged set to registry/<version> with its manifest and card (reused when already there)."""
    version_dir = registry / version
    if version_dir.is_dir():
        log.info("version %s is already registered (same content): reusing it", version)
        shutil.rmtree(candidate)
    else:
        atomic.write_json(candidate / "manifest.json", manifest)
        atomic.write_text(candidate / "MODEL_CARD.md", card)
        os.replace(candidate, version_dir)
    shutil.rmtree(registry / ".incoming", ignore_errors=True)
    return version_dir


def promote(registry: Path, champion: dict | None, version: str, fields: dict) -> dict:
    """Point champion.json at `version` (appended to the history); returns the pointer."""
    history = list(champion.get("history", [])) if champion else []
    if not history or history[-1] != version:
        history.append(version)
    pointer = {"version": version, "path": str(registry / version), **fields, "history": history}
    write_champion(registry, pointer)
    return pointer


def write_champion(registry: Path, pointer: dict) -> None:
    """Replace champion.json atomically, only with a pointer that fits its schema."""
    problem = champion_problem(pointer, registry)
    if problem:
        raise DataError(f"refusing to write {registry / CHAMPION_FILE}: {problem}; the champion stays")
    atomic.write_json(registry / CHAMPION_FILE, pointer)


def registry_version(registry: Path, name: str) -> str:
    """`name` when it is a version registered under `registry` (here, or tracked by its .dvc file)."""
    if not VERSION_RE.match(name):
        raise ConfigError(f"--to must name a registry version (YYYY-MM-DD-<10 hex digits>, as {CHAMPION_FILE}'s "
                          f"history lists them), got {name!r}")
    if not (registry / name / "manifest.json").is_file() and not (registry / f"{name}.dvc").is_file():
        raise PublishError(f"unknown version {name!r}: no {registry / name} and no {registry / name}.dvc")
    return name


def rollback(cfg, to: str | None, root: Path) -> dict:
    """Point the champion at the previous version (or `to`), pulling it from the remote when missing."""
    registry = check_registry_dir(cfg.registry_dir, root)
    with registry_lock(registry):
        champion = read_champion(registry)
        if not champion:
            raise PublishError(f"no champion to roll back: {registry / CHAMPION_FILE} is missing")
        history = list(champion["history"])
        if to is None:
            if len(history) < 2:
                raise PublishError(f"nothing to roll back to: {champion['version']} is the only version promoted")
            history.pop()
            target = history[-1]
        else:
            target = registry_version(registry, to)
            history.append(target)
        target_dir = registry / target
        if not target_dir.is_dir():
            ensure_dvc(root, cfg)
            dvc(root, "pull", "-q", "-r", cfg.remote_name, str(target_dir) + ".dvc")
        manifest = read_json(target_dir / "manifest.json")
        if not isinstance(manifest, dict) or manifest.get("version") != target:
            raise DataError(f"{target_dir / 'manifest.json'} is missing or names another version: not rolled back")
        pointer = {"version": target, "path": str(target_dir), "ds": manifest.get("ds"),
                   "eval_day": manifest.get("eval_day"), "serving": manifest.get("serving"),
                   "metrics": manifest.get("metrics", {}),
                   "history": history, "rolled_back_from": champion["version"]}
        write_champion(registry, pointer)
        return pointer
