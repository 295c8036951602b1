"""The one entry helper of every stage: `--params`, `--ds` and exit codes.

A stage's `main(argv)` is `return run_stage(NAME, __doc__, run, argv)`. `run(ctx)` does the
work and returns None (exit 0) or an exit code. Expected failures (plumbing.errors: config,
data, a missing artifact) exit 2 with one line naming the field or path; anything else is a
bug and keeps its traceback.

Where a run reads and writes is its `Layout` (plumbing.paths), decided by the params file
alone, never by the directory the command is started from: a pipeline stage runs with the
layout's root as its working directory (the params file's directory for a params.yaml,
`<project>/runs/<stem>/` for any other), an external check (a name outside pipelines/,
such as evals.upworthy_check) with its project's root. Without --params or $RELATE_PARAMS
the params file is params.yaml in the working directory; when there is none the run is
refused.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from plumbing.config import check_sections, load_config, load_params, params_path, project_root
from plumbing.dates import parse_ds
from plumbing.errors import ConfigError, StageError
from plumbing.logs import get_logger
from plumbing.paths import AS_OF_HELP, CuratedReader, Layout, read_as_of

T = TypeVar("T")
EXPECTED_FAILURE_EXIT_CODE = 2

# How a stage reads --ds: "as_of" (the end of the rolling window its reads stop at),
# "partition" (the one day it processes), or None (no --ds).
DS_MODES = ("as_of", "partition", None)


@dataclass(frozen=True)
class StageContext:
    """What one stage run is given: its params file (absolute), its day, its view of the curated
    tables, and its layout (the root every relative path of plumbing.paths is under)."""

    name: str
    params: Path
    ds: str | None
    curated: CuratedReader
    args: argparse.Namespace
    layout: Layout

    def config(self, cls: type[T], section: str | None = None) -> T:
        """The stage's own config section (or another stage's), built and validated."""
        return load_config(cls, section or self.name, self.params)


def stage_parser(name: str, doc: str | None, ds: str | None = "as_of") -> argparse.ArgumentParser:
    """The argument parser every stage starts from."""
    if ds not in DS_MODES:
        raise ValueError(f"ds mode must be one of {DS_MODES}, got {ds!r}")
    first_line = (doc or name).strip().splitlines()[0]
    module = name if "." in name else f"pipelines.{name}"  # checks outside pipelines/ give their module
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=first_line)
    parser.add_argument("--params", default=None, help="params file (default: params.yaml or $RELATE_PARAMS)")
    if ds == "as_of":
        parser.add_argument("--ds", default=None, help=AS_OF_HELP)
    elif ds == "partition":
        parser.add_argument("--ds", default=None, help="the day (YYYY-MM-DD) to process")
    return parser


def run_stage(name: str, doc: str | None, run: Callable[[StageContext], int | None], argv: list[str] | None = None,
              *, ds: str | None = "as_of",
              add_arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """Parse the stage's arguments, run it, and map expected failures to exit 2."""
    parser = stage_parser(name, doc, ds)
    if add_arguments is not None:
        add_arguments(parser)
    args = parser.parse_args(argv)
    log = get_logger(name)
    day = getattr(args, "ds", None)
    try:
        if day is not None:  # every stage refuses a malformed or empty --ds first (never "every day"), whatever the params
            parse_ds(day)
        params, layout = resolve_layout(name, args.params)
        with layout.entered(), read_as_of(day if ds == "as_of" else None) as curated:
            ctx = StageContext(name, params, day, curated, args, layout)
            code = run(ctx)
    except StageError as err:
        log.error("%s failed: %s", name, err)
        return EXPECTED_FAILURE_EXIT_CODE
    return 0 if code is None else int(code)


def resolve_layout(name: str, given: str | os.PathLike | None) -> tuple[Path, Layout]:
    """The run's params file (absolute, its sections checked) and its layout (see the module doc)."""
    path = params_path(given)
    if not path.is_file():
        source = "--params" if given else "$RELATE_PARAMS" if os.environ.get("RELATE_PARAMS") else None
        where = f"{source} names {path}" if source else f"no params.yaml in the working directory {Path.cwd()}"
        raise ConfigError(f"params file not found: {where}; run from the project root (where params.yaml is), "
                          "or pass --params PATH or set RELATE_PARAMS")
    path = path.resolve()
    check_sections(load_params(path), path)
    project = project_root(path)
    pipeline_stage = "." not in name
    return path, Layout.for_params(path, project) if pipeline_stage else Layout(project)
