"""Seeded random streams of the simulator.

One generator per (seed, stream ids): a draw depends only on its stream's key, never on how many
draws other parts of the simulation made before it, so a day, an ad or a component can be
re-drawn on its own (the simulator's determinism, and evals that re-draw a served day, rely on it).
"""
from __future__ import annotations

import numpy as np


def stream_rng(seed: int, *stream: int) -> np.random.Generator:
    """The generator of stream `stream` under `seed`."""
    return np.random.default_rng(np.random.SeedSequence([seed, *stream]))
