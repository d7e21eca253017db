"""The SynFER dataset: random access, nothing stored, any number of workers."""
from __future__ import annotations

import hashlib
import json
import zlib
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from ..._progress import bar_disabled
from ..labels import LabelCounts, resolve_classes
from .face import (
    ACTION_UNITS,
    PROTOTYPES,
    UNILATERAL,
    Identity,
    Pose,
    apply_action_units,
    neutral_shape,
    prototype_weights,
    sample_identity,
)
from .nuisances import background, degrade, draw_face_mask, draw_occluder, illuminate
from .regions import region_maps, relevance_map
from .render import build_geometry, draw_head
from .variants import Variant, get_variant

__all__ = ["SynFER", "SampleSpec", "GENERATOR_VERSION", "MASK_CLASSES"]

#: Bumped whenever a change alters what any sample looks like (part of the fingerprint).
GENERATOR_VERSION = "4"
#: Labels of the masked/unmasked task.
MASK_CLASSES = ("unmasked", "masked")
_SPLITS = {"train": 0, "val": 1, "test": 2, "all": 3}
_MIN_RENDER = 96  # small images (48 px) are drawn at twice the size, then area-resampled


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = (x + np.uint64(0x9E3779B97F4A7C15)).astype(np.uint64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _uniform(keys: Sequence[int], idx: np.ndarray) -> np.ndarray:
    """Counter-based uniforms in [0, 1): a pure function of (keys, idx)."""
    with np.errstate(over="ignore"):
        h = np.zeros_like(idx, dtype=np.uint64)
        for k in keys:
            h = _splitmix64(h ^ np.uint64(k & 0xFFFFFFFFFFFFFFFF))
        h = _splitmix64(h ^ idx.astype(np.uint64))
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass(frozen=True)
class SampleSpec:
    """Everything that defines one sample before drawing (cheap to compute)."""

    index: int
    label: int
    expression: str
    identity: int
    intensity: float
    aus: dict[int, float]
    side: int
    yaw: float
    pitch: float
    roll: float
    scale: float
    cx: float
    cy: float
    gaze: tuple[float, float]
    background: str
    light_angle: float
    clothes: tuple[float, float, float]
    occluder: str
    face_mask: str
    sequence: int
    frame: int


class SynFER(LabelCounts, Dataset):
    """SynFER: a procedural face-expression dataset drawn from 68 iBUG landmarks.

    Sample ``i`` is a pure function of ``(seed, split, variant, i)`` (and the
    keyword arguments): nothing is stored, images are drawn on access, any
    number of ``DataLoader`` workers can read it.

    Args:
        variant: which dataset it stands in for: ``clean``, ``wild`` (RAF-DB),
            ``fer2013``, ``affectnet``, ``ck`` (CK+), ``occluded`` (FED-RO),
            ``masked`` (faces wearing masks), ``masked_unmasked`` (binary task).
            See :data:`fer.data.synfer.VARIANTS`.
        split: ``train``, ``val``, ``test`` (or ``all`` for ``ck``). Identities
            differ between splits (person-independent), except in ``ck``, whose
            subject ids are shared so that folds can be formed by subject.
        n: number of samples; default: the real dataset's size for that split.
        seed: base seed.
        image_size: output side in pixels; default: the variant's (112, 48 for fer2013).
        num_classes: 7 (the first seven of :data:`fer.data.CLASSES`) or 8; ``ck``'s
            7 classes are CK+'s (contempt instead of neutral).
        classes: explicit expression subset (e.g. the masked-FER paper's
            ``("anger", "happy", "neutral", "surprise")``). Labels index
            ``self.classes``, which keeps canonical order, so the default 7/8
            classes give exactly the canonical label ids.
        class_balance: ``"dataset"`` (the real dataset's proportions for the split),
            ``"uniform"``, or one weight per class.
        with_relevance: add the ground-truth relevance map (``relevance``, H x W float).
        transform: applied to the image tensor (``uint8``, 3 x H x W).
        **variant_overrides: any :class:`~fer.data.synfer.variants.Variant` field,
            e.g. ``max_yaw=30`` or ``occluder_prob=0.5``.

    Each item is a dict: ``image`` (uint8 3 x H x W; grayscale variants repeat
    the channel), ``label`` (int), ``landmarks`` (float32 68 x 2, pixel x, y, iBUG
    order), ``relevance`` (float32 H x W, when asked) and ``meta`` (identity,
    yaw, pitch, roll, scale, intensity, occluder, face_mask, expression, ...;
    strings are ``"none"`` when absent so that batches collate).
    """

    def __init__(
        self,
        variant: str = "wild",
        split: str = "train",
        n: int | None = None,
        seed: int = 0,
        image_size: int | None = None,
        num_classes: int = 7,
        classes: Sequence[str] | None = None,
        class_balance: str | Sequence[float] = "dataset",
        with_relevance: bool = True,
        transform: Callable[[torch.Tensor], Any] | None = None,
        **variant_overrides: Any,
    ) -> None:
        self.variant: Variant = get_variant(variant, **variant_overrides)
        if split not in _SPLITS:
            raise ValueError(f"unknown split {split!r}; choose from {tuple(_SPLITS)}")
        self.split = split
        self.seed = int(seed)
        self.image_size = int(image_size or self.variant.image_size)
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {self.image_size}")
        if classes is None and num_classes == 7 and self.variant.default_classes is not None:
            classes = self.variant.default_classes
        self.expression_classes = resolve_classes(classes, num_classes)
        self.classes: tuple[str, ...] = MASK_CLASSES if self.variant.binary_mask_task else self.expression_classes
        sizes = self.variant.sizes
        self.n = int(n if n is not None else sizes.get(split, next(iter(sizes.values()))))
        if self.n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        self.class_balance = class_balance
        self.probs = self._class_probs(class_balance)
        self.with_relevance = with_relevance
        self.transform = transform
        self._vcode = zlib.crc32(self.variant.name.encode())
        self._scode = _SPLITS[split]
        self._people: dict[int, tuple[Identity, np.ndarray]] = {}
        self._render_size = max(self.image_size, _MIN_RENDER)
        self._expr_labels = self._draw_expressions(np.arange(self.n))
        self._ident_ids = self._identity_ids(np.arange(self.n))
        if self.variant.binary_mask_task:
            u = _uniform((self.seed, self._vcode, self._scode, 3), np.arange(self.n))
            self._targets = (u < self.variant.mask_prob).astype(np.int64)
        else:
            self._targets = self._expr_labels

    # ------------------------------------------------------------------ labels
    def _class_probs(self, balance: str | Sequence[float]) -> np.ndarray:
        names = self.expression_classes
        if isinstance(balance, str):
            if balance == "uniform":
                w = np.ones(len(names))
            elif balance == "dataset":
                counts = self.variant.counts_for(self.split)
                present = [counts[c] for c in names if c in counts]
                fill = min(present) if present else 1
                w = np.array([counts.get(c, fill) for c in names], dtype=np.float64)
            else:
                raise ValueError(f"class_balance must be 'dataset', 'uniform' or weights, got {balance!r}")
        else:
            w = np.asarray(balance, dtype=np.float64)
            if w.shape != (len(names),) or (w < 0).any() or w.sum() <= 0:
                raise ValueError(f"class_balance needs {len(names)} non-negative weights for {names}, got {balance!r}")
        return w / w.sum()

    def _sequence_of(self, idx: np.ndarray) -> np.ndarray:
        return idx // self.variant.frames if self.variant.frames else idx

    def _draw_expressions(self, idx: np.ndarray) -> np.ndarray:
        u = _uniform((self.seed, self._vcode, self._scode, 1), self._sequence_of(idx))
        return np.searchsorted(np.cumsum(self.probs), u, side="right").clip(0, len(self.probs) - 1).astype(np.int64)

    def identities(self) -> np.ndarray:
        """Identity (subject) id of every sample, without drawing."""
        return self._ident_ids.copy()

    def _identity_ids(self, idx: np.ndarray) -> np.ndarray:
        v = self.variant
        if v.frames:  # CK-style: a subject per sequence, shared by all splits
            return (_uniform((self.seed, self._vcode, 2), idx // v.frames) * v.subjects).astype(np.int64)
        return (_uniform((self.seed, self._vcode, self._scode, 2), idx) * v.identities).astype(np.int64)

    def _identity_id(self, i: int) -> int:
        return int(self._ident_ids[i])

    def identity(self, i: int) -> Identity:
        """The identity drawn for sample ``i``."""
        return self._person(self._identity_id(i))[0]

    def _person(self, ident: int) -> tuple[Identity, np.ndarray]:
        """Identity ``ident`` and its neutral shape (read-only), drawn once per dataset."""
        person = self._people.get(ident)
        if person is None:
            pool = 99 if self.variant.frames else self._scode
            rng = np.random.default_rng([self.seed, 0x1D, pool, ident])
            identity = sample_identity(rng, beard_prob=self.variant.beard_prob)
            shape = neutral_shape(identity)
            shape.setflags(write=False)
            person = self._people[ident] = (identity, shape)
        return person

    # ------------------------------------------------------------------ sampling
    def spec(self, i: int) -> SampleSpec:
        """The sample's parameters (expression, action units, pose, nuisances), without drawing."""
        if not 0 <= i < self.n:
            raise IndexError(f"SynFER index {i} out of range for n={self.n}")
        v = self.variant
        rng = np.random.default_rng([self.seed, self._vcode, self._scode, i, 0x5EED])
        rand = rng.random

        def uniform(lo: float, hi: float) -> float:  # rng.uniform(lo, hi)'s draw, without its overhead
            return lo + (hi - lo) * rand()

        def sign() -> int:  # rng.choice([-1, 1])'s draw
            return (-1, 1)[int(rng.integers(0, 2))]

        expression = self.expression_classes[int(self._expr_labels[i])]
        seq = int(i // v.frames) if v.frames else i
        frame = int(i % v.frames) if v.frames else 0
        # Expression intensity; CK-style sequences share an apex and ramp up to it.
        a, b, lo, hi = v.intensity
        if v.frames:
            srng = np.random.default_rng([self.seed, self._vcode, 7, seq])
            apex = lo + (hi - lo) * srng.beta(a, b)
            intensity = apex * (1.0 - 0.1 * (v.frames - 1 - frame))
            side = int(srng.choice([-1, 1]))
        else:
            intensity = lo + (hi - lo) * rng.beta(a, b)
            side = sign()
        aus: dict[int, float] = {}
        proto = list(PROTOTYPES[expression])
        if len(proto) >= 3 and rng.random() < v.au_drop:
            proto.pop(int(rng.integers(0, len(proto))))
        base = prototype_weights(expression, intensity)
        for au in proto:
            w = base[au] * (1 + v.au_jitter * rng.normal())
            if w > 0:
                aus[au] = float(min(w, 1.3))
        if rng.random() < v.spontaneous:
            others = [au for au in ACTION_UNITS if au not in aus and au not in (14,)]
            au = int(others[rng.integers(0, len(others))])
            aus[au] = uniform(0.05, 0.3)
        if expression not in UNILATERAL:
            side = 0
        # Pose.
        if rng.random() < v.yaw_uniform:
            yaw = uniform(0, v.max_yaw)
        else:
            yaw = abs(rng.normal(0, v.yaw_sigma)) if v.yaw_sigma else 0.0
        yaw = float(min(yaw, v.max_yaw) * sign())
        pitch = float(uniform(-v.max_pitch, v.max_pitch))
        roll = float(uniform(-v.max_roll, v.max_roll))
        scale = float(uniform(*v.scale))
        cx = float(0.5 + uniform(-v.shift, v.shift))
        cy = float(0.5 + uniform(-v.shift, v.shift))
        gaze = (float(rng.normal(0, 0.06)), float(rng.normal(0, 0.03)))
        bg = v.background if v.background != "mixed" else ("plain" if rng.random() < 0.3 else "clutter")
        light_angle = float(uniform(0, 2 * np.pi))
        clothes = tuple(map(float, rng.integers(20, 220, size=3).tolist()))
        occluder = "none"
        if v.occluder_prob and rng.random() < v.occluder_prob:
            occluder = v.occluders[int(rng.integers(0, len(v.occluders)))]
        face_mask = "none"
        masked = (bool(self._targets[i]) if v.binary_mask_task else (v.mask_prob > 0 and rng.random() < v.mask_prob))
        colour, style = v.mask_colours[int(rng.integers(0, len(v.mask_colours)))], \
            v.mask_styles[int(rng.integers(0, len(v.mask_styles)))]
        if masked:
            face_mask = f"{colour}-{style}"
        return SampleSpec(
            index=i, label=int(self._targets[i]), expression=expression, identity=self._identity_id(i),
            intensity=float(intensity), aus=aus, side=side, yaw=yaw, pitch=pitch, roll=roll, scale=scale, cx=cx,
            cy=cy, gaze=gaze, background=bg, light_angle=light_angle, clothes=clothes, occluder=occluder,
            face_mask=face_mask, sequence=seq, frame=frame,
        )

    def describe(self, i: int) -> dict[str, Any]:
        """The sample's ``meta`` dict, without drawing."""
        return self._meta(self.spec(i))

    def _meta(self, sp: SampleSpec) -> dict[str, Any]:
        return {
            "index": sp.index, "identity": sp.identity, "expression": sp.expression, "intensity": sp.intensity,
            "yaw": sp.yaw, "pitch": sp.pitch, "roll": sp.roll, "scale": sp.scale, "occluder": sp.occluder,
            "face_mask": sp.face_mask, "side": sp.side, "sequence": sp.sequence, "frame": sp.frame,
            "variant": self.variant.name, "split": self.split,
        }

    def meta_frame(self, progress: bool = False):
        """A pandas DataFrame of every sample's ``meta`` plus ``label`` (no drawing)."""
        import pandas as pd
        from tqdm.auto import tqdm

        rows = [self.describe(i) | {"label": int(self._targets[i])}
                for i in tqdm(range(self.n), disable=bar_disabled(progress), desc="SynFER meta")]
        return pd.DataFrame(rows)

    # ------------------------------------------------------------------ drawing
    def _render(self, sp: SampleSpec, *, occlusion: bool = False):
        v = self.variant
        size = self._render_size
        rng = np.random.default_rng([self.seed, self._vcode, self._scode, sp.index, 0xD4A])
        identity, neutral = self._person(sp.identity)
        shape = apply_action_units(neutral, sp.aus, side=sp.side,
                                   unilateral=UNILATERAL.get(sp.expression, ()))
        pose = Pose(yaw=sp.yaw, pitch=sp.pitch, roll=sp.roll, scale=sp.scale * size,
                    cx=sp.cx * size, cy=sp.cy * size - 0.33 * sp.scale * size)
        geo = build_geometry(identity, shape, pose)
        img = background(rng, size, sp.background)
        skin_rng = np.random.default_rng([self.seed, self._vcode, self._scode, sp.index, 0x5C1])
        draw_head(img, geo, identity, sp.aus, side=sp.side, gaze=sp.gaze, light=float(np.cos(sp.light_angle)),
                  clothes=sp.clothes, rng=skin_rng)
        occ_mask = np.zeros((size, size), np.uint8)
        occ_obj = np.zeros((size, size), np.uint8)
        if sp.face_mask != "none":
            colour, style = sp.face_mask.split("-")
            draw_face_mask(img, occ_mask, geo, colour, style, rng)
        if sp.occluder != "none":
            draw_occluder(img, occ_obj, geo, sp.occluder, rng, identity.skin)
        img, _ = illuminate(img, rng, v.light)
        img = degrade(img, rng, blur=v.blur, noise=v.noise, lowres=v.lowres, jpeg=v.jpeg)
        if v.grayscale:
            img = np.repeat(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
        lm = geo.landmarks.astype(np.float64)
        if size != self.image_size:
            k = self.image_size / size
            img = cv2.resize(img, (self.image_size, self.image_size), interpolation=cv2.INTER_AREA)
            occ_mask = cv2.resize(occ_mask, (self.image_size,) * 2, interpolation=cv2.INTER_AREA)
            occ_obj = cv2.resize(occ_obj, (self.image_size,) * 2, interpolation=cv2.INTER_AREA)
            # pixel centres: x_out = (x_in + 0.5) * k - 0.5
            lm = (lm + 0.5) * k - 0.5
        return img, lm, (occ_mask, occ_obj)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        if isinstance(i, (np.integer, torch.Tensor)):
            i = int(i)
        if i < 0:
            i += self.n
        return self.render(self.spec(i))

    def with_expression(self, i: int, expression: str, intensity: float = 1.0) -> SampleSpec:
        """Sample ``i``'s spec with its expression replaced by ``expression``'s
        prototype at ``intensity`` (no jitter, no stray action units).

        Same person, pose and nuisances: for figures such as one face showing
        every expression, or one expression at rising intensity.
        """
        if expression not in PROTOTYPES:
            raise ValueError(f"unknown expression {expression!r}; choose from {tuple(PROTOTYPES)}")
        sp = self.spec(i)
        aus = {au: w for au, w in prototype_weights(expression, intensity).items() if w > 0}
        side = (sp.side or 1) if expression in UNILATERAL else 0
        label = self.classes.index(expression) if expression in self.classes else -1
        return replace(sp, expression=expression, aus=aus, intensity=float(intensity), side=side, label=label)

    def render(self, sp: SampleSpec) -> dict[str, Any]:
        """Draw a :class:`SampleSpec` (from :meth:`spec` or :meth:`with_expression`) into an item dict."""
        img, lm, _ = self._render(sp)
        image = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        if self.transform is not None:
            image = self.transform(image)
        item: dict[str, Any] = {
            "image": image,
            "label": sp.label,
            "landmarks": torch.from_numpy(lm.astype(np.float32)),
            "meta": self._meta(sp),
        }
        if self.with_relevance:
            rel = relevance_map(lm, self.image_size, sp.scale * self.image_size, sp.expression, side=sp.side)
            item["relevance"] = torch.from_numpy(rel)
        return item

    def regions(self, i: int) -> dict[str, np.ndarray]:
        """Named ground-truth maps for sample ``i`` (float32 H x W in [0, 1]).

        ``brows``, ``eyes``, ``nose``, ``mouth``, ``cheeks`` (from the landmarks),
        ``relevance`` (this sample's class evidence), ``face_mask`` and
        ``occluder`` (pixels covered by them).
        """
        sp = self.spec(i)
        _, lm, (occ_mask, occ_obj) = self._render(sp)
        maps = region_maps(lm, self.image_size, sp.scale * self.image_size)
        out = {k: m.astype(np.float32) / 255.0 for k, m in maps.items()}
        out["relevance"] = relevance_map(lm, self.image_size, sp.scale * self.image_size, sp.expression,
                                         side=sp.side, maps=maps)
        out["face_mask"] = occ_mask.astype(np.float32) / 255.0
        out["occluder"] = occ_obj.astype(np.float32) / 255.0
        return out

    # ------------------------------------------------------------------ identity of the data
    def config(self) -> dict[str, Any]:
        """Everything that determines the samples (JSON-serialisable)."""
        v = asdict(self.variant)
        return {
            "generator": "SynFER", "generator_version": GENERATOR_VERSION, "variant": v, "split": self.split,
            "n": self.n, "seed": self.seed, "image_size": self.image_size, "classes": list(self.classes),
            "expression_classes": list(self.expression_classes), "probs": [round(float(p), 12) for p in self.probs],
        }

    def fingerprint(self) -> str:
        """A short hash of :meth:`config`: same fingerprint, same samples."""
        blob = json.dumps(self.config(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def __repr__(self) -> str:
        return (f"SynFER(variant={self.variant.name!r}, split={self.split!r}, n={self.n}, seed={self.seed}, "
                f"image_size={self.image_size}, classes={self.classes})")
