"""fer.models.manet: RASnet, the MA block, ERSnet and the VGG baselines."""
from __future__ import annotations

import pytest
import torch

from fer.explain import SingleOutput, cam, capture
from fer.losses import mask_loss
from fer.models import create_model, list_models
from fer.models.manet import (
    RAS_MIN_SIZE,
    MABlock,
    ManetOutput,
    RASnet,
    RasnetOutput,
    mask_side,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_registered_names():
    assert list_models(module="manet") == ["manet", "manet_rasnet", "manet_vgg16", "manet_vgg16_se"]


def test_rasnet_table1_shapes_and_fc_choice():
    ras = create_model("manet_rasnet", num_classes=7).eval()  # num_classes is ignored
    with torch.no_grad():
        out = ras(torch.rand(2, 3, 224, 224))
    assert isinstance(out, RasnetOutput)
    assert out.masks.shape == (2, 8, 14, 14) and out.logits.shape == (2, 8)
    assert ((out.masks > 0) & (out.masks < 1)).all()
    assert torch.allclose(out.logits, out.masks.mean(dim=(2, 3)))
    convs = [m for m in ras.features if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0], c.padding[0]) for c in convs] == [
        (64, 5, 3, 1), (128, 5, 3, 1), (128, 3, 1, 0)]
    assert ras.fc[1].in_features == 128 * 2 * 2 and ras.fc[1].out_features == 2048
    assert ras.fc[3].out_features == 8 * 14 * 14 == 1568  # not Table 1's 1056
    assert count(ras) == 4_620_832


def test_rasnet_resizes_small_inputs():
    ras = RASnet(img_size=64, width=0.125)
    assert ras.input_size == RAS_MIN_SIZE and ras.side == 4
    assert ras(torch.rand(1, 3, 64, 64)).masks.shape == (1, 8, 4, 4)
    with pytest.raises(ValueError, match="img_size"):
        mask_side(8)


def test_mask_loss_is_equations_2_and_3():
    pred = torch.zeros(2, 8, 3, 3)
    target = torch.zeros(2, 8, 3, 3)
    target[0, 0] = 1.0  # 9 cells off by 1 in sample 0
    target[1, :, 0, 0] = 0.5  # 8 cells off by 0.5 in sample 1
    # L_M = (9 + 8 * 0.25) / 2
    assert mask_loss(pred, target).item() == pytest.approx(5.5)
    with pytest.raises(ValueError, match="differ"):
        mask_loss(pred, torch.zeros(2, 8, 4, 4))


def test_ma_block_is_equation_6():
    torch.manual_seed(0)
    ma = MABlock(16, side=4).eval()
    v = torch.rand(3, 16, 4, 4)
    masks = (torch.rand(3, 8, 4, 4) > 0.5).float()
    out, q = ma(v, masks)
    assert q.shape == (3, 8) and torch.allclose(q.sum(1), torch.ones(3)) and (q > 0).all()
    expected = sum(q[:, r].view(-1, 1, 1, 1) * ma.branches[r].se(ma.branches[r].buffer(v * masks[:, r:r + 1]))
                   for r in range(8))
    assert torch.allclose(out, expected, atol=1e-6)
    # a branch sees nothing outside its mask: zero mask -> buffer bias only, spatially constant
    t = ma.branches[0].buffer(v * torch.zeros(3, 1, 4, 4))
    assert torch.allclose(t, ma.branches[0].buffer.bias.view(1, -1, 1, 1).expand_as(t))
    with pytest.raises(ValueError, match="masks"):
        ma(v, masks[:, :7])


def test_parameter_counts_full_size():
    vgg, se, ours = (create_model(n, num_classes=7) for n in ("manet_vgg16", "manet_vgg16_se", "manet"))
    assert count(vgg) == 134_289_223  # torchvision's VGG16 with a 7-way last layer
    assert count(vgg.features) == 14_714_688
    assert count(se) - count(vgg) == 2 * 512 * 32 + 32 + 512  # one SE block, ratio 16
    assert count(ours.attn.branches[0]) == 512 * 512 + 512 + 2 * 512 * 32 + 32 + 512
    assert count(ours) == count(vgg) + count(ours.attn) + count(ours.rasnet)


def test_manet_output_hooks_and_frozen_masks():
    torch.manual_seed(0)
    model = create_model("manet", num_classes=7, img_size=64, width=0.0625).eval()
    x = torch.rand(2, 3, 64, 64)
    with capture(model, {"masks": model.mask_gate, "q": model.attn.weight_branch}) as out:
        y = model(x)
    assert isinstance(y, ManetOutput) and y.logits.shape == (2, 7)
    assert torch.equal(out["masks"], y.masks) and torch.equal(out["q"], y.region_weights)
    assert y.masks.shape == (2, 8, 4, 4)
    y.logits.sum().backward()
    assert all(p.grad is None for p in model.rasnet.parameters())  # masks are constants for ERSnet
    assert SingleOutput(model)(x).shape == (2, 7)


def test_ground_truth_mask_ablation():
    model = create_model("manet", num_classes=7, img_size=64, width=0.0625, mask_source="gt").eval()
    assert model.rasnet is None
    masks = torch.zeros(1, 8, 4, 4)
    masks[:, 0] = 1.0  # only the whole-image region
    with torch.no_grad():
        y = model(torch.rand(1, 3, 64, 64), masks)
    assert torch.equal(y.masks, masks)
    with pytest.raises(ValueError, match="ground-truth masks"):
        model(torch.rand(1, 3, 64, 64))


def test_baselines_and_errors():
    for name in ("manet_vgg16", "manet_vgg16_se"):
        m = create_model(name, num_classes=5, img_size=64, width=0.0625).eval()
        assert m(torch.rand(2, 3, 64, 64)).shape == (2, 5)
        assert m.forward_features(torch.rand(1, 3, 64, 64)).shape == (1, 32, 4, 4)
        assert m.cam_layer is m.features[29]
    with pytest.raises(ValueError, match="width=1.0"):
        create_model("manet", pretrained=True, width=0.5)
    with pytest.raises(FileNotFoundError, match="vgg_face_dag.pth"):
        create_model("manet_vgg16", pretrained=True, weights_path="/nonexistent/vgg_face_dag.pth")
    with pytest.raises(ValueError, match="mask_source"):
        create_model("manet", mask_source="landmarks")
    with pytest.raises(ValueError, match="pretrained"):
        create_model("manet_rasnet", pretrained=True)


def test_batch_norm_option():
    plain = create_model("manet_vgg16", num_classes=7, img_size=64, width=0.0625)
    assert not plain.batch_norm and not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())
    assert (plain.conv4_end, plain.relu5_3) == (24, 29)
    for name in ("manet", "manet_vgg16_se", "manet_vgg16"):
        m = create_model(name, num_classes=5, img_size=64, width=0.0625, batch_norm=True).eval()
        bns = [x for x in m.features if isinstance(x, torch.nn.BatchNorm2d)]
        assert len(bns) == 13 and len(m.features) == 44  # torchvision's vgg16_bn layout
        assert (m.conv4_end, m.relu5_3) == (34, 42)
        assert isinstance(m.features[m.conv4_end - 1], torch.nn.MaxPool2d)
        assert isinstance(m.cam_layer, torch.nn.ReLU) and isinstance(m.features[m.relu5_3 + 1], torch.nn.MaxPool2d)
        x = torch.rand(2, 3, 64, 64)
        assert m.conv4(x).shape == (2, 32, 4, 4)
        assert m.forward_features(x).shape == (2, 32, 4, 4)
        y = m(x)
        assert (y.logits if isinstance(y, ManetOutput) else y).shape == (2, 5)
        with capture(m, {"cam": m.cam_layer}) as out:
            m(x)
        assert out["cam"].shape == (2, 32, 4, 4)
        assert cam(m, x).shape == (2, 64, 64)  # Grad-CAM resolves model.cam_layer
    # the face stand-in's conv base loads into a model with the same layout
    src = create_model("manet_vgg16", num_classes=4, img_size=64, width=0.0625, batch_norm=True)
    dst = create_model("manet", num_classes=7, img_size=64, width=0.0625, batch_norm=True)
    dst.features.load_state_dict(src.features.state_dict())
    with pytest.raises(ValueError, match="batch norm"):
        create_model("manet_vgg16", pretrained=True, batch_norm=True)
