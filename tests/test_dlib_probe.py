"""fer.experiments.dlib_probe: dlib's face ResNet probed on SynFER three ways."""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from fer.experiments import dlib_probe as P
from fer.models import create_model

SIDE = 112  # >= dlib_resnet's min_size, smaller than 150 to keep the test fast


@pytest.fixture(scope="module")
def data():
    train = P.probe_data("clean", "train", n=21, seed=0, image_size=SIDE, progress=False)
    test = P.probe_data("clean", "test", n=14, seed=0, image_size=SIDE, progress=False)
    return train, test


def test_configs_differ_only_where_the_rows_do():
    model = P.build_probe_model("random init")
    lin = P.probe_config("linear probe", model, epochs=2, lr=1e-3)
    ft = P.probe_config("fine-tuned", model, epochs=2, lr=1e-3, finetune_scale=0.1)
    rnd = P.probe_config("random init", model, epochs=2, lr=1e-3)
    assert [s.trainable for s in lin.stages] == [["head"]] and not ft.stages and not rnd.stages
    assert (lin.lr, ft.lr, rnd.lr) == pytest.approx((1e-3, 1e-4, 1e-3))
    cfg = create_model("dlib_resnet", num_classes=7).pretrained_cfg
    assert lin.mean == tuple(cfg["mean"]) and lin.std == tuple(cfg["std"]) and lin.hflip


def test_unknown_row_is_refused():
    with pytest.raises(ValueError, match="row must be one of"):
        P.probe_config("frozen", P.build_probe_model("random init"), epochs=1)
    with pytest.raises(ValueError, match="row must be one of"):
        P.build_probe_model("frozen")


def test_linear_probe_trains_the_classifier_only(data):
    train, test = data
    dlib = P.build_probe_model("fine-tuned")
    model, scores = P.train_probe("linear probe", train, test, epochs=1, progress=False)
    trunk = {n: p for n, p in model.named_parameters() if not n.startswith("head.")}
    ref = dict(dlib.named_parameters())
    assert all(torch.equal(p.detach().cpu(), ref[n].detach()) for n, p in trunk.items())
    assert not torch.equal(model.head.fc.weight.detach().cpu(), dlib.head.fc.weight.detach())
    assert 0.0 <= scores["accuracy"] <= 1.0 and 0.0 <= scores["mean class accuracy"] <= 1.0


def test_linear_probe_scores_are_the_models_own(data):
    """The classifier trained on cached features, put back in the network, scores the test
    faces exactly as the network itself does (the features are the network's pooled ones)."""
    from fer.train import evaluate

    train, test = data
    model, scores = P.train_probe("linear probe", train, test, epochs=1, progress=False)
    config = P.probe_config("linear probe", model, epochs=1, image_size=SIDE)
    res = evaluate(model, test, config, progress=False)
    assert scores["accuracy"] == pytest.approx(float(res["accuracy"]))
    assert scores["mean class accuracy"] == pytest.approx(float(res["mean_class_accuracy"]))
    feats = P.pooled_features(model, test, config)
    assert feats.shape == (len(test), model.get_classifier().in_features)


def test_fine_tuning_moves_dlib_weights_and_random_init_starts_elsewhere(data):
    train, test = data
    dlib = P.build_probe_model("fine-tuned")
    tuned, _ = P.train_probe("fine-tuned", train, test, epochs=1, progress=False)
    assert not torch.equal(tuned.conv1.weight.detach().cpu(), dlib.conv1.weight.detach())
    assert torch.allclose(tuned.conv1.weight.detach().cpu(), dlib.conv1.weight.detach(), atol=0.05)
    fresh = P.build_probe_model("random init")
    assert not torch.allclose(fresh.conv1.weight, dlib.conv1.weight, atol=0.05)


def test_table_and_text():
    table = P.probe_table(n_train=21, n_test=14, epochs=1, image_size=SIDE, progress=False)
    assert list(table["row"]) == list(P.PROBE_ROWS)
    assert table["accuracy"].between(0, 1).all() and list(table["chance"]) == pytest.approx([1 / 7] * 3)
    assert set(table["train images"]) == {21} and set(table["test images"]) == {14}
    text = P.probe_text(table)
    assert set(text) == {"finetune_vs_random", "linear_vs_chance"}


@pytest.mark.parametrize("ft, rnd, word", [(0.6, 0.4, "20.0 points above"), (0.3, 0.5, "20.0 points below"),
                                           (0.5, 0.5, "level with")])
def test_text_states_the_difference(ft, rnd, word):
    table = pd.DataFrame({"row": list(P.PROBE_ROWS), "accuracy": [0.2, ft, rnd], "chance": [1 / 7] * 3})
    text = P.probe_text(table)
    assert word in text["finetune_vs_random"] and "one seed" in text["finetune_vs_random"]
    assert "+5.7 points from chance" in text["linear_vs_chance"]


def test_a_dry_run_renders_only_the_faces_its_capped_runs_use(monkeypatch):
    from fer import _dry_run

    monkeypatch.setenv(_dry_run.DRY_RUN_ENV, "1")
    table = P.probe_table(n_train=7000, n_test=1400, epochs=1, batch_size=4, image_size=SIDE, progress=False)
    assert set(table["train images"]) == {_dry_run.STEPS * 4}
    assert set(table["test images"]) == {_dry_run.EVAL_BATCHES * 4}
