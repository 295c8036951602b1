"""The simulated ad market: the embedded default data source and the evaluation oracle.

Only `pipelines.simulate` and `pipelines.evaluate*` may import this package; training code
sees the logs it writes, never its hidden truth (`tests/test_boundary.py` enforces this).

- `config.SimulateConfig`: the `simulate:` params section.
- `grammar`: the phrase lexicon and `analyze_text`, the pure parse of an ad text.
- `world`: `build_world(config)`, every hidden quantity, seeded.
- `truth`: the true click / conversion model as pure functions of (world, context, text).
- `logging_policy`: the confounded, exploring serving policy with exact propensities.
- `writer`: day-partitioned raw JSONL logs and the truth parquet.
- `oracle.Oracle`: true probabilities, best combos, simulated A/B tests with CIs.
"""
