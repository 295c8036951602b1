"""The shared plumbing: run dates, params validation, atomic writes."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from plumbing import atomic, dates
from tests.conftest import ROOT
from plumbing.config import ConfigError, build_config, load_config, load_params, require


def test_parse_ds_accepts_real_dates_only():
    assert dates.parse_ds("2026-02-28").day == 28
    for bad in ["2026-02-30", "2026-2-3", "20260203", "2026-02-03; DROP TABLE x", "", None]:
        with pytest.raises(ValueError, match="ds"):
            dates.parse_ds(bad)


def test_ds_range_and_shift():
    assert dates.ds_range("2026-12-30", "2027-01-02") == ["2026-12-30", "2026-12-31", "2027-01-01", "2027-01-02"]
    assert dates.shift_ds("2026-03-01", -1) == "2026-02-28"
    start, end = dates.day_bounds_ms("1970-01-02")
    assert (start, end) == (86_400_000, 172_800_000)
    with pytest.raises(ValueError, match="empty"):
        dates.ds_range("2026-01-02", "2026-01-01")


@dataclasses.dataclass
class _Cfg:
    days: int
    rate: float = 0.5
    names: list[str] = dataclasses.field(default_factory=list)
    master: str | None = None

    def __post_init__(self):
        require(self.days >= 1, "demo.days", f"must be >= 1, got {self.days}")


def test_build_config_checks_keys_types_and_ranges():
    cfg = build_config(_Cfg, "demo", {"days": 3, "rate": 1, "names": ["a"]})
    assert cfg.rate == 1.0 and isinstance(cfg.rate, float)
    with pytest.raises(ConfigError, match=r"demo: unknown key\(s\) dayz"):
        build_config(_Cfg, "demo", {"dayz": 3})
    with pytest.raises(ConfigError, match=r"demo.days: missing"):
        build_config(_Cfg, "demo", {})
    with pytest.raises(ConfigError, match=r"demo.days: expected int, got 'ten'"):
        build_config(_Cfg, "demo", {"days": "ten"})
    with pytest.raises(ConfigError, match=r"demo.days: expected int, got True"):
        build_config(_Cfg, "demo", {"days": True})
    with pytest.raises(ConfigError, match=r"demo.names\[1\]: expected str"):
        build_config(_Cfg, "demo", {"days": 1, "names": ["a", 2]})
    assert build_config(_Cfg, "demo", {"days": 1, "master": None}).master is None
    with pytest.raises(ConfigError, match=r"demo.master: expected str \| None, got 3"):
        build_config(_Cfg, "demo", {"days": 1, "master": 3})
    with pytest.raises(ConfigError, match=r"demo.days: must be >= 1"):
        build_config(_Cfg, "demo", {"days": 0})


def test_load_config_names_missing_file_and_section(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_config(_Cfg, "demo", tmp_path / "nope.yaml")
    path = tmp_path / "p.yaml"
    path.write_text("other: {}\n")
    with pytest.raises(ConfigError, match="no section 'demo'"):
        load_config(_Cfg, "demo", path)
    path.write_text("demo: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(_Cfg, "demo", path)


def test_load_config_overrides_are_checked_like_the_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("demo: {days: 3, rate: 0.25}\n")
    cfg = load_config(_Cfg, "demo", path, overrides={"rate": 1})
    assert (cfg.days, cfg.rate) == (3, 1.0)
    with pytest.raises(ConfigError, match=r"demo: unknown key\(s\) dayz"):
        load_config(_Cfg, "demo", path, overrides={"dayz": 1})
    with pytest.raises(ConfigError, match=r"demo.days: must be >= 1"):
        load_config(_Cfg, "demo", path, overrides={"days": 0})


def test_an_overlay_extends_its_base_key_by_key(tmp_path):
    (tmp_path / "base.yaml").write_text("demo: {days: 3, rate: 0.25, names: [a, b]}\nother: {x: 1}\n")
    (tmp_path / "sub").mkdir()
    overlay = tmp_path / "sub" / "o.yaml"
    overlay.write_text("extends: ../base.yaml\ndemo: {names: [c]}\nextra: {y: 2}\n")
    params = load_params(overlay)
    assert params == {"demo": {"days": 3, "rate": 0.25, "names": ["c"]}, "other": {"x": 1}, "extra": {"y": 2}}
    assert load_config(_Cfg, "demo", overlay).names == ["c"]  # a list is replaced whole, not merged
    (tmp_path / "base.yaml").write_text("demo: {days: 3, weights: {a: 1.0, b: 2.0}}\n")
    overlay.write_text("extends: ../base.yaml\ndemo: {weights: {b: 0}}\n")
    assert load_params(overlay)["demo"]["weights"] == {"a": 1.0, "b": 0}  # a nested mapping merges key by key
    overlay.write_text("extends: ../base.yaml\ndemo: {dayz: 4}\n")
    with pytest.raises(ConfigError, match=r"demo.dayz not in the file it extends"):
        load_params(overlay)
    overlay.write_text("extends: ../nope.yaml\n")
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(overlay)
    overlay.write_text("extends: o.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_params(overlay)


def test_a_key_written_twice_is_refused(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("demo:\n  days: 3\n  days: 4\n")
    with pytest.raises(ConfigError, match="duplicate key 'days'"):
        load_params(path)
    path.write_text("demo:\n  days: 3\ndemo:\n  days: 4\n")  # a section written twice, too
    with pytest.raises(ConfigError, match="duplicate key 'demo'"):
        load_params(path)


def test_the_merged_tiny_params_print_as_a_full_params_file(tmp_path):
    out = subprocess.run([sys.executable, "-m", "plumbing.config", "configs/tiny.yaml"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    (tmp_path / "params.yaml").write_text(out)
    assert load_params(tmp_path / "params.yaml") == load_params(ROOT / "configs" / "tiny.yaml")


def test_write_json_is_atomic_and_leaves_no_temp(tmp_path):
    target = tmp_path / "m" / "x.json"
    atomic.write_json(target, {"b": 1, "a": 2})
    assert target.read_text().startswith('{\n  "a": 2')
    assert [p.name for p in target.parent.iterdir()] == ["x.json"]


def test_directory_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "dt=2026-01-01"
    with atomic.directory(target) as stage:
        (stage / "part-0").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic.directory(target) as stage:
            (stage / "part-0").write_text("v2-partial")
            raise RuntimeError("crash mid-write")
    assert (target / "part-0").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dt=2026-01-01"]


def test_sigkill_mid_write_leaves_old_version_visible(tmp_path):
    target = tmp_path / "out"
    with atomic.directory(target) as stage:
        (stage / "f").write_text("old")
    script = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from plumbing import atomic
        with atomic.directory({str(target)!r}) as stage:
            (stage / "f").write_text("new-partial")
            print("writing", flush=True)
            time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (target / "f").read_text() == "old"
    visible = [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert visible == ["out"]
    assert atomic.clean_stale_staging(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_remove_tree_renames_aside_then_deletes_and_clears_a_killed_removal(tmp_path):
    part = tmp_path / "dt=2026-01-01"
    (part / "sub").mkdir(parents=True)
    (part / "sub" / "f.parquet").write_text("x")
    killed = tmp_path / ".dt=2026-01-01.removed-abc"  # what a removal killed after its rename leaves
    killed.mkdir()
    other = tmp_path / "dt=2026-01-02"
    other.mkdir()
    atomic.remove_tree(part)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dt=2026-01-02"]
    atomic.remove_tree(part)  # nothing left to remove: no error
    assert other.is_dir()

def test_atomic_writes_get_plain_modes(tmp_path):
    old = os.umask(0o022)
    try:
        atomic.write_text(tmp_path / "f.txt", "x")
        with atomic.directory(tmp_path / "d") as stage:
            (stage / "g").write_text("y")
    finally:
        os.umask(old)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
