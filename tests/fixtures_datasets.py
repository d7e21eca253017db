"""Tiny copies of the real datasets, written in their on-disk formats from SynFER faces.

Each ``write_*`` function lays out a dataset under ``root`` exactly as the real
release does (file names, CSV headers, label codes, landmark files) and returns
what a correct loader must read back, keyed by the sample's file name.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from fer.data import CLASSES, SynFER
from fer.data.datasets import affectnet, ckplus, fer2013, rafdb

__all__ = ["faces", "write_rafdb", "write_fer2013", "write_affectnet", "write_ckplus", "write_fedro",
           "code_of", "CK_SUBJECTS", "write_data_root"]

SEVEN = CLASSES[:7]


def code_of(label_map: dict, canonical: str):
    """A dataset's own code for a canonical name (the inverse of its label map)."""
    return next(k for k, v in label_map.items() if v == canonical)


@lru_cache(maxsize=None)
def faces(n: int, size: int = 100, variant: str = "wild", classes: tuple[str, ...] = SEVEN
          ) -> tuple[tuple[np.ndarray, np.ndarray, str], ...]:
    """``n`` SynFER faces (RGB uint8 size x size, 68 x 2 landmarks, expression), the
    expressions cycling through ``classes`` so every class is present."""
    ds = SynFER(variant, "test", n=n, seed=11, image_size=size, with_relevance=False, num_classes=8)
    out = []
    for i in range(n):
        expr = classes[i % len(classes)]
        item = ds.render(ds.with_expression(i, expr, intensity=0.9))
        out.append((item["image"].permute(1, 2, 0).numpy().copy(), item["landmarks"].numpy().astype(np.float64),
                    expr))
    return tuple(out)


def _save(img: np.ndarray, path: Path, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, **kw)


def _points(path: Path, pts: np.ndarray, tail: list[str] = ()) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"{x:.3f}\t{y:.3f}" for x, y in pts] + list(tail)
    path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------- RAF-DB
def rafdb_five(lm: np.ndarray) -> np.ndarray:
    """RAF-DB's 5 manual points from 68 iBUG ones: eye centres, nose tip, mouth corners."""
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


def write_rafdb(root: Path, n_train: int = 14, n_test: int = 7, pad: int = 10) -> dict[str, dict]:
    """RAF-DB basic: label file, aligned (100x100) and original images (padded by ``pad``),
    manual (5 points + gender/race/age) and auto (37 points) annotations, in original pixels."""
    expected = {}
    pool = faces(n_train + n_test)
    for k, (img, lm, expr) in enumerate(pool):
        split, idx = ("train", k + 1) if k < n_train else ("test", k - n_train + 1)
        stem = f"{split}_{idx:05d}" if split == "train" else f"{split}_{idx:04d}"
        _save(img, root / "Image" / "aligned" / f"{stem}_aligned.jpg", quality=95)
        original = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        _save(original, root / "Image" / "original" / f"{stem}.jpg", quality=95)
        lm_orig = lm + pad
        attrs = {"gender": k % 3, "race": k % 3, "age": k % 5}
        _points(root / "Annotation" / "manual" / f"{stem}_manu_attri.txt", rafdb_five(lm_orig),
                [str(attrs["gender"]), str(attrs["race"]), str(attrs["age"])])
        _points(root / "Annotation" / "auto" / f"{stem}_auto_attri.txt", lm_orig[17:54])
        expected[f"{stem}.jpg"] = {"split": split, "expr": expr, "code": code_of(rafdb.LABEL_MAP, expr),
                                   "image": img, "landmarks": lm_orig, "attrs": attrs}
    lines = [f"{name} {e['code']}" for name, e in expected.items()]
    label_file = root / "EmoLabel" / "list_patition_label.txt"
    label_file.parent.mkdir(parents=True, exist_ok=True)
    label_file.write_text("\n".join(lines) + "\n")
    return expected


# ---------------------------------------------------------------------- FER2013
def write_fer2013(root: Path, usages: tuple[str, ...] = ("Training",) * 14 + ("PublicTest",) * 7
                  + ("PrivateTest",) * 7, folders: bool = True) -> list[dict]:
    """``fer2013.csv`` (and, with ``folders``, the train/ test/ folder copy of the same rows)."""
    pool = faces(len(usages), size=48, variant="fer2013")
    rows = []
    for k, ((img, _, expr), usage) in enumerate(zip(pool, usages, strict=True)):
        grey = img[:, :, 0]
        rows.append({"row": k + 2, "expr": expr, "code": code_of(fer2013.LABEL_MAP, expr), "usage": usage,
                     "grey": grey})
    root.mkdir(parents=True, exist_ok=True)
    text = ["emotion,pixels,Usage"] + [f"{r['code']},{' '.join(map(str, r['grey'].ravel()))},{r['usage']}"
                                       for r in rows]
    (root / "fer2013.csv").write_text("\n".join(text) + "\n")
    if folders:
        for r in rows:
            split = "train" if r["usage"] == "Training" else "test"
            folder = code_of(fer2013.FOLDER_MAP, r["expr"])
            _save(r["grey"], root / split / folder / f"{r['usage']}_{r['row']:05d}.png")
    return rows


# ---------------------------------------------------------------------- AffectNet
AFFECTNET_HEADER = ",".join(affectnet.COLUMNS)


def write_affectnet(root: Path, n_train: int = 16, n_test: int = 8, canvas: tuple[int, int] = (130, 120),
                    dropped: tuple[int, ...] = (8, 9, 10)) -> dict[str, dict]:
    """Manually_Annotated_Images/<sub>/<hash>.jpg on a larger canvas, face box around the
    100x100 face, 68 landmarks in canvas pixels; 8 classes plus rows with codes 8-10."""
    expected = {}
    pool = faces(n_train + n_test + len(dropped), classes=CLASSES)
    rng = np.random.default_rng(3)
    lines = {"training.csv": [AFFECTNET_HEADER], "validation.csv": [AFFECTNET_HEADER]}
    W, H = canvas
    for k, (img, lm, expr) in enumerate(pool):
        canvas_img = np.full((H, W, 3), 90, np.uint8)
        x, y = int(rng.integers(0, W - 100)), int(rng.integers(0, H - 100))
        canvas_img[y:y + 100, x:x + 100] = img
        code = code_of(affectnet.LABEL_MAP, expr) if k < n_train + n_test else dropped[k - n_train - n_test]
        sub = f"{k % 3 + 1}/{hashlib.sha1(str(k).encode()).hexdigest()[:24]}.jpg"
        _save(canvas_img, root / "Manually_Annotated_Images" / sub, quality=98, subsampling=0)
        lm_canvas = lm + [x, y]
        lm_text = ";".join(f"{v:.2f}" for v in lm_canvas.ravel())
        valence, arousal = round(float(rng.uniform(-1, 1)), 4), round(float(rng.uniform(-1, 1)), 4)
        file = "validation.csv" if n_train <= k < n_train + n_test else "training.csv"
        lines[file].append(f"{sub},{x},{y},100,100,{lm_text},{code},{valence},{arousal}")
        expected[sub] = {"file": file, "code": code, "expr": affectnet.LABEL_MAP.get(code, "dropped"),
                         "image": img, "landmarks": lm, "box": (x, y, 100, 100), "valence": valence}
    for name, ls in lines.items():
        (root / name).write_text("\n".join(ls) + "\n")
    return expected


def write_pose_affectnet(root: Path, expected: dict[str, dict]) -> None:
    """``pose_affectnet/pose_30.txt`` and ``pose_45.txt`` as Wang et al. publish them (one
    ``subDirectory_filePath`` of an AffectNet validation image per line): every other
    validation face for > 30 degrees, every fourth for > 45 (a subset of the first)."""
    val = sorted(sub for sub, e in expected.items() if e["file"] == "validation.csv")
    folder = root / "pose_affectnet"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pose_30.txt").write_text("\n".join(val[::2]) + "\n")
    (folder / "pose_45.txt").write_text("\n".join(val[::4]) + "\n")


# ---------------------------------------------------------------------- CK+
#: Subject ids of the CK+ fixture (23: folds of 2 or 3 subjects), deliberately unsorted.
CK_SUBJECTS = ("S010", "S005", "S022", "S011", "S014", "S026", "S028", "S029", "S032", "S034", "S035", "S037",
               "S042", "S044", "S045", "S046", "S050", "S051", "S052", "S053", "S054", "S055", "S100")
_CK_EXPR = ("anger", "contempt", "disgust", "fear", "happy", "sad", "surprise")


def write_ckplus(root: Path, subjects: tuple[str, ...] = CK_SUBJECTS, frames: int = 4, size: int = 100,
                 pad: int = 20) -> dict[str, dict]:
    """cohn-kanade-images/, Emotion/, Landmarks/ for one labelled sequence per subject (two for
    the first subject), plus one unlabelled sequence; grey PNG frames, padded by ``pad``."""
    pool = faces(14, size=size, variant="ck", classes=_CK_EXPR)
    sequences = [(s, "001") for s in subjects] + [(subjects[0], "003")]
    expected = {}
    for q, (subject, seq) in enumerate(sequences):
        img, lm, expr = pool[q % len(pool)]
        code = code_of(ckplus.LABEL_MAP, expr)
        for f in range(1, frames + 1):
            stem = f"{subject}_{seq}_{f:08d}"
            grey = np.pad(img[:, :, 0], pad, mode="edge")
            _save(grey, root / "cohn-kanade-images" / subject / seq / f"{stem}.png")
            pts = lm + pad
            lm_file = root / "Landmarks" / subject / seq / f"{stem}_landmarks.txt"
            lm_file.parent.mkdir(parents=True, exist_ok=True)
            lm_file.write_text("".join(f"   {x:.7e}   {y:.7e}\n" for x, y in pts))
            if f > frames - 3:
                expected[stem] = {"subject": subject, "expr": expr, "code": code, "frame": f, "landmarks": pts}
        emo = root / "Emotion" / subject / seq / f"{subject}_{seq}_{frames:08d}_emotion.txt"
        emo.parent.mkdir(parents=True, exist_ok=True)
        emo.write_text(f"   {float(code):.7e}\n")
    # an unlabelled sequence: frames and landmarks, an empty Emotion folder
    _save(np.pad(pool[0][0][:, :, 0], pad), root / "cohn-kanade-images" / subjects[1] / "002" /
          f"{subjects[1]}_002_00000001.png")
    (root / "Emotion" / subjects[1] / "002").mkdir(parents=True, exist_ok=True)
    return expected


# ---------------------------------------------------------------------- FED-RO
#: Class folder names of the FED-RO fixture: canonical names and synonyms, mixed case.
FEDRO_FOLDERS = {"anger": "Angry", "disgust": "disgust", "fear": "fear", "happy": "Happiness",
                 "neutral": "neutral", "sad": "sadness", "surprise": "surprised"}


def write_fedro(root: Path, per_class: int = 2) -> dict[str, str]:
    """One folder per class (synonym names), JPEG faces; returns file name -> expression."""
    pool = faces(7 * per_class)
    expected = {}
    for k, (img, _, expr) in enumerate(pool):
        name = f"{expr}_{k:03d}.jpg"
        _save(img, root / FEDRO_FOLDERS[expr] / name, quality=95)
        expected[name] = expr
    return expected


# ---------------------------------------------------------------------- a whole data root
def write_data_root(root: Path) -> Path:
    """RAF-DB, FER2013, AffectNet, CK+ and FED-RO in their release layouts, 2-6 faces per class."""
    write_rafdb(root / "rafdb", n_train=28, n_test=14)
    write_fer2013(root / "fer2013", usages=("Training",) * 28 + ("PublicTest",) * 14 + ("PrivateTest",) * 14)
    expected = write_affectnet(root / "affectnet", n_train=32, n_test=16)
    write_pose_affectnet(root / "affectnet", expected)
    write_ckplus(root / "ckplus")
    write_fedro(root / "fedro", per_class=2)
    return root
