"""Benchmark: training throughput of ``fer.train.fit`` against a plain PyTorch loop.

    python benchmarks/bench_train.py --out _build/bench            # CPU-sized defaults (64 px)
    python benchmarks/bench_train.py --out _build/bench --size 224 --n 2048 --batch 64 --steps 50   # a GPU

Both paths train the same model (``vgg16_cbam`` by default, built for ``--size``) on
the same ``--n`` SynFER ``fer2013`` faces (48 x 48 grayscale), written once to a
temporary folder as PNG files in class folders -- the ``ImageFolder`` layout a user
has on disk -- and resized to ``--size`` pixels, with random horizontal flips and
random shifts of up to ``--shift`` pixels, Adam and cross-entropy, same batch size:

* **reference**: a hand-written script -- ``torchvision.datasets.ImageFolder`` with
  ``Compose([Resize, RandomHorizontalFlip, RandomCrop(padding=shift), ToTensor,
  Normalize])``, ``DataLoader(shuffle=True, num_workers=--workers)`` decoding the
  PNGs with PIL every epoch, and a plain ``model.train()`` / ``zero_grad`` /
  ``backward`` / ``step`` loop in fp32 (no Accelerate);
* **fer**: the same files decoded once by ``fer.train.cache_dataset`` into a uint8
  ``CachedDataset`` (timed separately as the one-off decode), then
  ``fer.train.fit(..., TrainConfig(input_size=--size, hflip=True, shift=--shift,
  optimizer="adam"))``: resize, augmentation and normalisation run on the device
  (``InputTransform``); with fit's defaults, channels-last, and on a GPU bf16 autocast.

Four rates, in images per second: the data pipeline alone (batches ready on the
device, no model) and training (data + forward + backward + optimizer step), for
each path. ``--warmup`` steps are not timed; ``--steps`` training steps and
``--data-steps`` batches are, and may cross epoch boundaries (a reference epoch
restarts its loader workers, as a plain script's does).

Reading the ratio: ``fer/reference`` above 1 means fer's path is that many times
faster; the data ratio says how much cheaper the cached, on-device pipeline is, the
training ratio what that (plus channels-last, and bf16 on a GPU) buys end to end. On a
CPU the model dominates, so the training ratio mostly shows whether the reference's
PIL workers, which compete with the model for the same cores, slow training down.
Both paths run with the same ``torch.set_num_threads(--threads)``, by default half the
cores: the other half is left to the reference's loader workers (separate processes),
and PyTorch's intra-op threads slow down sharply when they share their cores with
other busy processes. The 1-minute load average is recorded: a load above the core
count means other programs skewed the rates.

Prints a table and writes ``<out>/train.json``.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torchvision
from PIL import Image
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T

from fer.data import SynFER
from fer.models import create_model
from fer.data.cached import CachedDataset, cache_dataset, collate_items
from fer.data.transforms import InputTransform
from fer.io import atomic_write_json
from fer.train import TrainConfig, _channels_last, fit, make_accelerator

MEAN = (0.5, 0.5, 0.5)  # TrainConfig's default normalisation, used by both paths
STD = (0.5, 0.5, 0.5)
NUM_CLASSES = 7


class _Clock:
    """Time stamps at step boundaries; the rate counts the images between stamp ``warmup`` and ``warmup + steps``.

    ``tick(n)`` is called once per step with that step's batch size and returns True
    once the window is closed. On CUDA the two stamps that bound the window wait for
    the device first.
    """

    def __init__(self, device: torch.device, warmup: int, steps: int) -> None:
        self.device, self.warmup, self.steps = device, warmup, steps
        self.times: list[float] = []
        self.sizes: list[int] = []

    def tick(self, n: int) -> bool:
        i = len(self.times)
        if self.device.type == "cuda" and i in (self.warmup, self.warmup + self.steps):
            torch.cuda.synchronize(self.device)
        self.times.append(time.perf_counter())
        self.sizes.append(int(n))
        return i >= self.warmup + self.steps

    def rate(self, *, offset: int) -> float:
        """Images per second in the window; ``offset=0`` counts the batches *started* in it (a
        tick before the work), ``offset=1`` those *finished* in it (a tick after the work)."""
        w, k = self.warmup, self.steps
        if len(self.times) < w + k + 1:
            raise RuntimeError(f"the clock saw {len(self.times)} steps, needs {w + k + 1}")
        images = sum(self.sizes[w + offset:w + k + offset])
        return images / (self.times[w + k] - self.times[w])


class _Stop(Exception):
    """Raised inside fit's forward once the timed window is complete."""


# ------------------------------------------------------------------ data on disk


def write_image_folder(root: Path, n: int, seed: int) -> dict[str, Any]:
    """``n`` SynFER ``fer2013`` training faces as 48 px grayscale PNGs in ``root/<class>/``."""
    ds = SynFER("fer2013", "train", n=n, seed=seed, with_relevance=False)
    for i in range(n):
        item = ds[i]
        img = item["image"]
        gray = img[0] if bool((img == img[0:1]).all()) else None
        folder = root / ds.classes[int(item["label"])]
        folder.mkdir(parents=True, exist_ok=True)
        pil = Image.fromarray(gray.numpy(), "L") if gray is not None else Image.fromarray(
            img.permute(1, 2, 0).contiguous().numpy(), "RGB")
        pil.save(folder / f"{i:06d}.png")
    files = sorted(root.rglob("*.png"))
    return {"files": len(files), "bytes": sum(f.stat().st_size for f in files),
            "image_size": int(ds.image_size), "mode": "L" if gray is not None else "RGB"}


def reference_loader(root: Path, *, size: int, shift: int, batch: int, workers: int, pin: bool) -> DataLoader:
    """What a hand-written FER script does: ImageFolder + PIL transforms + DataLoader workers."""
    tf = T.Compose([
        T.Resize(size),
        T.RandomHorizontalFlip(),
        T.RandomCrop(size, padding=shift) if shift > 0 else T.CenterCrop(size),
        T.ToTensor(),
        T.Normalize(MEAN, STD),
    ])
    ds = datasets.ImageFolder(str(root), transform=tf)
    return DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, pin_memory=pin)


def _epochs(loader: Any) -> Iterator[Any]:
    """Batches of ``loader``, epoch after epoch, forever."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


# ------------------------------------------------------------------ measurements


def data_rate_reference(loader: DataLoader, device: torch.device, clock: _Clock) -> float:
    for x, y in _epochs(loader):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if clock.tick(len(y)):
            break
    return clock.rate(offset=1)


def data_rate_fer(cached: CachedDataset, config: TrainConfig, device: torch.device, channels_last: bool,
                  clock: _Clock) -> float:
    """fit's data path without the model: the cached loader (prepared by Accelerate) + InputTransform."""
    acc = make_accelerator(config)
    loader = acc.prepare(DataLoader(cached, batch_size=config.batch_size, shuffle=True, collate_fn=collate_items,
                                    pin_memory=device.type == "cuda"))
    transform = InputTransform.from_config(config, channels_last=channels_last)
    gen = torch.Generator().manual_seed(config.seed)
    try:
        for batch in _epochs(loader):
            batch = transform(batch, train=True, generator=gen)
            if clock.tick(len(batch["label"])):
                break
    finally:
        acc.free_memory()
    return clock.rate(offset=1)


def train_rate_reference(model: nn.Module, loader: DataLoader, device: torch.device, clock: _Clock, *,
                         lr: float) -> float:
    """A plain fp32 loop: Adam, cross-entropy, zero_grad / backward / step (no Accelerate)."""
    model.to(device)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    for x, y in _epochs(loader):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if clock.tick(len(y)):
            break
        logits = model(x)
        loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # running statistics kept on the device: no sync per step
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
    if not torch.isfinite(loss_sum):
        raise FloatingPointError("reference loop: the training loss is not finite")
    return clock.rate(offset=0)


def train_rate_fer(model: nn.Module, cached: CachedDataset, config: TrainConfig, device: torch.device,
                   clock: _Clock) -> tuple[float, dict[str, Any]]:
    """``fit`` on the cached dataset; a forward_fn stamps each step and stops fit once the window closes."""
    used: dict[str, Any] = {}

    def forward(module: nn.Module, batch: dict[str, Any]) -> Any:
        x = batch["image"]
        if not used:
            used.update(autocast=torch.is_autocast_enabled(device.type),
                        autocast_dtype=str(torch.get_autocast_dtype(device.type)).replace("torch.", ""),
                        channels_last=bool(x.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1),
                        input_shape=list(x.shape[1:]), device=str(x.device))
        if clock.tick(len(batch["label"])):
            raise _Stop
        return module(x)

    try:
        fit(model, cached, None, config, forward_fn=forward, progress=False)
    except _Stop:
        pass
    precision = used.get("autocast_dtype", "float32") if used.get("autocast") else "float32"
    return clock.rate(offset=0), {"precision": precision, "channels_last": used.get("channels_last"),
                                  "input_shape": used.get("input_shape"), "device": used.get("device")}


# ------------------------------------------------------------------ main


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    return torch.device(name)


def _loadavg() -> float | None:
    """The 1-minute load average (other processes on the machine skew every rate here)."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _make_model(name: str, size: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return create_model(name, num_classes=NUM_CLASSES, img_size=size)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="_build/bench", help="folder for train.json")
    ap.add_argument("--model", default="vgg16_cbam", help="fer model name (built with img_size=--size)")
    ap.add_argument("--n", type=int, default=256, help="training images (SynFER fer2013, 48 px)")
    ap.add_argument("--size", type=int, default=64, help="input side in pixels (the paper: 224)")
    ap.add_argument("--batch", type=int, default=32, help="batch size")
    ap.add_argument("--shift", type=int, default=None, help="random shift in pixels (default: size // 16)")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps per path")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before each measurement")
    ap.add_argument("--data-steps", type=int, default=64, help="timed batches for the data-pipeline-alone rates")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="DataLoader workers of the reference (and of fer's one-off decode)")
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1) // 2),
                    help="torch.set_num_threads in this process, for both paths (default: half the cores)")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                    help="fer path's TrainConfig.precision (the reference always runs fp32)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for name in ("n", "size", "batch", "steps", "data_steps", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0 or args.workers < 0:
        raise SystemExit("--warmup and --workers must be >= 0")
    shift = args.size // 16 if args.shift is None else args.shift
    device = _device(args.device)
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    load_start = _loadavg()
    pin = device.type == "cuda"
    config = TrainConfig(batch_size=args.batch, input_size=args.size, hflip=True, shift=shift, optimizer="adam",
                         lr=1e-3, mean=MEAN, std=STD, precision=args.precision, seed=args.seed,
                         cpu=device.type == "cpu")
    channels_last = _channels_last(config, device)  # fit's own rule
    steps_per_epoch = math.ceil(args.n / args.batch)

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        root = Path(tmp) / "fer2013"
        t0 = time.perf_counter()
        disk = write_image_folder(root, args.n, args.seed)
        disk["write_seconds"] = time.perf_counter() - t0
        print(f"wrote {disk['files']} SynFER fer2013 faces ({disk['image_size']} px {disk['mode']} PNG, "
              f"{disk['bytes'] / 2**20:.2f} MiB) in {disk['write_seconds']:.1f} s", flush=True)

        # fer: decode the same files once into a uint8 cache (the one-off cost, reported apart).
        t0 = time.perf_counter()
        cached = cache_dataset(datasets.ImageFolder(str(root), transform=T.PILToTensor()), num_workers=args.workers,
                               progress=False)
        decode_seconds = time.perf_counter() - t0
        cache_bytes = sum(t.numel() * t.element_size() for t in cached.tensors.values())

        ref_loader = reference_loader(root, size=args.size, shift=shift, batch=args.batch, workers=args.workers,
                                      pin=pin)
        rates: dict[str, float] = {}
        rates["data_reference"] = data_rate_reference(ref_loader, device, _Clock(device, args.warmup,
                                                                                 args.data_steps))
        print(f"data pipeline, reference: {rates['data_reference']:9.1f} images/s", flush=True)
        rates["data_fer"] = data_rate_fer(cached, config, device, channels_last,
                                          _Clock(device, args.warmup, args.data_steps))
        print(f"data pipeline, fer:       {rates['data_fer']:9.1f} images/s", flush=True)
        rates["train_reference"] = train_rate_reference(_make_model(args.model, args.size, args.seed), ref_loader,
                                                        device, _Clock(device, args.warmup, args.steps), lr=config.lr)
        print(f"training, reference:      {rates['train_reference']:9.1f} images/s", flush=True)
        # fit runs whole epochs; enough of them for warmup + steps + the closing stamp, then stops early.
        fer_config = config.replace(epochs=math.ceil((args.warmup + args.steps + 1) / steps_per_epoch))
        rates["train_fer"], used = train_rate_fer(_make_model(args.model, args.size, args.seed), cached, fer_config,
                                                  device, _Clock(device, args.warmup, args.steps))
        print(f"training, fer:            {rates['train_fer']:9.1f} images/s", flush=True)

    ratio = {"data": rates["data_fer"] / rates["data_reference"],
             "train": rates["train_fer"] / rates["train_reference"]}
    wall = time.perf_counter() - t_start
    cuda_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    result = {
        "benchmark": "train",
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "torchvision": torchvision.__version__, "device": str(device), "device_name": cuda_name,
                    "torch_threads": torch.get_num_threads(),
                    "load_average_1min": {"start": load_start, "end": _loadavg()}},
        "settings": {"model": args.model, "n": args.n, "source": "SynFER fer2013 (train), PNG files in class folders",
                     "source_image_size": disk["image_size"], "size": args.size, "batch": args.batch, "shift": shift,
                     "hflip": True, "optimizer": "adam", "lr": config.lr, "warmup_steps": args.warmup,
                     "train_steps": args.steps, "data_steps": args.data_steps, "workers": args.workers,
                     "seed": args.seed},
        "reference": {
            "data_images_per_second": rates["data_reference"],
            "train_images_per_second": rates["train_reference"],
            "loader": f"ImageFolder + PIL transforms, DataLoader(batch_size={args.batch}, shuffle=True, "
                      f"num_workers={args.workers}, pin_memory={pin})",
            "transforms": [f"Resize({args.size})", "RandomHorizontalFlip()",
                           f"RandomCrop({args.size}, padding={shift})" if shift else f"CenterCrop({args.size})",
                           "ToTensor()", f"Normalize({list(MEAN)}, {list(STD)})"],
            "precision": "float32", "channels_last": False,
        },
        "fer": {
            "data_images_per_second": rates["data_fer"],
            "train_images_per_second": rates["train_fer"],
            "decode_seconds": decode_seconds,
            "decode_workers": args.workers,
            "cache_bytes": cache_bytes,
            "config": {k: v for k, v in config.to_dict().items()
                       if k in ("batch_size", "input_size", "hflip", "shift", "optimizer", "lr", "precision",
                                "channels_last", "mean", "std", "cpu")},
            "precision": used["precision"], "channels_last": used["channels_last"],
            "model_input_shape": used["input_shape"],
        },
        "ratio": ratio,
        "setup": {"write_png_seconds": disk["write_seconds"], "png_bytes": disk["bytes"]},
        "wall_seconds": wall,
    }

    dev = cuda_name or f"{result['machine']['processor']} CPU"
    print()
    print(f"train throughput: {args.model}, {args.n} faces {disk['image_size']} px -> {args.size} px, batch "
          f"{args.batch}, shift {shift}, on {device} ({dev}), {torch.get_num_threads()} torch threads, "
          f"{args.workers} reference workers; {args.warmup} warm-up steps untimed")
    print(f"{'images/s':<26s}{'reference':>12s}{'fer':>12s}{'fer/reference':>16s}")
    print(f"{'data pipeline alone':<26s}{rates['data_reference']:12.1f}{rates['data_fer']:12.1f}"
          f"{ratio['data']:15.2f}x")
    print(f"{'training':<26s}{rates['train_reference']:12.1f}{rates['train_fer']:12.1f}{ratio['train']:15.2f}x")
    print(f"reference: PIL decode + transforms every epoch, fp32. fer: one-off decode {decode_seconds:.2f} s into a "
          f"{cache_bytes / 2**20:.2f} MiB uint8 cache, then resize/flip/shift on {used['device']}, "
          f"{used['precision']}{', channels-last' if used['channels_last'] else ''}.")
    load = result["machine"]["load_average_1min"]
    print(f"ratio > 1: fer is faster. Wall time {wall:.1f} s; 1-min load average {load['start']} -> {load['end']} "
          f"on {os.cpu_count()} cores (a load above the core count means other processes skewed the rates).")

    path = atomic_write_json(Path(args.out) / "train.json", result)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
