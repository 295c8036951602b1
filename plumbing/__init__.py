"""Plumbing: the leaf package every other imports (config, paths, atomic writes, dates, logs, Spark, the stage CLI). It imports nothing else of the project."""
