"""The simulated ad market: the embedded default data source and the evaluation oracle.

Only `pipelines.simulate` and `pipelines.evaluate*` may import this package; training code
sees the logs it writes, never its hidden truth (`tests/test_boundary.py` enforces this).

- `config.SimulateConfig`: the `simulate:` params section.
- `grammar`: the phrase lexicon and `analyze_text`, the pure parse of an ad text.
- `world`: `build_world(config)`, every hidden quantity, seeded.
- `truth`: the true click / conversion model as pure functions of (world, context, text).
- `logging_policy`: the confounded, exploring serving policy with exact propensities.
- `drift`, `market`: the drifting market (`market.market_as_of(world, day, ...)`; docs/simulator.md).
- `serving_tables`, `champion`: a champion's serving tables and serving them mixed with exploration.
- `writer`: day-partitioned raw JSONL logs, the truth parquet and the per-day carry state.
- `oracle.Oracle`: true probabilities, best combos, simulated A/B tests with CIs; `as_of(day)`.
- `drift_check`: the measured size of each drift effect (`python -m relate_sim.drift_check`).
"""
