-- text_stats from the kept Upworthy packages (view `kept_packages`): one row per
-- (dt, test, headline), summed over the images it was shown with. The archive has no search
-- keyword (NULL) and no conversions (cvr = ctcvr = 0).
SELECT test_id AS ad_id, substr(sha1(headline), 1, 16) AS text_id,
       min(headline) AS ad_text, CAST(NULL AS STRING) AS keyword, 'upworthy' AS vertical,
       sum(impressions) AS impressions, sum(clicks) AS clicks, 0L AS conversions,
       sum(clicks) / sum(impressions) AS ctr, 0D AS cvr, 0D AS ctcvr,
       dt
FROM kept_packages
GROUP BY dt, test_id, substr(sha1(headline), 1, 16)
