"""Fuzz ingest and the gate with malformed raw lines and files of our own making (issue 19).

One raw partition holds a corpus of line kinds (encodings, nesting, sizes, types, ids, names,
duplicates, unknown and missing fields) next to valid events; other partitions each hold one
broken file. Every line must be accounted for (rows_in = kept + quarantined, each kind with its
reason), no run may end in a traceback (exit 0, or 2 with one line naming the file), and the
kept rows must satisfy the contract's bounds (checked here and by the GX gate).
"""
from __future__ import annotations

import collections
import gzip
import json
import re

import pandas as pd
import pytest

from plumbing import paths
from plumbing.dates import day_bounds_ms
from pipelines import ingest, schema, validate
from tests.conftest import TINY_PARAMS
from tests.test_ingest import spark  # noqa: F401  (the module's one Spark session)

D1 = "2026-03-01"
HOUR = 3_600_000
T0 = day_bounds_ms(D1)[0] + 10 * HOUR


def imp(eid: str, placement: str = "search", **over) -> dict:
    ev = {"event_id": eid, "event_type": "impression", "ts": T0, "impression_id": f"i-{eid}",
          "user_id": "u0000001", "user_segment": "students", "placement": placement, "vertical": "travel",
          "advertiser_id": "adv-000", "product_id": "prd-0000", "ad_id": "ad-0000", "position": 1,
          "propensity": 0.25}
    if placement == "search":
        ev.update(query="cheap flights 2026", keyword="cheap flights", text_id="0123456789abcdef",
                  ad_text="Cheap flights today…")
    else:
        ev.update(title_id="ttl-0000-01", image_id="img-0000-02", highlight_id="hlt-0000-03")
    ev.update(over)
    return {k: v for k, v in ev.items() if v is not None}


def line(event: dict) -> bytes:
    return json.dumps(event, ensure_ascii=False).encode("utf-8")


def raw(text: str) -> bytes:
    return text.encode("utf-8")


def corpus() -> list[tuple[str, bytes, str | None]]:
    """(kind, the raw line without its newline, the expected reason; None: kept)."""
    good = line(imp("ok1"))
    nested = {"x": 1}
    for _ in range(40):
        nested = {"x": nested}
    return [
        # valid events: kept
        ("valid search impression", good, None),
        ("valid feed impression", line(imp("ok2", "feed")), None),
        ("valid click", line({"event_id": "c1", "event_type": "click", "ts": T0 + 60_000,
                              "impression_id": "i-ok1", "click_id": "cl-1"}), None),
        ("valid conversion", line({"event_id": "v1", "event_type": "conversion", "ts": T0 + HOUR,
                                   "click_id": "cl-1", "value": 12.5}), None),
        ("unknown fields are ignored", line(imp("ok3", extra="x", nested={"a": [1, 2]})), None),
        ("moderate nesting in an unknown field", line(imp("ok4", blob=nested)), None),
        ("emoji text within bounds", line(imp("ok5", ad_text="Fly now ✈️🌍 " * 10)), None),
        ("ids at the length bound", line(imp("e" * 64, impression_id="i" * 64, user_id="u" * 64)), None),
        # encodings
        ("latin-1 byte in a text", good.replace(b"today\xe2\x80\xa6", b"caf\xe9"), "bad_encoding"),
        ("invalid UTF-8 bytes", b'{"event_id": "\xff\xfe", "event_type": "click"}', "bad_encoding"),
        ("truncated UTF-8 sequence", good.replace(b"\xe2\x80\xa6", b"\xe2\x80"), "bad_encoding"),
        ("byte-order mark", b"\xef\xbb\xbf" + line(imp("bom1")), "malformed_json"),
        ("raw NUL byte", good.replace(b'"ok1"', b'"ok\x001"'), "malformed_json"),
        ("escaped NUL in a text", line(imp("nul2", ad_text="bad\u0000text")), "field_out_of_bounds"),
        ("control character in a query", line(imp("ctl1", query="cheap\tflights")), "field_out_of_bounds"),
        # nesting
        ("object in a string id", line(imp("obj1", event_id={"a": 1})), "bad_type"),
        ("array in a string id", line(imp("arr1", user_id=["u1", "u2"])), "bad_type"),
        ("object in a text", line(imp("obj2", ad_text={"text": "hi"})), "bad_type"),
        ("object in a number", line(imp("obj3", position={"p": 1})), "bad_type"),
        ("nesting deeper than the parser allows", raw('{"event_id": "deep", "x": ' + "[" * 1200 + "]" * 1200 + "}"),
         "malformed_json"),
        ("top-level array", raw("[1, 2, 3]"), "malformed_json"),
        ("bare scalar", raw("42"), "malformed_json"),
        ("JSON null line", raw("null"), "malformed_json"),
        # sizes
        ("5 MB ad_text", line(imp("big1", ad_text="A" * 5_000_000)), "line_too_long"),
        ("very long garbage line", raw("x" * 100_000), "line_too_long"),
        ("ad_text over its bound", line(imp("long1", ad_text="B" * 501)), "field_out_of_bounds"),
        ("vertical over its bound", line(imp("long2", vertical="v" * 65)), "field_out_of_bounds"),
        ("empty line", b"", "malformed_json"),
        ("whitespace line", b"   \t ", "malformed_json"),
        ("truncated JSON", good[: len(good) // 2], "malformed_json"),
        # types
        ("number in a string id", line(imp("num1", ad_id=1234)), "bad_type"),
        ("bool in a string id", line(imp("bool1", text_id=True)), "bad_type"),
        ("ts as a string", line(imp("tss", ts=str(T0))), "bad_type"),
        ("position as a string", line(imp("pos1", position="1")), "bad_type"),
        ("position as a bool", line(imp("pos2", position=True)), "bad_type"),
        ("position with a fraction", line(imp("pos3", position=1.5)), "bad_type"),
        ("position over its bound", line(imp("pos4", position=1000)), "field_out_of_bounds"),
        ("huge ts", raw(line(imp("ts2")).decode().replace(str(T0), "1e30")), "bad_type"),
        ("negative ts", line(imp("ts3", ts=-5)), "ts_outside_partition"),
        ("NaN propensity literal", raw(line(imp("nan1")).decode().replace("0.25", "NaN")), "bad_type"),
        ("Infinity value literal", raw('{"event_id": "inf1", "event_type": "conversion", "ts": %d, '
                                       '"click_id": "cl-1", "value": Infinity}' % (T0 + HOUR)), "bad_type"),
        ("-Infinity value literal", raw('{"event_id": "inf2", "event_type": "conversion", "ts": %d, '
                                        '"click_id": "cl-1", "value": -Infinity}' % (T0 + HOUR)), "bad_type"),
        ("negative conversion value", line({"event_id": "neg1", "event_type": "conversion", "ts": T0 + HOUR,
                                            "click_id": "cl-1", "value": -3.0}), "bad_type"),
        ("propensity 0", line(imp("p0", propensity=0)), "bad_type"),
        ("value on an impression out of bounds", line(imp("val1", value=1e300)), "field_out_of_bounds"),
        ("bad placement on a click", line({"event_id": "c2", "event_type": "click", "ts": T0 + 60_000,
                                           "impression_id": "i-ok1", "click_id": "cl-2", "placement": "popup"}),
         "field_out_of_bounds"),
        ("bad position on a click", line({"event_id": "c3", "event_type": "click", "ts": T0 + 60_000,
                                          "impression_id": "i-ok1", "click_id": "cl-3", "position": "top"}),
         "bad_type"),
        # ids
        ("id with a space and a slash", line(imp("a b/c")), "bad_id_format"),
        ("id over its bound", line(imp("e" * 65)), "bad_id_format"),
        ("empty id", line(imp("ok6", impression_id="")), "bad_id_format"),
        ("id that looks like JSON in a JSON string", line(imp("js1", user_id='{"a":1}')), "bad_id_format"),
        # missing fields, unknown type, duplicates
        ("null event_id", line(imp("nul3", event_id=None) | {"event_id": None}), "missing_field"),
        ("impression without impression_id", line(imp("mis1", impression_id=None)), "missing_field"),
        ("unknown event type", line({"event_id": "h1", "event_type": "hover", "ts": T0}), "unknown_event_type"),
        ("event type as a number", line({"event_id": "h2", "event_type": 3, "ts": T0}), "unknown_event_type"),
        ("redelivered line", good, "duplicate_event_id"),
        ("orphan click", line({"event_id": "c4", "event_type": "click", "ts": T0, "impression_id": "i-none",
                               "click_id": "cl-4"}), "orphan_click"),
    ]


def expected_reasons() -> collections.Counter:
    return collections.Counter(reason or "kept" for _, _, reason in corpus())


def write_partition(root, ds: str, files: dict[str, bytes]) -> None:
    part = root / paths.RAW_EVENTS / f"dt={ds}"
    part.mkdir(parents=True)
    for name, content in files.items():
        (part / name).write_bytes(content)


def gz(data: bytes) -> bytes:
    return gzip.compress(data, mtime=0)


@pytest.fixture(scope="module")
def fuzz_root(spark, tmp_path_factory):
    """The corpus in raw partition D1 (split over a gzip and a plain file, with a hidden file, a
    marker and an empty gzip that are not data), ingested; then the gate run on it."""
    root = tmp_path_factory.mktemp("fuzz")
    params = TINY_PARAMS.read_text().replace("max_quarantine_rate: 0.01", "max_quarantine_rate: 1.0")
    assert "max_quarantine_rate: 1.0" in params
    (root / "params.yaml").write_text(params)
    lines = [content for _, content, _ in corpus()]
    half = len(lines) // 2
    write_partition(root, D1, {
        "part-00000.jsonl.gz": gz(b"\n".join(lines[:half]) + b"\n"),
        "part-00001.jsonl": b"\n".join(lines[half:]) + b"\n",
        "part-00002.jsonl.gz": gz(b""),  # a valid gzip with no lines
        ".part-00003.jsonl.gz": gz(lines[0] + b"\n"),  # hidden: counted as ignored, never read
        "_SUCCESS": b"",
    })
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert ingest.main(["--ds", D1, "--params", "params.yaml"]) == 0
        gate_rc = validate.main(["--ds", D1, "--params", "params.yaml"])
    return root, gate_rc


def curated(root, name: str) -> pd.DataFrame:
    return pd.read_parquet(root / paths.curated(name) / f"dt={D1}")


def test_corpus_has_30_kinds_and_every_line_is_accounted_for(fuzz_root):
    root, _ = fuzz_root
    assert len(corpus()) >= 30
    quality = curated(root, "ingest_quality").iloc[0]
    quarantine = curated(root, "quarantine")
    assert quality.rows_in == len(corpus())
    assert quality.rows_in == quality.rows_kept + quality.rows_quarantined
    assert len(curated(root, "events")) == quality.rows_kept
    assert len(quarantine) == quality.rows_quarantined
    got = collections.Counter(quarantine.reason)
    got["kept"] = int(quality.rows_kept)
    assert got == expected_reasons()
    for reason in schema.QUARANTINE_REASONS:
        assert quality[f"q_{reason}"] == got.get(reason, 0), reason
    assert (quality.files_read, quality.files_ignored) == (3, 2)
    metrics = json.loads((root / "metrics" / "ingest.json").read_text())
    assert metrics["rows_in"] == metrics["rows_kept"] + metrics["rows_quarantined"] == len(corpus())


def test_quarantined_lines_are_stored_bounded_and_valid_utf8(fuzz_root):
    root, _ = fuzz_root
    quarantine = curated(root, "quarantine")  # pyarrow decodes every string: invalid UTF-8 would raise
    assert quarantine.raw_line.str.len().max() <= schema.LINE_MAX_CHARS
    bad = quarantine[quarantine.reason == "bad_encoding"].raw_line
    assert len(bad) == 3 and bad.str.contains("\ufffd").all()
    assert set(quarantine[quarantine.reason == "bad_type"].event_id.dropna()) >= {"obj2", "num1", "bool1"}


def test_kept_rows_satisfy_the_contract_bounds(fuzz_root):
    root, _ = fuzz_root
    events = curated(root, "events")
    assert set(events.event_id) == {"ok1", "ok2", "c1", "v1", "ok3", "ok4", "ok5", "e" * 64}
    for column in schema.ID_FIELDS:
        for value in events[column].dropna():
            assert 1 <= len(value) <= schema.ID_MAX_CHARS and not re.search(schema.ID_FORBIDDEN, value), column
    for column, max_chars in schema.TEXT_MAX_CHARS.items():
        for value in events[column].dropna():
            assert 1 <= len(value) <= max_chars and not re.search(schema.TEXT_FORBIDDEN, value), column
    assert set(events.event_type) <= set(schema.EVENT_TYPES)
    assert set(events.placement.dropna()) <= set(schema.PLACEMENTS)
    assert events.position.dropna().between(1, schema.POSITION_MAX).all()


def test_the_gate_passes_the_kept_rows(fuzz_root):
    root, gate_rc = fuzz_root
    summary = json.loads((root / paths.VALIDATION / D1 / "summary.json").read_text())
    assert summary["suites"]["events"]["success"], summary["suites"]["events"]
    assert gate_rc == 0, {name: s.get("failed_expectations") for name, s in summary["suites"].items()}


GOOD = line(imp("g1")) + b"\n"
BROKEN_FILES = {  # partition -> (its files, the name the one-line refusal must hold)
    "2026-06-01": ({"part-00000.jsonl.gz": GOOD}, "part-00000.jsonl.gz"),  # not gzip
    "2026-06-08": ({"part-00000.jsonl.gz": gz(GOOD * 50)[:-12]}, "part-00000.jsonl.gz"),  # truncated gzip
    "2026-06-15": ({"part-00000.jsonl.gz": b""}, "part-00000.jsonl.gz"),  # empty file, not gzip
    "2026-06-22": ({"part-00000.jsonl.gz": gz(GOOD), "part-00001.jsonl.gz": gz(GOOD) + b"garbage"},
                   "part-00001.jsonl.gz"),  # trailing garbage
    "2026-06-29": ({"part-00000.jsonl.gz": gz(GOOD), "events.json": GOOD}, "events.json"),  # wrong name
    "2026-07-06": ({"part-00000.jsonl.gz": gz(GOOD), "part-00001.jsonl.bz2": GOOD}, "part-00001.jsonl.bz2"),
    "2026-07-13": ({".part-00000.jsonl.gz": gz(GOOD)}, "is empty"),  # only a hidden file: no data
}


@pytest.mark.parametrize("ds", sorted(BROKEN_FILES))
def test_an_unreadable_or_misnamed_file_is_refused_by_name_in_one_line(spark, ds, tmp_path, monkeypatch, caplog,
                                                                         capfd):
    files, named = BROKEN_FILES[ds]
    (tmp_path / "params.yaml").write_text(TINY_PARAMS.read_text())
    write_partition(tmp_path, ds, files)
    monkeypatch.chdir(tmp_path)
    assert ingest.main(["--ds", ds, "--params", "params.yaml"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and named in errors[0] and "\n" not in errors[0], errors
    assert "Traceback" not in caplog.text and "Traceback" not in capfd.readouterr().err
    assert not paths.curated("events").exists()


def test_a_subdirectory_in_a_partition_is_refused(spark, tmp_path, monkeypatch, caplog):
    (tmp_path / "params.yaml").write_text(TINY_PARAMS.read_text())
    write_partition(tmp_path, D1, {"part-00000.jsonl.gz": gz(GOOD)})
    (tmp_path / paths.RAW_EVENTS / f"dt={D1}" / "part-00001.jsonl.gz").mkdir()
    monkeypatch.chdir(tmp_path)
    assert ingest.main(["--ds", D1, "--params", "params.yaml"]) == 2
    assert "'part-00001.jsonl.gz'" in caplog.text
