"""How fast SynFER draws: images per second on one core."""
from __future__ import annotations

import time

__all__ = ["throughput"]


def throughput(variant: str = "wild", *, image_size: int = 112, n: int = 300, with_relevance: bool = True,
               seed: int = 0, warmup: int = 5) -> float:
    """Images per second drawn by one process (single thread) for ``variant``.

    Draws ``n`` samples in the calling process, after ``warmup`` untimed ones, and
    returns n / seconds. OpenCV's own threading is switched off for the measurement
    so the figure is per core.
    """
    import cv2

    from .dataset import SynFER

    ds = SynFER(variant, "train", n=n + warmup, seed=seed, image_size=image_size, with_relevance=with_relevance)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        for i in range(warmup):
            ds[n + i]
        t0 = time.perf_counter()
        for i in range(n):
            ds[i]
        return n / (time.perf_counter() - t0)
    finally:
        cv2.setNumThreads(threads)
