"""The raw-event schema and quarantine reasons of docs/data_contract.md, defined once
for the stages that write (ingest) and check (validate) them."""
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
)

# Every field a raw event may carry, in contract order (the partition column `dt` is not one).
RAW_EVENT_FIELDS = (
    "event_id", "event_type", "ts", "impression_id", "click_id", "user_id", "user_segment",
    "placement", "vertical", "advertiser_id", "product_id", "ad_id", "position", "query",
    "keyword", "text_id", "ad_text", "title_id", "image_id", "highlight_id", "propensity",
    "value",
)
