"""fer.experiments.pretraining: the candidate pretrained starts of the SynFER profiles (issue 17 §1)."""
from __future__ import annotations

import dataclasses
from functools import partial

import pytest
import torch

from fer.experiments import cbam_vgg
from fer.experiments._common import load_conv_base
from fer.experiments.pretraining import (LANDMARKS, PRETRAIN_TASKS, identity_logits, pretrain, pretrain_faces,
                                         pretrain_loss, task_outputs)
from fer.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_task_outputs_and_losses():
    assert [task_outputs(t, 5) for t in PRETRAIN_TASKS] == [5, 136, 141, 128]
    with pytest.raises(ValueError, match="unknown pretraining task 'pose'"):
        task_outputs("pose", 5)
    batch = {"label": torch.tensor([0, 4]), "landmarks": torch.zeros(2, 2 * LANDMARKS),
             "descriptor": torch.tensor([[1.0] + [0.0] * 127, [0.0, 1.0] + [0.0] * 126])}
    out = torch.zeros(2, 141)
    assert pretrain_loss(out[:, :5], batch, task="identity", identities=5) == pytest.approx(torch.log(torch.tensor(5.)))
    assert pretrain_loss(out[:, :136] + 0.1, batch, task="landmarks", identities=5) == pytest.approx(0.1)  # 10 x 0.01
    both = pretrain_loss(out, batch, task="identity+landmarks", identities=5)
    assert both == pytest.approx(float(torch.log(torch.tensor(5.))))
    assert pretrain_loss(batch["descriptor"], batch, task="dlib-distill", identities=5) == pytest.approx(0.0, abs=1e-6)
    assert identity_logits(out, task="identity+landmarks", identities=5).shape == (2, 5)
    assert identity_logits(out, task="landmarks", identities=5) is None


def test_pretrain_faces_carry_identities_landmarks_and_centred_descriptors():
    train, val, teacher = pretrain_faces("dlib-distill", "fer2013", n=24, identities=4, seed=0, progress=False,
                                         image_size=32)
    assert (len(train), len(val)) == (24, 4) and teacher > 0
    lm = train.tensors["landmarks"]
    assert lm.shape == (24, 136) and float(lm.std()) > 0.1
    assert float((lm.abs() <= 1).float().mean()) > 0.95 and float(lm.abs().max()) < 2  # image edges at -1, 1
    assert set(train.labels.tolist()) <= set(range(4)) and len(set(train.labels.tolist())) > 1
    d = torch.cat([train.tensors["descriptor"], val.tensors["descriptor"]])
    assert d.shape == (28, 128) and float(d.mean(0).abs().max()) < 1e-4  # centred over the draw
    same, _, zero = pretrain_faces("landmarks", "fer2013", n=24, identities=4, seed=0, progress=False, image_size=32)
    assert zero == 0.0 and torch.equal(same.tensors["landmarks"], train.tensors["landmarks"])
    assert "descriptor" not in same.tensors and same.fingerprint() != train.fingerprint()


@pytest.mark.parametrize("task", PRETRAIN_TASKS)
def test_each_start_trains_and_loads_into_the_chapter_model(task, tmp_path, monkeypatch):
    monkeypatch.setenv("FER_RUNS", str(tmp_path))
    setup = dataclasses.replace(cbam_vgg.Setup.for_profile("smoke"), pretrain_n=32, pretrain_identities=4)
    build = partial(create_model, "vgg16_gap", img_size=setup.input_size, width=setup.width)
    result, _ = pretrain(setup, f"pt-{task.replace('+', '-')}", build, task=task, variant="fer2013", seed=0,
                         lr=1e-3, progress=False)
    assert result.run.complete and result.model.get_classifier().out_features == task_outputs(task, 4)
    assert (result.metrics["val"]["accuracy"] is None) == (task in ("landmarks", "dlib-distill"))
    model = cbam_vgg.build_model("vgg16_gap", input_size=setup.input_size, width=setup.width)
    load_conv_base(model, result.path)
    assert torch.equal(model.features[0].weight, result.model.features[0].weight)


def test_a_batch_norm_pretraining_loads_folded_into_the_plain_vgg16(tmp_path, monkeypatch):
    monkeypatch.setenv("FER_RUNS", str(tmp_path))
    setup = dataclasses.replace(cbam_vgg.Setup.for_profile("smoke"), pretrain_n=32, pretrain_identities=4)
    build = partial(create_model, "vgg16_gap", img_size=setup.input_size, width=setup.width,
                    norm_layer=torch.nn.BatchNorm2d)
    result, _ = pretrain(setup, "pt-bn", build, task="landmarks", variant="fer2013", seed=0, lr=1e-3,
                         progress=False)
    teacher = result.model.eval()
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.features)
    assert float(teacher.features[1].running_var.sub(1).abs().max()) > 1e-3  # trained statistics, not the init
    model = cbam_vgg.build_model("vgg16_gap", input_size=setup.input_size, width=setup.width).eval()
    load_conv_base(model, result.path)
    x = torch.randn(3, 3, setup.input_size, setup.input_size)
    with torch.no_grad():
        torch.testing.assert_close(model.features(x), teacher.features(x), rtol=1e-4, atol=1e-5)
    # a conv base of another architecture is refused, naming the run
    other = create_model("vgg16_gap", img_size=setup.input_size, width=setup.width * 2)
    with pytest.raises(ValueError, match="pt-bn.*do not fit"):
        load_conv_base(other, result.path)


def test_landmark_error_in_pixels_and_the_page_strings():
    from fer.experiments.pretraining import facts_text, landmark_rmse_px

    # a mean squared error of 0.01 half-image units (loss 10 x that) is 0.1 half-images: 4.8 px of 96
    assert landmark_rmse_px(0.1, 96) == pytest.approx(4.8)
    assert landmark_rmse_px(0.0, 96) == 0.0
    base = {"faces": 2000, "identities": 20, "epochs": 20, "val_loss": 0.5}
    lm = facts_text({**base, "task": "landmarks", "rmse_px": 1.234, "mean_shape_rmse_px": 5.0})
    assert lm["task"] == "to regress the 68 landmarks SynFER drew each face from (2,000 faces, 20 epochs)"
    assert "1.23 px" in lm["score"] and lm["baseline"].startswith("5.00 px")
    ident = facts_text({**base, "task": "identity", "accuracy": 0.5, "chance": 0.05})
    assert "20 SynFER people" in ident["task"] and ident["score"].startswith("50.0%") and "5.0%" in ident["baseline"]
    assert facts_text({**base, "task": "dlib-distill"})["score"] == "validation loss 0.500"
