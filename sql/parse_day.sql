-- Parse raw partitions (view `raw_lines`: `raw_line`, and the partition it came from as
-- `dt`, `day_start_ms`, `day_end_ms` = [start, end) of dt in epoch ms UTC, set in Python
-- from the validated ds) into typed events. Each partition is judged on its own (bounds
-- and dedupe are per dt), so parsing many days at once equals parsing each alone.
-- Every line comes out once, with `reason` = its first row-level quarantine reason, or
-- NULL when the line is a valid, first-seen event (links to impressions/clicks are
-- checked later, in link_events.sql).
-- Lines are parsed with the contract's types first (fast, and most lines pass); a line the
-- typed parse refuses (a number sent as a JSON string, a wrong type, broken JSON) is parsed
-- again with every field as a string, so that an absent field (missing_field) is told
-- apart from a present field of the wrong type (bad_type), then cast with try_cast. Only
-- refused lines pay for the second parse and the bad-type regex.
-- The contract's bounds (pipelines/schema.py) come in as parameters: :line_max_chars,
-- :id_max_chars, :id_forbidden, :text_forbidden, :<field>_max_chars, :position_max,
-- :value_max, :non_string_value. A line too long or not UTF-8 is not parsed at all.
WITH screened AS (
  SELECT *,
         char_length(raw_line) > :line_max_chars AS too_long,
         NOT is_valid_utf8(raw_line) AS bad_encoding
  FROM raw_lines
),
parsed AS (
  SELECT raw_line, dt, day_start_ms, day_end_ms, too_long, bad_encoding,
         CASE WHEN NOT (too_long OR bad_encoding) THEN from_json(
           raw_line,
           'event_id STRING, event_type STRING, ts BIGINT, impression_id STRING, click_id STRING,
            user_id STRING, user_segment STRING, placement STRING, vertical STRING,
            advertiser_id STRING, product_id STRING, ad_id STRING, position INT,
            query STRING, keyword STRING, text_id STRING, ad_text STRING,
            title_id STRING, image_id STRING, highlight_id STRING,
            propensity DOUBLE, value DOUBLE, _corrupt_record STRING',
           -- NaN/Infinity (bare or as strings) are refused too: the string path judges them
           map('mode', 'PERMISSIVE', 'columnNameOfCorruptRecord', '_corrupt_record',
               'allowNonNumericNumbers', 'false')
         ) END AS j
  FROM screened
),
flagged AS (
  SELECT *, NOT (too_long OR bad_encoding) AND (j IS NULL OR j._corrupt_record IS NOT NULL) AS refused FROM parsed
),
reparsed AS (
  SELECT *,
         CASE WHEN refused THEN from_json(
           raw_line,
           'event_id STRING, event_type STRING, ts STRING, impression_id STRING, click_id STRING,
            user_id STRING, user_segment STRING, placement STRING, vertical STRING,
            advertiser_id STRING, product_id STRING, ad_id STRING, position STRING,
            query STRING, keyword STRING, text_id STRING, ad_text STRING,
            title_id STRING, image_id STRING, highlight_id STRING,
            propensity STRING, value STRING, _corrupt_record STRING',
           map('mode', 'PERMISSIVE', 'columnNameOfCorruptRecord', '_corrupt_record')
         ) END AS s
  FROM flagged
),
typed AS (
  SELECT raw_line, dt, day_start_ms, day_end_ms, too_long, bad_encoding,
         -- a JSON object parses with _corrupt_record NULL; anything else (truncated
         -- text, arrays, bare scalars, empty lines) does not
         refused AND (s IS NULL OR s._corrupt_record IS NOT NULL) AS malformed,
         -- a number sent as a JSON string ("ts": "1767225600000") is a schema break of the
         -- producer, not a value to coerce; only a refused line can hold one
         refused AND raw_line RLIKE '"(ts|position|propensity|value)"\\s*:\\s*"' AS number_as_string,
         IF(refused, s.event_id, j.event_id) AS event_id,
         IF(refused, s.event_type, j.event_type) AS event_type,
         IF(refused, s.ts IS NOT NULL, j.ts IS NOT NULL) AS has_ts,
         IF(refused, try_cast(s.ts AS BIGINT), j.ts) AS ts,
         IF(refused, s.impression_id, j.impression_id) AS impression_id,
         IF(refused, s.click_id, j.click_id) AS click_id,
         IF(refused, s.user_id, j.user_id) AS user_id,
         IF(refused, s.user_segment, j.user_segment) AS user_segment,
         IF(refused, s.placement, j.placement) AS placement,
         IF(refused, s.vertical, j.vertical) AS vertical,
         IF(refused, s.advertiser_id, j.advertiser_id) AS advertiser_id,
         IF(refused, s.product_id, j.product_id) AS product_id,
         IF(refused, s.ad_id, j.ad_id) AS ad_id,
         IF(refused, s.position IS NOT NULL, j.position IS NOT NULL) AS has_position,
         IF(refused, try_cast(s.position AS INT), j.position) AS position,
         IF(refused, s.query, j.query) AS query,
         IF(refused, s.keyword, j.keyword) AS keyword,
         IF(refused, s.text_id, j.text_id) AS text_id,
         IF(refused, s.ad_text, j.ad_text) AS ad_text,
         IF(refused, s.title_id, j.title_id) AS title_id,
         IF(refused, s.image_id, j.image_id) AS image_id,
         IF(refused, s.highlight_id, j.highlight_id) AS highlight_id,
         IF(refused, s.propensity IS NOT NULL, j.propensity IS NOT NULL) AS has_propensity,
         IF(refused, try_cast(s.propensity AS DOUBLE), j.propensity) AS propensity,
         IF(refused, s.value IS NOT NULL, j.value IS NOT NULL) AS has_value,
         IF(refused, try_cast(s.value AS DOUBLE), j.value) AS value
  FROM reparsed
),
bounded AS (
  SELECT *,
         -- a string field sent as another JSON type (a number, bool, object or array) comes out
         -- of from_json as that value's JSON text: only a field that looks like one sends the
         -- raw line to the :non_string_value regex
         exists(array(event_id, event_type, impression_id, click_id, user_id, user_segment, placement,
                      vertical, advertiser_id, product_id, ad_id, query, keyword, text_id, ad_text,
                      title_id, image_id, highlight_id),
                v -> v RLIKE '^([\\[{]|-?[0-9][0-9.eE+-]*$|true$|false$)') AS non_string_suspect,
         exists(array(event_id, impression_id, click_id, user_id, advertiser_id, product_id, ad_id,
                      text_id, title_id, image_id, highlight_id),
                v -> char_length(v) NOT BETWEEN 1 AND :id_max_chars OR v RLIKE :id_forbidden) AS bad_id,
         char_length(user_segment) NOT BETWEEN 1 AND :user_segment_max_chars
           OR char_length(vertical) NOT BETWEEN 1 AND :vertical_max_chars
           OR char_length(query) NOT BETWEEN 1 AND :query_max_chars
           OR char_length(keyword) NOT BETWEEN 1 AND :keyword_max_chars
           OR char_length(ad_text) NOT BETWEEN 1 AND :ad_text_max_chars
           OR exists(array(user_segment, vertical, query, keyword, ad_text), v -> v RLIKE :text_forbidden)
           OR placement NOT IN ('search', 'feed')
           OR position NOT BETWEEN 1 AND :position_max
           OR NOT (propensity > 0 AND propensity <= 1)
           OR NOT (value >= 0 AND value < :value_max) AS out_of_bounds
  FROM typed
),
checked AS (
  SELECT *,
    CASE
      WHEN too_long THEN 'line_too_long'
      WHEN bad_encoding THEN 'bad_encoding'
      WHEN malformed THEN 'malformed_json'
      WHEN event_id IS NULL OR event_type IS NULL OR NOT has_ts THEN 'missing_field'
      WHEN event_type NOT IN ('impression', 'click', 'conversion') THEN 'unknown_event_type'
      WHEN event_type = 'impression' AND (
             impression_id IS NULL OR user_id IS NULL OR user_segment IS NULL OR placement IS NULL
             OR vertical IS NULL OR advertiser_id IS NULL OR product_id IS NULL OR ad_id IS NULL
             OR NOT has_position OR NOT has_propensity
             OR (placement = 'search' AND (text_id IS NULL OR ad_text IS NULL OR keyword IS NULL OR query IS NULL))
             OR (placement = 'feed' AND (title_id IS NULL OR image_id IS NULL OR highlight_id IS NULL)))
        THEN 'missing_field'
      WHEN event_type = 'click' AND (impression_id IS NULL OR click_id IS NULL) THEN 'missing_field'
      WHEN event_type = 'conversion' AND (click_id IS NULL OR NOT has_value) THEN 'missing_field'
      WHEN ts IS NULL THEN 'bad_type'
      WHEN number_as_string THEN 'bad_type'
      -- NaN compares greater than every number in Spark, so BETWEEN rejects it too
      WHEN event_type = 'impression' AND (
             position IS NULL OR position < 1 OR placement NOT IN ('search', 'feed')
             OR propensity IS NULL OR NOT (propensity > 0 AND propensity <= 1))
        THEN 'bad_type'
      WHEN event_type = 'conversion' AND (value IS NULL OR NOT (value >= 0 AND value < :value_max)) THEN 'bad_type'
      -- the bounds of every field present, whatever the event type (NULL: absent, passes)
      WHEN non_string_suspect AND raw_line RLIKE :non_string_value THEN 'bad_type'
      WHEN (has_position AND position IS NULL) OR (has_propensity AND propensity IS NULL)
           OR (has_value AND value IS NULL) THEN 'bad_type'
      WHEN bad_id THEN 'bad_id_format'
      WHEN out_of_bounds THEN 'field_out_of_bounds'
      WHEN ts < day_start_ms OR ts >= day_end_ms THEN 'ts_outside_partition'
    END AS reason
  FROM bounded
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
       -- a line too long is kept cut to :line_max_chars, one not UTF-8 with U+FFFD for its bad bytes
       CASE WHEN reason IS NULL AND delivery = 1 AND event_type = 'impression' THEN NULL
            WHEN too_long THEN left(raw_line, :line_max_chars)
            WHEN bad_encoding THEN make_valid_utf8(raw_line)
            ELSE raw_line END AS raw_line,
       CASE WHEN reason IS NULL AND delivery > 1 THEN 'duplicate_event_id' ELSE reason END AS reason,
       event_id, event_type, ts, impression_id, click_id, user_id, user_segment, placement,
       vertical, advertiser_id, product_id, ad_id, position, query, keyword, text_id, ad_text,
       title_id, image_id, highlight_id, propensity, value,
       dt
FROM ranked
