-- Parse the Upworthy archive's packages (view `report_rows`: every CSV column as a string,
-- and `_corrupt_record`, the record's text when its field count differs from the header)
-- into typed packages. Every row comes out once, with `reason` = its first quarantine
-- reason in the order checked, or NULL when it is kept; `dt` = the Monday of its test week.
-- Fields are stripped like Python's str.strip() (Unicode whitespace); an empty field is absent.
WITH stripped AS (
  SELECT *,
         nullif(regexp_replace(clickability_test_id, '(?U)^\\s+|\\s+$', ''), '') AS test_id,
         nullif(regexp_replace(test_week, '(?U)^\\s+|\\s+$', ''), '') AS week_text,
         nullif(regexp_replace(headline, '(?U)^\\s+|\\s+$', ''), '') AS headline_text,
         nullif(regexp_replace(eyecatcher_id, '(?U)^\\s+|\\s+$', ''), '') AS image_text,
         coalesce(regexp_replace(excerpt, '(?U)^\\s+|\\s+$', ''), '') AS excerpt_text,
         coalesce(regexp_replace(lede, '(?U)^\\s+|\\s+$', ''), '') AS lede_text,
         nullif(regexp_replace(impressions, '(?U)^\\s+|\\s+$', ''), '') AS impressions_text,
         nullif(regexp_replace(clicks, '(?U)^\\s+|\\s+$', ''), '') AS clicks_text
  FROM report_rows
),
numbers AS (
  -- a count is an integer written as a decimal number ('12', '12.0', '1.2e1'); anything else is NULL
  SELECT *,
         CASE WHEN week_text RLIKE '^[+-]?([0-9]+\\.?[0-9]*|\\.[0-9]+)([eE][+-]?[0-9]+)?$'
              THEN cast(week_text AS DOUBLE) END AS week_num,
         CASE WHEN impressions_text RLIKE '^[+-]?([0-9]+\\.?[0-9]*|\\.[0-9]+)([eE][+-]?[0-9]+)?$'
              THEN cast(impressions_text AS DOUBLE) END AS impressions_num,
         CASE WHEN clicks_text RLIKE '^[+-]?([0-9]+\\.?[0-9]*|\\.[0-9]+)([eE][+-]?[0-9]+)?$'
              THEN cast(clicks_text AS DOUBLE) END AS clicks_num
  FROM stripped
),
typed AS (
  SELECT *,
         CASE WHEN week_num % 1 = 0 AND abs(week_num) < 1e9 THEN cast(week_num AS BIGINT) END AS week,
         CASE WHEN impressions_num % 1 = 0 AND abs(impressions_num) < 1e18 THEN cast(impressions_num AS BIGINT) END AS impressions_n,
         CASE WHEN clicks_num % 1 = 0 AND abs(clicks_num) < 1e18 THEN cast(clicks_num AS BIGINT) END AS clicks_n
  FROM numbers
),
weeks AS (
  -- test_week is YYYYWW in strftime %W numbering (Monday-based; week 00 = the days before the
  -- year's first Monday, whose Monday can fall in December of the year before), not ISO weeks
  SELECT *,
         CASE WHEN week DIV 100 BETWEEN 1970 AND 9998 AND week % 100 BETWEEN 0 AND 53 THEN
           CASE WHEN week % 100 = 0
                THEN date_sub(make_date(cast(week DIV 100 AS INT), 1, 1), weekday(make_date(cast(week DIV 100 AS INT), 1, 1)))
                ELSE date_add(make_date(cast(week DIV 100 AS INT), 1, 1),
                              cast((7 - weekday(make_date(cast(week DIV 100 AS INT), 1, 1))) % 7 + 7 * (week % 100 - 1) AS INT))
           END
         END AS monday
  FROM typed
),
checked AS (
  SELECT *,
         -- a week whose Monday falls after its year (week 53 of most years) is no week of it
         CASE WHEN year(monday) <= week DIV 100 THEN cast(monday AS STRING) END AS week_dt,
         -- exact repeats of the archive's columns (extra columns ignored); identical rows get
         -- identical earlier reasons, so which copy is first does not matter
         row_number() OVER (PARTITION BY clickability_test_id, test_week, headline, eyecatcher_id, excerpt, lede,
                                         impressions, clicks
                            ORDER BY clickability_test_id) AS copy
  FROM weeks
)
SELECT
  CASE
    WHEN _corrupt_record IS NOT NULL THEN 'malformed_json'
    WHEN test_id IS NULL OR headline_text IS NULL OR image_text IS NULL OR week_text IS NULL
         OR impressions_text IS NULL OR clicks_text IS NULL THEN 'missing_field'
    WHEN impressions_n IS NULL OR clicks_n IS NULL OR week_dt IS NULL THEN 'bad_type'
    WHEN impressions_n < 1 OR clicks_n < 0 OR clicks_n > impressions_n THEN 'invalid_counts'
    WHEN copy > 1 THEN 'duplicate_row'
  END AS reason,
  -- the quarantine's raw_line: the record's own text when it did not parse, else its fields as JSON
  coalesce(_corrupt_record, to_json(named_struct(
    'clickability_test_id', clickability_test_id, 'clicks', clicks, 'eyecatcher_id', eyecatcher_id,
    'excerpt', excerpt, 'headline', headline, 'impressions', impressions, 'lede', lede, 'test_week', test_week),
    map('ignoreNullFields', 'false'))) AS raw_line,
  test_id, week AS test_week, headline_text AS headline, image_text AS eyecatcher_id,
  excerpt_text AS excerpt, lede_text AS lede, impressions_n AS impressions, clicks_n AS clicks,
  week_dt AS dt
FROM checked
