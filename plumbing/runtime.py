"""Process-wide runtime settings a stage applies before its heavy work."""
from __future__ import annotations


def limit_torch_threads(threads: int) -> None:
    """Run torch's intra-op work on `threads` threads (0: torch's default). Its default pool spins on
    every core of a shared machine: serving_tables' sampling took 274-407 s instead of 37 s under load,
    and multi-threaded sums make a fit vary from run to run."""
    if threads:
        import torch

        torch.set_num_threads(threads)
