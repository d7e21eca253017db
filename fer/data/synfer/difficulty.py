"""How hard is each SynFER variant? A small CNN, trained briefly, tells.

This is SynFER's own fitness check (is ``clean`` easier than ``wild``, and
``occluded`` harder again, all far above chance?), deliberately independent of
the paper models and of :mod:`fer.train`: a four-block CNN, Adam, a few epochs
on images rendered once into memory.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from ..._dry_run import EVAL_BATCHES as DRY_EVAL_BATCHES
from ..._dry_run import STEPS as DRY_STEPS
from ..._dry_run import dry_run
from ..._progress import bar_disabled

__all__ = ["SmallCNN", "materialize", "fit_probe", "evaluate_probe", "ProbeResult", "difficulty_table"]


class SmallCNN(nn.Module):
    """Four conv-BN-ReLU-pool blocks, global average pooling, a linear classifier."""

    def __init__(self, num_classes: int = 7, in_chans: int = 3, width: int = 16) -> None:
        super().__init__()
        chans = [in_chans, width, 2 * width, 4 * width, 8 * width]
        blocks = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            blocks += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(chans[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _collate(batch: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([b["image"] for b in batch]), torch.tensor([b["label"] for b in batch])


def materialize(ds: Dataset, *, batch_size: int = 128, num_workers: int = 0, progress: bool = True,
                desc: str = "render") -> tuple[torch.Tensor, torch.Tensor]:
    """Render a whole dataset into memory: uint8 images (N x 3 x H x W) and labels."""
    loader = DataLoader(ds, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    xs, ys = [], []
    for x, y in tqdm(loader, desc=desc, disable=bar_disabled(progress), leave=False):
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 127.5) - 1.0


@dataclass
class ProbeResult:
    """Scores of a probe on one test set."""

    accuracy: float
    mean_class_accuracy: float
    confusion: np.ndarray


def fit_probe(train: tuple[torch.Tensor, torch.Tensor], *, num_classes: int, epochs: int = 5,
              batch_size: int = 64, lr: float = 3e-3, width: int = 16, seed: int = 0, progress: bool = True,
              desc: str = "probe", device: str | torch.device | None = None) -> tuple[SmallCNN, float]:
    """Train :class:`SmallCNN` on (images, labels); returns the model and the seconds it took.

    Adam with a one-cycle schedule, random horizontal flips; deterministic for a
    given seed on CPU. ``device`` defaults to CUDA when available. In the book's dry run
    (``FER_DRY_RUN=1``) it stops after :data:`fer._dry_run.STEPS` steps.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = SmallCNN(num_classes, in_chans=train[0].shape[1], width=width).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x_tr, y_tr = train
    n = len(y_tr)
    steps = epochs * ((n + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1))
    t0 = time.perf_counter()
    limit = DRY_STEPS if dry_run() else None  # the book's dry run: a few steps prove the path
    bar = tqdm(total=steps if limit is None else min(steps, limit), desc=desc, disable=bar_disabled(progress),
               leave=False)
    model.train()
    done = 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for k in range(0, n, batch_size):
            if limit is not None and done >= limit:
                break
            done += 1
            idx = perm[k:k + batch_size]
            x = _normalise(x_tr[idx])
            flip = torch.rand(len(idx), generator=g) < 0.5
            x[flip] = x[flip].flip(-1)
            loss = F.cross_entropy(model(x.to(device)), y_tr[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    model.eval()
    return model, time.perf_counter() - t0


@torch.no_grad()
def evaluate_probe(model: nn.Module, test: tuple[torch.Tensor, torch.Tensor], num_classes: int) -> ProbeResult:
    """Accuracy, mean per-class accuracy and confusion matrix (rows: true class)."""
    model.eval()
    device = next(model.parameters()).device
    pred = torch.cat([model(_normalise(test[0][k:k + 256]).to(device)).argmax(1).cpu()
                      for k in range(0, len(test[1]), 256)]).numpy()
    true = test[1].numpy()
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(conf, (true, pred), 1)
    per_class = conf.diagonal() / np.maximum(conf.sum(1), 1)
    present = conf.sum(1) > 0
    return ProbeResult(float((pred == true).mean()), float(per_class[present].mean()), conf)


def difficulty_table(settings: dict[str, Sequence[str]], *, n_train: int, n_test: int, image_size: int,
                     epochs: int, seed: int = 0, num_workers: int = 0, progress: bool = True, **probe_kw):
    """Train one probe per training variant and score it on each listed test variant.

    ``settings`` maps a training variant to the variants it is tested on, e.g.
    ``{"clean": ["clean"], "wild": ["wild", "occluded"]}`` (the last is the
    FED-RO protocol: train in the wild, test on occluded faces). Training and
    test sets are class-balanced, so chance is 1 / num_classes and the numbers
    measure how hard the faces are, not how skewed the classes. Returns a pandas
    DataFrame with one row per (train, test) pair. In the book's dry run it renders only
    the faces the capped probe uses.
    """
    import pandas as pd

    from .dataset import SynFER

    if dry_run():  # render no more faces than the capped probe trains on and scores
        batch = int(probe_kw.get("batch_size", 64))
        n_train, n_test = min(n_train, DRY_STEPS * batch), min(n_test, DRY_EVAL_BATCHES * batch)

    def render(variant: str, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        ds = SynFER(variant, split, n=n, seed=seed, image_size=image_size, class_balance="uniform",
                    with_relevance=False)
        return materialize(ds, num_workers=num_workers, progress=progress, desc=f"render {variant}/{split}")

    tests: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    records = []
    for tr, test_variants in settings.items():
        train = render(tr, "train", n_train)
        num_classes = int(train[1].max() + 1)
        model, seconds = fit_probe(train, num_classes=num_classes, epochs=epochs, seed=seed, progress=progress,
                                   desc=f"probe {tr}", **probe_kw)
        for te in test_variants:
            if te not in tests:
                tests[te] = render(te, "test", n_test)
            res = evaluate_probe(model, tests[te], num_classes)
            records.append({"train": tr, "test": te, "accuracy": res.accuracy,
                            "mean class accuracy": res.mean_class_accuracy, "chance": 1.0 / num_classes,
                            "train images": len(train[1]), "test images": len(tests[te][1]),
                            "train seconds": seconds})
    return pd.DataFrame.from_records(records)
