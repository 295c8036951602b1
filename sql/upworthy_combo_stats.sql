-- combo_stats from the kept Upworthy packages (view `kept_packages`): one row per
-- (dt, test, headline, image, excerpt + lede). Arms of a test showing the same three elements
-- are summed (the binomial likelihood is unchanged); an arm's propensity is 1 / the test's
-- arms (uniform randomization), so mean_propensity is merged arms / arms, divided once
-- (a sum of k copies of 1/k can round to just above 1, outside the contract's (0, 1]).
WITH arms AS (
  SELECT dt, test_id AS ad_id,
         substr(sha1(headline), 1, 16) AS title_id,
         eyecatcher_id AS image_id,
         substr(sha1(concat(excerpt, chr(31), lede)), 1, 16) AS highlight_id,
         impressions, clicks,
         count(*) OVER (PARTITION BY dt, test_id) AS arms
  FROM kept_packages
)
SELECT ad_id, title_id, image_id, highlight_id,
       ad_id AS product_id, 'upworthy' AS vertical,
       sum(impressions) AS impressions, sum(clicks) AS clicks, 0L AS conversions,
       sum(clicks) / sum(impressions) AS ctr,
       count(*) / max(arms) AS mean_propensity,
       dt
FROM arms
GROUP BY dt, ad_id, title_id, image_id, highlight_id
