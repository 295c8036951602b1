-- Per dt, ad_id, text_id: search-placement stats from `labeled_window`.
-- keyword: the text's most frequent bid keyword that day (ties: the greatest keyword),
-- so the choice is deterministic. Rates are 0 when their denominator is 0.
WITH search AS (
  SELECT * FROM labeled_window WHERE placement = 'search'
),
keywords AS (
  SELECT dt, ad_id, text_id, keyword, count(*) AS n
  FROM search GROUP BY dt, ad_id, text_id, keyword
),
top_keyword AS (
  SELECT dt, ad_id, text_id, max_by(keyword, named_struct('n', n, 'keyword', keyword)) AS keyword
  FROM keywords GROUP BY dt, ad_id, text_id
),
totals AS (
  SELECT dt, ad_id, text_id,
         min(ad_text) AS ad_text, min(vertical) AS vertical,
         count(*) AS impressions, sum(clicked) AS clicks, sum(converted) AS conversions
  FROM search GROUP BY dt, ad_id, text_id
)
SELECT t.ad_id, t.text_id, t.ad_text, k.keyword, t.vertical,
       t.impressions, t.clicks, t.conversions,
       t.clicks / t.impressions AS ctr,
       CASE WHEN t.clicks > 0 THEN t.conversions / t.clicks ELSE 0D END AS cvr,
       t.conversions / t.impressions AS ctcvr,
       t.dt
FROM totals t JOIN top_keyword k ON k.dt = t.dt AND k.ad_id = t.ad_id AND k.text_id = t.text_id
