"""Issue 19, items 1 and 4: every config number finite and in range, no non-finite model or
metrics written, and where a run writes (its layout, killed writers, file modes)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from plumbing import atomic
from plumbing.config import ConfigError, load_config, load_params
from plumbing.errors import DataError
from tests.conftest import ROOT, TINY_PARAMS


# ------------------------------------------------------------------ 1. config values

def tiny_config(cls, section: str, **overrides):
    return load_config(cls, section, TINY_PARAMS, overrides=overrides)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_a_non_finite_float_is_refused_naming_the_field(value):
    from pipelines.sft import SFTConfig
    from relate_sim.config import SimulateConfig

    with pytest.raises(ConfigError, match=r"sft\.learning_rate: must be a finite number"):
        tiny_config(SFTConfig, "sft", learning_rate=value)
    with pytest.raises(ConfigError, match=r"simulate\.exploration: must be a finite number"):
        tiny_config(SimulateConfig, "simulate", exploration=value)


def test_non_finite_values_inside_a_mapping_or_read_from_yaml_are_refused(tmp_path):
    from relate_models.grpo_trainer import GRPOStageConfig
    from pipelines.sft import SFTConfig

    rewards = {**load_params(TINY_PARAMS)["grpo"]["rewards"], "ctcvr": math.nan}
    with pytest.raises(ConfigError, match=r"grpo\.rewards\.ctcvr: must be a finite number"):
        tiny_config(GRPOStageConfig, "grpo", rewards=rewards)
    params = yaml.safe_load(TINY_PARAMS.read_text())
    text = yaml.safe_dump(params).replace("learning_rate: 0.003", "learning_rate: .inf", 1)
    assert "learning_rate: .inf" in text
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"sft\.learning_rate: must be a finite number, got inf"):
        load_config(SFTConfig, "sft", tmp_path / "p.yaml")
    with pytest.raises(ConfigError, match=r"sft\.learning_rate: must be a finite number"):
        tiny_config(SFTConfig, "sft", learning_rate=10**400)  # an int too large for a float


def test_sizes_that_overflow_are_refused_with_their_bound():
    from pipelines.sft import SFTConfig
    from relate_sim.config import SimulateConfig

    with pytest.raises(ConfigError, match=r"simulate\.impressions_per_day: must be at most 10,000,000,000 in magn"):
        tiny_config(SimulateConfig, "simulate", impressions_per_day=10**23)
    with pytest.raises(ConfigError, match=r"simulate\.impressions_per_day: must be in \[1, 1,000,000,000\]"):
        tiny_config(SimulateConfig, "simulate", impressions_per_day=2 * 10**9)
    with pytest.raises(ConfigError, match=r"simulate\.days: must be in \[1, 3,660\]"):
        tiny_config(SimulateConfig, "simulate", days=100_000_000)
    with pytest.raises(ConfigError, match=r"sft\.seed: must be a 64-bit integer"):
        tiny_config(SFTConfig, "sft", seed=2**70)
    assert tiny_config(SimulateConfig, "simulate", days=3660, impressions_per_day=10**9).days == 3660
    with pytest.raises(ConfigError, match=r"sft\.learning_rate: must be in \(0, 10\]"):
        tiny_config(SFTConfig, "sft", learning_rate=1e5)  # finite, in the generic range, and still nonsense


CONFIGS = {  # every params section and the dataclass that reads it
    "simulate": "relate_sim.config:SimulateConfig", "ingest": "pipelines.ingest:IngestConfig",
    "ingest_elements": "pipelines.ingest_elements:IngestElementsConfig",
    "validate": "pipelines.validate:ValidateConfig", "policy": "relate_models.policy:PolicyConfig",
    "sft": "pipelines.sft:SFTConfig", "grpo": "relate_models.grpo_trainer:GRPOStageConfig",
    "train_ctcvr": "pipelines.train_ctcvr:TrainCTCVRConfig",
    "evaluate_ctcvr": "pipelines.evaluate_ctcvr:EvaluateCTCVRConfig",
    "train_attribution": "pipelines.train_attribution:TrainAttributionConfig",
    "evaluate_attribution": "pipelines.evaluate_attribution:EvaluateAttributionConfig",
    "combo_policy": "pipelines.combo_policy:ComboPolicyConfig",
    "evaluate_combo": "pipelines.evaluate_combo:EvaluateComboConfig", "serving": "relate_models.serving:ServingConfig",
    "evaluate": "pipelines.evaluate_harness:EvaluateConfig", "ablation": "pipelines.ablation:AblationConfig",
    "publish": "pipelines.publish:PublishConfig", "upworthy": "relate_real.upworthy:UpworthyConfig",
    "advertisegen": "relate_real.advertisegen:AdvertiseGenConfig", "closed_loop": "pipelines.closed_loop:ClosedLoopConfig",
    "training": "pipelines.warm_start:TrainingConfig",
}


def test_every_numeric_knob_of_every_section_has_an_upper_bound():
    import dataclasses
    import importlib
    import typing

    from plumbing.config import SECTIONS

    assert set(CONFIGS) == set(SECTIONS)
    accepted = []
    for section, spec in CONFIGS.items():
        module, name = spec.split(":")
        cls = getattr(importlib.import_module(module), name)
        path = ROOT / "configs" / "real_corpus.yaml" if section in ("upworthy", "advertisegen") else TINY_PARAMS
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            huge = {int: (10**15, -10**15), float: (1e300, -1e300)}.get(hints[field.name], ())
            for value in huge if not field.name.endswith("seed") else (2**64,):
                try:
                    load_config(cls, section, path, overrides={field.name: value})
                    accepted.append(f"{section}.{field.name}={value}")
                except ConfigError:
                    pass
    assert not accepted, accepted


@pytest.mark.parametrize("master", ["", "lokal[2]", "local[0]", "local[*", "spark://host", "yarn; rm -rf /",
                                    "local[2] --conf x=y", "http://h:1"])
def test_a_bad_spark_master_is_refused(master):
    from pipelines.ingest import IngestConfig

    with pytest.raises(ConfigError, match=r"ingest\.master: must be a Spark master URL"):
        tiny_config(IngestConfig, "ingest", master=master)


def test_a_bad_master_on_the_command_line_is_refused_before_spark(tiny_params, caplog):
    from pipelines import ingest

    assert ingest.main(["--ds", "2026-01-01", "--master", "lokal[2]"]) == 2
    assert "ingest.master: must be a Spark master URL" in caplog.text


@pytest.mark.parametrize("master", ["local", "local[1]", "local[*]", "local[4,2]", "spark://h.example:7077",
                                    "spark://a:7077,b:7077", "yarn", "k8s://https://10.0.0.1:6443",
                                    "sc://localhost:15002"])
def test_good_spark_masters_are_accepted(master):
    from pipelines.ingest import IngestConfig

    assert tiny_config(IngestConfig, "ingest", master=master).master == master


def test_unknown_sections_are_refused_by_name(tiny_params, caplog):
    from pipelines import simulate
    from plumbing.config import SECTIONS, check_sections

    for path in [ROOT / "params.yaml", *sorted((ROOT / "configs").glob("*.yaml"))]:
        check_sections(load_params(path), path)  # the project's own files pass
    assert set(SECTIONS) <= set(load_params(ROOT / "configs" / "real_corpus.yaml"))  # no stale name in SECTIONS
    tiny_params.write_text(tiny_params.read_text() + "simulat:\n  days: 1\n")
    assert simulate.main([]) == 2
    assert "unknown section(s) simulat" in caplog.text
    assert not Path("data").exists()


# ------------------------------------------------------------------ 2. no non-finite output

def test_write_json_refuses_nan_naming_the_key_and_leaves_the_file(tmp_path):
    target = tmp_path / "m.json"
    atomic.write_json(target, {"ok": 1.0})
    for bad in ({"a": {"b": [1.0, math.nan]}}, {"x": math.inf}):
        with pytest.raises(DataError, match=r"non-finite value, (a\.b\[1\] = nan|x = inf)"):
            atomic.write_json(target, bad)
    assert json.loads(target.read_text()) == {"ok": 1.0}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_a_nan_weight_is_refused_in_a_staged_model(tmp_path):
    import torch
    from safetensors.torch import save_file

    with atomic.directory(tmp_path / "model") as staging:
        save_file({"w": torch.ones(3)}, str(staging / "model.safetensors"))
        atomic.require_finite_weights("demo", staging)
    with pytest.raises(DataError, match=r"demo: model weight w in model.safetensors holds a non-finite value \(nan\)"):
        with atomic.directory(tmp_path / "model") as staging:
            save_file({"w": torch.tensor([1.0, math.nan]), "steps": torch.tensor([1])},
                      str(staging / "model.safetensors"))
            atomic.require_finite_weights("demo", staging)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


TEXTS = ["cheap flights to rome today", "book hotels near the beach", "low fee credit cards online",
         "fresh deals on laptops now", "comfy shoes for every day", "save big on home loans"]


@pytest.fixture
def sft_inputs(tiny_params, monkeypatch):
    """A tiny tokenizer and corpus for the sft stage (no simulate/ingest), and sentinel outputs."""
    from relate_models import policy
    from relate_models.tokenizer import save_tokenizer, train_tokenizer

    rows = [(v, k, f"{t} {k} {i}") for i, (v, k, t) in enumerate(
        (v, k, t) for v in ("travel", "finance") for k in ("rome", "cards", "deals") for t in TEXTS)]
    corpus = pd.DataFrame(rows, columns=["vertical", "keyword", "ad_text"]).assign(impressions=1, clicks=0,
                                                                                   conversions=0)
    save_tokenizer(train_tokenizer(corpus["ad_text"].tolist() * 3, vocab_size=300), Path("models/tokenizer"))
    monkeypatch.setattr(policy, "load_search_corpus", lambda _dir: corpus)
    Path("models/sft").mkdir(parents=True)
    Path("models/sft/config.json").write_text("before")
    Path("metrics").mkdir()
    Path("metrics/sft.json").write_text('{"before": true}\n')
    return tiny_params


def sentinels_untouched() -> bool:
    return (Path("models/sft/config.json").read_text() == "before"
            and [p.name for p in Path("models/sft").iterdir()] == ["config.json"]
            and Path("metrics/sft.json").read_text() == '{"before": true}\n'
            and not [p for p in Path("models").iterdir() if p.name.startswith(".")])


def test_sft_with_an_infinite_learning_rate_is_refused_and_writes_nothing(sft_inputs, caplog):
    from pipelines import sft

    params = yaml.safe_load(sft_inputs.read_text())
    params["sft"].update(learning_rate=math.inf, epochs=1)
    sft_inputs.write_text(yaml.safe_dump(params))
    assert sft.main([]) == 2
    assert "sft.learning_rate: must be a finite number, got inf" in caplog.text
    assert sentinels_untouched()


@pytest.mark.parametrize("poison", ["metrics", "weights"])
def test_a_diverged_sft_run_exits_2_and_keeps_the_previous_model(sft_inputs, monkeypatch, caplog, poison):
    import torch
    from pipelines import sft
    from relate_models import policy

    def diverged_fit(model, *args, **kwargs):
        with torch.no_grad():
            next(model.parameters()).fill_(math.nan)
        loss = math.nan if poison == "metrics" else 1.0
        return [{"epoch": 1, "step": 1, "train_loss": loss, "val_loss": loss, "seconds": 0.0}]

    monkeypatch.setattr(policy, "fit_sft", diverged_fit)
    monkeypatch.setattr(policy, "generate", lambda model, tok, prompts, **kw: [["x"] for _ in prompts])
    assert sft.main([]) == 2
    expected = "sft: metrics holds a non-finite value" if poison == "metrics" else "holds a non-finite value (nan)"
    assert expected in caplog.text and "sft failed" in caplog.text
    assert sentinels_untouched()


def test_a_finite_sft_run_writes_strict_json_and_plain_modes(sft_inputs, monkeypatch):
    from pipelines import sft
    from relate_models import policy

    monkeypatch.setattr(policy, "fit_sft", lambda *a, **k: [{"epoch": 1, "step": 1, "train_loss": 2.0,
                                                             "val_loss": 2.0, "seconds": 0.0}])
    monkeypatch.setattr(policy, "generate", lambda model, tok, prompts, **kw: [["x"] for _ in prompts])
    old = os.umask(0o022)
    try:
        assert sft.main([]) == 0
    finally:
        os.umask(old)
    assert json.loads(Path("metrics/sft.json").read_text(), parse_constant=pytest.fail)["val_loss"] == 2.0
    modes = {p.name: p.stat().st_mode & 0o777 for p in Path("models/sft").iterdir()}
    assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}, modes


# ------------------------------------------------------------------ 4. where things are written

def test_the_layout_rule(tmp_path):
    from plumbing.config import project_root
    from plumbing.paths import Layout

    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    (project / "params.yaml").write_text("sft: {seed: 1}\n")
    (project / "configs" / "tiny.yaml").write_text("extends: ../params.yaml\n")
    (tmp_path / "variant.yaml").write_text(f"extends: {project / 'params.yaml'}\n")
    (tmp_path / "alone.yaml").write_text("sft: {seed: 1}\n")
    cases = {project / "params.yaml": project, project / "configs" / "tiny.yaml": project / "runs" / "tiny",
             tmp_path / "variant.yaml": project / "runs" / "variant", tmp_path / "alone.yaml": tmp_path / "runs" / "alone"}
    for params, root in cases.items():
        assert Layout.for_params(params, project_root(params)).root == root.resolve(), params
    assert project_root(ROOT / "configs" / "tiny.yaml") == ROOT
    assert Layout(project).path("metrics/sft.json") == project / "metrics" / "sft.json"


@pytest.fixture
def small_project(tmp_path, monkeypatch):
    """A project dir with the tiny params.yaml, committed-looking metrics, and a smaller overlay."""
    project = tmp_path / "project"
    (project / "configs").mkdir(parents=True)
    (project / "params.yaml").write_text(TINY_PARAMS.read_text())
    (project / "configs" / "small.yaml").write_text(
        "extends: ../params.yaml\nsimulate:\n  days: 1\n  impressions_per_day: 1000\n")
    (project / "metrics").mkdir()
    (project / "metrics" / "simulate.json").write_text("committed\n")
    monkeypatch.delenv("RELATE_PARAMS", raising=False)
    monkeypatch.chdir(project)
    return project


def test_a_non_default_params_file_writes_under_its_own_run_dir(small_project):
    from pipelines import simulate

    assert simulate.main(["--params", "configs/small.yaml"]) == 0
    run = small_project / "runs" / "small"
    assert json.loads((run / "metrics" / "simulate.json").read_text())["totals"]["impression"] == 1000
    assert [p.name for p in (run / "data" / "raw" / "events").iterdir()] == ["dt=2026-01-01"]
    assert (small_project / "metrics" / "simulate.json").read_text() == "committed\n"
    assert not (small_project / "data").exists()
    assert Path.cwd() == small_project  # the working directory is restored


def test_a_stage_run_from_another_directory_writes_into_the_project(small_project, tmp_path, monkeypatch, caplog):
    from pipelines import simulate

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert simulate.main([]) == 2  # no params.yaml here, none given: refused, nothing written
    assert "no params.yaml in the working directory" in caplog.text
    small = yaml.safe_load(TINY_PARAMS.read_text())
    small["simulate"].update(days=1, impressions_per_day=1000)
    (small_project / "params.yaml").write_text(yaml.safe_dump(small))
    assert simulate.main(["--params", str(small_project / "params.yaml")]) == 0
    assert list(elsewhere.iterdir()) == []
    assert (small_project / "data" / "raw" / "events" / "dt=2026-01-01").is_dir()
    assert json.loads((small_project / "metrics" / "simulate.json").read_text())["totals"]["impression"] == 1000
    assert Path.cwd() == elsewhere


# ------------------------------------------------------------------ killed writers, modes

def test_stale_staging_of_a_name_is_cleaned_when_it_is_next_written(tmp_path):
    models = tmp_path / "models"
    for hidden in (".sft.staging-abc", ".sft.old-def", ".ctcvr.staging-ghi"):
        (models / hidden).mkdir(parents=True)
        (models / hidden / "f").write_text("junk")
    with atomic.directory(models / "sft") as staging:
        (staging / "f").write_text("new")
    assert sorted(p.name for p in models.iterdir()) == [".ctcvr.staging-ghi", "sft"]  # another writer's is kept
    assert (models / "sft" / "f").read_text() == "new"


def test_a_writer_killed_between_its_renames_gets_its_previous_version_back(tmp_path):
    models = tmp_path / "models"
    (models / ".sft.old-abc").mkdir(parents=True)
    (models / ".sft.old-abc" / "f").write_text("previous")
    (models / ".sft.staging-abc").mkdir()
    assert atomic.clean_stale_staging(models, "sft") == 1
    assert sorted(p.name for p in models.iterdir()) == ["sft"]
    assert (models / "sft" / "f").read_text() == "previous"


def test_files_written_owner_only_inside_a_staged_directory_get_plain_modes(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic.directory(tmp_path / "model") as staging:
            (staging / "model.safetensors").write_bytes(b"x")
            os.chmod(staging / "model.safetensors", 0o600)
            (staging / "sub").mkdir(mode=0o700)
    finally:
        os.umask(old)
    assert (tmp_path / "model" / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "model" / "sub").stat().st_mode & 0o777 == 0o755
