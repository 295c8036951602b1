"""The expected failures of a stage run. A stage exits 2 with their one-line message;
anything else is a bug and keeps its traceback (plumbing.cli)."""
from __future__ import annotations


class StageError(Exception):
    """An expected failure: the message names the field, path or partition at fault."""


class ConfigError(StageError, ValueError):
    """A bad params file, params value or command-line argument."""


class DataError(StageError, ValueError):
    """Input data that cannot be used as it is (empty, too small, inconsistent)."""


class MissingArtifact(StageError, FileNotFoundError):
    """An input an earlier stage should have written is not there."""
