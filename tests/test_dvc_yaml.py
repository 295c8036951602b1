"""dvc.yaml stays true to the code: exact params keys per stage, code deps that exist, one module per stage."""
from __future__ import annotations

import importlib

import yaml

from tests.conftest import ROOT, TINY_PARAMS

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


def test_each_stage_lists_exactly_the_keys_of_its_sections():
    for name, stage in DVC.items():
        listed = stage.get("params", [])
        sections = {key.split(".")[0] for key in listed}
        for section in sections:
            assert section in PARAMS, f"{name}: params.yaml has no section {section!r}"
            want = {f"{section}.{k}" for k in PARAMS[section]}
            got = {k for k in listed if k.startswith(f"{section}.")}
            assert got == want, f"{name}: {section} keys differ: missing {sorted(want - got)}, unknown {sorted(got - want)}"


def test_every_params_section_is_read_by_some_stage_or_command():
    used = {key.split(".")[0] for stage in DVC.values() for key in stage.get("params", [])}
    # sections read by commands outside `dvc repro`'s default run
    outside = {"ablation"}
    assert set(PARAMS) - used - outside == set()


def test_tiny_config_has_the_same_sections_and_keys():
    tiny = yaml.safe_load(TINY_PARAMS.read_text())
    assert set(tiny) == set(PARAMS)
    for section, values in PARAMS.items():
        assert set(tiny[section]) == set(values), f"configs/tiny.yaml section {section} differs from params.yaml"


def test_code_deps_exist_and_stage_modules_have_main():
    for name, stage in DVC.items():
        for dep in stage.get("deps", []):
            if not dep.startswith(("data/", "models/")):
                assert (ROOT / dep).exists(), f"{name}: dep {dep} does not exist"
        module = stage["cmd"].split("-m ")[1].split()[0]
        assert callable(importlib.import_module(module).main), module
