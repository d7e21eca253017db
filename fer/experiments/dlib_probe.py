"""What a network trained on real faces gives on SynFER: dlib's face ResNet, probed three ways.

dlib's face-recognition ResNet (:mod:`fer.models.dlib_resnet`) was trained on about 3
million photographs of 7,485 people to tell people apart, never on expressions and never
on SynFER. Its weights load offline, so it is the one real face-pretrained network the
SynFER profiles have. This module measures how much of that pretraining carries over to
SynFER's expressions, against the same architecture without it (:func:`probe_table`):

``linear probe``
    dlib's weights frozen; only a linear classifier on the pooled 256-d features trains.
    What the real-face features already separate. The features are computed once, and the
    classifier trains on them for :data:`LINEAR_EPOCHS` passes (a linear model on fixed
    features converges in seconds; see the note below).
``fine-tuned``
    dlib's weights as the start, every layer trained (at ``lr * finetune_scale``, as
    the VGG16 + CBAM chapter fine-tunes all layers at a tenth of its rate).
``random init``
    the same network from random weights, every layer trained at ``lr``: what the
    pretraining is worth over no pretraining at the same budget.

All three see the same faces, their classes drawn with equal probability (SynFER
``variant``, 150 px, dlib's input side, normalised as dlib's input layer does), with random flips, Adam and the same
epochs, through :func:`fer.train.fit`; test faces are drawn the same way from other
identities (SynFER's test split).

.. note::
   **Framing.** dlib's weights expect its aligned 150 px chips
   (``dlib.get_face_chip(..., padding=0.25)``). Here each face is SynFER's own frame at
   150 px, which already centres the face with a margin, not a re-aligned chip: poses
   and head sizes vary as SynFER draws them (``wild`` turns heads up to its yaw limit).
   The probe therefore measures the network as the chapters would use it on SynFER.

.. note::
   **The linear probe trains to convergence on cached features.** Trained like the other
   rows (``epochs`` passes of the whole network, with flips), the classifier had not
   converged: on 1,400 clean faces it read 22.7 % after 2 epochs and 45.3 % after 3
   (2026-12-03), which measured the budget, not the features. Frozen features do not
   change, so they are computed once (without flips, from the unflipped faces) and only
   the classifier trains, with Adam at ``lr`` for :data:`LINEAR_EPOCHS` passes in batches
   of ``batch_size``: the usual linear-probe protocol, and cheaper than one pass of the
   network per epoch.

.. note::
   **The random start has no batch norm.** dlib's ``affine`` layers are batch norms
   frozen after training (:mod:`fer.models.dlib_resnet`); from random weights they are
   plain per-channel scales, so the ``random init`` row trains a ResNet without
   normalisation, which learns slowly. Part of the gap between ``fine-tuned`` and
   ``random init`` is that, not only dlib's pretraining; the page says so.
"""
from __future__ import annotations

import time
from typing import Any

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .._dry_run import EVAL_BATCHES as DRY_EVAL_BATCHES
from .._dry_run import STEPS as DRY_STEPS
from .._dry_run import dry_run
from .._progress import bar_disabled
from ..data.cached import CachedDataset, bar_kwargs, cache_dataset
from ..data.synfer import SynFER
from ..data.transforms import model_input
from ..metrics import evaluation_metrics
from ..models import create_model
from ..train import Stage, TrainConfig, evaluate, fit

__all__ = ["PROBE_ROWS", "DLIB_SIDE", "LINEAR_EPOCHS", "probe_data", "probe_config", "build_probe_model",
           "pooled_features", "train_probe", "probe_table", "probe_text"]

#: The three ways the network is trained (module docstring), in table order.
PROBE_ROWS: tuple[str, ...] = ("linear probe", "fine-tuned", "random init")
#: dlib's input side (its weights were trained on 150 x 150 chips).
DLIB_SIDE: int = 150
#: Passes over the cached features that train the linear probe's classifier (module note).
LINEAR_EPOCHS: int = 100
_HEAD = "head"  # the classifier's parameter prefix in fer.models.dlib_resnet


def _check_row(row: str) -> None:
    if row not in PROBE_ROWS:
        raise ValueError(f"row must be one of {PROBE_ROWS}, got {row!r}")


def probe_data(variant: str, split: str, *, n: int, seed: int, image_size: int = DLIB_SIDE,
               progress: bool = True) -> CachedDataset:
    """``n`` SynFER ``variant`` faces of ``split``, classes drawn with equal probability, rendered once."""
    ds = SynFER(variant, split, n=n, seed=seed, image_size=image_size, class_balance="uniform",
                with_relevance=False)
    return cache_dataset(ds, progress=progress, desc=f"render {variant}/{split} ({image_size} px)")


def probe_config(row: str, model: nn.Module, *, epochs: int, lr: float = 1e-3, finetune_scale: float = 0.1,
                 batch_size: int = 32, seed: int = 0, image_size: int = DLIB_SIDE) -> TrainConfig:
    """Row ``row``'s training of ``model`` (:func:`build_probe_model`): Adam, flips, the
    normalisation its ``pretrained_cfg`` names (dlib's input layer); the linear probe trains
    only the classifier (one :class:`fer.train.Stage` with ``trainable=["head"]``)."""
    _check_row(row)
    cfg = model.pretrained_cfg
    rate = lr * finetune_scale if row == "fine-tuned" else lr
    stages = [Stage(epochs=epochs, trainable=[_HEAD], name="head")] if row == "linear probe" else []
    return TrainConfig(epochs=epochs, batch_size=batch_size, optimizer="adam", lr=rate, hflip=True,
                       input_size=image_size, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), seed=seed,
                       stages=stages, cpu=not torch.cuda.is_available())


def build_probe_model(row: str, *, num_classes: int = 7, weights_path: str | None = None) -> nn.Module:
    """dlib's ResNet with a fresh classifier: dlib's weights for the first two rows, random for the last."""
    _check_row(row)
    return create_model("dlib_resnet", pretrained=row != "random init", num_classes=num_classes,
                        weights_path=weights_path)


@torch.no_grad()
def pooled_features(model: nn.Module, ds: CachedDataset, config: TrainConfig, *, batch_size: int = 64,
                    progress: bool = False, desc: str = "features") -> torch.Tensor:
    """``model``'s pooled features (``forward_head(..., pre_logits=True)``) of every face of
    ``ds``, in eval mode, with ``config``'s input transform (no augmentation): ``N x D``."""
    model.eval()
    device = next(model.parameters()).device
    images = ds.images
    steps = range(0, len(images), batch_size)
    out = [model.forward_head(model.forward_features(model_input(images[i:i + batch_size], config).to(device)),
                              pre_logits=True).cpu()
           for i in tqdm(steps, desc=desc, disable=bar_disabled(progress), **bar_kwargs())]
    return torch.cat(out) if out else torch.zeros(0, 0)


def _linear_probe(model: nn.Module, train: CachedDataset, test: CachedDataset, config: TrainConfig, *, lr: float,
                  batch_size: int, seed: int, progress: bool) -> dict[str, Any]:
    """Train ``model``'s classifier on its frozen pooled features of ``train`` (computed once)
    for :data:`LINEAR_EPOCHS` passes; score it on ``test``'s features."""
    model.to("cpu" if config.cpu else "cuda")
    x_train = pooled_features(model, train, config, progress=progress, desc="features (train)")
    y_train = train.labels.long()
    fc = model.get_classifier().cpu()
    opt = torch.optim.Adam(fc.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    with torch.enable_grad():
        for _ in range(LINEAR_EPOCHS):
            for idx in torch.randperm(len(x_train), generator=g).split(batch_size):
                opt.zero_grad()
                nn.functional.cross_entropy(fc(x_train[idx]), y_train[idx]).backward()
                opt.step()
    with torch.no_grad():
        logits = fc(pooled_features(model, test, config, progress=progress, desc="features (test)"))
    return evaluation_metrics(logits, test.labels.long())


def train_probe(row: str, train: CachedDataset, test: CachedDataset, *, epochs: int, lr: float = 1e-3,
                finetune_scale: float = 0.1, batch_size: int = 32, seed: int = 0, progress: bool = True,
                weights_path: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Train row ``row`` on ``train``; return the model and its test scores and seconds.

    ``fine-tuned`` and ``random init`` train the whole network for ``epochs`` through
    :func:`fer.train.fit`; ``linear probe`` trains only the classifier, on features computed
    once, for :data:`LINEAR_EPOCHS` passes (module note; ``epochs`` does not apply)."""
    torch.manual_seed(seed)
    model = build_probe_model(row, num_classes=len(train.classes or []) or 7, weights_path=weights_path)
    side = int(train[0]["image"].shape[-1])
    config = probe_config(row, model, epochs=epochs, lr=lr, finetune_scale=finetune_scale, batch_size=batch_size,
                          seed=seed, image_size=side)
    start = time.perf_counter()
    if row == "linear probe":
        res = _linear_probe(model, train, test, config, lr=lr, batch_size=batch_size, seed=seed, progress=progress)
        seconds = time.perf_counter() - start
    else:
        fit(model, train, None, config, progress=progress)
        seconds = time.perf_counter() - start
        res = evaluate(model, test, config, progress=progress, desc=f"test {row}")
    return model, {"accuracy": float(res["accuracy"]), "mean class accuracy": float(res["mean_class_accuracy"]),
                   "train seconds": seconds}


def probe_table(*, variant: str = "clean", n_train: int, n_test: int, epochs: int, lr: float = 1e-3,
                finetune_scale: float = 0.1, batch_size: int = 32, seed: int = 0, image_size: int = DLIB_SIDE,
                progress: bool = True) -> pd.DataFrame:
    """One row per :data:`PROBE_ROWS` entry: start, what trains, accuracy, mean per-class
    accuracy, chance (1/7: classes are drawn with equal probability), train seconds, images.
    In the book's dry run it renders only the faces the capped runs train on and score
    (as :func:`fer.data.synfer.difficulty.difficulty_table` does)."""
    if dry_run():
        n_train, n_test = min(n_train, DRY_STEPS * batch_size), min(n_test, DRY_EVAL_BATCHES * batch_size)
    train = probe_data(variant, "train", n=n_train, seed=seed, image_size=image_size, progress=progress)
    test = probe_data(variant, "test", n=n_test, seed=seed, image_size=image_size, progress=progress)
    records = []
    for row in PROBE_ROWS:
        _, scores = train_probe(row, train, test, epochs=epochs, lr=lr, finetune_scale=finetune_scale,
                                batch_size=batch_size, seed=seed, progress=progress)
        records.append({"row": row, "start": "random" if row == "random init" else "dlib (real faces)",
                        "trains": "classifier only (cached features)" if row == "linear probe" else "every layer",
                        **scores, "chance": 1.0 / 7, "variant": variant, "train images": len(train),
                        "test images": len(test), "epochs": LINEAR_EPOCHS if row == "linear probe" else epochs})
    return pd.DataFrame.from_records(records)


def probe_text(table: pd.DataFrame) -> dict[str, str]:
    """The page's sentences about :func:`probe_table`'s ``table`` (one seed: it states the
    numbers and their differences, and claims no significance)."""
    acc = {r: float(table.loc[table["row"] == r, "accuracy"].iloc[0]) for r in PROBE_ROWS}
    chance = float(table["chance"].iloc[0])
    gain = acc["fine-tuned"] - acc["random init"]
    if gain > 0:
        compare = f"{gain * 100:.1f} points above"
    elif gain < 0:
        compare = f"{-gain * 100:.1f} points below"
    else:
        compare = "level with"
    linear = acc["linear probe"] - chance
    return {
        "finetune_vs_random": (f"Fine-tuned from dlib's weights the network reaches {acc['fine-tuned']:.1%}, "
                               f"{compare} the same network trained from random weights "
                               f"({acc['random init']:.1%}), from one seed each"),
        "linear_vs_chance": (f"dlib's frozen features, read by a linear classifier, reach "
                             f"{acc['linear probe']:.1%}, {linear * 100:+.1f} points from chance "
                             f"({chance:.1%})"),
    }
