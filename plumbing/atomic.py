"""Atomic writes: write aside, then rename, so a killed task leaves nothing half-written.

JSON is written strict (no bare NaN/Infinity): a non-finite number is refused naming its key,
and a training stage checks its metrics and saved weights (`require_finite`,
`require_finite_weights`) before anything is replaced, so a diverged run leaves the previous
model and metrics as they were.
"""
from __future__ import annotations

import contextlib
import glob
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from plumbing.errors import DataError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _plain_mode(path: Path, directory: bool) -> None:
    """mkstemp/mkdtemp create owner-only entries; give them the modes a plain write would."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        _plain_mode(Path(tmp), directory=False)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj) -> None:
    """Strict JSON: a NaN or infinity anywhere is refused (DataError naming the key), never written."""
    require_finite(str(path), "the JSON", obj)
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n")


def undefined_as_null(obj: Any) -> Any:
    """NaN/inf (an undefined metric, e.g. an AUC without positives) to None, numpy scalars to Python
    ones: what a metrics file may hold where a value is undefined, so the JSON stays strict."""
    import numpy as np

    if isinstance(obj, dict):
        return {k: undefined_as_null(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [undefined_as_null(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _non_finite(obj: Any, key: str) -> tuple[str, Any] | None:
    """(key path, value) of the first non-finite number in a JSON-like object, else None."""
    if isinstance(obj, dict):
        items = ((f"{key}.{k}" if key else str(k), v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"{key}[{i}]", v) for i, v in enumerate(obj))
    elif isinstance(obj, float) or type(obj).__name__ in ("float16", "float32", "float64", "longdouble"):
        return None if math.isfinite(obj) else (key, obj)
    else:
        return None
    for sub_key, value in items:
        found = _non_finite(value, sub_key)
        if found is not None:
            return found
    return None


def require_finite(stage: str, what: str, obj: Any) -> None:
    """Refuse (DataError naming the stage, key and value) a JSON-like object holding NaN or infinity."""
    found = _non_finite(obj, "")
    if found is not None:
        key, value = found
        raise DataError(f"{stage}: {what} holds a non-finite value, {key or 'the value'} = {value}; nothing written")


def require_finite_weights(stage: str, directory: str | os.PathLike) -> None:
    """Refuse (DataError naming the stage, file and tensor) a saved model whose weights hold NaN or infinity.

    Checks every `*.safetensors` file under `directory` (a staging directory: raising inside
    `atomic.directory` leaves the previous model in place).
    """
    import torch
    from safetensors import safe_open

    for file in sorted(Path(directory).rglob("*.safetensors")):
        with safe_open(str(file), framework="pt") as weights:
            for name in weights.keys():
                tensor = weights.get_tensor(name)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    bad = tensor[~torch.isfinite(tensor)].flatten()[0].item()
                    raise DataError(f"{stage}: model weight {name} in {file.name} holds a non-finite value ({bad}); "
                                    "the previous model is kept")


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> None:
    """Render a matplotlib figure to PNG in memory, write it atomically, close the figure."""
    import io

    import matplotlib.pyplot as plt

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    write_bytes(path, buffer.getvalue())


@contextlib.contextmanager
def directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a hidden sibling directory to fill; on success it replaces `path` whole.

    On an exception the staging directory is removed and `path` is left as it was.
    Readers skip hidden names, so a killed writer leaves nothing visible.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(path.parent, path.name)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.staging-", dir=path.parent))
    _plain_mode(staging, directory=True)
    try:
        yield staging
        _plain_modes(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.parent / f".{path.name}.old-{staging.name.rsplit('-', 1)[-1]}"
        os.replace(path, old)
    os.replace(staging, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_tree(path: str | os.PathLike) -> None:
    """Remove a directory as one step for readers: renamed to a hidden sibling (readers skip hidden
    names), then deleted, with what an earlier killed removal of it left. Nothing to do if it does not exist."""
    path = Path(path)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.removed-*"):
        shutil.rmtree(stale, ignore_errors=True)
    if not path.exists():
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{path.name}.removed-", dir=path.parent))
    os.replace(path, aside)  # onto the empty directory just made: an atomic rename
    shutil.rmtree(aside)


def _plain_modes(root: Path) -> None:
    """Every file and directory under `root` gets a plain write's mode (some writers, safetensors
    among them, create owner-only files)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            _plain_mode(Path(dirpath) / name, directory=True)
        for name in filenames:
            if not os.path.islink(os.path.join(dirpath, name)):
                _plain_mode(Path(dirpath) / name, directory=False)


def clean_stale_staging(parent: str | os.PathLike, name: str | None = None) -> int:
    """Remove the staging/old directories a killed writer left under `parent` (only those of
    `name` when given, so concurrent writers of other names are left alone); return how many.

    A writer killed between its two renames leaves `name` missing and its previous version in
    `.<name>.old-*`: that version is put back rather than removed.
    """
    parent = Path(parent)
    if not parent.is_dir():
        return 0
    if name is None:
        stale = sorted(p for p in parent.iterdir()
                       if p.name.startswith(".") and (".staging-" in p.name or ".old-" in p.name))
    else:
        stale = sorted(p for p in parent.iterdir() if p.name.startswith((f".{name}.staging-", f".{name}.old-")))
    olds = [p for p in stale if ".old-" in p.name]
    if name is not None and len(olds) == 1 and not (parent / name).exists():
        os.replace(olds[0], parent / name)
        stale.remove(olds[0])
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return len(stale)
