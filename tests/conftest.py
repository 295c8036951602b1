"""Shared fixtures: the project root, the tiny params file, Spark env defaults."""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_OVERLAY = ROOT / "configs" / "tiny.yaml"  # what differs from params.yaml at test size
SHARED_DATA = ROOT.parent / "shared" / "data"

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _write_tiny_params() -> Path:
    """configs/tiny.yaml merged onto params.yaml, as one full params file (a work dir's params.yaml, DVC's)."""
    from plumbing.config import dump_params, load_params

    out = Path(tempfile.mkdtemp(prefix="relate-tiny-params-")) / "params.yaml"
    out.write_text(dump_params(load_params(TINY_OVERLAY)), encoding="utf-8")
    atexit.register(shutil.rmtree, out.parent, True)
    return out


TINY_PARAMS = _write_tiny_params()  # the full tiny params file: copy it, read it, edit a copy of it
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def tiny_params(tmp_path, monkeypatch) -> Path:
    """The tiny params (configs/tiny.yaml merged onto params.yaml) in a fresh working directory
    (all stage paths are relative)."""
    params = tmp_path / "params.yaml"
    params.write_text(TINY_PARAMS.read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RELATE_PARAMS", str(params))
    return params


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: a second torch thread only adds contention on a shared 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def caplog(caplog):
    """The project's `relate` logger does not propagate to the root; hook pytest's handler in."""
    logger = logging.getLogger("relate")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)
