"""Benchmark: SynFER drawing speed, per core and through a DataLoader.

    python benchmarks/bench_synfer.py --out _build/bench [--n 400] [--size 112]

Prints a table and writes ``<out>/synfer.json``. Per-core figures run in this
process with OpenCV threading off; the loader figure uses all cores through
``DataLoader(num_workers=os.cpu_count())``.
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from fer.data import SynFER
from fer.data.synfer import VARIANTS, throughput
from fer.io import atomic_write_json


def _loader_rate(variant: str, size: int, n: int, workers: int) -> float:
    ds = SynFER(variant, "train", n=n, image_size=size)
    loader = DataLoader(ds, batch_size=64, num_workers=workers, persistent_workers=False)
    it = iter(loader)
    next(it)  # start-up of the workers is not counted
    t0 = time.perf_counter()
    seen = 0
    for batch in it:
        seen += len(batch["label"])
    return seen / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="_build/bench", help="folder for synfer.json")
    ap.add_argument("--n", type=int, default=400, help="images per measurement")
    ap.add_argument("--size", type=int, default=112, help="image side in pixels")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for v in VARIANTS:
        size = VARIANTS[v].image_size if v == "fer2013" else args.size
        rate = throughput(v, image_size=size, n=args.n)
        rows.append({"variant": v, "image_size": size, "images_per_second_per_core": round(rate, 1)})
        print(f"{v:>16s} {size:4d} px  {rate:7.1f} images/s on one core", flush=True)
    workers = os.cpu_count() or 1
    loader = _loader_rate("wild", args.size, max(args.n * workers, 256), workers)
    print(f"{'wild loader':>16s} {args.size:4d} px  {loader:7.1f} images/s with {workers} workers", flush=True)
    result = {
        "benchmark": "synfer",
        "machine": {"cpu_count": workers, "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "per_core": rows,
        "loader": {"variant": "wild", "image_size": args.size, "workers": workers,
                   "images_per_second": round(loader, 1)},
    }
    path = atomic_write_json(Path(args.out) / "synfer.json", result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
