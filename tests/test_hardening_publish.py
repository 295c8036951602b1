"""Issue 19, item 2: publish verifies what it publishes before it promotes.

Each case fails on the code before the fix: publish promoted an unvalidated day, a day with no
data and models trained after the day; rolled back to any directory holding a manifest.json;
used any registry_dir; replaced (or crashed on) a malformed champion.json; ignored `--to`
without `--rollback`; and read `--ds ''` as "every day". Stand-in models and metrics as in
tests/test_publish.py.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from tests.test_publish import _write_run, champion, project, publish, versions  # noqa: F401 (fixture)

DAY = "2026-01-07"


def refused(proc, *named: str) -> None:
    """An expected failure: exit 2, one line naming what is at fault, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    for text in named:
        assert text in proc.stderr, (text, proc.stderr)


def nothing_published(root: Path) -> None:
    assert not (root / "registry" / "champion.json").exists()
    assert not (root / "registry").exists() or versions(root) == []


def set_publish(root: Path, **values) -> None:
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["publish"].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params))


# ---------------------------------------------------------------- the day


def test_a_day_that_was_never_validated_is_refused(project):
    _write_run(project, "a")
    marker = project / "data" / "validation" / "_SUCCESS"
    marker.write_text("2026-01-05\n2026-01-06\n")  # the last validation run did not cover the day
    refused(publish(project, "--ds", DAY), DAY, "data/validation/_SUCCESS", "does not list it")
    marker.unlink()  # validation failed (or never ran): no marker at all
    refused(publish(project, "--ds", DAY), DAY, "data/validation/_SUCCESS", "is missing")
    nothing_published(project)


def test_a_day_after_the_last_logs_is_refused(project):
    _write_run(project, "a")
    later = "2026-02-01"
    # even with a marker that names it (a hand-written or stale one): no curated data for the day
    (project / "data" / "validation" / "_SUCCESS").write_text(f"{DAY}\n{later}\n")
    refused(publish(project, "--ds", later), f"no data for {later}", f"labeled_impressions/dt={later}")
    nothing_published(project)


def test_models_trained_on_data_after_the_day_are_refused(project):
    _write_run(project, "a", day="2026-01-07")  # the CTCVR model was scored on the 7th
    refused(publish(project, "--ds", "2026-01-06"), "trained on data after 2026-01-06",
            "metrics/ctcvr.json:eval_day = 2026-01-07")
    # days recorded by the training stages count too
    _write_run(project, "a", day="2026-01-05")
    (project / "metrics" / "train_attribution.json").write_text(json.dumps({"window_end": "2026-01-07"}))
    refused(publish(project, "--ds", "2026-01-06"), "metrics/train_attribution.json:window_end = 2026-01-07")
    # models that name no day at all: publish cannot tell what they were trained on
    (project / "metrics" / "train_attribution.json").unlink()
    (project / "metrics" / "ctcvr.json").write_text(json.dumps({"auc_ratio_ctcvr": 0.95}))
    refused(publish(project, "--ds", "2026-01-06"), "name no training days")
    nothing_published(project)
    # the same models, trained up to the day, publish
    _write_run(project, "a", day="2026-01-06")
    assert publish(project, "--ds", "2026-01-06").returncode == 0
    assert champion(project)["version"].startswith("2026-01-06-")


# ---------------------------------------------------------------- rollback targets


def test_rollback_targets_registry_versions_only(project, tmp_path):
    _write_run(project, "a", uplift=0.10)
    assert publish(project, "--ds", "2026-01-06").returncode == 0
    v1 = champion(project)["version"]
    _write_run(project, "b", uplift=0.20)
    assert publish(project, "--ds", DAY).returncode == 0
    v2 = champion(project)["version"]
    before = (project / "registry" / "champion.json").read_bytes()
    # a directory that looks like a version, outside the registry
    outside = tmp_path / "elsewhere" / v1
    shutil.copytree(project / "registry" / v1, outside)
    for target in (str(outside), f"../elsewhere/{v1}", f"{v1}/../{v1}", "champion.json", "", "."):
        refused(publish(project, "--rollback", "--to", target), "--to must name a registry version")
    refused(publish(project, "--rollback", "--to", "2026-01-01-0123456789"), "unknown version")
    assert (project / "registry" / "champion.json").read_bytes() == before
    # a registry version is a target
    proc = publish(project, "--rollback", "--to", v1)
    assert proc.returncode == 0, proc.stderr
    pointer = champion(project)
    assert pointer["version"] == v1 and pointer["rolled_back_from"] == v2 and pointer["history"] == [v1, v2, v1]
    assert pointer["path"] == f"registry/{v1}"


def test_to_without_rollback_and_ds_with_rollback_are_refused(project):
    _write_run(project, "a")
    refused(publish(project, "--ds", DAY, "--to", "2026-01-06-0123456789"), "--to", "--rollback")
    nothing_published(project)
    assert not (project / "metrics" / "publish.json").exists()
    assert publish(project, "--ds", DAY).returncode == 0
    before = (project / "registry" / "champion.json").read_bytes()
    refused(publish(project, "--rollback", "--ds", DAY), "--ds", "--rollback")
    assert (project / "registry" / "champion.json").read_bytes() == before


# ---------------------------------------------------------------- the registry's place


@pytest.mark.parametrize("value", ["/etc", "/etc/relate", "/usr/local/registry", "/", "/var/lib/x", "/proc/relate",
                                   "/root/registry", "/etc/../etc"])
def test_a_system_path_is_refused_as_registry_dir(value):
    from pipelines.publish import PublishConfig
    from plumbing.config import load_config
    from plumbing.errors import ConfigError
    from tests.conftest import TINY_PARAMS

    with pytest.raises(ConfigError, match="publish.registry_dir"):
        load_config(PublishConfig, "publish", TINY_PARAMS, {"registry_dir": value})


def test_registry_dir_stays_inside_the_project(project, tmp_path):
    _write_run(project, "a")
    # (never /etc here: the code before the fix would write into it)
    set_publish(project, registry_dir="/proc/relate-registry")
    refused(publish(project, "--ds", DAY), "publish.registry_dir", "system path")
    for outside in ("../registry", "registry/../../registry", "."):
        set_publish(project, registry_dir=outside)
        refused(publish(project, "--ds", DAY), "publish.registry_dir", "inside the project")
    assert not (tmp_path / "registry").exists()
    # a link out of the project, or an absolute path outside it (DVC would not track it), is caught
    (tmp_path / "elsewhere").mkdir()
    (project / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    for outside in ("linked", str(tmp_path / "elsewhere")):
        set_publish(project, registry_dir=outside)
        refused(publish(project, "--ds", DAY), "publish.registry_dir", "outside the project")
        assert list((tmp_path / "elsewhere").iterdir()) == []
    # an absolute path inside the project is the operator's choice
    set_publish(project, registry_dir=str(project / "releases"))
    proc = publish(project, "--ds", DAY)
    assert proc.returncode == 0, proc.stderr
    assert (project / "releases" / "champion.json").is_file()


# ---------------------------------------------------------------- champion.json


MALFORMED = {
    "a list": "[]",
    "a string": '"2026-01-06-0123456789"',
    "no version": json.dumps({"history": ["2026-01-06-0123456789"], "path": "registry/2026-01-06-0123456789",
                              "metrics": {}, "ds": None, "eval_day": None, "serving": None}),
    "version of the wrong type": None,  # filled in from a real pointer below
    "history not a list": None,
    "a path elsewhere": None,
    "the version's name elsewhere": None,
    "not JSON": "{version: ",
    "not text": b"\xff\xfe\x00champion",
}


def _malformed(good: dict, kind: str) -> bytes:
    bad = dict(good)
    if kind == "version of the wrong type":
        bad["version"] = 3
    elif kind == "history not a list":
        bad["history"] = good["version"]
    elif kind == "a path elsewhere":
        bad["path"] = "/etc"
    elif kind == "the version's name elsewhere":
        bad["path"] = f"/tmp/{good['version']}"
    else:
        raw = MALFORMED[kind]
        return raw if isinstance(raw, bytes) else raw.encode()
    return json.dumps(bad).encode()


def test_a_malformed_champion_is_refused_and_left_as_it_is(project):
    _write_run(project, "a", uplift=0.10)
    assert publish(project, "--ds", "2026-01-06").returncode == 0
    good = champion(project)
    pointer = project / "registry" / "champion.json"
    _write_run(project, "b", uplift=0.20)  # a better model: only the broken pointer stops it
    for kind in MALFORMED:
        raw = _malformed(good, kind)
        pointer.write_bytes(raw)
        for args in (("--ds", DAY), ("--rollback",), ("--rollback", "--to", good["version"])):
            proc = publish(project, *args)
            refused(proc, "registry/champion.json")
            assert pointer.read_bytes() == raw, (kind, args, "the champion file must be left as it is")
        assert versions(project) == [good["version"]], kind
    # repaired, the history is whole and the next publish extends it
    pointer.write_text(json.dumps(good))
    assert publish(project, "--ds", DAY).returncode == 0
    assert champion(project)["history"] == [good["version"], champion(project)["version"]]


def test_a_refusal_by_the_gates_keeps_its_exit_code(project):  # unchanged by the fix: a verdict, not an error
    _write_run(project, "a", compliance=0.5)
    proc = publish(project, "--ds", DAY, "--refused-exit-code", "99")
    assert proc.returncode == 99, proc.stderr
    report = json.loads((project / "metrics" / "publish.json").read_text())
    assert report["published"] is False and report["failed_gates"] == ["relate_compliance"]


# ---------------------------------------------------------------- --ds ''


def test_an_empty_ds_is_refused_never_every_day(project):
    _write_run(project, "a")
    refused(publish(project, "--ds", ""), "YYYY-MM-DD")
    nothing_published(project)


@pytest.mark.parametrize("mode", ["partition", "as_of"])  # as_of stages refused it before the fix already
def test_every_stage_refuses_an_empty_ds(mode):
    from plumbing.cli import run_stage

    ran = []
    assert run_stage("validate", "a stage", ran.append, ["--ds", ""], ds=mode) == 2
    assert ran == [], "the stage ran with --ds ''"
