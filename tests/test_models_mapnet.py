"""fer.models.mapnet: MAPNet's shapes, parameter counts, equations (1)-(6), ablation switches, errors."""
from __future__ import annotations

import math
import urllib.error

import numpy as np
import pytest
import torch
from torch import nn

from fer.explain import cam, capture
from fer.losses import MapNetLoss, root_inverse_weights
from fer.models import create_model, list_models
from fer.models.mapnet import (
    MapNet,
    MapNetOutput,
    MaskAttention,
    MaskChannelInput,
    SplitClassifier,
    block_weights,
    mask_forward,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(backbone="resnet10", width=0.125, last_stride=1)


def _n(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


def test_registered():
    assert {"mapnet", "mapnet_baseline"} <= set(list_models(module="mapnet"))


def test_full_size_parameter_count_and_shapes():
    model = create_model("mapnet", num_classes=7)
    trunk = 23_508_032  # torchvision resnet50 without its fc
    head = 2048 * 512 + 512 + 512 * 7 + 7  # one block's two FC layers
    assert _n(model) == 2 * trunk + 8 * head == 55_437_496
    base = create_model("mapnet_baseline", num_classes=7)
    assert _n(base) == trunk + head
    model.eval()
    with torch.no_grad(), capture(model, {"l1": model.aux.layer1, "l4": model.main.attn}) as out:
        o = model(torch.zeros(1, 3, 224, 224), torch.ones(1, 1, 224, 224))
    assert tuple(out["l1"].shape) == (1, 256, 56, 56) and tuple(out["l4"].shape) == (1, 2048, 7, 7)
    assert tuple(o.logits.shape) == (1, 7) and tuple(o.main_block_logits.shape) == (1, 4, 7)
    assert tuple(o.aux_block_logits.shape) == (1, 4, 7)


def test_block_weights_equation_1():
    assert block_weights(1) == (1.0,)
    assert block_weights(2) == (0.5, 0.5)
    assert block_weights(3) == (0.25, 0.5, 0.25)
    assert block_weights(4) == pytest.approx((1 / 6, 1 / 3, 1 / 3, 1 / 6))
    for k in range(1, 9):
        w = block_weights(k)
        assert math.isclose(sum(w), 1.0) and w == w[::-1]
        assert max(w) == w[(k - 1) // 2]  # inner blocks weigh most
    with pytest.raises(ValueError, match="integer >= 1"):
        block_weights(0)


def test_split_classifier_combines_probabilities():
    torch.manual_seed(0)
    head = SplitClassifier(8, 7, blocks=4, axis="height").eval()
    x = torch.randn(3, 8, 7, 5)
    logits, log_p = head(x)
    expected = sum(d * torch.softmax(logits[:, i], -1) for i, d in enumerate(block_weights(4)))
    assert torch.allclose(log_p.exp(), expected, atol=1e-6)
    # the height split pools rows: block 0 sees only the top rows (adaptive bins of 7 rows into 4)
    x2 = x.clone()
    x2[:, :, 6:] += 5.0  # change the bottom row only
    l2, _ = head(x2)
    assert torch.allclose(l2[:, 0], logits[:, 0]) and not torch.allclose(l2[:, 3], logits[:, 3])
    with pytest.raises(ValueError, match="sum"):
        SplitClassifier(8, 7, blocks=2, delta=(0.7, 0.7))


def test_mask_attention_equation_3():
    att = MaskAttention(alpha=0.8)
    assert (att.alpha, att.beta) == (0.8, pytest.approx(1.2))
    x = torch.tensor([[[[1.0, -1.0], [2.0, 3.0]]]])
    mask = torch.tensor([[[[1.0, 1.0, 0.0, 0.0]] * 2 + [[0.0] * 4] * 2]])  # 4 x 4: top-left quadrant is face
    out = att(x, mask)
    # top-left cell fully face: 1 * (0.8 + 1.2) = 2; top-right: 0 face -> -1 * 1.2 -> ReLU 0; bottom: x * 1.2
    assert torch.allclose(out, torch.tensor([[[[2.0, 0.0], [2.4, 3.6]]]]))
    assert torch.allclose(att(x, None), torch.relu(2 * x))  # no mask: M = 1
    assert torch.equal(MaskAttention(enabled=False)(x, mask), x)
    with pytest.raises(ValueError, match="alpha"):
        MaskAttention(alpha=2.5)
    with pytest.raises(ValueError, match="B x 1 x H x W"):
        att(x, torch.ones(2, 1, 4, 4))


def test_equation_2_and_mask_matters():
    torch.manual_seed(0)
    model = create_model("mapnet", **SMALL).eval()
    x, m = torch.randn(2, 3, 48, 48), torch.zeros(2, 1, 48, 48)
    m[:, :, 8:40, 10:38] = 1
    with torch.no_grad():
        o = model(x, m)
        o1 = model(x)
    assert isinstance(o, MapNetOutput)
    assert torch.allclose(o.probs, 0.5 * o.main_log_p.exp() + 0.5 * o.aux_log_p.exp(), atol=1e-6)
    assert torch.allclose(o.probs.sum(1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(o.logits, o1.logits)  # the mask changes the prediction
    with torch.no_grad():
        wrapped = MaskChannelInput(model)(MaskChannelInput.pack(x, m))
    assert torch.allclose(wrapped, o.logits)


def test_ablation_switches():
    base = create_model("mapnet", parallel=False, blocks=1, attention=False, **SMALL)
    assert base.aux is None and base.main.head.blocks == 1 and not base.main.attn.enabled
    ps = create_model("mapnet", attention=False, **SMALL)
    mam = create_model("mapnet", **SMALL)
    assert ps.aux is not None and not ps.aux.attn.enabled and mam.aux.attn.enabled
    assert mam.main.attn_after == "layer4" and mam.aux.attn_after == "layer1"
    assert mam.main.head.axis == "height" and mam.aux.head.axis == "width"
    assert _n(ps) == _n(mam)  # the attention has no parameters
    assert len(base.cam_layer) == 1 and len(mam.cam_layer) == 2
    with pytest.raises(ValueError, match="fixes"):
        create_model("mapnet_baseline", blocks=4)


def test_loss_equations_4_to_6():
    counts = [1290, 281, 717, 4772, 1982, 705, 2524]
    w = root_inverse_weights(counts, 2.0)
    assert w[1] == pytest.approx((np.mean(counts) / 281) ** 0.5)
    torch.manual_seed(0)
    out = MapNetOutput(logits=torch.zeros(4, 7), main_log_p=torch.log_softmax(torch.randn(4, 7), -1),
                       main_block_logits=torch.randn(4, 2, 7), aux_log_p=torch.log_softmax(torch.randn(4, 7), -1),
                       aux_block_logits=torch.randn(4, 2, 7))
    y = torch.tensor([0, 1, 3, 1])
    batch = {"label": y}
    loss = MapNetLoss.from_counts(counts, 2.0, on="combined")
    ce = nn.CrossEntropyLoss(weight=w)
    assert loss(out, batch) == pytest.approx(float(0.5 * ce(out.main_log_p, y) + 0.5 * ce(out.aux_log_p, y)), rel=1e-5)
    blocks = MapNetLoss(None)
    plain = nn.CrossEntropyLoss()
    expect = sum(0.25 * plain(b[:, i], y) for b in (out.main_block_logits, out.aux_block_logits) for i in range(2))
    assert blocks(out, batch) == pytest.approx(float(expect), rel=1e-5)
    with pytest.raises(ValueError, match="gamma"):
        MapNetLoss.from_counts(counts, 4.0)
    with pytest.raises(ValueError, match="sum to 1"):
        MapNetLoss(None, branch_weights=(0.5, 0.6))


def test_mask_forward_and_gradcam_through_wrapper():
    torch.manual_seed(0)
    model = create_model("mapnet", **SMALL).eval()
    batch = {"image": torch.randn(2, 3, 48, 48), "mask": torch.ones(2, 1, 48, 48, dtype=torch.uint8)}
    assert isinstance(mask_forward(model, batch), MapNetOutput)
    x = MaskChannelInput.pack(batch["image"], batch["mask"].float())
    maps = cam(MaskChannelInput(model), x, [0, 1])
    assert maps.shape == (2, 48, 48) and np.isfinite(maps).all() and maps.max() > 0


def test_backbone_errors_and_offline_pretrained(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="unknown backbone"):
        MapNet(backbone="vgg")
    with pytest.raises(ValueError, match="width applies"):
        MapNet(backbone="resnet50", width=0.5)
    with pytest.raises(ValueError, match="no ImageNet weights"):
        MapNet(backbone="resnet10", pretrained=True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty cache: the (refused) download is needed
    with pytest.raises(RuntimeError, match=r"resnet18-f37072fd\.pth"):
        create_model("mapnet", backbone="resnet18", pretrained=True)


def test_load_trunks_starts_both_branches_from_one_pretrained_trunk():
    from fer.models.mapnet import TRUNK_MODULES, TrunkNet, load_trunks

    torch.manual_seed(0)
    kw = dict(backbone="resnet10", width=0.125, last_stride=1, stem="resnet")
    pre = TrunkNet(136, **kw)
    assert pre(torch.randn(2, 3, 48, 48)).shape == (2, 136)
    model = MapNet(num_classes=7, img_size=48, **kw)
    head = {k: v.clone() for k, v in model.main.head.state_dict().items()}
    load_trunks(model, pre.features.state_dict())
    for branch in model.branches():
        for name in TRUNK_MODULES:
            for (k, got), want in zip(getattr(branch, name).state_dict().items(),
                                      pre.features[name].state_dict().values()):
                assert torch.equal(got, want), (name, k)
    assert all(torch.equal(v, head[k]) for k, v in model.main.head.state_dict().items())  # heads keep their start
    with pytest.raises(RuntimeError, match="size mismatch"):  # a trunk of another width is refused
        load_trunks(MapNet(num_classes=7, img_size=48, **{**kw, "width": 0.25}), pre.features.state_dict())
