-- What became of the raw lines of the ingested partitions, counted per dt: outcome 'in'
-- (every line), 'kept', or the quarantine reason. Counted independently (all lines vs
-- row-level rejects + linked events), so rows_in = kept + quarantined is a real check.
-- Views: `parsed_lines` (parse_day.sql output), `linked_lines` (the valid impressions plus
-- link_events.sql's linked clicks and conversions), both restricted to the ingested partitions.
SELECT dt, 'in' AS outcome, count(*) AS n FROM parsed_lines GROUP BY dt
UNION ALL
SELECT dt, coalesce(reason, 'kept') AS outcome, count(*) AS n
FROM (
  SELECT dt, reason FROM parsed_lines WHERE reason IS NOT NULL
  UNION ALL
  SELECT dt, link_reason AS reason FROM linked_lines
)
GROUP BY dt, coalesce(reason, 'kept')
