-- Per dt, ad_id, text_id: search-placement stats from `labeled_window`.
-- keyword: the text's most frequent bid keyword that day (ties: the greatest keyword),
-- so the choice is deterministic. Rates are 0 when their denominator is 0.
-- Two aggregation levels (per keyword, then per text) and no join: every total of a
-- text is the sum (or min) of its per-keyword parts.
WITH keywords AS (
  SELECT dt, ad_id, text_id, keyword,
         min(ad_text) AS ad_text, min(vertical) AS vertical,
         count(*) AS n, sum(clicked) AS clicks, sum(converted) AS conversions
  FROM labeled_window
  WHERE placement = 'search'
  GROUP BY dt, ad_id, text_id, keyword
),
totals AS (
  SELECT dt, ad_id, text_id,
         min(ad_text) AS ad_text,
         max_by(keyword, named_struct('n', n, 'keyword', keyword)) AS keyword,
         min(vertical) AS vertical,
         sum(n) AS impressions, sum(clicks) AS clicks, sum(conversions) AS conversions
  FROM keywords GROUP BY dt, ad_id, text_id
)
SELECT ad_id, text_id, ad_text, keyword, vertical,
       impressions, clicks, conversions,
       clicks / impressions AS ctr,
       CASE WHEN clicks > 0 THEN conversions / clicks ELSE 0D END AS cvr,
       conversions / impressions AS ctcvr,
       dt
FROM totals
