"""fer.data.masks: MAPNet's face mask, MANet's region masks, pasted face masks, MU and M-FER."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fer.data import SynFER
from fer.data.landmarks import to_landmarks8
from fer.data.masks import (
    FACE_MASK_COLOURS,
    M_FER_CLASSES,
    MANET_REGIONS,
    MU_CLASSES,
    PAPER_MASK_PATTERNS,
    MaskedFERDataset,
    MaskedUnmaskedDataset,
    face_mask,
    paste_face_mask,
    region_masks,
    resize_mask,
)


@pytest.fixture(scope="module")
def clean() -> SynFER:
    return SynFER("clean", split="test", n=6, image_size=224, seed=4)


def _at(mask: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Mask values at the pixels of points (x, y)."""
    xy = np.round(np.asarray(pts)).astype(int)
    return mask[xy[:, 1], xy[:, 0]]


def _up(m: np.ndarray, size: int) -> np.ndarray:
    return cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST)


# ---------------------------------------------------------------------------- MAPNet
def test_face_mask_is_the_landmark_hull(clean):
    for i in range(len(clean)):
        lm = clean[i]["landmarks"].numpy()
        m = face_mask(lm, 224)
        assert m.shape == (224, 224) and m.dtype == np.float32 and set(np.unique(m)) <= {0.0, 1.0}
        assert _at(m, lm).all()  # every landmark on the mask
        hull_area = cv2.contourArea(cv2.convexHull(lm.astype(np.float32)))
        assert m.sum() == pytest.approx(hull_area, rel=0.03)
        ys, xs = np.nonzero(m)  # little background: nothing outside the landmarks' box
        assert xs.min() >= np.floor(lm[:, 0].min()) and xs.max() <= np.ceil(lm[:, 0].max())
        assert ys.min() >= np.floor(lm[:, 1].min()) and ys.max() <= np.ceil(lm[:, 1].max())
        # the face's own parts are inside: eyes, nose, mouth of SynFER's region maps
        maps = clean.regions(i)
        for part in ("eyes", "nose", "mouth"):
            assert (m * maps[part]).sum() / maps[part].sum() > 0.97, part


def test_face_mask_forehead_batch_and_types(clean):
    lm = clean[0]["landmarks"]
    base = face_mask(lm, (224, 200))
    assert isinstance(base, torch.Tensor) and base.shape == (224, 200)
    tall = face_mask(lm.numpy(), 224, forehead=0.4)
    extra = tall - face_mask(lm.numpy(), 224)
    assert extra.min() >= 0 and extra.sum() > 0.1 * tall.sum()
    assert np.nonzero(extra)[0].max() <= lm[[0, 16], 1].max() + 1  # only above the top of the jaw line
    batch = face_mask(torch.stack([lm, lm]), 224)
    assert batch.shape == (2, 224, 224) and torch.equal(batch[0], batch[1])
    nan = np.full((68, 2), np.nan)
    with pytest.raises(ValueError, match="missing='ones'"):
        face_mask(nan, 32)
    assert face_mask(nan, 32, missing="ones").min() == 1.0


def test_resize_mask_area_keeps_mass(clean):
    m = face_mask(clean[0]["landmarks"].numpy(), 224)
    for size in (56, 7, (14, 28)):
        r = resize_mask(m, size)
        assert isinstance(r, np.ndarray) and r.dtype == np.float32 and 0 <= r.min() and r.max() <= 1
        assert r.mean() == pytest.approx(m.mean(), abs=1e-6)  # 224 divides evenly: exact area average
    assert set(np.unique(resize_mask(m, 7, threshold=0.5))) <= {0.0, 1.0}
    t = resize_mask(torch.from_numpy(np.stack([m, m]))[:, None], 7)
    assert isinstance(t, torch.Tensor) and t.shape == (2, 1, 7, 7)
    up = resize_mask(resize_mask(m, 7), 14)
    assert up.shape == (14, 14) and 0 <= up.min() and up.max() <= 1


# ---------------------------------------------------------------------------- MANet
def test_region_masks_equation_4_by_hand():
    # image 160, features 10: lambda = 1/16 as in the paper; cell j's centre is at 16 j + 7.5 px
    l8 = np.array([[80, 100], [30, 56], [50, 56], [110, 56], [130, 56], [60, 130], [100, 130], [80, 140]],
                  np.float32)
    m = region_masks(l8, 160, 10)
    assert m.shape == (8, 10, 10) and m.dtype == np.float32
    assert m[0].min() == 1.0  # whole image
    # left eye: centre (40, 56), 0.27 * 160 = 43.2 px: x in [18.4, 61.6] -> cells 1-3; y in [34.4, 77.6] -> 2-4
    expect = np.zeros((10, 10), np.float32)
    expect[2:5, 1:4] = 1
    np.testing.assert_array_equal(m[3], expect)
    # eyes with brows: centre (80, 56), 0.72 W x 0.36 H = 115.2 x 57.6 -> x [22.4, 137.6], y [27.2, 84.8]
    expect = np.zeros((10, 10), np.float32)
    expect[2:5, 1:9] = 1
    np.testing.assert_array_equal(m[1], expect)
    assert m[4].sum() == 9 and m[4][3, 7] == 1  # right eye mirrors the left


def test_region_masks_on_synfer_faces(clean):
    for i in range(len(clean)):
        it = clean[i]
        lm = it["landmarks"].numpy()
        masks = region_masks(to_landmarks8(it["landmarks"]), 224, 14)
        assert isinstance(masks, torch.Tensor) and masks.shape == (8, 14, 14)
        up = {name: _up(masks[k].numpy(), 224) for k, name in enumerate(MANET_REGIONS)}
        maps = clean.regions(i)
        mid = int(round(lm[27, 0]))
        left_eye, right_eye = maps["eyes"].copy(), maps["eyes"].copy()
        left_eye[:, mid:], right_eye[:, :mid] = 0, 0

        def cover(region: str, part: np.ndarray, up: dict = up) -> float:
            return float((up[region] * part).sum() / part.sum())

        assert cover("left_eye", left_eye) > 0.9 and cover("left_eye", right_eye) < 0.05
        assert cover("right_eye", right_eye) > 0.9 and cover("right_eye", left_eye) < 0.05
        assert cover("eyes_brows", maps["brows"]) > 0.75 and cover("eyes_brows", maps["eyes"]) > 0.95
        assert cover("mouth_nose", maps["mouth"]) > 0.9 and _at(up["mouth_nose"], lm[[30, 33]]).all()
        assert cover("mouth_nose", maps["eyes"]) < 0.05
        assert _at(up["nose"], lm[[30]]).all()
        assert _at(up["left_mouth_corner"], lm[[48]]).all() and _at(up["right_mouth_corner"], lm[[54]]).all()
        # the left eye box is a small part of the face: 0.27 x 0.27 of the image, rounded to cells
        assert 0.04 < up["left_eye"].mean() < 0.12


def test_region_masks_batch_sizes_and_missing():
    l8 = np.tile(np.array([[112, 130], [60, 90], [95, 90], [130, 90], [165, 90], [85, 170], [140, 170],
                           [112, 185]], np.float32), (3, 1, 1))
    l8[2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        region_masks(l8, 224)
    m = region_masks(l8, 224, (7, 7), missing="ones")
    assert m.shape == (3, 8, 7, 7) and m[2].min() == 1 and m[0].sum() < m[2].sum()
    wide = region_masks(l8[0], 224, 14, sizes={"nose": (0.5, 0.5)})
    assert wide[5].sum() > region_masks(l8[0], 224, 14)[5].sum()
    with pytest.raises(ValueError, match="to_landmarks8"):
        region_masks(np.zeros((68, 2)), 224)


# ---------------------------------------------------------------------------- pasted face masks
@pytest.mark.parametrize("style,colour", PAPER_MASK_PATTERNS + (("surgical", "black"), ("cloth", "white")))
def test_paste_covers_nose_and_mouth_not_eyes(clean, style, colour):
    for i in range(len(clean)):
        it = clean[i]
        lm = it["landmarks"].numpy()
        img, m = paste_face_mask(it["image"], it["landmarks"], style, colour, np.random.default_rng(i))
        assert isinstance(img, torch.Tensor) and img.dtype == torch.uint8 and img.shape == it["image"].shape
        assert isinstance(m, torch.Tensor) and m.shape == (224, 224)
        m = m.numpy()
        assert _at(m, lm[48:68]).all() and _at(m, lm[30:36]).all(), "mouth and nose tip covered"
        assert not _at(m, lm[36:48]).any() and not _at(m, lm[17:27]).any(), "eyes and brows free"
        maps = clean.regions(i)
        assert (m * maps["mouth"]).sum() / maps["mouth"].sum() > 0.99
        assert (m * maps["eyes"]).sum() / maps["eyes"].sum() < 0.05  # at most the skin under the eyes
        before, after = it["image"].permute(1, 2, 0).numpy(), img.permute(1, 2, 0).numpy()
        eyes = np.zeros((224, 224), np.uint8)
        cv2.fillPoly(eyes, [np.round(lm[36:42]).astype(np.int32), np.round(lm[42:48]).astype(np.int32)], 1)
        assert np.array_equal(before[eyes > 0], after[eyes > 0])  # the eye openings are untouched
        inside = cv2.erode(m.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        mean = after[inside].mean(axis=0)
        assert np.abs(mean - np.array(FACE_MASK_COLOURS[colour])).max() < 40, (style, colour, mean)


def test_paste_layouts_determinism_and_errors(clean):
    it = clean[1]
    hwc = it["image"].permute(1, 2, 0).numpy()
    a, ma = paste_face_mask(hwc, it["landmarks"].numpy(), "cloth", "gray")
    b, mb = paste_face_mask(it["image"], it["landmarks"], "cloth", "gray")
    assert isinstance(a, np.ndarray) and a.shape == hwc.shape and ma.dtype == np.float32
    np.testing.assert_array_equal(a, b.permute(1, 2, 0).numpy())
    np.testing.assert_array_equal(ma, mb.numpy())
    r1, _ = paste_face_mask(hwc, it["landmarks"], "cloth", "gray", np.random.default_rng(7))
    r2, _ = paste_face_mask(hwc, it["landmarks"], "cloth", "gray", np.random.default_rng(7))
    r3, _ = paste_face_mask(hwc, it["landmarks"], "cloth", "gray", np.random.default_rng(8))
    assert np.array_equal(r1, r2) and not np.array_equal(r1, r3)
    grey = hwc.mean(axis=2).astype(np.uint8)
    g, _ = paste_face_mask(grey, it["landmarks"], "surgical", "white")
    assert g.shape == grey.shape and g.dtype == np.uint8
    g3, _ = paste_face_mask(np.repeat(grey[..., None], 3, 2), it["landmarks"], "cloth", "black")
    assert (g3[..., 0] == g3[..., 1]).all() and (g3[..., 1] == g3[..., 2]).all()  # grey stays grey
    with pytest.raises(ValueError, match="style"):
        paste_face_mask(hwc, it["landmarks"], "n95", "white")
    with pytest.raises(ValueError, match="colour"):
        paste_face_mask(hwc, it["landmarks"], "cloth", "pink")
    with pytest.raises(ValueError, match="68 finite"):
        paste_face_mask(hwc, np.full((68, 2), np.nan), "cloth", "white")


def test_paste_on_a_photograph():
    from fer.data.landmarks import detect

    skimage_data = pytest.importorskip("skimage.data")
    photo = skimage_data.astronaut()
    lm = detect(photo).landmarks[0]
    img, m = paste_face_mask(photo, lm, "surgical", "white")
    assert _at(m, lm[48:68]).all() and _at(m, lm[31:36]).all() and not _at(m, lm[36:48]).any()
    assert 0.015 < m.mean() < 0.06  # a face of ~100 px in a 512 px portrait
    changed = np.any(img != photo, axis=2)
    assert changed[m > 0].mean() > 0.9 and changed[:60].sum() == 0  # nothing above the face


# ---------------------------------------------------------------------------- MU and M-FER
@pytest.fixture(scope="module")
def base() -> SynFER:
    return SynFER("wild", split="train", n=40, image_size=96, seed=2, max_yaw=25.0, occluder_prob=0.0)


def test_masked_unmasked_dataset(base):
    mu = MaskedUnmaskedDataset(base, seed=3)
    assert mu.classes == MU_CLASSES == ("unmasked", "masked") and len(mu) == len(base)
    assert 10 <= mu.class_counts["masked"] <= 30 and sum(mu.class_counts.values()) == 40
    patterns = set()
    for i in range(len(mu)):
        it, ref = mu[i], base[i]
        masked = it["label"] == 1
        assert it["label"] == mu.targets[i]
        assert masked == (it["meta"]["face_mask"] != "none") == bool(it["mask"].sum() > 0)
        assert masked == (not torch.equal(it["image"], ref["image"]))
        assert it["meta"]["base_label"] == ref["label"] and it["meta"]["base_index"] == i
        assert torch.equal(it["landmarks"], ref["landmarks"]) and "relevance" in it
        if masked:
            style, colour = mu.pattern(i)
            assert it["meta"]["face_mask"] == f"{colour}-{style}"
            assert (it["meta"]["mask_style"], it["meta"]["mask_colour"]) == (style, colour)
            patterns.add((style, colour))
    assert patterns == set(PAPER_MASK_PATTERNS)
    again = MaskedUnmaskedDataset(base, seed=3)
    assert again.targets == mu.targets and torch.equal(again[5]["image"], mu[5]["image"])
    assert MaskedUnmaskedDataset(base, seed=4).targets != mu.targets
    assert MaskedUnmaskedDataset(base, seed=3).fingerprint() == mu.fingerprint()
    batch = next(iter(DataLoader(mu, batch_size=4)))
    assert batch["image"].shape == (4, 3, 96, 96) and batch["mask"].shape == (4, 96, 96)
    assert len(batch["meta"]["face_mask"]) == 4


def test_masked_fer_dataset(base):
    mf = MaskedFERDataset(base, seed=1)
    assert mf.classes == M_FER_CLASSES == ("neutral", "happy", "surprise", "anger")
    kept = [i for i, t in enumerate(base.targets) if base.classes[t] in mf.classes]
    assert len(mf) == len(kept) and mf.indices.tolist() == kept
    assert sum(mf.class_counts.values()) == len(mf) and set(mf.class_counts) == set(mf.classes)
    for j in range(len(mf)):
        it = mf[j]
        assert it["label"] == mf.targets[j]
        assert mf.classes[it["label"]] == base.classes[it["meta"]["base_label"]] == it["meta"]["expression"]
        assert it["meta"]["face_mask"] != "none" and it["mask"].sum() > 0
    custom = MaskedFERDataset(base, classes=("surprise", "happy"), patterns=[("cloth", "black")])
    assert custom.classes == ("happy", "surprise") and set(custom.targets) <= {0, 1}
    assert custom[0]["meta"]["face_mask"] == "black-cloth"
    with pytest.raises(ValueError, match="no class"):
        MaskedFERDataset(SynFER("wild", n=4, classes=("happy", "sad")))
    with pytest.raises(ValueError, match="pattern"):
        MaskedUnmaskedDataset(base, patterns=[("surgical", "pink")])
