"""The raw-event contract of docs/data_contract.md, defined once for the stages that write
(ingest: sql/parse_day.sql takes the bounds as parameters) and check (validate: the GX
suites in pipelines.expectations) it. The bounds are the contract, not tuning knobs: they
admit everything the simulator writes and refuse what no log shipper should send."""
from __future__ import annotations

QUARANTINE_REASONS = (
    "malformed_json",
    "missing_field",
    "bad_type",
    "unknown_event_type",
    "ts_outside_partition",
    "duplicate_event_id",
    "orphan_click",
    "orphan_conversion",
    # appended (not inserted) so the q_<reason> columns of earlier reasons keep their places
    "line_too_long",
    "bad_encoding",
    "bad_id_format",
    "field_out_of_bounds",
)

# Every field a raw event may carry, in contract order (the partition column `dt` is not one).
RAW_EVENT_FIELDS = (
    "event_id", "event_type", "ts", "impression_id", "click_id", "user_id", "user_segment",
    "placement", "vertical", "advertiser_id", "product_id", "ad_id", "position", "query",
    "keyword", "text_id", "ad_text", "title_id", "image_id", "highlight_id", "propensity",
    "value",
)
NUMBER_FIELDS = ("ts", "position", "propensity", "value")
STRING_FIELDS = tuple(f for f in RAW_EVENT_FIELDS if f not in NUMBER_FIELDS)

EVENT_TYPES = ("impression", "click", "conversion")
PLACEMENTS = ("search", "feed")

# A raw line longer than this (characters) is quarantined unparsed (`line_too_long`), and only
# its first LINE_MAX_CHARS characters are kept in the quarantine table. The longest line the
# bounds below admit is about 2,000 characters; the simulator's are about 500.
LINE_MAX_CHARS = 8192

# Ids: 1..ID_MAX_CHARS characters, each a letter, digit or one of _ . : -
# (the simulator's: "ei20260101000000042", "u0000042", "ad-0003", "ttl-0003-01", 16 hex digits).
ID_FIELDS = (
    "event_id", "impression_id", "click_id", "user_id", "advertiser_id", "product_id", "ad_id",
    "text_id", "title_id", "image_id", "highlight_id",
)
ID_MAX_CHARS = 64
ID_FORBIDDEN = "[^A-Za-z0-9_.:-]"  # matches any character an id may not hold (Java and Python regex)

# Free text and labels: 1..max characters (Unicode code points), no control characters.
TEXT_MAX_CHARS = {
    "user_segment": 64,
    "vertical": 64,
    "query": 200,
    "keyword": 100,
    "ad_text": 500,  # the simulator serves at most simulate.text_max_chars (90) + "…"
}
TEXT_FORBIDDEN = "[\\x00-\\x1f\\x7f]"  # C0 controls and DEL (Java and Python regex)

POSITION_MAX = 100  # position: an integer slot in 1..POSITION_MAX
VALUE_MAX = 1e12  # conversion value: in [0, VALUE_MAX); propensity: in (0, 1]

# Raw files: the data files of a partition are named part-*.jsonl.gz (gzip) or part-*.jsonl.
# Names starting with "." or "_" (hidden files, _SUCCESS markers) are not read but counted
# (ingest_quality.files_ignored) and named in the log; any other entry refuses the partition.
DATA_FILE_PREFIX = "part-"
DATA_FILE_SUFFIXES = (".jsonl.gz", ".jsonl")
IGNORED_FILE_PREFIXES = (".", "_")


def sql_bounds() -> dict:
    """The bounds as the named parameters of sql/parse_day.sql."""
    # a string field that held another JSON type comes out of Spark's from_json as that
    # value's JSON text; this finds such a value in the raw line
    non_string = '"(' + "|".join(STRING_FIELDS) + ')"\\s*:\\s*[^"\\s]'
    return {
        "line_max_chars": LINE_MAX_CHARS, "id_max_chars": ID_MAX_CHARS, "id_forbidden": ID_FORBIDDEN,
        "text_forbidden": TEXT_FORBIDDEN, "position_max": POSITION_MAX, "value_max": VALUE_MAX,
        "non_string_value": non_string,
        **{f"{field}_max_chars": n for field, n in TEXT_MAX_CHARS.items()},
    }
