-- Per dt, ad_id, title_id, image_id, highlight_id: feed-placement stats from `labeled_window`.
SELECT ad_id, title_id, image_id, highlight_id,
       min(product_id) AS product_id, min(vertical) AS vertical,
       count(*) AS impressions, sum(clicked) AS clicks, sum(converted) AS conversions,
       sum(clicked) / count(*) AS ctr,
       avg(propensity) AS mean_propensity,
       dt
FROM labeled_window
WHERE placement = 'feed'
GROUP BY dt, ad_id, title_id, image_id, highlight_id
