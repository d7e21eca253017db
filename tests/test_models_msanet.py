"""MSA-Net models (fer.models.msanet): shapes, parameter counts, equation (1), equation (2), errors."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn

from fer.explain import cam, capture
from fer.losses import BETA, BetaCrossEntropy
from fer.models import create_model, list_models
from fer.models import msanet as msa
from fer.models.msanet import MsaNet, MultiScaleBlock, ResNetBaseline

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

ROWS = ["msanet", "msanet_as", "msanet_baseline", "msanet_ms"]


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_registered_under_the_paper_key():
    assert list_models(module="msanet") == ROWS


def test_full_size_shapes_and_parameter_counts():
    expected = {"msanet": (963_979, (384, 28, 28)), "msanet_as": (820_403, (128, 28, 28)),
                "msanet_ms": (818_119, (128, 28, 28)), "msanet_baseline": (11_180_103, (512, 7, 7))}
    x = torch.zeros(1, 3, 224, 224)
    for name, (count, fmap) in expected.items():
        m = create_model(name, num_classes=7).eval()
        assert n_params(m) == count, name
        with torch.no_grad():
            assert tuple(m.stem(x).shape[1:]) == (128, 28, 28)  # the paper's 128 x 28 x 28
            f = m.forward_features(x)
            assert tuple(f.shape[1:]) == fmap
            assert m.forward_head(f).shape == (1, 7)
            assert m.forward_head(f, pre_logits=True).shape == (1, fmap[0])


def test_baseline_is_torchvision_resnet18_without_its_1000_way_fc():
    tv = torchvision.models.resnet18(weights=None)
    assert n_params(create_model("msanet_baseline", num_classes=7)) == n_params(tv) - n_params(tv.fc) + 512 * 7 + 7
    base = create_model("msanet_baseline")
    tv_keys = {k: v.shape for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    ours = {k.replace("stem.", ""): v.shape for k, v in base.state_dict().items() if not k.startswith("fc.")}
    assert ours == tv_keys


def test_ablation_switches():
    full, as_, ms = create_model("msanet"), create_model("msanet_as"), create_model("msanet_ms")
    assert [b.kernel_size for b in full.branches] == [7, 5, 3]
    assert [b.kernel_size for b in as_.branches] == [7] and [b.kernel_size for b in ms.branches] == [7]
    assert all(isinstance(b.attn, msa.CbamModule) for b in full.branches + list(as_.branches))
    assert isinstance(ms.branches[0].attn, nn.Identity)
    assert all(len(b.blocks) == 2 for b in full.branches)
    assert isinstance(create_model("msanet_baseline"), ResNetBaseline)
    assert create_model("msanet", kernel_sizes=(3, 3)).num_features == 256


def test_cbam_is_the_cbam_papers_configuration():
    cbam = create_model("msanet").branches[0].attn
    assert cbam.spatial.conv.conv.kernel_size == (7, 7)  # timm ConvNormAct: conv + BN
    assert isinstance(cbam.spatial.conv.bn, nn.BatchNorm2d)
    assert cbam.channel.fc1.out_channels == 128 // 16 and cbam.channel.fc1.bias is not None


def test_cam_layer_and_branch_hooks():
    m = create_model("msanet", width=0.125, img_size=64).eval()
    assert m.cam_layer is m.fuse
    hooks = {f"s{i}": b.attn.spatial_gate for i, b in enumerate(m.branches)}
    hooks["fused"] = m.cam_layer
    with torch.no_grad(), capture(m, hooks) as out:
        m(torch.zeros(2, 3, 64, 64))
    assert all(tuple(out[f"s{i}"].shape) == (2, 1, 8, 8) for i in range(3))
    assert tuple(out["fused"].shape) == (2, 48, 8, 8)
    heat = cam(m, torch.rand(2, 3, 64, 64), [0, 1])
    assert heat.shape == (2, 64, 64) and (heat >= 0).all()
    b = create_model("msanet_baseline")
    assert b.cam_layer is b.layer4


def _reference_block(block: MultiScaleBlock, x: torch.Tensor) -> torch.Tensor:
    """Equation (1) (or Res2Net's hierarchy) written out from the block's own layers."""
    out = block.act1(block.bn1(block.conv1(x)))
    xs = torch.split(out, block.width, 1)
    ys = []
    for i in range(block.scale):
        P = lambda t, i=i: block.acts[i](block.bns[i](block.convs[i](t)))  # noqa: E731
        if block.hierarchy == "equation":
            ys.append(P(xs[i]) if i == 0 else P(xs[i]) + ys[-1])
        else:
            ys.append(P(xs[i]) if i == 0 else P(xs[i] + ys[-1]))
    return block.act3(block.bn3(block.conv3(torch.cat(ys, 1))) + x)


@pytest.mark.parametrize("hierarchy", ["equation", "res2net"])
def test_multiscale_block_follows_its_equation(hierarchy):
    torch.manual_seed(0)
    block = MultiScaleBlock(16, 5, scale=4, hierarchy=hierarchy).eval()
    assert block.width == 2  # 16 * 0.5 / 4
    x = torch.randn(2, 16, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(block(x), _reference_block(block, x))


@pytest.mark.parametrize("hierarchy,side", [("equation", 3), ("res2net", 9)])
def test_receptive_field_of_one_block(hierarchy, side):
    # Equation (1): each subset meets one 3x3 conv -> 3 px; Res2Net: up to n=4 chained -> 1 + 4*2 = 9 px.
    torch.manual_seed(0)
    block = MultiScaleBlock(8, 3, scale=4, bottleneck_ratio=1.0, hierarchy=hierarchy,
                            act_layer=nn.Identity).eval()
    x = torch.randn(1, 8, 15, 15, requires_grad=True)
    block(x)[0, :, 7, 7].sum().backward()
    rows, cols = torch.nonzero(x.grad.abs().sum((0, 1)) > 0, as_tuple=True)
    assert int(rows.max() - rows.min() + 1) == side and int(cols.max() - cols.min() + 1) == side


def test_beta_cross_entropy_is_equation_2():
    loss = BetaCrossEntropy()
    assert loss.beta == BETA == 0.6
    logits, target = torch.zeros(4, 7), torch.tensor([0, 1, 2, 3])
    assert loss(logits, target).item() == pytest.approx(0.6 * math.log(7), rel=1e-6)
    logits = torch.randn(5, 7)
    target = torch.tensor([0, 6, 2, 2, 1])
    manual = -0.6 / 5 * sum(torch.log_softmax(logits, 1)[i, t] for i, t in enumerate(target.tolist()))
    assert loss(logits, target).item() == pytest.approx(manual.item(), rel=1e-6)
    assert BetaCrossEntropy(beta=1.0)(logits, target).item() == pytest.approx(
        nn.functional.cross_entropy(logits, target).item())
    with pytest.raises(ValueError, match="beta must be > 0"):
        BetaCrossEntropy(beta=0)


def test_num_classes_in_chans_and_width():
    m = create_model("msanet", num_classes=3, in_chans=1, width=0.25, img_size=48)
    assert m(torch.zeros(2, 1, 48, 48)).shape == (2, 3)
    assert m.pretrained_cfg["input_size"] == (1, 48, 48) and len(m.pretrained_cfg["mean"]) == 1
    assert m.stem.conv1.out_channels == 16 and m.branch_channels == 32
    b = create_model("msanet_baseline", num_classes=5, width=0.25)
    assert b(torch.zeros(1, 3, 64, 64)).shape == (1, 5) and b.num_features == 128


def test_errors_are_clear():
    with pytest.raises(ValueError, match="positive odd"):
        MultiScaleBlock(16, 4)
    with pytest.raises(ValueError, match="hierarchy"):
        MultiScaleBlock(16, 3, hierarchy="other")  # type: ignore[arg-type]
    m = create_model("msanet", width=0.125)
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        m(torch.zeros(1, 1, 64, 64))
    with pytest.raises(ValueError, match="at least 16"):
        m(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="width=1.0"):
        create_model("msanet", pretrained=True, width=0.5)


def test_pretrained_loads_imagenet_resnet18_into_the_stem(monkeypatch):
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    monkeypatch.setattr(msa, "load_torchvision_state_dict", lambda weights: state)
    m = create_model("msanet", pretrained=True)
    torch.testing.assert_close(m.stem.layer2[1].conv2.weight, state["layer2.1.conv2.weight"])
    b = create_model("msanet_baseline", pretrained=True)
    torch.testing.assert_close(b.layer4[0].conv1.weight, state["layer4.0.conv1.weight"])
    assert m.pretrained_cfg["tag"] == "tv_in1k" and m.pretrained_cfg["mean"] == (0.485, 0.456, 0.406)


def test_msanet_class_defaults_match_the_paper():
    m = MsaNet()
    assert m.kernel_sizes == (7, 5, 3)
    assert all(blk.hierarchy == "equation" and blk.scale == 4 for b in m.branches for blk in b.blocks)


def test_zero_init_last_makes_every_residual_block_an_identity_at_start():
    m = create_model("msanet", width=0.125, zero_init_last=True)
    blocks = [b for b in m.modules() if isinstance(b, MultiScaleBlock)]
    assert len(blocks) == 6 and all((b.bn3.weight == 0).all() for b in blocks)
    assert all((blk.bn2.weight == 0).all() for blk in m.stem.layer2)
    b = create_model("msanet_baseline", width=0.125, zero_init_last=True)
    assert (b.layer4[1].bn2.weight == 0).all() and (b.stem.layer1[0].bn2.weight == 0).all()
    assert (create_model("msanet", width=0.125).branches[0].blocks[0].bn3.weight == 1).all()


def test_load_resnet18_fills_where_imagenet_weights_go():
    from fer.models.msanet import load_resnet18, resnet18_classifier

    torch.manual_seed(0)
    pre = resnet18_classifier(136, width=0.125)
    assert pre(torch.randn(2, 3, 32, 32)).shape == (2, 136)
    state = pre.state_dict()
    full = create_model("msanet", width=0.125, img_size=32)
    branch = {k: v.clone() for k, v in full.branches.state_dict().items()}
    load_resnet18(full, state)
    assert all(torch.equal(v, state[k]) for k, v in full.stem.state_dict().items())  # stem.<name> = <name>
    assert all(torch.equal(v, branch[k]) for k, v in full.branches.state_dict().items())  # branches keep theirs
    base = load_resnet18(create_model("msanet_baseline", width=0.125, img_size=32), state)
    assert torch.equal(base.layer3[0].conv1.weight, state["layer3.0.conv1.weight"])
    assert torch.equal(base.layer4[1].bn2.running_var, state["layer4.1.bn2.running_var"])
    with pytest.raises(RuntimeError, match="size mismatch"):  # a network of another width is refused
        load_resnet18(create_model("msanet", width=0.25, img_size=32), state)
