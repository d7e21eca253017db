"""Real-dataset loaders on tiny fixtures written in each dataset's on-disk format.

The fixtures (``tests/fixtures_datasets.py``) are drawn from SynFER faces, so the
images and landmarks each loader must return are known exactly.
"""
from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fer.data import CLASSES, LABEL_MAPS, DatasetFormatError, DatasetLayoutError, ImageDecodeError, SynFER, load_dataset
from fer.data.datasets import (
    DATASETS,
    FEDRO,
    FER2013,
    RAFDB,
    AffectNet,
    CKPlus,
    affectnet,
    base,
    ckplus,
    fedro,
    fer2013,
    label_table,
    rafdb,
    subject_folds,
)

import fixtures_datasets as fx  # tests/ helper module (pytest puts tests/ on sys.path)

README = Path(__file__).resolve().parents[1] / "data" / "README.md"
WRITERS = {"rafdb": fx.write_rafdb, "fer2013": fx.write_fer2013, "affectnet": fx.write_affectnet,
           "ckplus": fx.write_ckplus, "fedro": fx.write_fedro}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> tuple[Path, dict]:
    """Every dataset once, under one root (read-only for the tests that use it)."""
    root = tmp_path_factory.mktemp("data")
    expected = {name: write(root / name) for name, write in WRITERS.items()}
    return root, expected


def _copy(data_root, name: str, tmp_path: Path) -> Path:
    """A private copy of one dataset, for tests that break it."""
    dst = tmp_path / name
    shutil.copytree(data_root[0] / name, dst)
    return dst


def _check_consistency(ds) -> None:
    """targets == item labels, class_counts == bincount, meta collates."""
    labels = [ds[i]["label"] for i in range(len(ds))]
    assert ds.targets == labels
    counts = np.bincount(labels, minlength=len(ds.classes))
    assert ds.class_counts == {c: int(k) for c, k in zip(ds.classes, counts, strict=True)}
    assert list(ds.class_counts) == list(ds.classes)
    assert list(ds.classes) == [c for c in CLASSES if c in ds.classes]  # canonical order


# ---------------------------------------------------------------------- label maps and README
def test_label_maps_are_the_papers_encodings():
    assert LABEL_MAPS["rafdb"] == {1: "surprise", 2: "fear", 3: "disgust", 4: "happy", 5: "sad", 6: "anger",
                                   7: "neutral"}
    assert LABEL_MAPS["fer2013"] == {0: "anger", 1: "disgust", 2: "fear", 3: "happy", 4: "sad", 5: "surprise",
                                     6: "neutral"}
    assert LABEL_MAPS["affectnet"] == dict(enumerate(CLASSES))
    assert affectnet.DROPPED == {8: "none", 9: "uncertain", 10: "non-face"}
    assert LABEL_MAPS["ckplus"] == {0: "neutral", 1: "anger", 2: "contempt", 3: "disgust", 4: "fear", 5: "happy",
                                    6: "sad", 7: "surprise"}
    assert set(LABEL_MAPS["fer2013_folders"]) == {"angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"}
    for table in LABEL_MAPS.values():
        assert set(table.values()) <= set(CLASSES)
    for name in ("rafdb", "fer2013", "fer2013_folders", "fedro"):
        assert set(LABEL_MAPS[name].values()) == set(CLASSES[:7])
    assert ckplus.CK_CLASSES == ("happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")


def test_readme_documents_every_tree_and_label_map():
    text = README.read_text()
    for name, cls in DATASETS.items():
        assert cls.tree.strip() in text, f"data/README.md lacks the {name} tree"
        assert cls.source in text or cls.source.split(" (")[0] in text
    tables = {"rafdb": (rafdb.LABEL_MAP, RAFDB.default_classes), "fer2013": (fer2013.LABEL_MAP, CLASSES[:7]),
              "affectnet": (affectnet.LABEL_MAP, CLASSES), "ckplus": (ckplus.LABEL_MAP, CKPlus.default_classes)}
    for name, (table, classes) in tables.items():
        assert label_table(table, classes) in text, f"data/README.md lacks the {name} label table"
    assert label_table(fer2013.FOLDER_MAP, FER2013.default_classes, "folder") in text
    assert label_table(fedro.FOLDER_MAP, FEDRO.default_classes, "folder") in text


# ---------------------------------------------------------------------- RAF-DB
def test_rafdb_aligned_official_split(data_root):
    root, expected = data_root
    train, test = load_dataset("rafdb", root, "train"), load_dataset("raf-db", root / "rafdb", "test")
    assert (len(train), len(test)) == (14, 7)
    assert isinstance(train, RAFDB) and train.classes == CLASSES[:7]
    _check_consistency(train)
    for ds in (train, test):
        for i in range(len(ds)):
            item = ds[i]
            e = expected["rafdb"][item["meta"]["name"]]
            assert e["split"] == ds.split
            assert ds.classes[item["label"]] == e["expr"] == rafdb.LABEL_MAP[item["meta"]["code"]]
            assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 100, 100)
            assert "landmarks" not in item  # aligned: RAF-DB's points are in original pixels
            assert {k: item["meta"][k] for k in ("gender", "race", "age")} == e["attrs"]
    first = train[0]["image"].permute(1, 2, 0).numpy()
    stem = Path(train[0]["meta"]["name"]).stem
    with Image.open(root / "rafdb" / "Image" / "aligned" / f"{stem}_aligned.jpg") as im:
        assert np.array_equal(first, np.asarray(im.convert("RGB")))  # that very file, decoded as RGB
    diff = np.abs(first.astype(float) - expected["rafdb"][train[0]["meta"]["name"]]["image"])
    assert diff.mean() < 4  # the drawn face after a JPEG round trip (quality 95; SynFER's skin grain costs ~3)
    with pytest.raises(ValueError, match="original"):
        RAFDB(root / "rafdb", images="aligned", landmarks="manual")
    with pytest.raises(ValueError, match="split"):
        RAFDB(root / "rafdb", "val")


def test_rafdb_original_with_manual_and_auto_landmarks(data_root):
    root, expected = data_root
    ds = load_dataset("rafdb", root, "test", images="original")
    assert ds.landmark_kind == "manual"
    item = ds[2]
    e = expected["rafdb"][item["meta"]["name"]]
    assert item["image"].shape == (3, 120, 120)
    assert item["landmarks"].dtype == torch.float32 and item["landmarks"].shape == (5, 2)
    np.testing.assert_allclose(item["landmarks"].numpy(), fx.rafdb_five(e["landmarks"]), atol=1e-3)
    auto = load_dataset("rafdb", root, "test", images="original", landmarks="auto", image_size=60)
    item = auto[2]
    assert item["image"].shape == (3, 60, 60) and item["landmarks"].shape == (37, 2)
    k = 60 / 120  # resize maps pixel centres: x' = (x + 0.5) k - 0.5
    np.testing.assert_allclose(item["landmarks"].numpy(), (e["landmarks"][17:54] + 0.5) * k - 0.5, atol=1e-3)


def test_rafdb_class_subset_basic_folder_and_transform(data_root, tmp_path):
    root, _ = data_root
    nested = tmp_path / "download"
    shutil.copytree(root / "rafdb", nested / "basic")  # the zip's own folder is accepted
    four = ("anger", "happy", "neutral", "surprise")  # the masked-FER paper's classes
    ds = RAFDB(nested, "train", classes=four, transform=lambda im: im.float() / 255)
    assert ds.root == nested / "basic"
    assert ds.classes == ("neutral", "happy", "surprise", "anger")
    assert ds.class_counts == {c: 2 for c in ds.classes}
    assert ds.excluded == {"sad": 2, "fear": 2, "disgust": 2}
    item = ds[0]
    assert item["image"].dtype == torch.float32 and float(item["image"].max()) <= 1.0
    _check_consistency(ds)


def test_targets_need_no_decoding(data_root, monkeypatch):
    root, _ = data_root

    def boom(path):
        raise AssertionError(f"decoded {path}")

    monkeypatch.setattr(base, "decode_image", boom)
    for name, kw in [("rafdb", {}), ("fer2013", {"split": "val"}), ("affectnet", {}), ("ckplus", {}),
                     ("fedro", {})]:
        ds = load_dataset(name, root, **kw)
        assert len(ds.targets) == len(ds) > 0 and sum(ds.class_counts.values()) == len(ds)


# ---------------------------------------------------------------------- FER2013
def test_fer2013_csv_usage_splits_and_labels(data_root):
    root, expected = data_root
    rows = {r["row"]: r for r in expected["fer2013"]}
    sizes = {}
    for split, usage in fer2013.USAGE.items():
        ds = load_dataset("fer2013", root, split)
        assert ds.layout == "csv"
        sizes[split] = len(ds)
        _check_consistency(ds)
        for i in range(len(ds)):
            item = ds[i]
            r = rows[item["meta"]["row"]]
            assert item["meta"]["usage"] == usage == r["usage"]
            assert ds.classes[item["label"]] == r["expr"]
            assert item["image"].shape == (3, 48, 48)
            assert torch.equal(item["image"][0], torch.from_numpy(r["grey"]))  # exact: no compression
            assert torch.equal(item["image"][0], item["image"][2])
    assert sizes == {"train": 14, "val": 7, "test": 7}


def test_fer2013_csv_and_folders_agree(data_root):
    root, _ = data_root
    for split, usages in (("train", {"Training"}), ("test", {"PublicTest", "PrivateTest"})):
        folders = FER2013(root / "fer2013", split, layout="folders")
        assert folders.layout == "folders"
        from_csv = {}
        for s in usages:
            csv_split = {v: k for k, v in fer2013.USAGE.items()}[s]
            ds = FER2013(root / "fer2013", csv_split, layout="csv")
            for i in range(len(ds)):
                item = ds[i]
                from_csv[item["image"].numpy().tobytes()] = ds.classes[item["label"]]
        assert len(folders) == len(from_csv)
        for i in range(len(folders)):
            item = folders[i]
            assert from_csv[item["image"].numpy().tobytes()] == folders.classes[item["label"]]
        _check_consistency(folders)
    with pytest.raises(ValueError, match="no val"):
        FER2013(root / "fer2013", "val", layout="folders")


# ---------------------------------------------------------------------- AffectNet
def test_affectnet_7_vs_8_classes_and_face_crop(data_root):
    root, expected = data_root
    seven = load_dataset("affectnet", root, "train")
    eight = load_dataset("affectnet", root, "train", num_classes=8)
    assert seven.classes == CLASSES[:7] and eight.classes == CLASSES
    assert len(eight) == len(seven) + 2
    assert seven.excluded == {"contempt": 2, "none": 1, "uncertain": 1, "non-face": 1}
    assert eight.excluded == {"none": 1, "uncertain": 1, "non-face": 1}
    assert eight.class_counts["contempt"] == 2
    _check_consistency(eight)
    for i in range(len(eight)):
        item = eight[i]
        e = expected["affectnet"][item["meta"]["file"].split("/", 1)[1]]
        assert eight.classes[item["label"]] == e["expr"] == affectnet.LABEL_MAP[item["meta"]["code"]]
        assert (item["meta"]["face_x"], item["meta"]["face_y"]) == e["box"][:2]
        assert item["image"].shape == (3, 100, 100)  # cropped to the face box
        got = item["image"].permute(1, 2, 0).numpy().astype(float)
        assert np.abs(got - e["image"]).mean() < 2  # JPEG round trip
        assert np.abs(got[2:] - e["image"][:-2]).mean() > 2 * np.abs(got - e["image"]).mean()  # not off by 2 px
        np.testing.assert_allclose(item["landmarks"].numpy(), e["landmarks"], atol=0.01)
    uncropped = AffectNet(root / "affectnet", "test", crop=False)
    item = uncropped[0]
    e = expected["affectnet"][item["meta"]["file"].split("/", 1)[1]]
    assert item["image"].shape == (3, 120, 130)
    np.testing.assert_allclose(item["landmarks"].numpy(), e["landmarks"] + e["box"][:2], atol=0.01)
    assert len(uncropped) == 7 and load_dataset("affectnet", root, "test", num_classes=8).class_counts["contempt"] == 1
    with pytest.raises(ValueError, match="num_classes"):
        AffectNet(root / "affectnet", num_classes=6)
    with pytest.raises(ValueError, match="our 'test'"):
        AffectNet(root / "affectnet", "val")


def test_affectnet_box_clipped_to_image(tmp_path):
    fx.write_affectnet(tmp_path, n_train=2, n_test=1, dropped=())
    csv = tmp_path / "training.csv"
    lines = csv.read_text().splitlines()
    f = lines[1].split(",")
    f[1], f[2], f[3], f[4] = "-10", "5", "200", "50"  # sticks out left and right
    lines[1] = ",".join(f)
    csv.write_text("\n".join(lines) + "\n")
    ds = AffectNet(tmp_path, "train")
    item = ds[[ds.describe(i)["row"] for i in range(len(ds))].index(2)]
    assert item["image"].shape == (3, 50, 130)
    assert item["meta"]["face_x"] == -10


# ---------------------------------------------------------------------- CK+
def test_ckplus_last_three_frames_and_landmarks(data_root):
    root, expected = data_root
    ds = load_dataset("ck+", root)
    assert ds.split == "all" and ds.classes == ckplus.CK_CLASSES
    assert len(ds) == 3 * (len(fx.CK_SUBJECTS) + 1) and ds.unlabelled_sequences == 1
    _check_consistency(ds)
    seen = set()
    for i in range(len(ds)):
        m = ds.describe(i)
        stem = Path(m["path"]).stem
        e = expected["ckplus"][stem]
        seen.add(stem)
        assert m["subject"] == e["subject"] and m["frame"] == e["frame"] and ckplus.LABEL_MAP[m["code"]] == e["expr"]
        assert ds.classes[ds.targets[i]] == e["expr"]
    assert seen == set(expected["ckplus"])  # frames 2-4 of each 4-frame sequence, not frame 1
    full = CKPlus(root / "ckplus", crop_face=False)
    item, stem = full[5], Path(full.describe(5)["path"]).stem
    assert item["image"].shape == (3, 140, 140)
    np.testing.assert_allclose(item["landmarks"].numpy(), expected["ckplus"][stem]["landmarks"], atol=1e-4)
    cropped = ds[5]
    lm = cropped["landmarks"].numpy()
    side = cropped["image"].shape[-1]
    assert cropped["image"].shape[-2] == side < 140
    assert lm.min() > 0 and lm.max() < side  # the face fills the crop, with a margin
    assert (lm.max(0) - lm.min(0)).max() == pytest.approx(side / 1.2, abs=1.5)


def test_ckplus_person_independent_folds(data_root):
    root, _ = data_root
    subjects = sorted(fx.CK_SUBJECTS)  # zero-padded ids: string order == numeric order
    folds = subject_folds(fx.CK_SUBJECTS)
    assert folds == {s: k % 10 for k, s in enumerate(subjects)}  # sampling interval 10
    assert subject_folds(["S5", "S10", "S100"], 2) == {"S5": 0, "S10": 1, "S100": 0}  # numeric, not string, order
    test_subjects = []
    for k in range(10):
        test = load_dataset("ckplus", root, "test", fold=k)
        train = load_dataset("ckplus", root, "train", fold=k)
        assert len(test) + len(train) == 3 * (len(fx.CK_SUBJECTS) + 1)
        a, b = set(test.subjects), set(train.subjects)
        assert a and not a & b and a | b == set(fx.CK_SUBJECTS)
        assert a == {s for s in subjects if subjects.index(s) % 10 == k}
        assert all(m == k for m in (test.describe(i)["fold"] for i in range(len(test))))
        test_subjects += sorted(a)
    assert sorted(test_subjects) == subjects  # each subject in exactly one test fold
    with pytest.raises(ValueError, match="fold"):
        load_dataset("ckplus", root, "test")
    with pytest.raises(ValueError, match="fold must be"):
        load_dataset("ckplus", root, "test", fold=10)
    with pytest.raises(ValueError, match="takes no fold"):
        load_dataset("ckplus", root, "all", fold=1)
    assert "landmarks" not in CKPlus(root / "ckplus", landmarks=False)[0]


def test_ckplus_six_and_eight_classes(data_root):
    root, _ = data_root
    six = CKPlus(root / "ckplus", num_classes=6, crop_face=False)
    assert "contempt" not in six.classes and six.excluded == {"contempt": 12}
    eight = CKPlus(root / "ckplus", num_classes=8, crop_face=False)
    assert eight.classes == CLASSES and eight.class_counts["neutral"] == 0
    assert six.folds == eight.folds  # folds never depend on the classes


# ---------------------------------------------------------------------- FED-RO
def test_fedro_synonym_folders(data_root):
    root, expected = data_root
    ds = load_dataset("fed-ro", root)
    assert ds.split == "test" and len(ds) == 14 and ds.class_counts == {c: 2 for c in CLASSES[:7]}
    _check_consistency(ds)
    for i in range(len(ds)):
        assert ds.classes[ds.targets[i]] == expected["fedro"][Path(ds.describe(i)["path"]).name]
    assert ds[0]["image"].shape == (3, 100, 100)
    with pytest.raises(ValueError, match="test set only"):
        FEDRO(root / "fedro", "train")


def test_fedro_unknown_folder_and_stray_files(data_root, tmp_path):
    root = _copy(data_root, "fedro", tmp_path)
    (root / "Angry" / "notes.txt").write_text("x")
    (root / "Angry" / ".DS_Store").write_text("x")
    with pytest.warns(UserWarning, match="ignored 1 non-image"):
        ds = FEDRO(root)
    assert ds.ignored == [str(root / "Angry" / "notes.txt")]
    (root / "contemptuous").mkdir()
    with pytest.raises(DatasetFormatError, match="contemptuous"):
        FEDRO(root)


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize("name", sorted(DATASETS))
def test_missing_root_names_dataset_tree_and_path(name, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DatasetLayoutError) as err:
        load_dataset(name, missing)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert msg.startswith(f"{name}:") and str(missing) in msg
    assert DATASETS[name].tree.strip() in msg


@pytest.mark.parametrize("name,label_file", [
    ("rafdb", "EmoLabel/list_patition_label.txt"),
    ("fer2013", "fer2013.csv"),
    ("affectnet", "validation.csv"),
])
def test_missing_label_file(data_root, tmp_path, name, label_file):
    root = _copy(data_root, name, tmp_path)
    (root / label_file).unlink()
    with pytest.raises(DatasetLayoutError, match=re.escape(str(root / label_file))):
        load_dataset(name, root, "test", **({"layout": "csv"} if name == "fer2013" else {}))


def test_ckplus_missing_landmarks_folder(data_root, tmp_path):
    root = _copy(data_root, "ckplus", tmp_path)
    shutil.rmtree(root / "Landmarks")
    with pytest.raises(DatasetLayoutError, match="crop_face=False"):
        CKPlus(root)
    ds = CKPlus(root, crop_face=False)
    assert "landmarks" not in ds[0]


def test_ckplus_missing_frames_are_listed_or_skipped(data_root, tmp_path):
    root = _copy(data_root, "ckplus", tmp_path)
    shutil.rmtree(root / "cohn-kanade-images" / "S022")
    with pytest.raises(DatasetLayoutError, match="S022_001_00000004.png"):
        CKPlus(root)
    with pytest.warns(UserWarning, match=r"3 sample\(s\) left out, listed file\(s\) missing; 3 file"):
        ds = CKPlus(root, on_error="skip")
    assert len(ds) == 3 * len(fx.CK_SUBJECTS) and "S022" not in ds.subjects
    assert str(root / "cohn-kanade-images/S022/001/S022_001_00000002.png") in ds.skipped
    assert ds.folds == subject_folds(fx.CK_SUBJECTS)  # the subject still counts for the folds


def test_errors_pickle_for_dataloader_workers():
    import pickle

    for err in (DatasetLayoutError("rafdb", "/x", "tree", ["/x/a"], "hint"), ImageDecodeError("/x/a.jpg", "bad"),
                DatasetFormatError("/x/l.txt: bad", "/x/l.txt")):
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
        assert getattr(back, "path", None) == getattr(err, "path", None)


@pytest.mark.parametrize("name,file,header", [
    ("fer2013", "fer2013.csv", "emotion,pixel,Usage"),
    ("affectnet", "training.csv", "subDirectory_filePath,face_x,face_y,face_width,face_height,landmarks,"
                                  "expression,valence,arousal"),
])
def test_wrong_header(data_root, tmp_path, name, file, header):
    root = _copy(data_root, name, tmp_path)
    lines = (root / file).read_text().splitlines()
    (root / file).write_text("\n".join([header] + lines[1:]) + "\n")
    with pytest.raises(DatasetFormatError, match="wrong header") as err:
        load_dataset(name, root, "train")
    assert str(root / file) in str(err.value)


def _edit_line(path: Path, index: int, edit) -> None:
    lines = path.read_text().splitlines()
    lines[index] = edit(lines[index])
    path.write_text("\n".join(lines) + "\n")


def test_unknown_label_codes(data_root, tmp_path):
    raf = _copy(data_root, "rafdb", tmp_path)
    _edit_line(raf / "EmoLabel/list_patition_label.txt", 3, lambda ln: ln.split()[0] + " 8")
    with pytest.raises(DatasetFormatError, match=r"line 4: unknown RAF-DB label '8'"):
        RAFDB(raf, "test")  # the whole file is checked, not only the split's lines
    fer = _copy(data_root, "fer2013", tmp_path)
    _edit_line(fer / "fer2013.csv", 2, lambda ln: "7" + ln[1:])
    with pytest.raises(DatasetFormatError, match=r"line 3: unknown FER2013 emotion '7'"):
        FER2013(fer, "test")
    aff = _copy(data_root, "affectnet", tmp_path)
    _edit_line(aff / "validation.csv", 1, lambda ln: ",".join(ln.split(",")[:6] + ["11"] + ln.split(",")[7:]))
    with pytest.raises(DatasetFormatError, match=r"validation.csv, line 2: unknown AffectNet expression '11'"):
        AffectNet(aff, "test")
    ck = _copy(data_root, "ckplus", tmp_path)
    emo = next((ck / "Emotion").rglob("*_emotion.txt"))
    emo.write_text("   9.0000000e+00\n")
    with pytest.raises(DatasetFormatError, match="unknown CK\\+ emotion") as err:
        CKPlus(ck)
    assert str(emo) in str(err.value)


@pytest.mark.parametrize("bad", ["../../etc/passwd.jpg", "/etc/passwd", "C:\\images\\x.jpg", "sub/../../x.jpg"])
def test_label_paths_escaping_the_root_are_refused(data_root, tmp_path, bad):
    aff = _copy(data_root, "affectnet", tmp_path)
    _edit_line(aff / "training.csv", 2, lambda ln: bad + "," + ln.split(",", 1)[1])
    with pytest.raises(DatasetFormatError, match="refused path") as err:
        AffectNet(aff, "train", on_error="skip")  # never skipped, whatever on_error says
    assert "line 3" in str(err.value)
    raf = _copy(data_root, "rafdb", tmp_path)
    _edit_line(raf / "EmoLabel/list_patition_label.txt", 0, lambda ln: bad.replace(" ", "") + " 1")
    with pytest.raises(DatasetFormatError, match="refused path"):
        RAFDB(raf, "train")


def test_corrupt_image_raises_naming_the_file_or_is_skipped(data_root, tmp_path):
    root = _copy(data_root, "rafdb", tmp_path)
    bad = root / "Image/aligned/train_00003_aligned.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    ds = RAFDB(root, "train")
    assert len(ds) == 14  # exists: decided at access time
    with pytest.raises(ImageDecodeError, match=re.escape(str(bad))) as err:
        ds[2]
    assert err.value.path == str(bad) and isinstance(err.value, OSError)
    assert ds[1]["meta"]["name"] == "train_00002.jpg"
    skip = RAFDB(root, "train", on_error="skip")
    with pytest.warns(UserWarning, match=r"skipped undecodable sample .*train_00003_aligned.jpg.*1 skipped"):
        item = skip[2]
    assert item["meta"]["name"] == "train_00004.jpg" and skip.skipped == [str(bad)]
    with pytest.warns(UserWarning, match="verify\\(\\) dropped 1"):
        assert skip.verify(progress=False) == [str(bad)]
    assert len(skip) == 13 and skip.skipped == [str(bad)]
    assert "train_00003.jpg" not in {skip.describe(i)["name"] for i in range(len(skip))}
    _check_consistency(skip)
    with pytest.raises(ImageDecodeError):
        ds.verify(progress=False)


def _pixels(edit):
    """Edit the pixels field of a fer2013.csv row (a list of value strings) and rebuild the row."""
    def row(line: str) -> str:
        emotion, pixels, usage = line.split(",")
        return ",".join([emotion, " ".join(edit(pixels.split())), usage])
    return row


# One fault per case, each caught by its own check in FER2013._load (count, upper bound,
# lower bound, parse): removing any one of the checks lets its case through.
CORRUPT_FER2013_ROWS = {
    "2303 values": (_pixels(lambda v: v[:-1]), r"pixels must be 2304 values in 0\.\.255, got 2303 in \d+\.\.\d+"),
    "2305 values": (_pixels(lambda v: v + ["7"]), r"pixels must be 2304 values in 0\.\.255, got 2305 in \d+\.\.\d+"),
    "a value > 255": (_pixels(lambda v: ["256"] + v[1:]),  # the boundary: > 256 would let it through
                      r"pixels must be 2304 values in 0\.\.255, got 2304 in \d+\.\.256\b"),
    "a value < 0": (_pixels(lambda v: ["-1"] + v[1:]),
                    r"pixels must be 2304 values in 0\.\.255, got 2304 in -1\.\.\d+"),
    "a non-integer value": (_pixels(lambda v: ["1.5"] + v[1:]), r"pixels must be space-separated integers"),
}


@pytest.mark.parametrize("fault", list(CORRUPT_FER2013_ROWS))
def test_corrupt_fer2013_row(data_root, tmp_path, fault):
    edit, reason = CORRUPT_FER2013_ROWS[fault]
    root = _copy(data_root, "fer2013", tmp_path)
    csv = root / "fer2013.csv"
    _edit_line(csv, 1, edit)  # line 2: the first Training row
    ds = FER2013(root, "train")
    assert len(ds) == len(FER2013(data_root[0] / "fer2013", "train"))  # found at access, not construction
    with pytest.raises(ImageDecodeError) as err:
        ds[0]
    msg = str(err.value)
    assert err.value.path == f"{csv}:2"  # the file and the row
    assert msg.startswith(f"cannot decode image {csv}:2: ")
    assert re.search(reason, msg), msg  # the expected thing, and what was found
    assert "row 2 of fer2013.csv is damaged" in msg  # the fix: restore the file, or skip the row
    assert "fer2013.tar.gz" in msg and "on_error='skip'" in msg
    with pytest.raises(ImageDecodeError, match=re.escape(f"{csv}:2")):
        ds.verify(progress=False)
    skip = FER2013(root, "train", on_error="skip")
    with pytest.warns(UserWarning, match=re.escape(f"{csv}:2")):
        assert skip[0]["meta"]["row"] == 3
    assert skip.skipped == [f"{csv}:2"]


def test_missing_images_raise_or_are_skipped_at_construction(data_root, tmp_path):
    root = _copy(data_root, "affectnet", tmp_path)
    rows = (root / "training.csv").read_text().splitlines()[1:3]  # two labelled training rows
    gone = sorted(root / "Manually_Annotated_Images" / r.split(",")[0] for r in rows)
    for p in gone:
        p.unlink()
    with pytest.raises(DatasetLayoutError, match="on_error='skip'") as err:
        AffectNet(root, "train", num_classes=8)
    assert str(gone[0]) in str(err.value) or str(gone[1]) in str(err.value)
    full = len(AffectNet(data_root[0] / "affectnet", "train", num_classes=8))
    with pytest.warns(UserWarning, match=r"2 sample\(s\) left out, listed file\(s\) missing"):
        ds = AffectNet(root, "train", num_classes=8, on_error="skip")
    assert len(ds) == full - 2 and sorted(ds.skipped) == [str(p) for p in gone]
    _check_consistency(ds)
    with pytest.raises(ValueError, match="on_error"):
        AffectNet(root, on_error="ignore")


def test_every_image_missing_is_a_layout_error_even_when_skipping(data_root, tmp_path):
    root = _copy(data_root, "rafdb", tmp_path)
    for p in (root / "Image/aligned").glob("train_*"):
        p.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no skip report: it is an error
        with pytest.raises(DatasetLayoutError, match="Every listed file is missing"):
            RAFDB(root, "train", on_error="skip")


# ---------------------------------------------------------------------- one call, one item format
def test_load_dataset_synfer_and_names():
    ds = load_dataset("synfer", None, "test", variant="occluded", n=4, image_size=48)
    assert isinstance(ds, SynFER) and ds.variant.name == "occluded" and len(ds) == 4
    with pytest.raises(ValueError, match="no root"):
        load_dataset("synfer", "data", "train")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_dataset("jaffe", "data")


def test_batches_collate_like_synfer(data_root):
    root, _ = data_root
    for name, kw in [("rafdb", {"images": "original"}), ("fer2013", {}), ("affectnet", {}), ("ckplus", {}),
                     ("fedro", {})]:
        ds = load_dataset(name, root, image_size=64, **kw)
        batch = next(iter(DataLoader(ds, batch_size=4, shuffle=False)))
        assert batch["image"].shape == (4, 3, 64, 64) and batch["image"].dtype == torch.uint8
        assert batch["label"].tolist() == ds.targets[:4]
        assert batch["meta"]["dataset"] == [name] * 4 and len(batch["meta"]["path"]) == 4
        if "landmarks" in batch:
            assert batch["landmarks"].dtype == torch.float32 and batch["landmarks"].shape[0] == 4


def test_loaders_pick_up_the_landmark_cache(tmp_path):
    """Aligned RAF-DB ships no usable landmarks; a cache written by
    `python -m fer.data.landmarks` fills them in (rescaled with image_size)."""
    import numpy as np

    from fer.data.landmarks import annotate_dataset, landmarks_path

    root = tmp_path / "rafdb"
    fx.write_rafdb(root)
    ds = load_dataset("rafdb", root, "test")
    assert "landmarks" not in ds[0]
    fake = np.tile(np.linspace(10, 90, 68, dtype=np.float32)[:, None], (1, 2))

    def backend(images, **_):
        return [fake.copy() for _ in images]

    annotate_dataset(ds, landmarks_path(root, "test"), backend=backend, progress=False, base_dir=root)
    again = load_dataset("rafdb", root, "test")
    np.testing.assert_allclose(again[0]["landmarks"].numpy(), fake, atol=1e-4)
    half = load_dataset("rafdb", root, "test", image_size=50)
    np.testing.assert_allclose(half[0]["landmarks"].numpy(), (fake + 0.5) * 0.5 - 0.5, atol=1e-4)
    assert "landmarks" not in load_dataset("rafdb", root, "train")[0]


def test_fingerprint_follows_the_listing(tmp_path):
    root = tmp_path / "fedro"
    fx.write_fedro(root)
    a, b = load_dataset("fedro", root), load_dataset("fedro", root)
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != load_dataset("fedro", root, image_size=64).fingerprint()
    first = sorted(p for p in root.rglob("*.jpg"))[0]
    first.unlink()
    assert load_dataset("fedro", root, on_error="skip").fingerprint() != a.fingerprint()
