"""GPU check: what the paper profile will cost on the GPU at hand (``benchmarks/gpu_check.sh`` runs it).

    python benchmarks/gpu_check.py --out _build/bench          # one CUDA GPU, a few minutes
    python benchmarks/gpu_check.py --cpu-dry                    # the same path on the CPU, tiny, ~20 s

Four checks, through the code the book trains with (``fer.train.fit``, the chapters' paper
``Setup``, ``train_config`` and ``build_model``), on synthetic uint8 tensors and random
weights (no dataset, no download):

1. **precision**: MSA-Net (paper size) trained ``--precision-steps`` SGD steps from the same
   weights on the same batches twice, fp32 (TF32 off) and bf16 autocast + channels-last (what
   ``fit`` uses on a GPU); the fp32 loss of both models on the training faces afterwards, and
   the mean training loss, must agree within ``--tolerance`` (relative). bf16 keeps 8 bits of
   mantissa (~0.4% per operation); 20 steps compound that into a few tenths of a percent of
   the loss, so 5% flags a broken path (overflow, a layer left in the wrong format), not
   rounding.
2. **training images/s** at ``--size`` px for each chapter's paper model with its paper batch,
   optimiser and loss (all layers trained: the fastest stages are not timed apart): one
   untimed epoch of ``--steps`` steps, then one timed epoch.
3. **data pipeline images/s**: ``fer.data.make_loader`` batches of uint8 faces, moved to the
   GPU and augmented / normalised there (``InputTransform``), from memory (``CachedDataset``)
   and from a disk store (``StreamedDataset``, ``--workers`` loader workers); and SynFER's
   renderer (one core, 224 px).
4. **peak GPU memory** of each model's training (``torch.cuda.max_memory_allocated``).

Writes ``<out>/gpu_check.json`` and prints a table. Exits 3 when no CUDA GPU is visible
(unless ``--cpu-dry``) and 1 when the precision check fails.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from fer.data import CachedDataset, InputTransform, cache_dataset  # noqa: E402
from fer.data.cached import make_loader  # noqa: E402
from fer.experiments import cbam_vgg, manet, mapnet, masked, msanet  # noqa: E402
from fer.losses import BetaCrossEntropy  # noqa: E402
from fer.models import create_model  # noqa: E402
from fer.models.mapnet import mask_forward  # noqa: E402
from fer.train import TrainConfig, fit  # noqa: E402

NO_GPU = ("gpu_check: no CUDA GPU is visible to torch (torch.cuda.is_available() is False): nothing measured. "
          "Run it on a machine with an NVIDIA GPU and a CUDA build of torch, or pass --cpu-dry to check the "
          "script itself on the CPU.")


# =========================================================================== data


def faces(n: int, size: int, *, classes: int = 7, mask: bool = False, seed: int = 0) -> CachedDataset:
    """``n`` random uint8 ``3 x size x size`` faces with labels cycling through ``classes``
    (and a uint8 face mask for MAPNet)."""
    g = torch.Generator().manual_seed(seed)
    tensors = {"image": torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
               "label": torch.arange(n) % classes}
    if mask:
        m = torch.zeros(n, 1, size, size, dtype=torch.uint8)
        m[..., size // 8: -size // 8, size // 6: -size // 6] = 1
        tensors["mask"] = m
    return CachedDataset(tensors, classes=tuple(f"c{i}" for i in range(classes)), source_fingerprint=f"gpu{n}-{size}")


class _Rows(Dataset):
    """A ``CachedDataset`` seen item by item (so ``cache_dataset`` stores it instead of returning it)."""

    def __init__(self, ds: CachedDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.ds.images[i], "label": int(self.ds.labels[i])}

    def fingerprint(self) -> str:
        return "gpu-check-rows:" + self.ds.fingerprint()


# =========================================================================== models


def _paper(module: Any) -> Any:
    return module.Setup.for_profile("paper", root=REPO)


def chapter_cases(size: int, width: float | None = None) -> dict[str, dict[str, Any]]:
    """Each chapter's paper model: ``build``, ``config``, ``fit`` keyword arguments, data keys.

    ``width``: a channel multiplier for every model instead of the paper's (``--cpu-dry``; MAPNet then
    has ResNet-18 trunks, as its ResNet-50 has no width).
    """
    c, m, e, s, x = (_paper(mod) for mod in (cbam_vgg, manet, mapnet, msanet, masked))
    if width is not None:  # MAPNet's ResNet-50 has no width: its ResNet-18 trunk stands in
        c, m, s, x = (dataclasses.replace(setup, width=width) for setup in (c, m, s, x))
        e = dataclasses.replace(e, width=width, backbone="resnet18")
    cases: dict[str, dict[str, Any]] = {}
    build = partial(cbam_vgg.build_model, "vgg16_cbam", input_size=size, width=c.width, weights=None)
    cases["cbam_vgg (vgg16_cbam)"] = {
        "build": build, "config": cbam_vgg.train_config(c, build(), pretrained=False), "fit": {}}
    cases["manet (manet)"] = {
        "build": partial(manet.build_model, "manet", input_size=size, width=m.width),
        "config": manet.train_config(m, model="manet", n_train=1, dataset="raf", pretrained=False,
                                     mask_source="gt").replace(stages=[]),
        "fit": {"output_to_logits": manet.output_to_logits}}
    kw = {**mapnet.row_model_kwargs(e, "wcl"), "img_size": size}
    cases["mapnet (mapnet, wcl)"] = {
        "build": partial(mapnet.build_model, pretrained=False, **kw), "config": mapnet.train_config(e), "mask": True,
        "fit": {"loss_fn": mapnet.make_loss(e, "wcl", {f"c{i}": 100 + 10 * i for i in range(7)}),
                "forward_fn": mask_forward}}
    cases["msanet (msanet)"] = {
        "build": partial(msanet.build_model, "full", input_size=size, width=s.width, hierarchy=s.hierarchy,
                         zero_init_last=s.zero_init_last, pretrained=False),
        "config": msanet.train_config(s).replace(input_size=size),
        "fit": {"loss_fn": BetaCrossEntropy(s.beta), "forward_fn": partial(msanet.five_crop_forward, crop=s.crop)}}
    kwargs = {**masked.model_kwargs(x), "img_size": size}
    cases["masked (fecn)"] = {
        "build": lambda: create_model("fecn", num_classes=4, pretrained=False, **kwargs,
                                      mcn_state=create_model("mcn", num_classes=2, **kwargs).state_dict()),
        "config": masked.train_config(x, "fecn", 0), "classes": 4, "fit": {}}
    for case in cases.values():
        case["config"] = case["config"].replace(input_size=size, num_workers=0, checkpoint_every=1)
    return cases


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_rate(case: dict[str, Any], *, steps: int, batch: int | None, device: torch.device, size: int
               ) -> dict[str, Any]:
    """One untimed and one timed epoch of ``steps`` steps; images/s, peak memory."""
    cfg: TrainConfig = case["config"]
    bs = batch or cfg.batch_size
    cfg = cfg.replace(epochs=2, stages=[], batch_size=bs, drop_last=True, cpu=device.type == "cpu", seed=0,
                      class_weights=None)  # same cost; equation (5) needs every class in the few faces
    ds = faces(steps * bs, size, classes=case.get("classes", 7), mask=case.get("mask", False))
    torch.manual_seed(0)
    model = case["build"]()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    hist = fit(model, ds, None, cfg, progress=False, **case["fit"])
    _sync(device)
    seconds = float(hist[-1]["seconds"])
    return {"batch": bs, "optimizer": cfg.optimizer, "steps": steps, "images_per_s": round(steps * bs / seconds, 1),
            "epoch_seconds": [r["seconds"] for r in hist], "loss": [r["train_loss"] for r in hist],
            "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
            "peak_gpu_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None}


def precision_check(*, steps: int, batch: int, size: int, device: torch.device, tolerance: float,
                    width: float | None = None) -> dict[str, Any]:
    """MSA-Net: ``steps`` steps in fp32 and in bf16 + channels-last from the same start; fp32 losses after."""
    s = _paper(msanet)
    if width is not None:
        s = dataclasses.replace(s, width=width)
    build = partial(msanet.build_model, "full", input_size=size, width=s.width, hierarchy=s.hierarchy,
                    zero_init_last=s.zero_init_last, pretrained=False)
    ds = faces(steps * batch, size, seed=1)
    base = msanet.train_config(s).replace(epochs=1, batch_size=batch, lr=0.01, input_size=size, hflip=False,
                                          drop_last=True, cpu=device.type == "cpu", seed=0)
    out: dict[str, Any] = {"model": "msanet (full)", "steps": steps, "batch": batch, "lr": base.lr}
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # a true fp32 reference
    try:
        for key, prec, cl in (("fp32", "fp32", False), ("bf16_channels_last", "bf16", True)):
            torch.manual_seed(0)
            model = build()
            hist = fit(model, ds, None, base.replace(precision=prec, channels_last=cl), progress=False,
                       forward_fn=partial(msanet.five_crop_forward, crop=1.0))
            model.eval().float().to(memory_format=torch.contiguous_format)
            out[key] = {"train_loss": hist[-1]["train_loss"], "loss_after": _fp32_loss(model, ds, base, device)}
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    a, b = out["fp32"]["loss_after"], out["bf16_channels_last"]["loss_after"]
    ta, tb = out["fp32"]["train_loss"], out["bf16_channels_last"]["train_loss"]
    out["relative_difference"] = abs(a - b) / max(abs(a), 1e-8)
    out["train_relative_difference"] = abs(ta - tb) / max(abs(ta), 1e-8)
    out["tolerance"] = tolerance
    out["bf16_used"] = device.type == "cuda"
    out["ok"] = out["relative_difference"] <= tolerance and out["train_relative_difference"] <= tolerance
    return out


@torch.no_grad()
def _fp32_loss(model: nn.Module, ds: CachedDataset, cfg: TrainConfig, device: torch.device) -> float:
    transform = InputTransform.from_config(cfg)
    total, n = 0.0, 0
    for i in range(0, len(ds), cfg.batch_size):
        batch = transform({"image": ds.images[i:i + cfg.batch_size].to(device),
                           "label": ds.labels[i:i + cfg.batch_size].to(device)})
        logits = model(batch["image"])
        total += float(nn.functional.cross_entropy(logits.float(), batch["label"], reduction="sum"))
        n += len(batch["label"])
    return total / n


# =========================================================================== data pipeline


def pipeline_rate(ds: Dataset, *, batch: int, workers: int, device: torch.device, epochs: int = 2) -> float:
    """Images/s of ``make_loader`` batches moved to ``device`` and augmented / normalised there (last epoch)."""
    transform = InputTransform(hflip=True, shift=8)
    loader = make_loader(ds, batch_size=batch, shuffle=True, seed=0, num_workers=workers, drop_last=False,
                         pin_memory=device.type == "cuda")
    rate = 0.0
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        _sync(device)
        t0, n = time.perf_counter(), 0
        for b in loader:
            b = {k: v.to(device, non_blocking=True) for k, v in b.items() if torch.is_tensor(v)}
            x = transform(b, train=True)["image"]
            n += len(x)
        _sync(device)
        rate = n / (time.perf_counter() - t0)
    return round(rate, 1)


def pipeline(*, n: int, size: int, batch: int, workers: int, device: torch.device) -> dict[str, Any]:
    from fer.data.synfer import throughput

    mem = faces(n, size, seed=2)
    out = {"images": n, "size": size, "batch": batch,
           "memory_images_per_s": pipeline_rate(mem, batch=batch, workers=0, device=device)}
    with tempfile.TemporaryDirectory() as tmp:
        streamed = cache_dataset(_Rows(mem), cache_dir=tmp, memory_budget=1, progress=False, num_workers=0)
        out["streamed_type"] = type(streamed).__name__
        out["streamed_workers"] = workers
        out["streamed_images_per_s"] = pipeline_rate(streamed, batch=batch, workers=workers, device=device)
    out["synfer_render_images_per_s_one_core"] = round(throughput("wild", image_size=size, n=8 if n < 256 else 64),
                                                        1)
    return out


# =========================================================================== main


def _timed(results: dict[str, Any], key: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``results[key] = fn()`` with its wall time (``seconds``); an error is recorded, not raised,
    so that the other checks still report."""
    t0 = time.perf_counter()
    try:
        results[key] = fn()
    except Exception as err:
        results[key] = {"error": f"{type(err).__name__}: {err}"}
    results[key]["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"  {key}: {results[key]['seconds']:.1f} s", flush=True)
    return results[key]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="_build/bench", help="folder for gpu_check.json")
    ap.add_argument("--cpu-dry", action="store_true",
                    help="run every check on the CPU at a tiny scale (2 steps, batch 2, 64 px): tests the script")
    ap.add_argument("--size", type=int, default=None, help="input side in pixels (default 224; --cpu-dry: 64)")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps per model (default 30)")
    ap.add_argument("--batch", type=int, default=None, help="batch for every model (default: each paper's)")
    ap.add_argument("--width", type=float, default=None,
                    help="channel multiplier for every model (default: the paper's; --cpu-dry: 0.125)")
    ap.add_argument("--precision-steps", type=int, default=20)
    ap.add_argument("--tolerance", type=float, default=0.05, help="relative loss difference allowed, bf16 vs fp32")
    ap.add_argument("--pipeline-images", type=int, default=4096)
    ap.add_argument("--workers", type=int, default=4, help="loader workers of the streamed pipeline")
    args = ap.parse_args(argv)

    if args.cpu_dry:
        device = torch.device("cpu")
        size, steps, batch, psteps, pbatch = args.size or 64, args.steps or 2, args.batch or 2, 2, 2
        n_pipe, workers, width = 64, min(args.workers, 2), args.width or 0.125
    else:
        if not torch.cuda.is_available():
            print(NO_GPU, file=sys.stderr)
            return 3
        device = torch.device("cuda")
        size, steps, batch, psteps, pbatch = args.size or 224, args.steps or 30, args.batch, args.precision_steps, 32
        n_pipe, workers, width = args.pipeline_images, args.workers, args.width
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "cuda": torch.version.cuda, "size": size, "width": width or "paper",
        "cpu_dry": args.cpu_dry}
    t0 = time.perf_counter()
    print(f"gpu_check on {results['device']} ({'CPU dry run' if args.cpu_dry else 'CUDA'}), {size} px", flush=True)
    prec = _timed(results, "precision", lambda: precision_check(steps=psteps, batch=pbatch, size=size, device=device,
                                                                tolerance=args.tolerance, width=width))
    training: dict[str, Any] = {}
    for name, case in chapter_cases(size, width).items():
        _timed(training, name, lambda case=case: train_rate(case, steps=steps, batch=batch, device=device, size=size))
    results["training"] = training
    _timed(results, "pipeline", lambda: pipeline(n=n_pipe, size=size, batch=batch or 128, workers=workers,
                                                 device=device))
    results["peak_gpu_GiB"] = (round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda"
                               else None)
    results["total_seconds"] = round(time.perf_counter() - t0, 1)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("gpu_check_cpu_dry.json" if args.cpu_dry else "gpu_check.json")
    path.write_text(json.dumps(results, indent=1))
    _report(results, path)
    if "error" in prec or not prec.get("ok"):
        print(f"gpu_check: the bf16 + channels-last check FAILED: {json.dumps(prec)}", file=sys.stderr)
        return 1
    return 0


def _report(results: dict[str, Any], path: Path) -> None:
    p = results["precision"]
    if "error" in p:
        print(f"precision: {p['error']}")
    else:
        print(f"precision ({p['model']}, {p['steps']} steps, batch {p['batch']}): fp32 loss "
              f"{p['fp32']['loss_after']:.4f}, bf16 + channels-last {p['bf16_channels_last']['loss_after']:.4f} "
              f"(relative difference {p['relative_difference']:.2%}, tolerance {p['tolerance']:.0%}): "
              f"{'ok' if p['ok'] else 'FAILED'}")
    print(f"{'model':28s} {'batch':>5s} {'images/s':>9s} {'peak GiB':>8s}")
    for name, r in results["training"].items():
        if "error" in r:
            print(f"{name:28s} error: {r['error']}")
        else:
            print(f"{name:28s} {r['batch']:5d} {r['images_per_s']:9.1f} {r['peak_gpu_GiB'] or '-':>8}")
    d = results["pipeline"]
    if "error" in d:
        print(f"data pipeline: {d['error']}")
    else:
        print(f"data pipeline ({d['size']} px, batch {d['batch']}): in memory {d['memory_images_per_s']:.0f} images/s, "
              f"from disk ({d['streamed_type']}, {d['streamed_workers']} workers) {d['streamed_images_per_s']:.0f} "
              f"images/s; SynFER renders {d['synfer_render_images_per_s_one_core']:.0f} images/s on one core")
    print(f"peak GPU memory {results['peak_gpu_GiB']} GiB; {results['total_seconds']:.0f} s in all; wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
