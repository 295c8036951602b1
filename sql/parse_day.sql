-- Parse raw partitions (view `raw_lines`: `raw_line`, and the partition it came from as
-- `dt`, `day_start_ms`, `day_end_ms` = [start, end) of dt in epoch ms UTC, set in Python
-- from the validated ds) into typed events. Each partition is judged on its own (bounds
-- and dedupe are per dt), so parsing many days at once equals parsing each alone.
-- Every line comes out once, with `reason` = its first row-level quarantine reason, or
-- NULL when the line is a valid, first-seen event (links to impressions/clicks are
-- checked later, in link_events.sql).
-- Fields are parsed as strings first so that an absent field (missing_field) is told
-- apart from a present field of the wrong type (bad_type); then cast with try_cast.
WITH parsed AS (
  SELECT raw_line, dt, day_start_ms, day_end_ms,
         from_json(
           raw_line,
           'event_id STRING, event_type STRING, ts STRING, impression_id STRING, click_id STRING,
            user_id STRING, user_segment STRING, placement STRING, vertical STRING,
            advertiser_id STRING, product_id STRING, ad_id STRING, position STRING,
            query STRING, keyword STRING, text_id STRING, ad_text STRING,
            title_id STRING, image_id STRING, highlight_id STRING,
            propensity STRING, value STRING, _corrupt_record STRING',
           map('mode', 'PERMISSIVE', 'columnNameOfCorruptRecord', '_corrupt_record')
         ) AS j
  FROM raw_lines
),
typed AS (
  SELECT raw_line, dt, day_start_ms, day_end_ms,
         -- a JSON object parses with _corrupt_record NULL; anything else (truncated
         -- text, arrays, bare scalars, empty lines) does not
         (j IS NULL OR j._corrupt_record IS NOT NULL) AS malformed,
         j.event_id, j.event_type, j.ts AS ts_raw, try_cast(j.ts AS BIGINT) AS ts,
         j.impression_id, j.click_id, j.user_id, j.user_segment, j.placement, j.vertical,
         j.advertiser_id, j.product_id, j.ad_id,
         j.position AS position_raw, try_cast(j.position AS INT) AS position,
         j.query, j.keyword, j.text_id, j.ad_text, j.title_id, j.image_id, j.highlight_id,
         j.propensity AS propensity_raw, try_cast(j.propensity AS DOUBLE) AS propensity,
         j.value AS value_raw, try_cast(j.value AS DOUBLE) AS value
  FROM parsed
),
checked AS (
  SELECT *,
    CASE
      WHEN malformed THEN 'malformed_json'
      WHEN event_id IS NULL OR event_type IS NULL OR ts_raw IS NULL THEN 'missing_field'
      WHEN event_type NOT IN ('impression', 'click', 'conversion') THEN 'unknown_event_type'
      WHEN event_type = 'impression' AND (
             impression_id IS NULL OR user_id IS NULL OR user_segment IS NULL OR placement IS NULL
             OR vertical IS NULL OR advertiser_id IS NULL OR product_id IS NULL OR ad_id IS NULL
             OR position_raw IS NULL OR propensity_raw IS NULL
             OR (placement = 'search' AND (text_id IS NULL OR ad_text IS NULL OR keyword IS NULL OR query IS NULL))
             OR (placement = 'feed' AND (title_id IS NULL OR image_id IS NULL OR highlight_id IS NULL)))
        THEN 'missing_field'
      WHEN event_type = 'click' AND (impression_id IS NULL OR click_id IS NULL) THEN 'missing_field'
      WHEN event_type = 'conversion' AND (click_id IS NULL OR value_raw IS NULL) THEN 'missing_field'
      WHEN ts IS NULL THEN 'bad_type'
      -- a number sent as a JSON string ("ts": "1767225600000") is a schema break of the
      -- producer, not a value to coerce: fields are read as strings above, so look at the line
      WHEN raw_line RLIKE '"(ts|position|propensity|value)"\\s*:\\s*"' THEN 'bad_type'
      -- NaN compares greater than every number in Spark, so BETWEEN rejects it too
      WHEN event_type = 'impression' AND (
             position IS NULL OR position < 1 OR placement NOT IN ('search', 'feed')
             OR propensity IS NULL OR NOT (propensity > 0 AND propensity <= 1))
        THEN 'bad_type'
      WHEN event_type = 'conversion' AND (value IS NULL OR NOT (value >= 0 AND value < 1e12)) THEN 'bad_type'
      WHEN ts < day_start_ms OR ts >= day_end_ms THEN 'ts_outside_partition'
    END AS reason
  FROM typed
),
ranked AS (
  SELECT *,
         -- keep the first delivery by (ts, raw_line): redeliveries are byte-identical, so the
         -- choice is deterministic and the kept row does not depend on file order
         CASE WHEN reason IS NULL
              THEN row_number() OVER (PARTITION BY dt, reason IS NULL, event_id ORDER BY ts, raw_line)
         END AS delivery
  FROM checked
)
SELECT -- a kept impression is never quarantined later (only clicks and conversions can be
       -- orphans), so its raw line, most of the bytes, is dropped here
       CASE WHEN reason IS NULL AND delivery = 1 AND event_type = 'impression' THEN NULL ELSE raw_line END AS raw_line,
       CASE WHEN reason IS NULL AND delivery > 1 THEN 'duplicate_event_id' ELSE reason END AS reason,
       event_id, event_type, ts, impression_id, click_id, user_id, user_segment, placement,
       vertical, advertiser_id, product_id, ad_id, position, query, keyword, text_id, ad_text,
       title_id, image_id, highlight_id, propensity, value,
       dt
FROM ranked
