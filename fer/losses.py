"""The papers' losses: class weights from training counts, class-weighted cross-entropy and
each paper's own loss.

Papers and equations:

* A. Ghimire, S. Shrestha and Y. Ibrahim, *Facial Expression Recognition Using
  Attention Technique* (book key ``cbam_vgg``), equation (5): each class's weight is
  ``N / (K * N_c)`` -- the training-set size over the number of classes times the
  class's count, so a balanced set gets weights of 1
  (:func:`inverse_frequency_weights`). The weights are handed to Keras's
  ``fit(class_weight=...)`` with categorical cross-entropy
  (:class:`ClassWeightedCrossEntropy`, ``normalize="batch"``).
* Y. Ju and X. Zhao, *Mask-based Attention Parallel Network* (MAPNet, book key
  ``mapnet``), equations (4)-(5): cross-entropy whose term for a sample of class
  ``i`` is scaled by ``omega_i = (N_avg / N_i) ** (1 / gamma)``, ``N_avg`` the mean
  class count and ``0.5 <= gamma <= 3`` (:func:`root_inverse_weights`;
  :meth:`ClassWeightedCrossEntropy.from_counts` with ``scheme="root"``).
  Equation (6), ``L_F = u * L_M + v * L_A`` with ``u = v = 0.5``, combines the
  losses of MAPNet's two branches (:class:`MapNetLoss`, on a
  :class:`fer.models.mapnet.MapNetOutput`).
* Y. Gan et al., *Multiple Attention Network* (MANet, ``manet``), equations (2)-(3):
  the Euclidean loss between RASnet's region masks and the ground truth (:func:`mask_loss`).
* C. Ghadai and D. Patra, *Multi-branch Multi-Scale Attention Network* (MSA-Net,
  ``msanet``), equation (2): cross-entropy times ``beta = 0.6`` (:class:`BetaCrossEntropy`).
* S. Hayashi et al., *FER with Face Mask using Attention* (``masked``), equation (1): the
  Attention Branch Network's ``L_att + L_per`` (:func:`abn_loss`, on a
  :class:`fer.models.masked.AbnOutput`).

The losses that take a model's output class import that model's module when called,
so importing this module (as :mod:`fer.train` does) loads no model.

Counts may be a sequence, a ``{class: count}`` mapping (its order is kept, e.g. a
dataset's ``class_counts``), a numpy array or a tensor; weights come back as float32
tensors in the same order. A class without training samples has no finite weight and
is an error naming it.

Example::

    from fer.losses import ClassWeightedCrossEntropy
    loss = ClassWeightedCrossEntropy.from_counts(train_ds.class_counts)            # eq. (5), Keras mean
    loss = ClassWeightedCrossEntropy.from_counts(counts, scheme="root", gamma=2.0)  # MAPNet eq. (5)
    fit(model, train_ds, val_ds, config, loss_fn=loss)  # fer.train adapts torch losses to (outputs, batch)
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:  # the models import on use: fer.train imports this module and needs none of them
    from .models.mapnet import MapNetOutput
    from .models.masked import AbnOutput

__all__ = [
    "BETA",
    "GAMMA_RANGE",
    "WEIGHT_SCHEMES",
    "BetaCrossEntropy",
    "ClassWeightedCrossEntropy",
    "Counts",
    "MapNetLoss",
    "abn_loss",
    "inverse_frequency_weights",
    "mask_loss",
    "root_inverse_weights",
]

#: Training samples per class: a sequence, a ``{class: count}`` mapping, an array or a tensor.
Counts = Sequence[float] | Mapping[Any, float] | np.ndarray | torch.Tensor

#: ``scheme`` names accepted by :meth:`ClassWeightedCrossEntropy.from_counts`.
WEIGHT_SCHEMES = ("inverse", "root")

#: MAPNet's range for ``gamma`` (its equation (5)).
GAMMA_RANGE = (0.5, 3.0)

#: MSA-Net's equation (2) scale, "empirically set as 0.6" (:class:`BetaCrossEntropy`).
BETA = 0.6


def _as_counts(counts: Counts, fn: str, equation: str) -> torch.Tensor:
    """``counts`` as a 1-D float64 tensor; errors name the offending classes."""
    names: list[Any] | None = None
    if isinstance(counts, Mapping):
        names = list(counts.keys())
        counts = list(counts.values())
    if isinstance(counts, torch.Tensor):
        counts = counts.detach().cpu().numpy()
    try:
        n = torch.as_tensor(np.asarray(counts, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise TypeError(f"{fn}: counts must be numbers, one per class (a sequence, a {{class: count}} mapping, "
                        f"an array or a tensor); got {counts!r}") from err
    if n.ndim != 1 or len(n) == 0:
        raise ValueError(f"{fn} needs one count per class (a 1-D sequence), got shape {tuple(n.shape)}")

    def which(mask: torch.Tensor) -> list[Any]:
        idx = torch.nonzero(mask).flatten().tolist()
        return [names[i] for i in idx] if names is not None else idx

    if not torch.isfinite(n).all():
        raise ValueError(f"{fn}: class(es) {which(~torch.isfinite(n))} have a non-finite count; pass the number "
                         f"of training samples of each class")
    if (n < 0).any():
        raise ValueError(f"{fn}: class(es) {which(n < 0)} have a negative count; pass the number of training "
                         f"samples of each class")
    if (n == 0).any():
        raise ValueError(f"{fn}: class(es) {which(n == 0)} have no training samples, so {equation} gives an "
                         f"infinite weight; drop those classes or give explicit class weights")
    return n


def inverse_frequency_weights(counts: Counts) -> torch.Tensor:
    """Equation (5) of the VGG16 + CBAM paper: ``w_c = N / (K * N_c)``.

    Args:
        counts: ``N_c``, the training samples of each class (see :data:`Counts`).
            ``N`` is their sum and ``K`` their number.

    Returns:
        float32 weights, one per class in the order given; 1 everywhere for a
        balanced set. On the paper's FER2013 training split (28,709 images) disgust,
        with 436, gets ``28709 / (7 * 436) = 9.41`` and happy, with 7,215, ``0.57``.

    Raises:
        ValueError: a class with a zero (or negative) count, named by its key or index.
    """
    n = _as_counts(counts, "inverse_frequency_weights", "equation (5)")
    return (n.sum() / (len(n) * n)).to(torch.float32)


def root_inverse_weights(counts: Counts, gamma: float) -> torch.Tensor:
    """MAPNet's equation (5): ``omega_i = (N_avg / N_i) ** (1 / gamma)``.

    Args:
        counts: ``N_i``, the training samples of each class (see :data:`Counts`);
            ``N_avg`` is their mean.
        gamma: the root, ``0.5 <= gamma <= 3`` as the paper states. ``gamma = 1``
            gives ``N_avg / N_i`` (that is, equation (5) of the VGG16 + CBAM paper,
            :func:`inverse_frequency_weights`); larger values flatten the weights
            towards 1, smaller ones sharpen them. The paper does not report the
            value it used.

    Returns:
        float32 weights, one per class in the order given; 1 for a class of average size.

    Raises:
        ValueError: ``gamma`` outside [0.5, 3]; a class with a zero (or negative) count.
    """
    lo, hi = GAMMA_RANGE
    try:
        g = float(gamma)
    except (TypeError, ValueError) as err:
        raise TypeError(f"root_inverse_weights: gamma must be a number in [{lo}, {hi}], got {gamma!r}") from err
    if not (math.isfinite(g) and lo <= g <= hi):
        raise ValueError(f"root_inverse_weights: gamma must be in [{lo}, {hi}] as MAPNet's equation (5) states, "
                         f"got {gamma!r}; gamma=1 gives N_avg / N_i, larger values flatten the weights")
    n = _as_counts(counts, "root_inverse_weights", "MAPNet's equation (5)")
    return (n.mean() / n).pow(1.0 / g).to(torch.float32)


def _weights_for(counts: Counts, scheme: str, gamma: float | None) -> torch.Tensor:
    if scheme == "inverse":
        if gamma is not None:
            raise ValueError("gamma applies to scheme='root' (MAPNet) only; drop it or use scheme='root'")
        return inverse_frequency_weights(counts)
    if scheme == "root":
        if gamma is None:
            raise ValueError("scheme='root' (MAPNet's equation (5)) needs gamma=..., a value in [0.5, 3]")
        return root_inverse_weights(counts, gamma)
    raise ValueError(f"unknown class-weight scheme {scheme!r}; choose from {list(WEIGHT_SCHEMES)}")


class ClassWeightedCrossEntropy(nn.modules.loss._WeightedLoss):
    """Categorical cross-entropy with one weight per class, reduced as Keras or as PyTorch does.

    ``forward(logits, target)`` takes what :class:`torch.nn.CrossEntropyLoss` takes
    with class-index targets: logits ``(B, K)`` (or ``(B, K, d1, ...)``) and int64
    targets ``(B,)`` (or ``(B, d1, ...)``). Being a torch loss, an instance can be
    passed as ``loss_fn`` to :func:`fer.train.fit`, which adapts it to
    ``loss_fn(outputs, batch)``. The weights follow the logits' device.

    Args:
        weight: one weight per class (a tensor or sequence); ``None``: all 1, plain
            cross-entropy. Build it from training counts with :meth:`from_counts`.
        normalize: how ``reduction="mean"`` averages, and how a class weight meets
            label smoothing:

            * ``"batch"`` (default) -- Keras ``fit(class_weight=...)``, which the
              VGG16 + CBAM paper used: every sample's whole loss is scaled by the
              weight of its class and the sum is divided by the number of samples,
              ``sum_i w[y_i] * CE_i / B``. With label smoothing ``CE_i`` is the
              cross-entropy against the smoothed target, as in Keras.
            * ``"weights"`` -- PyTorch's weighted mean, exactly
              ``nn.CrossEntropyLoss(weight=...)``: ``sum_i w[y_i] * CE_i / sum_i w[y_i]``;
              with label smoothing PyTorch weights each class's term of the
              smoothed target by that class's weight.

            Without label smoothing the two differ only by the factor
            ``sum_i w[y_i] / B``, which changes from batch to batch: ``"weights"``
            keeps the loss on the scale of an unweighted cross-entropy and shrinks
            the per-sample effect of the weights within a batch, ``"batch"`` keeps
            the weights' absolute scale, so an Adam or SGD learning rate tuned in
            Keras carries over. ``reduction="sum"`` and ``"none"`` do not divide at all.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-element losses).
        label_smoothing: in [0, 1], as in :class:`torch.nn.CrossEntropyLoss`.
        ignore_index: a target value that contributes no loss and is not counted in
            either mean.

    .. note::
       **Which mean Keras takes.** Keras turns ``class_weight`` into a per-sample
       ``sample_weight`` (the weight of each sample's label) and reduces the
       weighted losses with its default ``"sum_over_batch_size"``: the sum divided
       by the number of loss elements, not by the sum of the weights (tf.keras 2.x
       ``losses_utils.compute_weighted_loss`` / ``Reduction.SUM_OVER_BATCH_SIZE``;
       Keras 3 ``keras.losses.loss.reduce_values``, whose divide-by-weights option
       is the opt-in ``reduction="mean_with_sample_weight"``; Keras 2.2's
       ``weighted_masked_objective`` divided by the number of non-zero weights,
       the same thing for positive class weights). PyTorch's
       ``CrossEntropyLoss(weight=...)`` divides by the sum of the weights. They
       differ, so ``normalize`` chooses, and defaults to the Keras mean the paper
       trained with. MAPNet (PyTorch) writes the per-sample loss of its equation (4)
       but not the batch reduction; pass ``normalize="weights"`` for PyTorch's.
    """

    __constants__: ClassVar[list[str]] = ["ignore_index", "reduction", "label_smoothing", "normalize"]
    NORMALIZE: ClassVar[tuple[str, ...]] = ("batch", "weights")

    def __init__(self, weight: torch.Tensor | Sequence[float] | None = None, *,
                 normalize: Literal["batch", "weights"] = "batch",
                 reduction: Literal["mean", "sum", "none"] = "mean",
                 label_smoothing: float = 0.0, ignore_index: int = -100) -> None:
        if weight is not None:
            weight = torch.as_tensor(np.asarray(weight.detach().cpu() if isinstance(weight, torch.Tensor) else weight,
                                                dtype=np.float32))
            if weight.ndim != 1 or len(weight) == 0:
                raise ValueError(f"ClassWeightedCrossEntropy: weight must hold one value per class, got shape "
                                 f"{tuple(weight.shape)}")
            if not torch.isfinite(weight).all() or (weight < 0).any():
                raise ValueError(f"ClassWeightedCrossEntropy: weights must be finite and >= 0, got "
                                 f"{weight.tolist()}")
        if normalize not in self.NORMALIZE:
            raise ValueError(f"ClassWeightedCrossEntropy: normalize must be one of {list(self.NORMALIZE)} "
                             f"('batch': Keras's mean over samples, 'weights': PyTorch's weighted mean), "
                             f"got {normalize!r}")
        if reduction not in ("mean", "sum", "none"):
            raise ValueError(f"ClassWeightedCrossEntropy: reduction must be 'mean', 'sum' or 'none', "
                             f"got {reduction!r}")
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"ClassWeightedCrossEntropy: label_smoothing must be in [0, 1], got {label_smoothing}")
        super().__init__(weight, reduction=reduction)
        self.normalize = normalize
        self.label_smoothing = float(label_smoothing)
        self.ignore_index = int(ignore_index)

    @classmethod
    def from_counts(cls, counts: Counts, scheme: Literal["inverse", "root"] = "inverse", *,
                    gamma: float | None = None, **kwargs: Any) -> ClassWeightedCrossEntropy:
        """The loss with weights from training counts.

        Args:
            counts: training samples per class (see :data:`Counts`).
            scheme: ``"inverse"``, the VGG16 + CBAM paper's equation (5)
                (:func:`inverse_frequency_weights`); ``"root"``, MAPNet's equation (5)
                (:func:`root_inverse_weights`, needs ``gamma``).
            gamma: MAPNet's root, in [0.5, 3]; only with ``scheme="root"``.
            **kwargs: ``normalize``, ``reduction``, ``label_smoothing``, ``ignore_index``.
        """
        return cls(_weights_for(counts, scheme, gamma), **kwargs)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.is_floating_point():
            raise TypeError("ClassWeightedCrossEntropy takes class-index targets (an int64 tensor of labels), "
                            f"got {target.dtype}; for probability targets use nn.CrossEntropyLoss")
        w = self.weight
        if w is not None:
            if logits.ndim < 2 or logits.shape[1] != len(w):
                raise ValueError(f"ClassWeightedCrossEntropy has {len(w)} class weights but the logits have shape "
                                 f"{tuple(logits.shape)} (classes on dim 1); build the loss for "
                                 f"{logits.shape[1] if logits.ndim >= 2 else '?'} classes")
            w = w.to(device=logits.device, dtype=logits.dtype)
        if self.normalize == "weights" or w is None:
            # PyTorch's weighted mean (the two agree without weights).
            return F.cross_entropy(logits, target, weight=w, ignore_index=self.ignore_index,
                                   reduction=self.reduction, label_smoothing=self.label_smoothing)
        # Keras: each element's (smoothed) loss times its class weight, summed, over the element count.
        losses = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none",
                                 label_smoothing=self.label_smoothing)
        valid = target != self.ignore_index
        losses = losses * w[torch.where(valid, target, 0)] * valid
        if self.reduction == "none":
            return losses
        if self.reduction == "sum":
            return losses.sum()
        return losses.sum() / valid.sum()

    def extra_repr(self) -> str:
        k = "none" if self.weight is None else len(self.weight)
        return (f"classes={k}, normalize={self.normalize!r}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}")


# =========================================================================== the papers' own losses


def mask_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MANet's equations (2)-(3): squared error summed over regions and cells, averaged over the batch.

    ``L_M = 1/K sum_k sum_r sum_ij (M_r(i, j) - M^_r(i, j))^2`` (no factor 1/2): RASnet's
    predicted region masks ``pred`` against the ground truth ``target``, both
    ``B x 8 x s x s`` (:func:`fer.data.masks.region_masks`).
    """
    if pred.shape != target.shape:
        raise ValueError(f"mask_loss: predicted masks {tuple(pred.shape)} and ground truth "
                         f"{tuple(target.shape)} differ; build the model for the input size the masks were made for")
    diff = (pred.float() - target.float()).pow(2)
    return diff.reshape(len(diff), -1).sum(1).mean()


class MapNetLoss(nn.Module):
    """MAPNet's equations (4)-(6): class-weighted cross-entropy per branch, ``L_F = u L_M + v L_A``.

    ``forward(outputs, batch)`` takes a :class:`fer.models.mapnet.MapNetOutput` and the
    batch (its ``label``), so it can be handed to :func:`fer.train.fit` as ``loss_fn``.

    Args:
        weight: ``omega_i`` per class (equation 5; build it with :meth:`from_counts`,
            which uses :func:`root_inverse_weights`); ``None``: plain cross-entropy
            (Table 2's rows without WCL).
        branch_weights: ``(u, v)`` of equation (6) (paper: 0.5, 0.5).
        on: ``"blocks"`` (default): each branch's loss is the ``delta``-weighted sum of
            its blocks' losses, every block classifier trained on its own logits;
            ``"combined"``: the loss of the branch's combined prediction ``log P``.
        normalize: the batch mean of :class:`ClassWeightedCrossEntropy` (``"weights"``,
            PyTorch's ``CrossEntropyLoss(weight=...)``, by default).
        delta: block weights for ``on="blocks"``; default
            :func:`fer.models.mapnet.block_weights` of the number of blocks in the output.

    .. note::
       The paper writes the per-sample loss (4), the weights (5) and the branch sum (6),
       but not whether a branch's loss is taken on each block or on its combined
       prediction, nor the batch reduction. Each block is "trained independently", so
       we default to per-block losses weighted by ``delta``, and to PyTorch's weighted
       mean (the paper trains in PyTorch).
    """

    def __init__(self, weight: torch.Tensor | None = None, *, branch_weights: tuple[float, float] = (0.5, 0.5),
                 on: Literal["blocks", "combined"] = "blocks", normalize: Literal["batch", "weights"] = "weights",
                 delta: Sequence[float] | None = None) -> None:
        super().__init__()
        if on not in ("blocks", "combined"):
            raise ValueError(f"on must be 'blocks' or 'combined', got {on!r}")
        u, v = (float(x) for x in branch_weights)
        if min(u, v) < 0 or abs(u + v - 1.0) > 1e-6:
            raise ValueError(f"branch_weights (u, v) of equation (6) must be >= 0 and sum to 1, got {branch_weights}")
        self.branch_weights, self.on = (u, v), on
        self.delta = None if delta is None else tuple(float(d) for d in delta)
        self.ce = ClassWeightedCrossEntropy(weight, normalize=normalize)

    @classmethod
    def from_counts(cls, counts: Any, gamma: float, **kwargs: Any) -> MapNetLoss:
        """The loss with ``omega_i = (N_avg / N_i) ** (1 / gamma)`` from training counts (equation 5)."""
        return cls(root_inverse_weights(counts, gamma), **kwargs)

    def branch_loss(self, block_logits: torch.Tensor, log_p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``L_M`` or ``L_A`` for one branch."""
        if self.on == "combined":
            return self.ce(log_p, target)
        from .models.mapnet import block_weights  # on use: fer.train imports this module without the models

        k = block_logits.shape[1]
        delta = self.delta if self.delta is not None else block_weights(k)
        if len(delta) != k:
            raise ValueError(f"MapNetLoss has {len(delta)} block weights but the output has {k} blocks")
        return sum(d * self.ce(block_logits[:, i], target) for i, d in enumerate(delta))

    def forward(self, outputs: MapNetOutput, batch: Any) -> torch.Tensor:
        from .models.mapnet import MapNetOutput

        target = batch["label"]
        if not isinstance(outputs, MapNetOutput):
            raise TypeError(f"MapNetLoss takes a MapNetOutput (MapNet's output), got {type(outputs).__name__}")
        main = self.branch_loss(outputs.main_block_logits, outputs.main_log_p, target)
        if outputs.aux_block_logits is None:
            return main
        aux = self.branch_loss(outputs.aux_block_logits, outputs.aux_log_p, target)
        u, v = self.branch_weights
        return u * main + v * aux

    def extra_repr(self) -> str:
        return f"on={self.on!r}, branch_weights={self.branch_weights}"


class BetaCrossEntropy(nn.CrossEntropyLoss):
    """MSA-Net's equation (2): ``L = -(beta / N) * sum_i log softmax(W v_i + b)[y_i]``.

    Cross-entropy averaged over the batch and multiplied by ``beta`` (paper: 0.6). With
    plain SGD this is the same as scaling the learning rate by ``beta``.

    Args:
        beta: the scale (> 0).
        **kwargs: ``nn.CrossEntropyLoss`` arguments (``weight``, ``label_smoothing``...).
    """

    def __init__(self, beta: float = BETA, **kwargs: Any) -> None:
        if not beta > 0:
            raise ValueError(f"beta must be > 0, got {beta}")
        super().__init__(**kwargs)
        self.beta = float(beta)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.beta * super().forward(input, target)

    def extra_repr(self) -> str:
        return f"beta={self.beta}"


def abn_loss(outputs: AbnOutput, batch: Mapping[str, Any], *, att_weight: float = 1.0) -> torch.Tensor:
    """The masked-FER paper's equation (1): ``L = L_att + L_per``, both cross-entropy on the batch's labels.

    ``outputs`` is the :class:`fer.models.masked.AbnOutput` of an ABN (or the MCN);
    ``att_weight`` scales ``L_att`` (1 in the paper). Use as ``fer.train.fit(loss_fn=abn_loss)``.
    """
    from .models.masked import AbnOutput  # on use: fer.train imports this module without the models

    if not isinstance(outputs, AbnOutput):
        raise TypeError(f"abn_loss needs the AbnOutput of an ABN model, got {type(outputs).__name__}")
    y = batch["label"]
    return att_weight * F.cross_entropy(outputs.att_logits, y) + F.cross_entropy(outputs.logits, y)
