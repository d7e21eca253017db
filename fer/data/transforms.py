"""uint8 faces to model input, on the device: the one path for training, evaluation and explanation.

:class:`InputTransform` turns a batch's uint8 ``image`` (B x C x H x W) into what a model
reads: [0, 1] floats, optionally grey, resized to the run's ``input_size``, augmented in
training (random flip and shift drawn from a ``torch.Generator``, so runs repeat exactly;
maps named in ``augment_keys`` move with the image), normalised by ``mean`` / ``std``.
:func:`fer.train.fit` and :func:`fer.train.evaluate` build it from the run's
:class:`~fer.train.TrainConfig` (:meth:`InputTransform.from_config`); :func:`model_input`
and :func:`model_batch` give the same evaluation-time input outside the loop (Grad-CAM,
attention maps, prediction), and :func:`fer.explain.prepare_images` normalises through it.

:func:`five_crop` is MSA-Net's training crop (the centre or a corner of each face, resized
back); its chapter applies it in a ``forward_fn`` (:func:`fer.experiments.msanet.five_crop_forward`).

:data:`IMAGENET_MEAN` and :data:`IMAGENET_STD` are the normalisation of every ImageNet-pretrained
backbone here (timm's ``IMAGENET_DEFAULT_MEAN`` / ``IMAGENET_DEFAULT_STD``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.nn import functional as F

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PAD_MODES",
    "InputTransform",
    "model_input",
    "model_batch",
    "five_crop",
    "FIVE_CROP_POSITIONS",
]

#: Per-channel mean and standard deviation of ImageNet (RGB, images in [0, 1]).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: The crops of :func:`five_crop`, in the order of its ``positions`` (0..4).
FIVE_CROP_POSITIONS = ("centre", "top-left", "top-right", "bottom-left", "bottom-right")

#: Padding modes of the random shift (``F.pad`` modes).
PAD_MODES = ("constant", "reflect", "replicate")


class InputTransform:
    """Images to model input, on the device: uint8 -> [0, 1] float, augment, normalise.

    Float images are taken to be in [0, 1] already. With ``size`` they are resized to
    ``size x size`` (bilinear; antialiased when shrinking) first, and so are the
    ``augment_keys`` maps (nearest for integer maps). Augmentation (training only):
    random horizontal flip and random shift (pad by ``shift`` pixels, crop back at a
    random offset), drawn from a ``torch.Generator`` so that runs repeat exactly.
    ``augment_keys`` name other batch maps that get the same flip and shift.
    """

    def __init__(self, mean: Sequence[float] = (0.5, 0.5, 0.5), std: Sequence[float] = (0.5, 0.5, 0.5), *,
                 grayscale: bool = False, hflip: bool = False, shift: int = 0, pad_mode: str = "constant",
                 augment_keys: Sequence[str] = (), channels_last: bool = False, size: int | None = None) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.grayscale, self.hflip, self.shift, self.pad_mode = grayscale, hflip, int(shift), pad_mode
        self.augment_keys = tuple(augment_keys)
        self.channels_last = channels_last
        self.size = None if size is None else int(size)
        self._device_stats: tuple[torch.device, torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_config(cls, config: Any, *, channels_last: bool = False) -> InputTransform:
        """The transform of a :class:`fer.train.TrainConfig` (or anything with its input fields)."""
        return cls(config.mean, config.std, grayscale=config.grayscale, hflip=config.hflip, shift=config.shift,
                   pad_mode=config.pad_mode, augment_keys=config.augment_keys, channels_last=channels_last,
                   size=config.input_size)

    def _stats(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # mean/std live on the device after the first batch: no copy (and no sync) per step
        if self._device_stats is None or self._device_stats[0] != device:
            self._device_stats = (device, self.mean.to(device), self.std.to(device))
        return self._device_stats[1], self._device_stats[2]

    @property
    def augments(self) -> bool:
        return self.hflip or self.shift > 0

    def __call__(self, batch: Mapping[str, Any], *, train: bool = False,
                 generator: torch.Generator | None = None) -> dict[str, Any]:
        """A copy of ``batch`` with ``image`` replaced by the model input."""
        out = dict(batch)
        x = batch["image"]
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ValueError(f"batch['image'] must be a B x C x H x W tensor, got "
                             f"{type(x).__name__}{tuple(x.shape) if isinstance(x, torch.Tensor) else ''}")
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if self.grayscale and x.shape[1] != 1:
            x = x.mean(1, keepdim=True)
        maps = {k: batch[k] for k in self.augment_keys if k in batch}
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = _resize(x, self.size)
            maps = {k: _resize(v, self.size) for k, v in maps.items()}
            out.update(maps)
        if train and self.augments:
            maps = {k: maps[k] if k in maps else batch[k] for k in self.augment_keys}
            x, maps = self._augment(x, maps, generator)
            out.update(maps)
        mean, std = self._stats(x.device)
        if mean.shape[1] not in (1, x.shape[1]):
            raise ValueError(f"normalisation has {mean.shape[1]} channels (mean/std) but images have "
                             f"{x.shape[1]}; fix TrainConfig.mean/std (or grayscale)")
        x = (x - mean) / std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out["image"] = x
        return out

    def _augment(self, x: torch.Tensor, maps: dict[str, torch.Tensor], generator: torch.Generator | None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        b, _, h, w = x.shape
        flip = off = None
        if self.hflip:
            flip = (torch.rand(b, generator=generator) < 0.5).to(x.device, non_blocking=True)
        if self.shift > 0:
            off = torch.randint(0, 2 * self.shift + 1, (b, 2), generator=generator).to(x.device, non_blocking=True)

        def apply(t: torch.Tensor) -> torch.Tensor:
            squeeze = t.ndim == 3
            t = t.unsqueeze(1) if squeeze else t
            if t.shape[-2:] != (h, w):
                raise ValueError(f"augment_keys map of shape {tuple(t.shape)} is not aligned with the "
                                 f"{h} x {w} image")
            dtype = t.dtype
            t = t.float() if not t.is_floating_point() else t
            if flip is not None:
                t = torch.where(flip.view(-1, 1, 1, 1), t.flip(-1), t)
            if off is not None:
                t = _shift(t, off, self.shift, self.pad_mode)
            t = t.to(dtype)
            return t.squeeze(1) if squeeze else t

        return apply(x), {k: apply(v) for k, v in maps.items()}


def _resize(t: torch.Tensor, size: int) -> torch.Tensor:
    """Resize B x C x H x W (or B x H x W) maps to ``size x size``; integer maps by nearest."""
    squeeze = t.ndim == 3
    t = t.unsqueeze(1) if squeeze else t
    if t.is_floating_point():
        shrink = size < min(t.shape[-2:])
        t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    else:
        t = F.interpolate(t.float(), size=(size, size), mode="nearest-exact").to(t.dtype)
    return t.squeeze(1) if squeeze else t


def _shift(x: torch.Tensor, off: torch.Tensor, shift: int, pad_mode: str) -> torch.Tensor:
    """Pad by ``shift`` and crop each image back at its own offset (off: B x 2, rows then cols)."""
    b, _, h, w = x.shape
    p = F.pad(x, (shift, shift, shift, shift), mode=pad_mode)
    rows = off[:, :1] + torch.arange(h, device=x.device)  # B x H
    cols = off[:, 1:] + torch.arange(w, device=x.device)  # B x W
    bi = torch.arange(b, device=x.device).view(b, 1, 1)
    return p[bi, :, rows.unsqueeze(2), cols.unsqueeze(1)].permute(0, 3, 1, 2).contiguous()


def model_batch(batch: Mapping[str, Any], config: Any) -> dict[str, Any]:
    """A batch as the evaluation-time model input of a run with ``config`` (resize, normalise; no augmentation).

    ``batch`` holds ``image`` (uint8 or [0, 1] float, B x C x H x W) and any maps named in
    ``config.augment_keys`` (resized with the image); other keys pass through.
    """
    return InputTransform.from_config(config)(batch)


def model_input(images: torch.Tensor, config: Any) -> torch.Tensor:
    """uint8 faces -> the evaluation-time model input of a run with ``config`` (resize, normalise; no augmentation)."""
    return model_batch({"image": images}, config)["image"]


def five_crop(x: torch.Tensor, crop: float, positions: torch.Tensor | None = None,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Cut each image to ``crop`` of its side at one of five positions and resize it back.

    Args:
        x: ``B x C x H x W`` float images.
        crop: crop side / image side, in (0, 1].
        positions: one of 0..4 per image (centre, top-left, top-right, bottom-left,
            bottom-right); default: drawn uniformly (``generator`` or torch's global RNG).
    """
    if not 0 < crop <= 1:
        raise ValueError(f"crop must be in (0, 1], got {crop}")
    b, _, h, w = x.shape
    ch, cw = max(1, int(round(h * crop))), max(1, int(round(w * crop)))
    if (ch, cw) == (h, w):
        return x
    if positions is None:
        positions = torch.randint(0, 5, (b,), generator=generator)
    positions = positions.to("cpu")
    offsets = [((h - ch) // 2, (w - cw) // 2), (0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw)]
    out = torch.empty_like(x)
    for p, (oy, ox) in enumerate(offsets):
        sel = torch.nonzero(positions == p).squeeze(1).to(x.device)
        if len(sel):
            out[sel] = F.interpolate(x[sel, :, oy:oy + ch, ox:ox + cw], size=(h, w), mode="bilinear",
                                     align_corners=False)
    return out
