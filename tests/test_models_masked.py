"""fer.models.masked: VGG11, ABN, MCN, FECN and the shared-extractor FECN."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch.nn import functional as F

from fer.explain import SingleOutput, cam
from fer.losses import abn_loss
from fer.models import create_model, list_models
from fer.models import masked as MM

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = {"img_size": 64, "width": 0.0625, "batch_norm": True, "head": "gap"}


def _count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_registered_names():
    assert list_models(module="masked") == ["abn", "fecn", "fecn_shared", "mcn", "vgg11"]


def test_full_size_vgg11_is_torchvisions_with_four_outputs():
    v = create_model("vgg11", num_classes=4)
    tv = torchvision.models.vgg11(weights=None)
    assert _count(v) == _count(tv) - 4097 * 1000 + 4097 * 4 == 128_782_724
    x = torch.randn(1, 3, 224, 224)
    state = tv.state_dict()
    MM.load_vgg11_imagenet(v, state)
    v.eval()
    tv.eval()
    with torch.no_grad():
        assert torch.allclose(v.perception.convs(v.forward_features(x)), tv.features(x), atol=1e-5)
        assert tuple(v.forward_features(x).shape) == (1, 512, 14, 14)  # the attention grid at 224 px


def test_pretrained_loads_bn_weights_into_abn_and_attention_branch():
    tv = torchvision.models.vgg11_bn(weights=None)
    a = create_model("abn", num_classes=4, batch_norm=True)
    MM.load_vgg11_imagenet(a, tv.state_dict())
    conv5 = [m for m in tv.features if isinstance(m, torch.nn.Conv2d)][-2]
    assert torch.equal(a.attention.convs[0].weight, conv5.weight)
    with pytest.raises(ValueError, match="width=1.0"):
        MM.load_vgg11_imagenet(create_model("vgg11", **SMALL), tv.state_dict())


def test_fecn_pretrained_loads_its_own_layers_not_the_mcn(monkeypatch):
    """Issue 15 section 4.6: the fecn docstring said ``pretrained`` also loads ImageNet into the MCN."""
    tv = torchvision.models.vgg11(weights=None)  # stands in for the ImageNet file (nothing is downloaded)
    monkeypatch.setattr(MM, "load_torchvision_state_dict", lambda weights, **kw: tv.state_dict())
    torch.manual_seed(0)
    fresh = create_model("fecn", num_classes=4, img_size=64, head="gap")
    torch.manual_seed(0)
    pre = create_model("fecn", num_classes=4, img_size=64, head="gap", pretrained=True)
    tv_convs = [m for m in tv.features if isinstance(m, torch.nn.Conv2d)]
    assert torch.equal(pre.features[0].weight, tv_convs[0].weight)  # FECN's own extractor: ImageNet
    assert torch.equal([m for m in pre.perception.convs if isinstance(m, torch.nn.Conv2d)][-1].weight,
                       tv_convs[-1].weight)  # and its group 5
    mcn_pre, mcn_fresh = pre.mcn.state_dict(), fresh.mcn.state_dict()
    assert all(torch.equal(mcn_pre[k], mcn_fresh[k]) for k in mcn_fresh)  # the MCN: untouched, random
    assert not torch.equal(pre.mcn.features[0].weight, tv_convs[0].weight)
    doc = " ".join(MM.fecn.__doc__.split())
    assert "into the MCN" not in doc and "the MCN keeps its random initialisation" in doc


def test_abn_outputs_and_equation_1():
    torch.manual_seed(0)
    a = create_model("abn", num_classes=4, **SMALL).eval()
    with torch.no_grad():
        out = a(torch.randn(3, 3, 64, 64))
    assert isinstance(out, MM.AbnOutput)
    assert out.logits.shape == (3, 4) and out.att_logits.shape == (3, 4) and out.attention.shape == (3, 1, 4, 4)
    assert 0 < float(out.attention.min()) and float(out.attention.max()) < 1
    y = torch.tensor([0, 1, 2])
    expected = F.cross_entropy(out.att_logits, y) + F.cross_entropy(out.logits, y)
    assert torch.allclose(abn_loss(out, {"label": y}), expected)
    with pytest.raises(TypeError, match="AbnOutput"):
        abn_loss(out.logits, {"label": y})
    # Grad-CAM through the one-tensor wrapper
    with torch.no_grad():
        assert torch.equal(SingleOutput(a)(torch.zeros(1, 3, 64, 64)), a(torch.zeros(1, 3, 64, 64)).logits)
    assert cam(a, torch.randn(2, 3, 64, 64)).shape == (2, 64, 64)


def test_residual_and_multiply_modes():
    f = torch.full((1, 2, 2, 2), 3.0)
    m = torch.full((1, 1, 2, 2), 0.5)
    assert torch.equal(MM._weigh(f, m, "residual"), torch.full_like(f, 4.5))  # (1 + M) F, ABN
    assert torch.equal(MM._weigh(f, m, "multiply"), torch.full_like(f, 1.5))  # M F, equation 2
    with pytest.raises(ValueError, match="attention_mode"):
        create_model("abn", attention_mode="add", **SMALL)


def test_mcn_has_two_classes_and_fecn_uses_its_frozen_map():
    torch.manual_seed(0)
    m = create_model("mcn", num_classes=7, **SMALL)
    assert m.num_classes == 2 and m.perception.head.fc.out_features == 2
    f = create_model("fecn", num_classes=4, mcn_state=m.state_dict(), **SMALL)
    assert not any(p.requires_grad for p in f.mcn.parameters())
    f.train()
    assert not f.mcn.training  # frozen generator stays in eval mode
    m.eval()
    f.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(f.mcn(x), m(x).attention)  # the map of the trained MCN (Figure 3)
        expected = f.forward_head(f.features(x) * m(x).attention)  # equation 2
        assert torch.allclose(f(x), expected, atol=1e-6)
    with pytest.raises(ValueError, match="does not fit"):
        f.load_mcn(create_model("mcn", img_size=64, width=0.125, batch_norm=True, head="gap").state_dict())


def test_shared_extractor_is_frozen_and_saves_one_extractor():
    torch.manual_seed(0)
    m = create_model("mcn", **SMALL)
    s = create_model("fecn_shared", num_classes=4, mcn_state=m.state_dict(), **SMALL)
    assert torch.equal(s.features[0].weight, m.features[0].weight)
    trainable = {n.split(".")[0] for n, p in s.named_parameters() if p.requires_grad}
    assert trainable == {"perception"}
    s.train()
    assert not s.features.training and not s.attention.training and s.perception.training
    f = create_model("fecn", num_classes=4, **SMALL)
    assert _count(f) - _count(s) == _count(f.features) - sum(p.numel() for p in s.attention.class_pool.parameters())


def test_bad_inputs_name_the_problem():
    v = create_model("vgg11", **SMALL)
    with pytest.raises(ValueError, match="at least 32 px"):
        v(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="3 x H x W"):
        v(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="head"):
        create_model("vgg11", head="flatten")
    with pytest.raises(TypeError, match="Abn"):
        MM.attention_generator(v)


def test_load_vgg11_from_a_pretrained_vgg11_of_the_same_structure():
    from fer.models.masked import load_vgg11_from

    torch.manual_seed(0)
    kw = dict(width=0.0625, batch_norm=True, head="gap", img_size=64)
    source = create_model("vgg11", num_classes=136, **kw)
    abn = create_model("abn", num_classes=4, **kw)
    fc = abn.perception.head.fc.weight.clone()
    names = load_vgg11_from(abn, source)
    assert "features.0.weight" in names and "attention.convs" in names
    assert torch.equal(abn.features[1].running_mean, source.features[1].running_mean)
    assert torch.equal(abn.perception.convs[0].weight, source.perception.convs[0].weight)
    convs = [m for m in abn.attention.convs if isinstance(m, torch.nn.Conv2d)]
    assert torch.equal(convs[0].weight, source.perception.convs[0].weight)  # group 5 into the attention branch too
    assert torch.equal(abn.perception.head.fc.weight, fc)  # heads stay fresh
    with pytest.raises(ValueError, match="pretrain the same structure"):
        load_vgg11_from(create_model("vgg11", num_classes=4, **{**kw, "width": 0.125}), source)
