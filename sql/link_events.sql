-- Link the clicks and conversions of a window of raw partitions (view `window_events`:
-- row-valid, deduplicated events with `dt`). The daily run's window: impressions of
-- ds-W-1 .. ds, clicks and conversions of ds-W .. ds; --all: every partition at once.
-- Returns the window's clicks and conversions (all columns of `window_events`) with
-- `link_reason`: 'orphan_click' for a click with no valid impression within the click
-- window before it, 'orphan_conversion' for a conversion with no valid (linked) click
-- within the attribution window before it, else NULL.
-- Every rule is bounded by event time and a valid event's ts lies in its own dt, so an
-- event's link depends only on the partitions a daily run for its dt reads: linking a
-- longer window gives each event the same link_reason as its own run.
-- Impressions are never orphans and are not returned here: the caller adds them with
-- link_reason NULL (most rows; so only this small result is computed and kept).
-- Parameters: :click_window_ms, :attribution_window_ms.
WITH impressions AS (
  SELECT impression_id, ts FROM window_events WHERE event_type = 'impression'
),
clicks AS (
  SELECT dt, event_id, impression_id, click_id, ts FROM window_events WHERE event_type = 'click'
),
-- BROADCAST hints: the click and conversion sides are a few % of the events, so the
-- impressions stream through hash joins and are never shuffled (a size threshold would
-- misjudge them: both sides are filters of one cached relation with one size estimate).
linked_clicks AS (
  SELECT /*+ BROADCAST(c) */ DISTINCT c.dt, c.event_id, c.click_id, c.ts
  FROM clicks c
  JOIN impressions i
    ON i.impression_id = c.impression_id AND c.ts >= i.ts AND c.ts <= i.ts + :click_window_ms
),
linked_conversions AS (
  SELECT DISTINCT v.dt, v.event_id
  FROM window_events v
  JOIN linked_clicks c
    ON c.click_id = v.click_id AND v.ts >= c.ts AND v.ts <= c.ts + :attribution_window_ms
  WHERE v.event_type = 'conversion'
)
SELECT e.*, CASE WHEN lc.event_id IS NULL THEN 'orphan_click' END AS link_reason
FROM window_events e
LEFT JOIN linked_clicks lc ON lc.dt = e.dt AND lc.event_id = e.event_id
WHERE e.event_type = 'click'
UNION ALL
SELECT e.*, CASE WHEN lv.event_id IS NULL THEN 'orphan_conversion' END AS link_reason
FROM window_events e
LEFT JOIN linked_conversions lv ON lv.dt = e.dt AND lv.event_id = e.event_id
WHERE e.event_type = 'conversion'
