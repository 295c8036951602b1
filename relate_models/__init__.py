"""RELATE/GenCO models: the CTCVR reward model, the shared tokenizer, attribution, policies."""
