"""Adapters from public real data sets to the pipeline's own inputs (external checks, not the product)."""
