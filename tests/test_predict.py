"""fer.predict: faces found in a photo, aligned, classified by a run's model, explained, written out."""
from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import fer.predict as predict_mod
from fer.data import CLASSES_7, SynFER
from fer.data.cached import cache_dataset
from fer.data.masks import M_FER_CLASSES, face_mask, region_masks
from fer.data.landmarks import to_landmarks8
from fer.experiments import cbam_vgg, manet, mapnet, masked
from fer.experiments._common import model_input
from fer.io import CHECKPOINT_FORMAT, atomic_write_json, save_checkpoint
from fer.models import create_model
from fer.predict import (
    DEFAULT_SCORE_THRESHOLD,
    DEFAULT_UPSAMPLE,
    ALIGN_POINTS,
    ClassMismatchError,
    NoFaceError,
    Predictor,
    align_face,
    detect_faces,
    face_template,
    AGREEMENT_MARGIN,
    judge_agreement,
    main,
)
from fer.runs import Run, run, run_key, spec_of
from fer.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

skimage_data = pytest.importorskip("skimage.data")  # test dependency (scikit-image)

# The astronaut's face, forehead to chin, cheek to cheek (as in tests/test_landmarks.py),
# and the mission patch on her sleeve (lower left), where dlib's detector also fires.
FACE_BOX = (165, 70, 285, 190)
PATCH_BOX = (110, 320, 240, 440)


def _inside(box, outer, slack=5) -> bool:
    x0, y0, x1, y1 = box
    return outer[0] - slack <= x0 < x1 <= outer[2] + slack and outer[1] - slack <= y0 < y1 <= outer[3] + slack


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage_data.astronaut()


@pytest.fixture(scope="module")
def photos(tmp_path_factory, astronaut):
    from PIL import Image

    d = tmp_path_factory.mktemp("photos")
    Image.fromarray(astronaut).save(d / "astronaut.png")
    Image.fromarray(np.full((240, 320, 3), 128, np.uint8)).save(d / "grey.png")  # no face
    (d / "broken.jpg").write_bytes(b"not a JPEG at all")  # unreadable
    return d


# ----------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def tiny_run(runs_dir) -> Run:
    """A real run, trained for one epoch by fer.runs.run (small CNN, 32 px SynFER wild faces)."""
    train = cache_dataset(SynFER("wild", "train", n=16, image_size=32, class_balance="uniform",
                                 with_relevance=False), progress=False)
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1e-2, input_size=32, cpu=True)
    build = functools.partial(create_model, "small_cnn", num_classes=7, img_size=32, widths=(4, 8, 8, 8))
    return run("tiny", cfg, build, train, root=runs_dir, progress=False, verbose=False).run


def fake_run(root: Path, name: str, build, config: TrainConfig, *, spec=None, recorded=None) -> Run:
    """A run folder in fer.runs' format holding ``build()``'s random weights (no training);
    ``recorded``: the build_model the record names, when it is not ``build`` (e.g. with pretrained=True)."""
    full_spec = {"build_model": spec_of(recorded or build), "spec": spec_of(spec), "loss_fn": None, "losses": {},
                 "output_to_logits": "fer.train.default_output_to_logits", "forward_fn": None}
    digest, record = run_key(name, config, data={"train": f"fake-{name}"}, spec=full_spec)
    path = root / f"{name}-{digest}"
    path.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path / "config.json", {**record, "name": name, "hash": digest})
    torch.manual_seed(0)
    save_checkpoint(path / "checkpoint.pt", {"format": CHECKPOINT_FORMAT, "model": build().state_dict(), "epoch": 1})
    atomic_write_json(path / "metrics.json", {"epochs": 1})
    return Run.load(path)


def _load(res) -> dict:
    return json.loads(Path(res.json_path).read_text())


# ----------------------------------------------------------------------------- detector


def test_detector_settings_on_the_astronaut(astronaut):
    """The counts the module docstring and the README report (measured with dlib 20.0.1)."""
    assert (DEFAULT_UPSAMPLE, DEFAULT_SCORE_THRESHOLD) == (1, 0.5)
    default = detect_faces(astronaut)
    assert len(default) == 1 and _inside(default[0].box, FACE_BOX)
    # dlib's own threshold (0) at the default upsampling: the mission patch is a "face" too
    loose = detect_faces(astronaut, upsample=1, score_threshold=0.0)
    assert len(loose) == 2
    assert _inside(loose[0].box, FACE_BOX) and _inside(loose[1].box, PATCH_BOX)
    assert loose[0].score > 1.0 > DEFAULT_SCORE_THRESHOLD > loose[1].score > 0.0
    # no upsampling: the patch scores below 0
    assert len(detect_faces(astronaut, upsample=0, score_threshold=0.0)) == 1
    pts = default[0].landmarks
    assert pts.shape == (68, 2) and all(_inside((*p, *(p + 1)), FACE_BOX, slack=10) for p in pts)


def test_detection_maps_back_from_a_shrunk_photo(astronaut):
    big = np.kron(astronaut, np.ones((3, 3, 1), np.uint8))  # 1536 px; detected at 512
    full = detect_faces(astronaut)[0]
    shrunk = detect_faces(big, max_side=512)[0]
    assert np.abs(shrunk.box / 3 - full.box).max() < 3
    assert np.abs(shrunk.landmarks / 3 - full.landmarks).mean() < 2


# ----------------------------------------------------------------------------- alignment


def test_alignment_puts_a_face_where_synfer_draws_it():
    """A SynFER face, rotated and scaled into a bigger canvas, comes back to the variant's template."""
    import cv2

    ds = SynFER("clean", "test", n=1, image_size=112, with_relevance=False)
    item = ds[0]
    img = item["image"].permute(1, 2, 0).numpy()
    lm = item["landmarks"].numpy().astype(np.float64)
    m = cv2.getRotationMatrix2D((56, 56), 20, 2.0)
    m[:, 2] += (100, 60)
    canvas = cv2.warpAffine(img, m, (420, 360), borderMode=cv2.BORDER_REPLICATE)
    moved = lm @ m[:, :2].T + m[:, 2]
    tpl = face_template("clean", 112)
    crop, crop_lm, to_crop = align_face(canvas, moved, tpl, 112)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    idx = list(ALIGN_POINTS)
    assert np.abs(crop_lm[idx] - tpl[idx]).mean() < 1.5  # the fit: eyes and nose onto the template
    assert np.abs(crop_lm - lm).mean() < 3.0  # and the whole face back where it was drawn
    assert np.abs(crop.astype(float) - img.astype(float)).mean() < 12  # same picture
    # grey variants are grey in three channels
    grey, _, _ = align_face(canvas, moved, tpl, 112, grayscale=True)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def test_alignment_ignores_an_open_mouth():
    """The fit uses eyes and nose: a face that drops its jaw (surprise) is not shrunk to fit the template."""
    ds = SynFER("clean", "test", n=2, image_size=112, with_relevance=False)
    tpl = face_template("clean", 112)
    iod = lambda p: np.linalg.norm(p[36:42].mean(0) - p[42:48].mean(0))  # noqa: E731
    for i in range(2):
        sizes = []
        for expr in ("neutral", "surprise"):
            item = ds.render(ds.with_expression(i, expr, 1.0))
            _, lm, _ = align_face(item["image"].permute(1, 2, 0).numpy(), item["landmarks"].numpy(), tpl, 112)
            sizes.append(iod(lm))
        assert sizes[1] / sizes[0] == pytest.approx(1.0, abs=0.06)  # measured 0.96; fitting all 68 points: 0.88


def test_templates_follow_the_variant():
    wild, fer = face_template("wild", 112), face_template("fer2013", 112)
    # face width (jaw 0 to 16) over the image width: the middle of each variant's range
    assert (wild[16, 0] - wild[0, 0]) / 112 == pytest.approx(0.7, abs=0.015)
    assert (fer[16, 0] - fer[0, 0]) / 112 == pytest.approx(0.8, abs=0.015)
    assert np.abs(wild[:, 0].mean() - 55.5) < 1.5  # centred


# ----------------------------------------------------------------------------- a run on the astronaut


def test_predict_run_on_the_astronaut(tiny_run, photos, tmp_path, monkeypatch):
    written = []
    for name in ("atomic_write_json", "atomic_write_bytes"):
        real = getattr(predict_mod, name)
        monkeypatch.setattr(predict_mod, name, lambda p, *a, _real=real, **k: written.append(Path(p)) or _real(p, *a, **k))
    out = tmp_path / "out"
    assert main([str(photos / "astronaut.png"), "--run", str(tiny_run.path), "--out", str(out)]) == 0
    js, png = out / "astronaut.predict.json", out / "astronaut.predict.png"
    assert sorted(written) == sorted([js, png])  # both through fer.train's atomic writers
    rec = json.loads(js.read_text())
    assert rec["run"]["id"] == tiny_run.path.name and rec["run"]["complete"] is True
    assert rec["model"]["name"] == "small_cnn" and rec["classes"] == list(CLASSES_7)
    assert rec["detector"] == {**rec["detector"], "upsample": 1, "score_threshold": 0.5, "faces": 1}
    assert rec["alignment"]["variant"] == "wild" and rec["alignment"]["crop_size"] == 32
    (face,) = rec["faces"]
    assert _inside(face["box"], FACE_BOX)
    assert np.asarray(face["landmarks"]).shape == (68, 2)
    probs = face["probabilities"]
    assert sorted(probs) == sorted(CLASSES_7) and sum(probs.values()) == pytest.approx(1.0, abs=1e-6)
    assert all(0 < p < 1 for p in probs.values())
    assert [c for c, _ in face["top"]] == sorted(probs, key=probs.get, reverse=True)[:3]
    assert face["predicted"] == face["top"][0][0]
    assert face["explanation"]["method"] == "gradcam" and face["explanation"]["target"] == face["predicted"]

    # the probabilities are the run's model on the aligned face through the run's evaluation input
    from PIL import Image

    photo = np.asarray(Image.open(photos / "astronaut.png").convert("RGB"))
    crop, _, _ = align_face(photo, np.asarray(face["landmarks"]), face_template("wild", 32), 32)
    model = create_model("small_cnn", num_classes=7, img_size=32, widths=(4, 8, 8, 8))
    tiny_run.load_model(model)
    with torch.no_grad():
        expect = torch.softmax(model(model_input(torch.from_numpy(crop).permute(2, 0, 1)[None], tiny_run.config)), 1)
    assert np.allclose([probs[c] for c in CLASSES_7], expect[0].numpy(), atol=1e-5)

    # the annotated image: the photo, the CAM and the box on the face, untouched far from it
    ann = np.asarray(Image.open(png).convert("RGB"))
    assert ann.shape == photo.shape
    x0, y0, x1, y1 = (int(v) for v in face["box"])
    inside = np.abs(ann[y0 + 5:y1 - 5, x0 + 5:x1 - 5].astype(int) - photo[y0 + 5:y1 - 5, x0 + 5:x1 - 5]).mean()
    assert inside > 10
    assert (ann[:60, -120:] == photo[:60, -120:]).all() and (ann[-60:, :60] == photo[-60:, :60]).all()
    assert not list(out.glob(".*.tmp"))


def test_loose_detector_finds_two_faces(tiny_run, photos, tmp_path):
    pred = Predictor.from_run(tiny_run.path, score_threshold=0.0)
    res = pred.predict_file(photos / "astronaut.png", out_dir=tmp_path)
    assert len(res.faces) == 2 and _inside(res.faces[1]["box"], PATCH_BOX)
    for f in res.faces:
        assert sum(f["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)


# ----------------------------------------------------------------------------- models with masks / attention


def test_mapnet_gets_its_face_mask_from_the_landmarks(runs_dir, astronaut):
    kw = dict(num_classes=7, img_size=32, backbone="resnet10", width=0.125, last_stride=1, stem="small",
              parallel=True, blocks=2, attention=True, alpha=0.8)
    # recorded with pretrained=True, as the paper profile does: rebuilding must not load (or download)
    # the ImageNet weights, which the checkpoint replaces anyway
    r = fake_run(runs_dir, "mapnet-x", functools.partial(mapnet.build_model, pretrained=False, **kw),
                 TrainConfig(epochs=1, input_size=32), spec={"model": "mapnet"},
                 recorded=functools.partial(mapnet.build_model, pretrained=True, **kw))
    pred = Predictor.from_run(r.path)
    assert pred.mask_kind == "face_mask"
    rec, _ = pred.predict_image(astronaut)
    (face,) = rec["faces"]
    assert rec["alignment"]["masks"] == "face_mask" and rec["model"]["name"] == "mapnet"
    crop, lm, _ = align_face(astronaut, np.asarray(face["landmarks"]), face_template("wild", 32), 32)
    x = model_input(torch.from_numpy(crop).permute(2, 0, 1)[None], r.config)
    mask = torch.as_tensor(face_mask(lm, 32))[None, None]
    with torch.no_grad():
        with_mask = torch.softmax(pred.model(x, mask).logits, 1)[0].numpy()
        without = torch.softmax(pred.model(x, None).logits, 1)[0].numpy()
    got = np.array([face["probabilities"][c] for c in rec["classes"]])
    assert np.allclose(got, with_mask, atol=1e-5) and not np.allclose(got, without, atol=1e-4)
    assert face["explanation"]["method"] == "gradcam"


def test_manet_with_ground_truth_masks_gets_region_masks(runs_dir, astronaut):
    r = fake_run(runs_dir, "manet-gt", functools.partial(manet.build_model, "manet", input_size=32, width=0.0625,
                                                           weights=None, mask_source="gt"),
                 TrainConfig(epochs=1, input_size=32), spec={"model": "manet", "mask_source": "gt"})
    pred = Predictor.from_run(r.path)
    assert pred.mask_kind == "region_masks"
    rec, _ = pred.predict_image(astronaut)
    (face,) = rec["faces"]
    crop, lm, _ = align_face(astronaut, np.asarray(face["landmarks"]), face_template("wild", 32), 32)
    x = model_input(torch.from_numpy(crop).permute(2, 0, 1)[None], r.config)
    masks = torch.as_tensor(region_masks(to_landmarks8(lm), 32, 2))[None]
    with torch.no_grad():
        expect = torch.softmax(pred.model(x, masks).logits, 1)[0].numpy()
        ones = torch.softmax(pred.model(x, torch.ones_like(masks)).logits, 1)[0].numpy()
    got = np.array([face["probabilities"][c] for c in rec["classes"]])
    assert np.allclose(got, expect, atol=1e-5) and not np.allclose(got, ones, atol=1e-6)
    assert face["explanation"]["method"] == "gradcam"


def test_cbam_run_is_explained_by_its_own_attention(runs_dir, astronaut):
    build = functools.partial(cbam_vgg.build_model, "vgg16_cbam", input_size=64, width=0.0625, weights=None)
    r = fake_run(runs_dir, "cbam_vgg-x-cbam-vgg16_cbam", build, TrainConfig(epochs=1, input_size=64),
                 spec={"model": "vgg16_cbam"})
    pred = Predictor.from_run(r.path)
    # FER2013's stand-in: grey 48 px faces, resized to the run's 64 px input
    assert pred.variant == "fer2013" and pred.grayscale and pred.crop_size == 48
    rec, ann = pred.predict_image(astronaut)
    (face,) = rec["faces"]
    assert face["explanation"]["method"] == "attention" and face["explanation"]["modules"] == ["attn.spatial_gate"]
    rec2, ann2 = Predictor.from_run(r.path, explain="gradcam").predict_image(astronaut)
    assert rec2["faces"][0]["explanation"]["method"] == "gradcam"
    assert rec2["faces"][0]["probabilities"] == face["probabilities"]
    assert not np.array_equal(ann, ann2)  # a different map on the face
    with pytest.raises(ValueError, match="no attention map of its own"):
        Predictor(create_model("small_cnn", img_size=32), TrainConfig(input_size=32), CLASSES_7, explain="attention")


def test_fecn_run_finds_its_mcn_next_to_it(runs_dir, astronaut, monkeypatch):
    """masked.build_model loads the MCN run by folder name under the runs root: predict looks beside the run."""
    kw = {"img_size": 32, "width": 0.0625, "batch_norm": True, "head": "gap"}
    mcn = fake_run(runs_dir, "masked-x-mcn", functools.partial(masked.build_model, "mcn", kwargs=kw, num_classes=2),
                   TrainConfig(epochs=1, input_size=32))
    monkeypatch.setenv("FER_RUNS", str(runs_dir))  # only to build the fake FECN's weights
    build = functools.partial(masked.build_model, "fecn", kwargs=kw, mcn_run=mcn.path.name)
    r = fake_run(runs_dir, "masked-x-fecn", build, TrainConfig(epochs=1, input_size=32), spec={"model": "fecn"})
    monkeypatch.delenv("FER_RUNS")
    pred = Predictor.from_run(r.path)
    assert pred.classes == M_FER_CLASSES and "FER_RUNS" not in __import__("os").environ
    rec, _ = pred.predict_image(astronaut)
    assert rec["faces"][0]["explanation"]["modules"] == ["mcn.attention.map_gate"]  # the MCN's map, FECN's attention
    assert Predictor.from_run(mcn.path).classes == ("unmasked", "masked")


# ----------------------------------------------------------------------------- --model / --checkpoint


def test_model_and_checkpoint_instead_of_a_run(tiny_run, photos, tmp_path):
    out = tmp_path / "o"
    rc = main([str(photos / "astronaut.png"), "--model", "small_cnn", "--checkpoint", str(tiny_run.checkpoint_path),
               "--input-size", "32", "--out", str(out)])
    # small_cnn's default widths differ from the run's (4, 8, 8, 8): the weights do not fit
    assert rc == 2
    pred = Predictor.from_checkpoint("small_cnn", tiny_run.checkpoint_path, input_size=32,
                                     model_kwargs={"widths": (4, 8, 8, 8)})
    rec = pred.predict_file(photos / "astronaut.png", out_dir=out).record
    via_run = Predictor.from_run(tiny_run.path).predict_image(np.asarray(skimage_data.astronaut()))[0]
    assert rec["run"] is None and rec["checkpoint"] == str(tiny_run.checkpoint_path)
    assert np.allclose([rec["faces"][0]["probabilities"][c] for c in CLASSES_7],
                       [via_run["faces"][0]["probabilities"][c] for c in CLASSES_7], atol=1e-6)


# ----------------------------------------------------------------------------- errors


def test_no_face(tiny_run, photos, tmp_path, capsys):
    pred = Predictor.from_run(tiny_run.path)
    with pytest.raises(NoFaceError, match=r"no face found in .*grey\.png"):
        pred.predict_file(photos / "grey.png", out_dir=tmp_path)
    assert not list(tmp_path.iterdir())  # nothing written
    rc = main([str(photos / "grey.png"), str(photos / "astronaut.png"), "--run", str(tiny_run.path),
               "--out", str(tmp_path)])
    assert rc == 1  # one photo failed, the other was done
    err = capsys.readouterr().err
    assert "grey.png" in err and "1 of 2 photo(s) failed" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["astronaut.predict.json", "astronaut.predict.png"]


def test_unreadable_photo(tiny_run, photos, tmp_path, capsys):
    from fer.data import ImageDecodeError

    pred = Predictor.from_run(tiny_run.path)
    with pytest.raises(ImageDecodeError, match=r"cannot decode image .*broken\.jpg"):
        pred.predict_file(photos / "broken.jpg", out_dir=tmp_path)
    with pytest.raises(ImageDecodeError, match=r"missing\.png"):
        pred.predict_file(photos / "missing.png", out_dir=tmp_path)
    assert main([str(photos / "broken.jpg"), "--run", str(tiny_run.path), "--out", str(tmp_path)]) == 1
    assert "broken.jpg" in capsys.readouterr().err


def test_run_without_checkpoint(tiny_run, tmp_path, photos, capsys):
    bare = tmp_path / tiny_run.path.name
    bare.mkdir()
    shutil.copy(tiny_run.path / "config.json", bare / "config.json")
    with pytest.raises(FileNotFoundError, match=r"has no checkpoint\.pt.*never finished an epoch"):
        Predictor.from_run(bare)
    assert main([str(photos / "astronaut.png"), "--run", str(bare)]) == 2
    assert "checkpoint.pt" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        Predictor.from_run(tmp_path / "nowhere")


def test_four_class_run_given_to_a_seven_class_caller(runs_dir, photos, tmp_path, capsys):
    build = functools.partial(create_model, "small_cnn", num_classes=4, img_size=32, widths=(4, 8, 8, 8))
    r = fake_run(runs_dir, "masked-x", build, TrainConfig(epochs=1, input_size=32))
    assert Predictor.from_run(r.path).classes == M_FER_CLASSES  # the default names for 4 outputs
    assert Predictor.from_run(r.path, num_classes=4).classes == M_FER_CLASSES
    with pytest.raises(ClassMismatchError, match=r"trained on 4 classes.*--num-classes 7"):
        Predictor.from_run(r.path, num_classes=7)
    with pytest.raises(ClassMismatchError, match=r"trained on 4 classes.*--classes names 7"):
        Predictor.from_run(r.path, classes=CLASSES_7)
    assert main([str(photos / "astronaut.png"), "--run", str(r.path), "--num-classes", "7",
                 "--out", str(tmp_path)]) == 2
    assert "trained on 4 classes" in capsys.readouterr().err and not list(tmp_path.iterdir())
    # names given in any order follow the package's label order
    assert Predictor.from_run(r.path, classes=["surprise", "anger", "happy", "neutral"]).classes == M_FER_CLASSES


# ----------------------------------------------------------------------------- the judge's verdict


def test_judge_agreement_rule():
    """The rule behind the photo page's "agree / disagree" sentence, on every branch."""
    assert AGREEMENT_MARGIN == 0.05
    judge = {"neutral": 0.1, "happy": 0.6, "sad": 0.05, "surprise": 0.15, "fear": 0.04, "disgust": 0.03,
             "anger": 0.03}
    same = judge_agreement({"neutral": 0.2, "happy": 0.7, "sad": 0.1}, judge)
    assert same["verdict"] == "agree" and same["agree"] is True and same["undecided"] == []
    assert (same["model_top"], same["judge_top"], same["judge_rank"]) == ("happy", "happy", 1)
    assert same["model_p"] == pytest.approx(0.7) and same["judge_p"] == same["judge_p_of_model_top"] == 0.6
    assert same["model_margin"] == pytest.approx(0.5) and same["judge_margin"] == pytest.approx(0.45)
    assert same["reason"] == "both single out happy"
    other = judge_agreement({"neutral": 0.1, "happy": 0.2, "surprise": 0.7}, judge)
    assert other["verdict"] == "disagree" and other["agree"] is False
    assert (other["model_top"], other["judge_top"], other["judge_rank"]) == ("surprise", "happy", 2)
    assert other["judge_p_of_model_top"] == pytest.approx(0.15)
    assert other["reason"] == "the model singles out surprise, the judge happy"
    # the model's top class is one the judge cannot say (CK+'s contempt)
    odd = judge_agreement({"contempt": 0.5, "happy": 0.4, "neutral": 0.1}, judge)
    assert odd["verdict"] == "not comparable" and odd["agree"] is False
    assert odd["judge_rank"] is None and odd["judge_p_of_model_top"] is None and "contempt" in odd["reason"]
    # a class the judge lacks that is not the model's top changes nothing; names ignore case
    assert judge_agreement({"Contempt": 0.2, "HAPPY": 0.8}, judge)["verdict"] == "agree"
    # a model on the uniform plateau singles out nothing, even when its argmax is the judge's class
    flat = {c: 1 / 7 for c in judge}
    flat["happy"] += 1e-4
    plateau = judge_agreement(flat, judge)
    assert plateau["verdict"] == "undecided" and plateau["undecided"] == ["model"] and not plateau["agree"]
    assert plateau["model_top"] == "happy" and plateau["judge_rank"] == 1  # rank kept: it is not the verdict
    assert plateau["reason"] == ("the model's top class leads its runner-up by less than 5 percentage points: "
                                  "it singles out no class")
    # the margin is inclusive at its edge, per side, and can be changed
    edge = judge_agreement({"happy": 0.55, "sad": 0.45}, {"happy": 0.52, "sad": 0.48})
    assert edge["verdict"] == "undecided" and edge["undecided"] == ["judge"]  # 0.04 < 0.05; 0.10 is enough
    both = judge_agreement({"happy": 0.51, "sad": 0.49}, {"happy": 0.5, "sad": 0.5})
    assert both["undecided"] == ["model", "judge"] and "they single out no class" in both["reason"]
    assert judge_agreement({"happy": 0.51, "sad": 0.49}, {"happy": 0.9, "sad": 0.1}, margin=0.0)["agree"]
    exact = {"happy": 0.75, "sad": 0.25}  # a lead of exactly the margin (0.5, exact in binary) is enough
    assert judge_agreement(exact, exact, margin=0.5)["verdict"] == "agree"
    assert judge_agreement({"happy": 1.0}, judge)["verdict"] == "agree"  # one class: its margin is its probability
    # ties go to the class named first, on both sides, and the rank follows the same rule
    tie = {"neutral": 0.4, "happy": 0.4, "sad": 0.2}
    assert judge_agreement(tie, tie, margin=0.0)["model_top"] == "neutral"
    assert judge_agreement(tie, tie, margin=0.0)["agree"]
    assert judge_agreement(tie, tie)["verdict"] == "undecided"  # a tie singles out nothing
    late = judge_agreement({"happy": 0.5, "neutral": 0.1}, tie, margin=0.0)
    assert late["verdict"] == "disagree" and late["judge_rank"] == 2
    for bad, match in (({}, "empty"), ({"happy": float("nan")}, "finite"), ({"happy": -0.1}, ">= 0"),
                       ({"happy": 0.5, "Happy": 0.5}, "twice")):
        with pytest.raises(ValueError, match=match):
            judge_agreement(bad, judge)
    with pytest.raises(ValueError, match="judge's probabilities are empty"):
        judge_agreement(judge, {})
    with pytest.raises(ValueError, match="margin"):
        judge_agreement(judge, judge, margin=-0.1)


def test_nothing_imports_fer_predict():
    root = Path(predict_mod.__file__).parent
    users = [p for p in root.rglob("*.py") if p.name != "predict.py"
             and any(s in p.read_text() for s in ("fer.predict", "from .predict", "from ..predict", "import predict"))]
    assert users == []
