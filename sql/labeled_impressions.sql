-- One row per valid impression of the partitions in view `label_days` (dt, labels_as_of),
-- labeled from the linked events (view `linked_events`, link_reason NULL = valid) as the
-- daily run for `labels_as_of` sees them: only clicks and conversions of partitions
-- <= labels_as_of count (the daily run: labels_as_of = ds for every partition ds-W .. ds;
-- --all: per partition, the last run that relabels it).
-- clicked: a valid click on it within the click window; converted: a valid conversion of
-- one of those clicks within the attribution window (so converted implies clicked);
-- conversion_value: the sum of those conversions' values.
-- Parameters: :click_window_ms, :attribution_window_ms, :attribution_window_days.
WITH valid AS (
  SELECT * FROM linked_events WHERE link_reason IS NULL
),
impressions AS (
  SELECT /*+ BROADCAST(d) */ v.*, d.labels_as_of
  FROM valid v JOIN label_days d ON d.dt = v.dt
  WHERE v.event_type = 'impression'
),
impression_clicks AS (
  SELECT /*+ BROADCAST(c) */ i.dt, i.event_id AS impression_event_id, i.labels_as_of, c.click_id, c.ts AS click_ts
  FROM impressions i
  JOIN valid c
    ON c.event_type = 'click' AND c.impression_id = i.impression_id
   AND c.ts >= i.ts AND c.ts <= i.ts + :click_window_ms
   AND c.dt <= i.labels_as_of
),
labels AS (
  SELECT /*+ BROADCAST(v) */ ic.dt, ic.impression_event_id,
         max(v.event_id IS NOT NULL) AS converted,
         coalesce(sum(v.value), 0D) AS conversion_value
  FROM impression_clicks ic
  LEFT JOIN valid v
    ON v.event_type = 'conversion' AND v.click_id = ic.click_id
   AND v.ts >= ic.click_ts AND v.ts <= ic.click_ts + :attribution_window_ms
   AND v.dt <= ic.labels_as_of
  GROUP BY ic.dt, ic.impression_event_id
)
SELECT /*+ BROADCAST(l) */ i.event_id, i.impression_id, i.ts, i.user_id, i.user_segment, i.placement, i.vertical,
       i.advertiser_id, i.product_id, i.ad_id, i.position, i.query, i.keyword, i.text_id,
       i.ad_text, i.title_id, i.image_id, i.highlight_id, i.propensity,
       CAST(l.impression_event_id IS NOT NULL AS INT) AS clicked,
       CAST(coalesce(l.converted, false) AS INT) AS converted,
       coalesce(l.conversion_value, 0D) AS conversion_value,
       i.labels_as_of,
       datediff(to_date(i.labels_as_of), to_date(i.dt)) >= :attribution_window_days AS label_complete,
       i.dt
FROM impressions i
LEFT JOIN labels l ON l.dt = i.dt AND l.impression_event_id = i.event_id
