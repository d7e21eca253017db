"""torchvision ImageNet weights load offline from torch.hub's cache, in their real file format.

For each architecture the papers start from (ResNet-18, ResNet-50, VGG11, VGG16,
Inception-v3), a state dict in torchvision's key format with random weights is written
where torch.hub caches the real file (``$TORCH_HOME/hub/checkpoints/<its real name>``), any
download attempt fails the test, and the package's model is built with
``pretrained=True``: it must carry the file's weights. A dry run without the file goes on
with random weights and records the file; a real run without it names the file and the fix.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from fer import _dry_run
from fer.models import _hub, create_model

W = torchvision.models
#: (model of this package, its keyword arguments, the torchvision weights it loads, torchvision builder).
CASES = {
    "resnet18 (MSA-Net)": ("msanet", {"img_size": 224}, W.ResNet18_Weights.IMAGENET1K_V1, W.resnet18),
    "resnet50 (MAPNet)": ("mapnet", {"backbone": "resnet50", "width": 1.0}, W.ResNet50_Weights.IMAGENET1K_V1,
                          W.resnet50),
    "resnet50 (CBAM row b)": ("resnet50", {}, W.ResNet50_Weights.IMAGENET1K_V1, W.resnet50),
    "vgg11 (masked)": ("vgg11", {"batch_norm": False}, W.VGG11_Weights.IMAGENET1K_V1, W.vgg11),
    "vgg16 (CBAM row d)": ("vgg16_flatten", {"weights": "imagenet", "img_size": 64}, W.VGG16_Weights.IMAGENET1K_V1,
                           W.vgg16),
    "inception_v3 (CBAM row e)": ("inception_v3", {}, W.Inception_V3_Weights.IMAGENET1K_V1,
                                  lambda: W.inception_v3(weights=None, aux_logits=True, init_weights=True)),
}


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_download(url: str, *args, **kwargs):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path / "torch" / "hub" / "checkpoints"


def _first_conv(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return next(v for k, v in state.items() if v.ndim == 4)


def _holds(model: torch.nn.Module, tensor: torch.Tensor) -> bool:
    return any(p.shape == tensor.shape and torch.equal(p.detach(), tensor) for p in model.state_dict().values())


@pytest.mark.parametrize("case", list(CASES))
def test_imagenet_weights_load_from_the_hub_cache(case: str, hub: Path) -> None:
    name, kwargs, weights, build = CASES[case]
    torch.manual_seed(0)
    state = build().state_dict()
    target = hub / Path(weights.url).name
    assert target == _hub.torchvision_weight_file(weights).path
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, target)
    model = create_model(name, pretrained=True, num_classes=7, **kwargs)
    conv = _first_conv(state)
    assert _holds(model, conv), f"{name} did not take its first conv from {target.name}"
    assert not _holds(create_model(name, pretrained=False, num_classes=7, **kwargs), conv)
    del state, model


def test_missing_weights_fail_a_real_run_and_are_listed_by_a_dry_run(hub: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    weights = W.ResNet18_Weights.IMAGENET1K_V1
    with pytest.raises(RuntimeError, match="resnet18-f37072fd.pth") as err:
        create_model("msanet", pretrained=True)
    assert "download https://download.pytorch.org/models/resnet18-f37072fd.pth" in str(err.value)
    monkeypatch.setenv("FER_DRY_RUN", "1")
    monkeypatch.setattr(_dry_run, "_MISSING", {})
    with pytest.warns(UserWarning, match="dry run: using random initialisation"):
        model = create_model("msanet", pretrained=True)
    assert model is not None
    missing = _hub.missing_weights()
    assert list(missing) == [str(_hub.torchvision_weight_file(weights).path)]
    message = missing[str(hub / "resnet18-f37072fd.pth")]
    assert "download https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
