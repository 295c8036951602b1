-- Link the valid events of a window of raw partitions (view `window_events`: row-valid,
-- deduplicated events with `dt`): impressions of ds-W-1 .. ds, clicks and conversions of
-- ds-W .. ds. Adds `link_reason`: 'orphan_click' for a click with no valid impression
-- within the click window before it, 'orphan_conversion' for a conversion with no valid
-- (linked) click within the attribution window before it, else NULL.
-- Parameters: :click_window_ms, :attribution_window_ms.
WITH impressions AS (
  SELECT impression_id, ts FROM window_events WHERE event_type = 'impression'
),
clicks AS (
  SELECT dt, event_id, impression_id, click_id, ts FROM window_events WHERE event_type = 'click'
),
linked_clicks AS (
  SELECT DISTINCT c.dt, c.event_id, c.click_id, c.ts
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
SELECT e.*,
       CASE
         WHEN e.event_type = 'click' AND lc.event_id IS NULL THEN 'orphan_click'
         WHEN e.event_type = 'conversion' AND lv.event_id IS NULL THEN 'orphan_conversion'
       END AS link_reason
FROM window_events e
LEFT JOIN linked_clicks lc ON e.event_type = 'click' AND lc.dt = e.dt AND lc.event_id = e.event_id
LEFT JOIN linked_conversions lv ON e.event_type = 'conversion' AND lv.dt = e.dt AND lv.event_id = e.event_id
