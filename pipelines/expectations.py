"""The Great Expectations suites of the `validate` gate, defined in code (docs/data_contract.md).

Each suite validates one curated table's partition for one `ds`. Values that change per
day (the partition's time bounds, counts from other tables, the volume band) are suite
parameters (`{"$PARAMETER": name}`) filled in at run time, so every suite is built once
per process. Checks that span columns or tables (count conservation, the quarantine rate)
run on derived columns that `validate.derive_quality_columns` adds to the frame; the
derived names say what they hold.
"""
from __future__ import annotations

import great_expectations as gx
from great_expectations.expectations.row_conditions import Column

from pipelines.schema import (EVENT_TYPES, ID_FIELDS, ID_FORBIDDEN, ID_MAX_CHARS, PLACEMENTS, POSITION_MAX,
                              QUARANTINE_REASONS, RAW_EVENT_FIELDS, TEXT_FORBIDDEN, TEXT_MAX_CHARS, VALUE_MAX)

# The parsed events table: every raw field, typed, plus the partition column.
EVENT_COLUMNS = RAW_EVENT_FIELDS + ("dt",)
IMPRESSION_FIELDS = (
    "impression_id", "user_id", "user_segment", "placement", "vertical", "advertiser_id",
    "product_id", "ad_id", "position", "propensity",
)
SEARCH_FIELDS = ("query", "keyword", "text_id", "ad_text")
FEED_FIELDS = ("title_id", "image_id", "highlight_id")
LABEL_COLUMNS = ("clicked", "converted", "conversion_value", "labels_as_of", "label_complete")
TEXT_STATS_KEYS = ("dt", "ad_id", "text_id")
TEXT_STATS_COLUMNS = TEXT_STATS_KEYS + (
    "ad_text", "keyword", "vertical", "impressions", "clicks", "conversions", "ctr", "cvr", "ctcvr",
)
COMBO_STATS_KEYS = ("dt", "ad_id", "title_id", "image_id", "highlight_id")
COMBO_STATS_COLUMNS = COMBO_STATS_KEYS + (
    "product_id", "vertical", "impressions", "clicks", "conversions", "ctr", "mean_propensity",
)
QUALITY_COLUMNS = ("dt", "rows_in", "rows_kept", "rows_quarantined") + tuple(f"q_{r}" for r in QUARANTINE_REASONS)

# pandas dtype names a Parquet integer / floating column may arrive as (nullable or not).
INT_TYPES = ["int32", "int64", "Int32Dtype", "Int64Dtype"]
FLOAT_TYPES = ["float32", "float64", "Float32Dtype", "Float64Dtype"]

SUITE_TABLES = {  # suite name -> the curated table whose partition it validates
    "events": "events",
    "labeled_impressions": "labeled_impressions",
    "text_stats": "text_stats",
    "combo_stats": "combo_stats",
    "ingest_quality": "ingest_quality",
    "volume": "labeled_impressions",
    "elements": "elements",  # data/content/ (pipelines.ingest_elements), validated when the day has it
    "element_quality": "element_quality",
}
ELEMENT_SUITES = ("elements", "element_quality")
ELEMENT_COLUMNS = ("element_id", "ad_id", "kind", "text", "embedding", "dt")
ELEMENT_KINDS = ("title", "image", "highlight")
ELEMENT_TEXT_MAX_CHARS = 200

E = gx.expectations


def _param(name: str) -> dict:
    return {"$PARAMETER": name}


def _not_null(columns, **kw) -> list:
    return [E.ExpectColumnValuesToNotBeNull(column=c, **kw) for c in columns]


def events_suite() -> gx.ExpectationSuite:
    """Parsed raw events: schema, ids, types, event time inside the partition day."""
    is_impression = Column("event_type") == "impression"
    expectations = [
        E.ExpectTableColumnsToMatchSet(column_set=list(EVENT_COLUMNS), exact_match=True),
        *_not_null(["event_id", "event_type", "ts", "dt"]),
        E.ExpectColumnValuesToBeUnique(column="event_id"),
        E.ExpectColumnValuesToBeInSet(column="event_type", value_set=list(EVENT_TYPES)),
        E.ExpectColumnValuesToBeInTypeList(column="ts", type_list=INT_TYPES),
        E.ExpectColumnValuesToBeBetween(column="ts", min_value=_param("ts_min"), max_value=_param("ts_max")),
        *_not_null(IMPRESSION_FIELDS, row_condition=is_impression),
        *_not_null(SEARCH_FIELDS, row_condition=is_impression & (Column("placement") == "search")),
        *_not_null(FEED_FIELDS, row_condition=is_impression & (Column("placement") == "feed")),
        *_not_null(["impression_id", "click_id"], row_condition=Column("event_type") == "click"),
        *_not_null(["click_id", "value"], row_condition=Column("event_type") == "conversion"),
        E.ExpectColumnValuesToBeInSet(column="placement", value_set=list(PLACEMENTS)),
        E.ExpectColumnValuesToBeInTypeList(column="position", type_list=INT_TYPES),
        E.ExpectColumnValuesToBeBetween(column="position", min_value=1, max_value=POSITION_MAX),
        E.ExpectColumnValuesToBeInTypeList(column="propensity", type_list=FLOAT_TYPES),
        E.ExpectColumnValuesToBeBetween(column="propensity", min_value=0, max_value=1, strict_min=True),
        E.ExpectColumnValuesToBeInTypeList(column="value", type_list=FLOAT_TYPES),
        E.ExpectColumnValuesToBeBetween(column="value", min_value=0, max_value=VALUE_MAX, strict_max=True),
        *_string_bounds(),
    ]
    return _suite("events", expectations)


def _string_bounds() -> list:
    """The contract's bounds on every id and text column (pipelines.schema; nulls pass: absent)."""
    expectations = []
    for column in ID_FIELDS:
        expectations += [E.ExpectColumnValueLengthsToBeBetween(column=column, min_value=1, max_value=ID_MAX_CHARS),
                         E.ExpectColumnValuesToNotMatchRegex(column=column, regex=ID_FORBIDDEN)]
    for column, max_chars in TEXT_MAX_CHARS.items():
        expectations += [E.ExpectColumnValueLengthsToBeBetween(column=column, min_value=1, max_value=max_chars),
                         E.ExpectColumnValuesToNotMatchRegex(column=column, regex=TEXT_FORBIDDEN)]
    return expectations


def labeled_impressions_suite() -> gx.ExpectationSuite:
    """One row per impression of the day, with 0/1 labels where a conversion implies a click."""
    expectations = [
        # "impression fields plus labels": at least these columns (the contract leaves room for more)
        E.ExpectTableColumnsToMatchSet(column_set=[*IMPRESSION_FIELDS, *LABEL_COLUMNS, "dt"], exact_match=False),
        E.ExpectTableRowCountToEqual(value=_param("impression_events")),
        *_not_null(["impression_id", "ad_id", "placement", "clicked", "converted", "labels_as_of", "label_complete"]),
        E.ExpectColumnValuesToBeUnique(column="impression_id"),
        E.ExpectColumnValuesToBeInSet(column="clicked", value_set=[0, 1]),
        E.ExpectColumnValuesToBeInSet(column="converted", value_set=[0, 1]),
        E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="clicked", column_B="converted", or_equal=True),
        E.ExpectColumnValuesToBeInSet(column="placement", value_set=list(PLACEMENTS)),
        E.ExpectColumnValuesToBeBetween(column="conversion_value", min_value=0),
    ]
    return _suite("labeled_impressions", expectations)


def _stats_expectations(keys, columns, rates) -> list:
    return [
        E.ExpectTableColumnsToMatchSet(column_set=list(columns), exact_match=True),
        *_not_null(keys),
        E.ExpectCompoundColumnsToBeUnique(column_list=list(keys)),
        E.ExpectColumnValuesToBeBetween(column="impressions", min_value=1),
        E.ExpectColumnValuesToBeBetween(column="clicks", min_value=0),
        E.ExpectColumnValuesToBeBetween(column="conversions", min_value=0),
        E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="impressions", column_B="clicks", or_equal=True),
        E.ExpectColumnPairValuesAToBeGreaterThanB(column_A="clicks", column_B="conversions", or_equal=True),
        *[E.ExpectColumnValuesToBeBetween(column=r, min_value=0, max_value=1) for r in rates],
    ]


def text_stats_suite() -> gx.ExpectationSuite:
    """Per (ad, text) search statistics: counts nest, rates are probabilities."""
    return _suite("text_stats", _stats_expectations(TEXT_STATS_KEYS, TEXT_STATS_COLUMNS, ("ctr", "cvr", "ctcvr")))


def combo_stats_suite() -> gx.ExpectationSuite:
    """Per (ad, title, image, highlight) feed statistics."""
    expectations = _stats_expectations(COMBO_STATS_KEYS, COMBO_STATS_COLUMNS, ("ctr",))
    expectations.append(
        E.ExpectColumnValuesToBeBetween(column="mean_propensity", min_value=0, max_value=1, strict_min=True)
    )
    return _suite("combo_stats", expectations)


def ingest_quality_suite(max_quarantine_rate: float) -> gx.ExpectationSuite:
    """The ingest run's own accounting: every raw line kept or quarantined, and few quarantined."""
    expectations = [
        # at least: the frame also carries the derived columns below
        E.ExpectTableColumnsToMatchSet(column_set=list(QUALITY_COLUMNS), exact_match=False),
        E.ExpectTableRowCountToEqual(value=1),
        *[E.ExpectColumnValuesToBeBetween(column=c, min_value=0) for c in QUALITY_COLUMNS[1:]],
        # derived columns (validate.derive_quality_columns)
        E.ExpectColumnPairValuesToBeEqual(column_A="rows_in", column_B="rows_kept_plus_quarantined"),
        E.ExpectColumnPairValuesToBeEqual(column_A="rows_quarantined", column_B="quarantine_reasons_total"),
        E.ExpectColumnPairValuesToBeEqual(column_A="rows_kept", column_B="events_partition_rows"),
        E.ExpectColumnValuesToBeBetween(column="quarantine_rate", min_value=0, max_value=max_quarantine_rate),
    ]
    return _suite("ingest_quality", expectations)


def elements_suite() -> gx.ExpectationSuite:
    """The landed element table: one row per (ad, element), text for titles and highlights, an embedding
    of the contract's length (suite parameter `embedding_dim`) for images."""
    is_image, not_image = Column("kind") == "image", Column("kind") != "image"
    expectations = [
        E.ExpectTableColumnsToMatchSet(column_set=[*ELEMENT_COLUMNS, "embedding_length"], exact_match=True),
        *_not_null(["element_id", "ad_id", "kind"]),
        E.ExpectCompoundColumnsToBeUnique(column_list=["ad_id", "element_id"]),
        E.ExpectColumnValuesToBeInSet(column="kind", value_set=list(ELEMENT_KINDS)),
        *_not_null(["text"], row_condition=not_image),
        E.ExpectColumnValueLengthsToBeBetween(column="text", min_value=1, max_value=ELEMENT_TEXT_MAX_CHARS),
        E.ExpectColumnValuesToNotMatchRegex(column="text", regex=TEXT_FORBIDDEN),
        # derived (validate.derive_element_columns): the embedding's length, 0 where there is none
        E.ExpectColumnValuesToBeBetween(column="embedding_length", min_value=_param("embedding_dim"),
                                        max_value=_param("embedding_dim"), row_condition=is_image),
        E.ExpectColumnValuesToBeBetween(column="embedding_length", min_value=0, max_value=0, row_condition=not_image),
        *[e for c in ("element_id", "ad_id") for e in (
            E.ExpectColumnValueLengthsToBeBetween(column=c, min_value=1, max_value=ID_MAX_CHARS),
            E.ExpectColumnValuesToNotMatchRegex(column=c, regex=ID_FORBIDDEN))],
    ]
    return _suite("elements", expectations)


def element_quality_suite() -> gx.ExpectationSuite:
    """ingest_elements' accounting: every delivered element line kept or quarantined."""
    expectations = [
        E.ExpectTableRowCountToEqual(value=1),
        E.ExpectColumnPairValuesToBeEqual(column_A="rows_in", column_B="rows_kept_plus_quarantined"),
        E.ExpectColumnPairValuesToBeEqual(column_A="rows_quarantined", column_B="quarantine_reasons_total"),
        E.ExpectColumnPairValuesToBeEqual(column_A="rows_kept", column_B="kept_partition_rows"),
    ]
    return _suite("element_quality", expectations)


def volume_suite() -> gx.ExpectationSuite:
    """Today's labeled impression count inside the band around the trailing mean."""
    return _suite(
        "volume",
        [E.ExpectTableRowCountToBeBetween(min_value=_param("volume_min"), max_value=_param("volume_max"))],
    )


def all_suites(max_quarantine_rate: float) -> list[gx.ExpectationSuite]:
    return [
        events_suite(),
        labeled_impressions_suite(),
        text_stats_suite(),
        combo_stats_suite(),
        ingest_quality_suite(max_quarantine_rate),
        volume_suite(),
        elements_suite(),
        element_quality_suite(),
    ]


def _suite(name: str, expectations: list) -> gx.ExpectationSuite:
    suite = gx.ExpectationSuite(name=name)
    for expectation in expectations:
        suite.add_expectation(expectation)
    return suite
