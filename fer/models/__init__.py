"""Models of the five papers behind a timm-style registry.

>>> from fer.models import create_model, list_models
>>> list_models("vgg16*")
['vgg16_cbam', 'vgg16_flatten', 'vgg16_gap']
>>> model = create_model("vgg16_cbam", num_classes=7)          # doctest: +SKIP
>>> target_layers = [model.cam_layer]                           # Grad-CAM target

One file per paper (the file name is the paper key, ``list_models(module=key)``):

* :mod:`fer.models.cbam_vgg` -- Ghimire et al., VGG16 (VGG-Face) + CBAM, and the
  paper's baselines.
* :mod:`fer.models.manet` -- Gan et al., MANet: RASnet (region masks) and ERSnet
  (VGG16 + multiple-attention block), with the VGG16 and VGG16 + SE baselines.
* :mod:`fer.models.mapnet` -- Ju and Zhao, MAPNet: two ResNets with landmark-mask
  attention and split blocks, and its loss.
* :mod:`fer.models.msanet` -- Ghadai and Patra, MSA-Net: three multi-scale branches
  with CBAM on a ResNet-18 pre-extractor, and the Table 3 ablations.
* :mod:`fer.models.masked` -- Hayashi et al.: the Attention Branch Network, the mask
  classifier (MCN), the expression network (FECN) and the VGG11 baseline.

Conventions shared by every model: ``forward_features`` / ``forward_head``,
``cam_layer`` (default Grad-CAM target module), ``pretrained_cfg`` (mean, std,
input_size), attention maps read with forward hooks, ``num_classes`` / ``in_chans``
keyword arguments. User-supplied weight files live in :func:`weights_dir`
(``$FER_WEIGHTS`` or ``<repo>/weights``).
"""
from __future__ import annotations

from . import cbam_vgg, dlib_resnet, fer_judge, manet, mapnet, masked, msanet
from ._hub import (WeightFile, load_torchvision_state_dict, missing_weights, torch_hub_checkpoint_path,
                   torchvision_weight_file, weights_dir)
from ._registry import create_model, is_model, list_models, model_entrypoint, register_model
from .cbam_vgg import (
    VGGFACE_URL,
    BackboneFer,
    ClassifierHead,
    SmallCnn,
    VggFer,
    load_vggface,
    vggface_path,
    vggface_weight_file,
)

__all__ = [
    "create_model",
    "list_models",
    "register_model",
    "is_model",
    "model_entrypoint",
    "weights_dir",
    "torch_hub_checkpoint_path",
    "load_torchvision_state_dict",
    "WeightFile",
    "missing_weights",
    "torchvision_weight_file",
    "vggface_weight_file",
    "cbam_vgg",
    "dlib_resnet",
    "fer_judge",
    "manet",
    "mapnet",
    "masked",
    "msanet",
    "VGGFACE_URL",
    "ClassifierHead",
    "VggFer",
    "SmallCnn",
    "BackboneFer",
    "load_vggface",
    "vggface_path",
]
