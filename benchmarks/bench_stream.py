"""Benchmark: memory and speed of the in-memory cache against the on-disk stream.

    python benchmarks/bench_stream.py --out _build/bench               # 20,000 faces at 224 px
    python benchmarks/bench_stream.py --out _build/bench --n 2000      # a quick look

Writes an AffectNet-format root (``training.csv`` + ``Manually_Annotated_Images/``) of
``--n`` JPEG faces at ``--size`` px: ``--distinct`` procedurally drawn faces (noise,
an ellipse, eyes, brows, a mouth) whose JPEG bytes are reused, so the root is written
in seconds; every file is still decoded. Then, for each path in its own subprocess
(so that each peak RSS is its own):

* **memory**: :func:`fer.train.cache_dataset` with an unlimited budget -> a
  :class:`~fer.train.CachedDataset` holding every face in memory (uint8);
* **stream**: the same call with a zero budget and an empty ``cache_dir`` -> the faces
  are decoded once into an on-disk store and a :class:`~fer.train.StreamedDataset`
  reads batches from it by rows.

Both decode with ``--workers`` ``DataLoader`` workers, then train a model for one epoch
over *all* faces with :func:`fer.train.fit` (``input_size=--input``: the 224 px faces are
resized on the device, random flips; ``num_workers=--workers``), then read
one more epoch through the same loader without a model (the data pipeline alone).
Reported per path: peak RSS of the main process and of its largest worker
(``ru_maxrss``), the build time (decode + cache), training and data images/s; for the
stream, the size of the store and the time of a second ``cache_dataset`` call (the
store is reused: nothing is decoded again). Targets (issue 15, section 3): streaming
peak RSS under 2 GiB whatever ``--n``; streaming at least 80% of the in-memory rate.

The model (``--model``) is by default ``tiny``: two strided convolutions and a linear
head, so that the epoch over every face fits a CPU benchmark (``small_cnn`` at 64 px
runs at about 20 images/s on 2 CPU cores: ``--model small_cnn`` on a GPU). The main
process's floor is what ``import torch`` and ``fer`` take (about 0.9 GiB on CPU builds).

Prints a table and writes ``<out>/stream.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

GIB = 1 << 30
#: AffectNet's expression codes 0..6 (neutral .. anger): the seven classes the loader keeps.
CODES = tuple(range(7))
HEADER = ("subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,"
          "arousal")


def _face(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A face-like picture (noise, skin ellipse, eyes, brows, mouth) and 68 points on its outline."""
    img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    img = cv2.GaussianBlur(img, (0, 0), size / 40)
    c = np.array([size / 2, size / 2]) + rng.normal(0, size / 30, 2)
    ax = np.array([size * rng.uniform(0.28, 0.34), size * rng.uniform(0.36, 0.42)])
    skin = tuple(int(v) for v in rng.integers(90, 230, 3))
    cv2.ellipse(img, tuple(int(v) for v in c), tuple(int(v) for v in ax), 0, 0, 360, skin, -1, cv2.LINE_AA)
    for dx in (-1, 1):
        eye = (int(c[0] + dx * ax[0] * 0.4), int(c[1] - ax[1] * 0.2))
        cv2.circle(img, eye, int(size * 0.03), (30, 30, 30), -1, cv2.LINE_AA)
        cv2.line(img, (eye[0] - int(size * .05), eye[1] - int(size * .06)),
                 (eye[0] + int(size * .05), eye[1] - int(size * rng.uniform(.04, .09))), (40, 30, 20), 3)
    smile = rng.uniform(-1, 1)
    cv2.ellipse(img, (int(c[0]), int(c[1] + ax[1] * 0.45)), (int(ax[0] * 0.45), max(1, int(abs(smile) * size * .06))),
                0, 0 if smile > 0 else 180, 180 if smile > 0 else 360, (60, 20, 120), 3, cv2.LINE_AA)
    t = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    pts = np.stack([c[0] + ax[0] * np.cos(t), c[1] + ax[1] * np.sin(t)], 1)
    return img, pts


def write_root(root: Path, n: int, size: int, distinct: int, seed: int = 0) -> dict[str, Any]:
    """An AffectNet-format root of ``n`` faces (``distinct`` pictures, JPEG bytes reused)."""
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    faces = []
    for _ in range(distinct):
        img, pts = _face(rng, size)
        ok, buf = cv2.imencode(".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        faces.append((buf.tobytes(), ";".join(f"{v:.1f}" for v in pts.ravel())))
    lines = [HEADER]
    images = root / "Manually_Annotated_Images"
    total = 0
    for k in range(n):
        data, lm = faces[k % distinct]
        sub = f"{k % 500}/{k:07d}.jpg"
        path = images / sub
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        total += len(data)
        code = CODES[(k * 7919) % len(CODES)]
        lines.append(f"{sub},0,0,{size},{size},{lm},{code},0.0,0.0")
    (root / "training.csv").write_text("\n".join(lines) + "\n")
    (root / "validation.csv").write_text(HEADER + "\n")
    return {"n": n, "size": size, "distinct": distinct, "jpeg_bytes": total,
            "write_seconds": time.perf_counter() - t0}


def _maxrss(who: int) -> int:
    return resource.getrusage(who).ru_maxrss * 1024  # Linux reports KiB


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One path, in this process: build the cache, train one epoch, read one epoch."""
    import torch

    from fer.data import load_dataset
    from fer.models import create_model
    from fer.data.cached import cache_dataset, make_loader
    from fer.train import TrainConfig, fit

    torch.manual_seed(args.seed)
    ds = load_dataset("affectnet", args.root, "train", image_size=args.size)
    stream = args.child == "stream"
    kw: dict[str, Any] = {"num_workers": args.workers, "progress": False, "batch_size": args.batch}
    kw |= {"cache_dir": args.cache, "memory_budget": 0} if stream else {"memory_budget": 1 << 62}
    t0 = time.perf_counter()
    cached = cache_dataset(ds, **kw)
    build = time.perf_counter() - t0
    rss_build = _maxrss(resource.RUSAGE_SELF)

    if args.model == "tiny":
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, 2, 1), torch.nn.ReLU(), torch.nn.Conv2d(16, 32, 3, 2, 1),
                                    torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                    torch.nn.Linear(32, 7))
    else:
        model = create_model(args.model, num_classes=7)
    cfg = TrainConfig(epochs=1, batch_size=args.batch, input_size=args.input, hflip=True, optimizer="adam",
                      num_workers=args.workers, cpu=True, seed=args.seed)
    t0 = time.perf_counter()
    fit(model, cached, None, cfg, progress=False)
    train = time.perf_counter() - t0

    loader = make_loader(cached, batch_size=args.batch, shuffle=True, seed=args.seed + 1, num_workers=args.workers,
                          drop_last=False, pin_memory=False)
    t0, seen = time.perf_counter(), 0
    for batch in loader:
        seen += len(batch["label"])
    data = time.perf_counter() - t0
    assert seen == len(cached)
    del loader

    out = {"path": args.child, "dataset": type(cached).__name__, "n": len(cached),
           "build_seconds": build, "train_seconds": train, "train_images_per_second": len(cached) / train,
           "data_seconds": data, "data_images_per_second": len(cached) / data,
           "peak_rss_after_build_bytes": rss_build}
    if stream:
        out["store_bytes"] = cached.store.nbytes
        out["store"] = str(cached.store.folder)
        t0 = time.perf_counter()
        again = cache_dataset(load_dataset("affectnet", args.root, "train", image_size=args.size), **kw)
        out["reuse_seconds"] = time.perf_counter() - t0
        out["reused_store"] = str(again.store.folder) == out["store"]
    else:
        out["cache_bytes"] = sum(t.numel() * t.element_size() for t in cached.tensors.values())
    out["peak_rss_main_bytes"] = _maxrss(resource.RUSAGE_SELF)
    out["peak_rss_worker_bytes"] = _maxrss(resource.RUSAGE_CHILDREN)  # the largest reaped worker
    return out


def _gib(b: float) -> str:
    return f"{b / GIB:.2f} GiB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default="_build/bench", help="folder for stream.json")
    p.add_argument("--n", type=int, default=20000, help="faces in the AffectNet-format root (default 20000)")
    p.add_argument("--size", type=int, default=224, help="stored face size in px (default 224, AffectNet's)")
    p.add_argument("--input", type=int, default=64, help="model input size in px (default 64)")
    p.add_argument("--distinct", type=int, default=300, help="distinct pictures among the faces (default 300)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--model", default="tiny", help="'tiny' (default) or a fer.models name, e.g. small_cnn")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers, decoding and training (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed at the end)")
    p.add_argument("--child", choices=("memory", "stream"), help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--cache", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0

    from fer.io import atomic_write_json

    t_start = time.perf_counter()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_stream_"))
    try:
        root, cache = work / "affectnet", work / "cache"
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
        disk = write_root(root, args.n, args.size, args.distinct, args.seed)
        print(f"wrote {args.n} faces ({disk['jpeg_bytes'] / 2**20:.0f} MiB of JPEG) in {disk['write_seconds']:.1f} s",
              flush=True)
        results = {}
        for path in ("memory", "stream"):
            cmd = [sys.executable, __file__, "--child", path, "--root", str(root), "--cache", str(cache),
                   "--n", str(args.n), "--size", str(args.size), "--input", str(args.input), "--batch",
                   str(args.batch), "--model", args.model, "--workers", str(args.workers), "--seed", str(args.seed)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(proc.stdout, proc.stderr, file=sys.stderr)
                raise SystemExit(f"the {path} run failed (exit {proc.returncode})")
            results[path] = json.loads(proc.stdout.strip().splitlines()[-1])
            r = results[path]
            print(f"{path:>6}: build {r['build_seconds']:.1f} s, train {r['train_images_per_second']:.1f} img/s, "
                  f"data {r['data_images_per_second']:.1f} img/s, peak RSS main {_gib(r['peak_rss_main_bytes'])}, "
                  f"worker {_gib(r['peak_rss_worker_bytes'])}", flush=True)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)

    mem, st = results["memory"], results["stream"]
    peak = {k: max(v["peak_rss_main_bytes"], v["peak_rss_worker_bytes"]) for k, v in results.items()}
    ratio = {"train": st["train_images_per_second"] / mem["train_images_per_second"],
             "data": st["data_images_per_second"] / mem["data_images_per_second"]}
    targets = {"stream_peak_rss_under_2GiB": peak["stream"] < 2 * GIB,
               "stream_train_rate_at_least_80pct": ratio["train"] >= 0.8}
    result = {
        "benchmark": "stream",
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "load_average_1min": os.getloadavg()[0]},
        "settings": {"n": args.n, "size": args.size, "input_size": args.input, "distinct": args.distinct,
                     "batch": args.batch, "workers": args.workers, "model": args.model, "epochs": 1,
                     "source": "AffectNet-format root, procedural faces, JPEG"},
        "root": disk, "memory": mem, "stream": st, "peak_rss_bytes": peak, "ratio_stream_over_memory": ratio,
        "targets": targets, "wall_seconds": time.perf_counter() - t_start,
    }
    print()
    print(f"stream benchmark: {args.n} faces {args.size} px, {args.model} at {args.input} px, batch {args.batch}, "
          f"{args.workers} workers, {os.cpu_count()} cores (load {result['machine']['load_average_1min']:.1f})")
    print(f"{'':<28s}{'memory':>12s}{'stream':>12s}")
    print(f"{'peak RSS (main / worker)':<28s}{_gib(peak['memory']):>12s}{_gib(peak['stream']):>12s}")
    print(f"{'build (decode) seconds':<28s}{mem['build_seconds']:12.1f}{st['build_seconds']:12.1f}")
    print(f"{'training images/s':<28s}{mem['train_images_per_second']:12.1f}{st['train_images_per_second']:12.1f}")
    print(f"{'data pipeline images/s':<28s}{mem['data_images_per_second']:12.1f}{st['data_images_per_second']:12.1f}")
    print(f"stream/memory: training {ratio['train']:.2f}, data {ratio['data']:.2f}; store {_gib(st['store_bytes'])}, "
          f"reused in {st['reuse_seconds']:.2f} s; targets: {targets}")
    path = atomic_write_json(Path(args.out) / "stream.json", result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
