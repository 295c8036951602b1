"""One log format for every stage, and periodic progress lines for long loops."""
from __future__ import annotations

import logging
import sys
import time


def get_logger(name: str) -> logging.Logger:
    root = logging.getLogger("relate")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return root.getChild(name.removeprefix("pipelines.").removeprefix("relate_"))


class Progress:
    """Logs `done/total` with rate and ETA at most every `every_s` seconds."""

    def __init__(self, log: logging.Logger, what: str, total: int, every_s: float = 10.0):
        self.log, self.what, self.total, self.every_s = log, what, total, every_s
        self.start = self.last = time.monotonic()
        self.done = 0

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every_s or self.done >= self.total:
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            self.log.info("%s: %d/%d (%.1f/s, eta %.0fs)", self.what, self.done, self.total, rate, eta)
