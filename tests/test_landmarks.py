"""fer.data.landmarks: dlib on a real photograph and on SynFER, the face-alignment glue,
the cached resumable dataset pass and its CLI, and MANet's eight landmarks."""
from __future__ import annotations

import sys
import types
import urllib.error

import numpy as np
import pytest
import torch

from fer.data import SynFER
from fer.data.landmarks import (
    FACE_ALIGNMENT_WEIGHTS,
    IBUG68_TO_MANET8,
    LandmarkResult,
    annotate_dataset,
    detect,
    dlib_model_path,
    face_alignment_weights_dir,
    landmark_error,
    landmarks_path,
    read_landmarks,
    to_landmarks8,
)
from fer.data.landmarks import backends
from fer.data.landmarks.__main__ import main as cli_main

skimage_data = pytest.importorskip("skimage.data")  # test dependency (scikit-image)

# Hand-marked on skimage.data.astronaut() (a NASA portrait, public domain) at 4x zoom:
# pupils, nose tip, mouth corners and chin, in pixels.
ASTRONAUT = {"left_eye": (203.75, 100.0), "right_eye": (246.0, 103.0), "nose_tip": (224.0, 126.0),
             "left_mouth_corner": (204.0, 141.0), "right_mouth_corner": (244.0, 141.0), "chin": (221.0, 177.5)}
ASTRONAUT_FACE_BOX = (165, 70, 285, 190)  # x0, y0, x1, y1: forehead to chin, cheek to cheek


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()


@pytest.fixture(scope="module")
def clean224() -> list[dict]:
    ds = SynFER("clean", split="test", n=8, image_size=224, seed=0, with_relevance=False)
    return [ds[i] for i in range(len(ds))]


def _named(p: np.ndarray) -> dict[str, np.ndarray]:
    return {"left_eye": p[36:42].mean(0), "right_eye": p[42:48].mean(0), "nose_tip": p[30],
            "left_mouth_corner": p[48], "right_mouth_corner": p[54], "chin": p[8]}


# ---------------------------------------------------------------------------- dlib, for real
def test_dlib_model_is_found_without_importing_its_package():
    path = dlib_model_path()
    assert path.name == "shape_predictor_68_face_landmarks.dat" and path.stat().st_size > 90e6
    assert "face_recognition_models" not in sys.modules  # its __init__ needs pkg_resources


def test_dlib_on_a_photograph(astronaut):
    res = detect(astronaut)  # H x W x 3 uint8
    assert isinstance(res, LandmarkResult) and len(res) == 1
    assert res.ok[0] and res.detected[0] and res.messages[0] == ""
    p = res.landmarks[0]
    assert p.shape == (68, 2) and p.dtype == np.float32
    x0, y0, x1, y1 = ASTRONAUT_FACE_BOX
    assert ((p[:, 0] > x0) & (p[:, 0] < x1) & (p[:, 1] > y0) & (p[:, 1] < y1)).all()
    bx0, by0, bx1, by1 = res.boxes[0]
    assert x0 <= bx0 < bx1 <= x1 + 5 and y0 <= by0 < by1 <= y1
    got = _named(p)
    iod = np.linalg.norm(np.subtract(ASTRONAUT["left_eye"], ASTRONAUT["right_eye"]))
    errors = {k: float(np.linalg.norm(got[k] - np.array(v))) / iod for k, v in ASTRONAUT.items()}
    assert max(errors.values()) < 0.15, errors  # measured: 0.03-0.09 of the inter-pupil distance
    # anatomy: eyes above the nose tip above the mouth above the chin; left eye on the left
    assert got["left_eye"][1] < got["nose_tip"][1] < got["left_mouth_corner"][1] < got["chin"][1]
    assert got["left_eye"][0] < got["nose_tip"][0] < got["right_eye"][0]
    assert p[17:27, 1].max() < p[48:68, 1].min()  # brows above the mouth


def test_dlib_on_synfer_against_exact_landmarks(clean224):
    res = detect([it["image"] for it in clean224])
    truth = np.stack([it["landmarks"].numpy() for it in clean224])
    nme = landmark_error(res.landmarks, truth)  # / outer-eye-corner distance (300-W)
    assert res.detected.sum() >= 6  # measured: 100 of 100 clean faces at 224 px
    assert np.nanmean(nme[res.detected]) < 0.10  # measured: 0.043 over 100 faces (median 0.038)
    print(f"SynFER clean@224: detected {res.detected.sum()}/{len(res)}, NME {np.nanmean(nme):.3f}")


def test_input_layouts_agree(clean224):
    chw = clean224[0]["image"]
    hwc = chw.permute(1, 2, 0).numpy()
    small = SynFER("clean", split="test", n=1, image_size=112, seed=5, with_relevance=False)[0]["image"]
    one = detect(chw).landmarks[0]
    np.testing.assert_array_equal(detect(hwc).landmarks[0], one)
    batch = detect(torch.stack([chw, chw]))
    np.testing.assert_array_equal(batch.landmarks[1], one)
    mixed = detect([chw, small, hwc])  # sizes may differ in a list
    assert len(mixed) == 3 and mixed.ok.all()
    np.testing.assert_array_equal(mixed.landmarks[2], one)
    grey = detect(hwc.mean(axis=2).astype(np.uint8))
    assert grey.ok[0] and landmark_error(grey.landmarks[0], clean224[0]["landmarks"].numpy()) < 0.15


def test_no_face_fallback_and_failure():
    blank = np.full((120, 100, 3), 128, np.uint8)
    none = detect(blank, fallback="none")
    assert not none.ok[0] and not none.detected[0] and np.isnan(none.landmarks[0]).all()
    assert np.isnan(none.boxes[0]).all() and none.messages[0] == "no face detected"
    fb = detect(blank, fallback="image", fallback_inset=0.1)
    assert fb.ok[0] and not fb.detected[0] and "image box" in fb.messages[0]
    np.testing.assert_allclose(fb.boxes[0], [10, 12, 89, 107], atol=0.6)
    assert np.isfinite(fb.landmarks[0]).all()


def test_detect_errors(tmp_path):
    img = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown landmark backend"):
        detect(img, backend="mediapipe")
    with pytest.raises(TypeError, match="uint8"):
        detect(img.astype(np.float32))
    with pytest.raises(TypeError, match="no extra keyword"):
        detect(img, flip_input=True)
    with pytest.raises(ValueError, match="fallback"):
        detect(img, fallback="skip")
    with pytest.raises(FileNotFoundError, match="pip install face-recognition-models"):
        detect(img, model_path=tmp_path / "missing.dat")


def test_landmark_error_values():
    t = np.zeros((68, 2))
    t[36], t[45] = (0, 0), (10, 0)
    p = t + np.array([3.0, 4.0])  # every point 5 px off; outer-corner distance 10
    assert landmark_error(p, t) == pytest.approx(0.5)
    assert landmark_error(p, t, normalise="none") == pytest.approx(5.0)


# ---------------------------------------------------------------------------- face-alignment glue
class _FakeFA:
    """Stands in for face_alignment.FaceAlignment: faces are boxes around bright pixels."""

    instances: list["_FakeFA"] = []

    def __init__(self, landmarks_type, device="cuda", flip_input=True, face_detector="sfd", compile=True,
                 max_batch_size=1):
        self.kw = dict(device=device, flip_input=flip_input, face_detector=face_detector, compile=compile,
                       max_batch_size=max_batch_size)
        self.batches: list[tuple[int, ...]] = []
        self.fallbacks = 0
        _FakeFA.instances.append(self)

    def get_landmarks_from_batch(self, batch, detected_faces=None, return_bboxes=False):
        self.batches.append(tuple(batch.shape))
        lms, boxes = [], []
        for img in batch:
            v = float(img[0, 0, 0])
            if v == 0:  # no face
                lms.append([])
                boxes.append([])
            else:  # two faces; the second has the higher score and landmarks = v
                lms.append(np.concatenate([np.full((68, 2), -1.0), np.full((68, 2), v)]))
                boxes.append([np.array([0, 0, 5, 5, 0.6]), np.array([1, 1, 9, 9, 0.99])])
        return lms, None, boxes

    def get_landmarks_from_image(self, image, detected_faces=None):
        self.fallbacks += 1
        return [np.full((68, 2), 7.0)]


def _fake_module(fa_class) -> types.ModuleType:
    mod = types.ModuleType("face_alignment")
    mod.FaceAlignment = fa_class
    mod.LandmarksType = types.SimpleNamespace(TWO_D=1)
    return mod


@pytest.fixture
def fake_fa(monkeypatch):
    backends._fa_model.cache_clear()
    _FakeFA.instances.clear()
    monkeypatch.setitem(sys.modules, "face_alignment", _fake_module(_FakeFA))
    yield _FakeFA
    backends._fa_model.cache_clear()


def test_face_alignment_batches_by_size_and_picks_best_face(fake_fa):
    imgs = [np.full((32, 32, 3), 50, np.uint8), np.full((32, 32, 3), 60, np.uint8),
            np.zeros((32, 32, 3), np.uint8), np.full((40, 48, 3), 70, np.uint8),
            np.full((32, 32, 3), 80, np.uint8)]
    res = detect(imgs, backend="face_alignment", device="cpu", batch_size=2)
    fa = fake_fa.instances[0]
    assert fa.kw["device"] == "cpu" and fa.kw["compile"] is False and fa.kw["max_batch_size"] == 2
    assert sorted(fa.batches) == sorted([(2, 3, 32, 32), (2, 3, 32, 32), (1, 3, 40, 48)])
    np.testing.assert_array_equal(res.landmarks[[0, 1, 3, 4], 0, 0], [50, 60, 70, 80])  # best-scored face
    np.testing.assert_allclose(res.boxes[0], [1, 1, 9, 9])
    assert res.detected.tolist() == [True, True, False, True, True]
    assert res.ok.all() and res.landmarks[2, 0, 0] == 7.0 and fa.fallbacks == 1  # image-box fallback
    res2 = detect(imgs[2], backend="face_alignment", device="cpu", fallback="none")
    assert not res2.ok[0] and np.isnan(res2.landmarks).all()


def test_face_alignment_not_installed(monkeypatch):
    backends._fa_model.cache_clear()
    monkeypatch.setitem(sys.modules, "face_alignment", None)  # import fails
    with pytest.raises(ImportError, match="pip install face-alignment"):
        detect(np.zeros((32, 32, 3), np.uint8), backend="face_alignment", device="cpu")
    backends._fa_model.cache_clear()


def test_face_alignment_offline_error_names_the_weight_folder(monkeypatch):
    class Offline(_FakeFA):
        def __init__(self, *a, **k):
            raise urllib.error.URLError("no network")

    backends._fa_model.cache_clear()
    monkeypatch.setitem(sys.modules, "face_alignment", _fake_module(Offline))
    with pytest.raises(RuntimeError) as err:
        detect(np.zeros((32, 32, 3), np.uint8), backend="face_alignment", device="cpu")
    msg = str(err.value)
    assert str(face_alignment_weights_dir()) in msg and "hub/checkpoints" in msg
    assert all(name in msg for name in FACE_ALIGNMENT_WEIGHTS if
               not (face_alignment_weights_dir() / name).exists())
    backends._fa_model.cache_clear()


# ---------------------------------------------------------------------------- MANet's eight points
def test_eight_from_68_is_exact(clean224):
    lm = clean224[0]["landmarks"]
    l8 = to_landmarks8(lm)
    assert isinstance(l8, torch.Tensor) and l8.shape == (8, 2)
    np.testing.assert_array_equal(l8.numpy(), lm.numpy()[list(IBUG68_TO_MANET8)])
    p = lm.numpy()
    assert l8[1, 0] < l8[2, 0] < l8[0, 0] < l8[3, 0] < l8[4, 0]  # eye corners left to right, nose between
    assert l8[0, 1] < l8[5, 1] < l8[7, 1] and l8[6, 1] < l8[7, 1]  # nose, mouth corners, lower lip
    iod = np.linalg.norm(p[36:42].mean(0) - p[42:48].mean(0))
    assert np.linalg.norm((l8[1] + l8[2]).numpy() / 2 - p[36:42].mean(0)) < 0.05 * iod  # eye centre
    batch = to_landmarks8(np.stack([p, p]))
    assert batch.shape == (2, 8, 2) and isinstance(batch, np.ndarray)


def test_eight_from_rafdb5(clean224):
    for it in clean224:
        p = it["landmarks"].numpy()
        five = np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])  # RAF-DB's manual points
        est, exact = to_landmarks8(five), to_landmarks8(p)
        iod = np.linalg.norm(five[1] - five[0])
        np.testing.assert_allclose(est[[0, 5, 6]], exact[[0, 5, 6]], atol=1e-4)  # nose, mouth corners
        np.testing.assert_allclose((est[1] + est[2]) / 2, five[0], atol=1e-4)  # eye centres exact
        assert np.abs(est[1:5] - exact[1:5]).max() < 0.12 * iod  # corners approximated
        assert np.linalg.norm(est[7] - exact[7]) < 0.3 * iod  # lower lip extrapolated


def test_eight_rejects_unknown_layouts():
    with pytest.raises(ValueError, match="index_map"):
        to_landmarks8(np.zeros((37, 2)))
    pts = np.arange(74, dtype=np.float64).reshape(37, 2)
    np.testing.assert_array_equal(to_landmarks8(pts, index_map=range(8)), pts[:8])
    with pytest.raises(ValueError, match="needs 68"):
        to_landmarks8(np.zeros((5, 2)), layout="ibug68")


# ---------------------------------------------------------------------------- cached dataset pass
def _fake_backend(calls: list[int], fail_after: int | None = None):
    def fake(images):
        if fail_after is not None and len(calls) >= fail_after:
            raise RuntimeError("simulated crash")
        calls.append(len(images))
        return np.stack([np.full((68, 2), float(img.mean()), np.float32) for img in images])
    return fake


def test_annotate_dataset_resumes_and_caches(tmp_path):
    ds = SynFER("clean", split="test", n=10, image_size=48, seed=1, with_relevance=False)
    out = tmp_path / "landmarks68-test.npz"
    partial = tmp_path / "landmarks68-test.partial.npz"
    calls: list[int] = []
    with pytest.raises(RuntimeError, match="simulated crash"):
        annotate_dataset(ds, out, backend=_fake_backend(calls, fail_after=3), batch_size=2, checkpoint_every=4,
                         progress=False)
    assert not out.exists() and partial.exists()
    assert len(read_landmarks(partial)) == 6 and not read_landmarks(partial).complete
    calls.clear()
    table = annotate_dataset(ds, out, backend=_fake_backend(calls), batch_size=2, progress=False)
    assert sum(calls) == 4  # only the rest
    assert out.exists() and not partial.exists() and table.complete
    assert table.keys == [str(i) for i in range(10)] and table.indices.tolist() == list(range(10))
    means = [float(ds[i]["image"].permute(1, 2, 0).numpy().mean()) for i in range(10)]
    np.testing.assert_allclose(table.landmarks[:, 0, 0], means, rtol=1e-5)
    calls.clear()
    again = annotate_dataset(ds, out, backend=_fake_backend(calls), progress=False)
    assert calls == [] and len(again) == 10  # cache hit
    np.testing.assert_allclose(read_landmarks(out).get(3), table.landmarks[3])
    with pytest.raises(ValueError, match="items"):  # a different dataset
        annotate_dataset(SynFER("clean", split="test", n=11, image_size=48, with_relevance=False), out,
                         backend=_fake_backend([]), progress=False)


class _WithPaths(torch.utils.data.Dataset):
    """A SynFER wrapper that looks like a loader of files under ``root``."""

    def __init__(self, root, n=3):
        self.ds = SynFER("clean", split="test", n=n, image_size=160, seed=2, with_relevance=False)
        self.root = root

    def __len__(self):
        return len(self.ds)

    def meta(self, i):
        return {"index": i, "path": str(self.root / "Image" / f"img_{i:03d}.jpg")}

    def __getitem__(self, i):
        it = self.ds[i]
        return {"image": it["image"], "label": it["label"], "meta": self.meta(i), "truth": it["landmarks"]}


def test_annotate_dataset_with_dlib_keys_by_path(tmp_path):
    ds = _WithPaths(tmp_path)
    table = annotate_dataset(ds, landmarks_path(tmp_path, "train"), progress=False)
    assert (tmp_path / "landmarks68-train.npz").exists()
    assert table.keys == [f"Image/img_{i:03d}.jpg" for i in range(3)]  # relative to the root
    for i in range(3):
        got = table.get(ds.meta(i)["path"])  # look-up by the absolute path
        assert got is not None and landmark_error(got, ds[i]["truth"].numpy()) < 0.15
    assert table.get("Image/missing.jpg") is None
    assert table.sizes.tolist() == [[160, 160]] * 3
    twice = table.get("Image/img_000.jpg", size=(320, 320))  # a loader that resizes to 320 px
    np.testing.assert_allclose(twice, (table.landmarks[0] + 0.5) * 2 - 0.5, rtol=1e-6)


def test_cli_writes_per_split_files(tmp_path, monkeypatch, capsys):
    import fer.data

    seen = []

    def fake_load(name, root, split, **kw):
        seen.append((name, str(root), split, kw))
        return _WithPaths(tmp_path, n=2)

    monkeypatch.setattr(fer.data, "load_dataset", fake_load)
    assert cli_main(["--dataset", "rafdb", "--root", str(tmp_path), "--split", "train", "test",
                     "--set", "image_size=160", "--no-progress"]) == 0
    assert [s[2] for s in seen] == ["train", "test"] and seen[0][3] == {"image_size": 160}
    for split in ("train", "test"):
        t = read_landmarks(tmp_path / f"landmarks68-{split}.npz")
        assert t.complete and len(t) == 2 and t.info["backend"] == "dlib"
    assert "rafdb/test: 2 images" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli_main(["--dataset", "rafdb", "--root", str(tmp_path), "--out", str(tmp_path / "x.npz")])


def test_read_landmarks_missing_file_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m fer.data.landmarks"):
        read_landmarks(tmp_path / "landmarks68-train.npz")
