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

__all__ = ["SmallCNN", "materialize", "train_probe", "ProbeResult", "difficulty_table"]


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
    for x, y in tqdm(loader, desc=desc, disable=not progress, leave=False):
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys)


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return (x.float() / 127.5) - 1.0


@dataclass
class ProbeResult:
    """Outcome of one probe run."""

    accuracy: float
    mean_class_accuracy: float
    confusion: np.ndarray
    train_seconds: float
    history: list[float]


def train_probe(train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor], *,
                num_classes: int, epochs: int = 5, batch_size: int = 64, lr: float = 3e-3, width: int = 16,
                seed: int = 0, progress: bool = True, desc: str = "probe") -> ProbeResult:
    """Train :class:`SmallCNN` on ``train`` (images, labels) and score it on ``test``.

    Augmentation is a random horizontal flip. Deterministic for a given seed on CPU.
    """
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = SmallCNN(num_classes, in_chans=train[0].shape[1], width=width)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    x_tr, y_tr = train
    n = len(y_tr)
    steps = epochs * ((n + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1))
    history = []
    t0 = time.perf_counter()
    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        total = 0.0
        for k in range(0, n, batch_size):
            idx = perm[k:k + batch_size]
            x = _normalise(x_tr[idx])
            flip = torch.rand(len(idx), generator=g) < 0.5
            x[flip] = x[flip].flip(-1)
            loss = F.cross_entropy(model(x), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss) * len(idx)
            bar.update(1)
        history.append(total / n)
    bar.close()
    seconds = time.perf_counter() - t0
    model.eval()
    preds = []
    with torch.no_grad():
        for k in range(0, len(test[1]), 256):
            preds.append(model(_normalise(test[0][k:k + 256])).argmax(1))
    pred = torch.cat(preds).numpy()
    true = test[1].numpy()
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(conf, (true, pred), 1)
    per_class = conf.diagonal() / np.maximum(conf.sum(1), 1)
    present = conf.sum(1) > 0
    return ProbeResult(float((pred == true).mean()), float(per_class[present].mean()), conf, seconds, history)


def difficulty_table(rows: Sequence[tuple[str, str, str]], *, n_train: int, n_test: int, image_size: int,
                     epochs: int, seed: int = 0, num_workers: int = 0, progress: bool = True, **probe_kw):
    """Train a probe per (label, train variant, test variant) and tabulate accuracies.

    Test sets are class-balanced, so that chance is 1 / num_classes and accuracy
    differences reflect difficulty rather than the class prior; training sets use
    each variant's dataset proportions. Returns a pandas DataFrame.
    """
    import pandas as pd

    from .dataset import SynFER

    cache: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def get(variant: str, split: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = (variant, split)
        if key not in cache:
            balance = "uniform" if split == "test" else "dataset"
            ds = SynFER(variant, split, n=n, seed=seed, image_size=image_size, class_balance=balance,
                        with_relevance=False)
            cache[key] = materialize(ds, num_workers=num_workers, progress=progress, desc=f"render {variant}/{split}")
        return cache[key]

    records = []
    for label, tr, te in rows:
        train = get(tr, "train", n_train)
        test = get(te, "test", n_test)
        num_classes = int(max(train[1].max(), test[1].max()) + 1)
        res = train_probe(train, test, num_classes=num_classes, epochs=epochs, seed=seed, progress=progress,
                          desc=f"probe {label}", **probe_kw)
        records.append({"setting": label, "train": tr, "test": te, "accuracy": res.accuracy,
                        "mean class accuracy": res.mean_class_accuracy, "chance": 1.0 / num_classes,
                        "train seconds": res.train_seconds})
    return pd.DataFrame.from_records(records)
