"""External checks of the pipeline against real public data (../shared/data)."""
