"""SynFER variants: one configuration per dataset it stands in for.

A variant fixes the nuisances (pose range, background, light, occluders, masks,
degradation, colour), the expression intensities, the class proportions per
split and the default sizes. Proportions are the real datasets' published counts,
so the papers' class-weighted losses have the same imbalance to correct.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..datasets import affectnet, ckplus, fer2013, rafdb

__all__ = ["Variant", "VARIANTS", "get_variant", "describe_variants", "RAFDB_COUNTS", "FER2013_COUNTS", "AFFECTNET_COUNTS", "CKPLUS_COUNTS"]

# The published class counts live next to each loader (``PUBLISHED`` in fer.data.datasets.<name>).
#: RAF-DB basic, official partition (Li et al. 2017), canonical names.
RAFDB_COUNTS = rafdb.PUBLISHED.counts
#: FER2013 (Goodfellow et al. 2013): Training, PublicTest (val), PrivateTest (test).
FER2013_COUNTS = fer2013.PUBLISHED.counts
#: AffectNet manually annotated training set, 8 expressions; its validation set has 500 per class.
AFFECTNET_COUNTS = affectnet.PUBLISHED.counts
#: CK+ labelled sequences (Lucey et al. 2010); each gives its last three frames.
CKPLUS_COUNTS = ckplus.PUBLISHED.counts
# Neutral is not a CK+ label (studies that use it take each sequence's first frame).
# SynFER's choice: when `ck` is asked for 8 classes it draws neutral with weight 40,
# about one sequence in nine.
_CK_COUNTS = {"all": {**CKPLUS_COUNTS["all"], "neutral": 40}}
_UNIFORM = {c: 1 for c in ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")}


@dataclass(frozen=True)
class Variant:
    """Configuration of a SynFER variant (see :data:`VARIANTS`)."""

    name: str
    stands_in_for: str
    image_size: int = 112
    grayscale: bool = False
    # Pose (degrees). |yaw| is drawn from a half-normal with `yaw_sigma`, or with
    # probability `yaw_uniform` uniformly in [0, max_yaw]; clipped to max_yaw.
    max_yaw: float = 0.0
    yaw_sigma: float = 0.0
    yaw_uniform: float = 0.0
    max_pitch: float = 0.0
    max_roll: float = 0.0
    scale: tuple[float, float] = (0.68, 0.72)  # face width / image width
    shift: float = 0.0  # max centre shift, fraction of image
    background: str = "plain"  # plain | clutter | mixed
    light: float = 0.0  # illumination strength 0..1
    occluder_prob: float = 0.0
    occluders: tuple[str, ...] = ("hand", "sunglasses", "scarf", "patch")
    mask_prob: float = 0.0
    mask_colours: tuple[str, ...] = ("white", "black", "gray")
    mask_styles: tuple[str, ...] = ("surgical", "cloth")
    blur: float = 0.0
    noise: float = 0.0
    lowres: float = 0.0
    jpeg: float = 0.0
    # Expression intensity: Beta(a, b) mapped to [lo, hi].
    intensity: tuple[float, float, float, float] = (2.0, 1.5, 0.15, 1.0)
    au_jitter: float = 0.3  # relative spread of each action unit around the intensity
    au_drop: float = 0.1  # probability of leaving out one prototype AU
    spontaneous: float = 0.35  # probability of one stray low-intensity AU
    beard_prob: float = 0.12
    counts: dict[str, dict[str, int]] = field(default_factory=lambda: RAFDB_COUNTS)
    default_classes: tuple[str, ...] | None = None  # when num_classes == 7
    sizes: dict[str, int] = field(default_factory=lambda: {"train": 12271, "test": 3068})
    # CK-style sequences: frames per sequence and subject pool (None: one image per identity draw).
    frames: int = 0
    subjects: int = 0
    # masked/unmasked binary task (MU-dataset of the masked-FER paper).
    binary_mask_task: bool = False
    identities: int = 4000  # identity pool per split

    def counts_for(self, split: str) -> dict[str, int]:
        """Class counts for a split: the split's own, else the variant's only set
        (``all``; FED-RO's ``test``), else test proportions for val, else train's."""
        for key in (split, "all", "test" if split == "val" else "train"):
            if key in self.counts:
                return self.counts[key]
        return next(iter(self.counts.values()))


# In-the-wild nuisances (RAF-DB-like). Tuned so that a small CNN trained briefly sits
# well between chance and the `clean` upper bound (see the SynFER book page).
_WILD = dict(max_yaw=60.0, yaw_sigma=16.0, yaw_uniform=0.22, max_pitch=10.0, max_roll=10.0, scale=(0.6, 0.8),
             shift=0.04, background="mixed", light=0.6, occluder_prob=0.1, blur=0.8, noise=6.0, lowres=0.1,
             jpeg=0.3, intensity=(2.0, 1.5, 0.3, 1.0))

VARIANTS: dict[str, Variant] = {
    "clean": Variant("clean", "frontal lab set (upper bound)", counts=RAFDB_COUNTS,
                     intensity=(2.5, 1.2, 0.35, 1.0), au_jitter=0.2, spontaneous=0.15, beard_prob=0.0),
    "wild": Variant("wild", "RAF-DB (basic)", **_WILD),
    "fer2013": Variant("fer2013", "FER2013", image_size=48, grayscale=True,
                       counts=FER2013_COUNTS, sizes={"train": 28709, "val": 3589, "test": 3589},
                       **{**_WILD, "scale": (0.7, 0.9), "occluder_prob": 0.15, "lowres": 0.1}),
    "affectnet": Variant("affectnet", "AffectNet (manual subset)", counts=AFFECTNET_COUNTS,
                         sizes={"train": 20000, "test": 4000},
                         **{**_WILD, "occluder_prob": 0.15, "intensity": (1.6, 1.6, 0.2, 1.0)}),
    "ck": Variant("ck", "CK+ (last 3 frames per sequence)", grayscale=True,
                  max_yaw=4.0, yaw_sigma=2.0, max_roll=4.0, scale=(0.66, 0.7), intensity=(4.0, 1.0, 0.7, 1.0),
                  au_jitter=0.12, spontaneous=0.05, counts=_CK_COUNTS,
                  default_classes=("happy", "sad", "surprise", "fear", "disgust", "anger", "contempt"),
                  sizes={"all": 981}, frames=3, subjects=118, beard_prob=0.1),
    "occluded": Variant("occluded", "FED-RO (occlusions, test only)", counts={"test": _UNIFORM},
                        sizes={"test": 400}, **{**_WILD, "occluder_prob": 1.0}),
    "masked": Variant("masked", "M-FER: RAF-DB + face masks",
                      **{**_WILD, "mask_prob": 1.0, "occluder_prob": 0.0, "max_yaw": 30.0},
                      ),
    "masked_unmasked": Variant("masked_unmasked", "MU: masked vs unmasked",
                               binary_mask_task=True, sizes={"train": 500, "test": 100},
                               **{**_WILD, "mask_prob": 0.5, "occluder_prob": 0.0, "max_yaw": 30.0}),
}


def get_variant(name: str, **overrides) -> Variant:
    """Look up a variant by name, optionally overriding fields (``max_yaw=30`` ...)."""
    try:
        v = VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown SynFER variant {name!r}; choose from {sorted(VARIANTS)}") from None
    bad = [k for k in overrides if k not in Variant.__dataclass_fields__]
    if bad:
        raise TypeError(f"SynFER variant has no field(s) {bad}; fields: {sorted(Variant.__dataclass_fields__)}")
    return replace(v, **overrides) if overrides else v


def describe_variants():
    """A pandas DataFrame with one row per variant: what it stands in for and its nuisances."""
    import pandas as pd

    rows = []
    for v in VARIANTS.values():
        rows.append({
            "variant": v.name,
            "stands in for": v.stands_in_for,
            "px": f"{v.image_size}" + (" gray" if v.grayscale else ""),
            "default n": " / ".join(str(n) for n in v.sizes.values()) + f" ({'/'.join(v.sizes)})",
            "max |yaw|": f"{v.max_yaw:.0f}",
            "occluders": f"{v.occluder_prob:.0%}" if v.occluder_prob else "-",
            "masks": f"{v.mask_prob:.0%}" if v.mask_prob else "-",
            "intensity": f"{v.intensity[2]:.2f}-{v.intensity[3]:.2f}",
        })
    return pd.DataFrame(rows).set_index("variant")
