"""Where a model looks: Grad-CAM, Grad-CAM++, guided Grad-CAM, attention maps, and their localisation.

* :func:`cam` computes Grad-CAM or Grad-CAM++ maps through pytorch-grad-cam
  (``GradCAM``, ``GradCAMPlusPlus``); :func:`guided_backprop` and
  :func:`guided_gradcam` add pixel-level detail with ``GuidedBackpropReLUModel``.
* The target layer comes from the ``target_layer`` argument, else from the
  model's own ``cam_layer`` (a module, a dotted module name, or a method
  returning either); see :func:`resolve_target_layers`.
* Multi-output models (returning a dataclass, dict or tuple) are wrapped in
  :class:`SingleOutput` so Grad-CAM sees one logits tensor; :func:`cam` does
  this itself.
* :func:`capture` reads intermediate outputs (attention maps, gates, masks)
  with forward hooks, so models need no extra return values.
* :func:`localisation_scores` scores heat maps against SynFER's ground-truth
  relevance maps (energy share and pointing game) next to the chance level of
  a uniform map.

Inputs: a batch ``B x C x H x W`` (or one ``C x H x W`` image) as a torch
tensor or numpy array. ``uint8`` images are scaled to [0, 1]; then either the
caller's ``preprocess`` callable or ``mean``/``std`` normalise them. Float
images without ``preprocess``/``mean``/``std`` are taken as model-ready.

Every function leaves the model as it found it: training mode, parameter
gradients and (for guided back-propagation) its ReLU modules are restored.
"""
from __future__ import annotations

import contextlib
import dataclasses
import warnings
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .data.transforms import InputTransform

__all__ = [
    "CAM_METHODS",
    "SingleOutput",
    "resolve_target_layers",
    "prepare_images",
    "cam",
    "guided_backprop",
    "guided_gradcam",
    "capture",
    "localisation_scores",
]

#: Names accepted by ``cam(method=...)`` and the pytorch-grad-cam class behind each (by name:
#: pytorch-grad-cam is imported when a map is first made, since it pulls in scikit-learn and
#: costs every page that imports this module about 2 s; see :func:`_cam_class`).
CAM_METHODS: dict[str, str] = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus"}


def _cam_class(method: str) -> type:
    import pytorch_grad_cam

    return getattr(pytorch_grad_cam, CAM_METHODS[method])

LayerSpec = nn.Module | str
Images = torch.Tensor | np.ndarray
Targets = int | Sequence[int] | torch.Tensor | np.ndarray | Sequence[Callable] | None


# --------------------------------------------------------------------------- wrapper


class SingleOutput(nn.Module):
    """Wrap a model so that it returns one logits tensor (what Grad-CAM needs).

    Args:
        model: the wrapped model; its output may be a tensor, a dataclass or
            other object with attributes, a mapping, or a tuple/list.
        select: how to pick the logits out of the output: an attribute or key
            name (``"logits"``), an index for tuples (``0``), or a callable
            ``output -> tensor``. ``None`` (default) picks: a tensor as is, the
            ``"logits"`` key or attribute, else element 0 of a tuple/list.

    The wrapper forwards ``cam_layer`` to the wrapped model, so
    :func:`resolve_target_layers` finds the wrapped model's default layer.
    """

    def __init__(self, model: nn.Module, select: str | int | Callable[[Any], torch.Tensor] | None = None) -> None:
        super().__init__()
        self.model = model
        self.select = select

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = self.model(*args, **kwargs)
        logits = self._pick(out)
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"SingleOutput(select={self.select!r}) picked a {type(logits).__name__} out of "
                            f"{type(self.model).__name__}'s output, not a tensor; pass select= naming the logits")
        return logits

    def _pick(self, out: Any) -> Any:
        sel = self.select
        if callable(sel):
            return sel(out)
        if sel is None:
            if isinstance(out, torch.Tensor):
                return out
            if isinstance(out, Mapping):
                if "logits" in out:
                    return out["logits"]
                raise KeyError(f"{type(self.model).__name__} returns a mapping without 'logits' (keys: "
                               f"{list(out)}); pass SingleOutput(model, select=<key>)")
            if hasattr(out, "logits"):
                return out.logits
            if isinstance(out, (tuple, list)) and out:
                return out[0]
            fields = [f.name for f in dataclasses.fields(out)] if dataclasses.is_dataclass(out) else []
            raise TypeError(f"cannot find the logits in {type(self.model).__name__}'s {type(out).__name__} output "
                            f"(fields: {fields}); pass SingleOutput(model, select=<field name or callable>)")
        if isinstance(sel, int):
            return out[sel]
        if isinstance(out, Mapping):
            if sel not in out:
                raise KeyError(f"select={sel!r} is not a key of {type(self.model).__name__}'s output "
                               f"(keys: {list(out)})")
            return out[sel]
        if not hasattr(out, sel):
            raise AttributeError(f"select={sel!r} is not an attribute of {type(self.model).__name__}'s "
                                 f"{type(out).__name__} output")
        return getattr(out, sel)

    def cam_layer(self) -> nn.Module | list[nn.Module]:
        """The wrapped model's default Grad-CAM layer(s)."""
        return resolve_target_layers(self.model)


# --------------------------------------------------------------------------- target layers


def _unwrap(model: nn.Module) -> nn.Module:
    return model.model if isinstance(model, SingleOutput) else model


def _resolve_one(model: nn.Module, spec: Any, origin: str) -> nn.Module:
    if isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, str):
        try:
            return model.get_submodule(spec)
        except AttributeError as err:
            raise ValueError(f"{origin}: {type(model).__name__} has no submodule {spec!r}") from err
    raise TypeError(f"{origin}: expected an nn.Module or a dotted module name, got {type(spec).__name__}")


def _last_conv_name(model: nn.Module) -> str | None:
    name = None
    for n, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            name = n
    return name


def resolve_target_layers(model: nn.Module, target_layer: LayerSpec | Sequence[LayerSpec] | None = None
                          ) -> list[nn.Module]:
    """The layer(s) whose activations and gradients Grad-CAM uses.

    Order of precedence: ``target_layer`` (a module, a dotted name such as
    ``"layer4"``, or a list of them, whose maps are averaged); else the model's
    ``cam_layer`` attribute (a module, a name, or a method returning either or a
    list); else ``ValueError`` saying how to fix it. For a :class:`SingleOutput`,
    names are looked up in the wrapped model.
    """
    inner = _unwrap(model)
    if target_layer is None:
        spec = getattr(inner, "cam_layer", None)
        if spec is None:
            hint = _last_conv_name(inner)
            example = f"e.g. target_layer={hint!r} (the last Conv2d) or " if hint else ""
            raise ValueError(
                f"{type(inner).__name__} declares no Grad-CAM layer: pass target_layer= ({example}a module such "
                f"as model.layer4), or give the model a `cam_layer` attribute or method returning that module")
        if callable(spec) and not isinstance(spec, nn.Module):
            spec = spec()
        origin = f"{type(inner).__name__}.cam_layer"
    else:
        spec, origin = target_layer, "target_layer"
    specs = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    if not specs:
        raise ValueError(f"{origin} is empty; name at least one layer")
    return [_resolve_one(inner, s, origin) for s in specs]


# --------------------------------------------------------------------------- inputs


def prepare_images(images: Images, *, preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> torch.Tensor:
    """A float ``B x C x H x W`` batch ready for the model.

    ``uint8`` input is first scaled to [0, 1]. Then ``preprocess`` (a callable on
    the batch, e.g. a torchvision ``Normalize`` or a model's own transform) or
    ``mean``/``std`` (per-channel, for [0, 1] images; through the training loop's
    :class:`fer.data.transforms.InputTransform`) is applied. Raises if ``uint8``
    images come with neither, since raw [0, 1] pixels would silently differ from
    what the model was trained on; pass ``mean=(0,)*3, std=(1,)*3`` for models
    trained on plain [0, 1] images.
    """
    x = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        raise ValueError(f"images must be B x C x H x W or C x H x W, got shape {tuple(x.shape)}")
    if preprocess is not None and (mean is not None or std is not None):
        raise ValueError("pass either preprocess or mean/std, not both")
    if (mean is None) != (std is None):
        raise ValueError("mean and std go together; pass both or neither")
    if x.dtype == torch.uint8:
        if preprocess is None and mean is None:
            raise ValueError("uint8 images need normalising for the model: pass preprocess=<callable> or "
                             "mean=..., std=... (the model's training statistics)")
    elif not x.is_floating_point():
        raise ValueError(f"images must be uint8 or float, got {x.dtype}")
    if preprocess is not None:
        return preprocess(x.float() / 255.0 if x.dtype == torch.uint8 else x).float()
    if mean is not None:
        m, s = torch.as_tensor(mean).reshape(-1), torch.as_tensor(std).reshape(-1)
        if len(m) != x.shape[1] or len(s) != x.shape[1]:
            raise ValueError(f"mean/std have {len(m)}/{len(s)} values for {x.shape[1]} channels")
        return InputTransform(m.tolist(), s.tolist())({"image": x})["image"]  # the training loop's normalisation
    return x.float()


@contextlib.contextmanager
def _restored(model: nn.Module) -> Iterator[None]:
    """Restore the model's training mode and parameter gradients on exit."""
    was_training = model.training
    grads = {p: p.grad for p in model.parameters()}
    try:
        yield
    finally:
        model.train(was_training)
        for p, g in grads.items():
            p.grad = g


def _target_indices(model: nn.Module, x: torch.Tensor, targets: Targets, batch_size: int) -> list[int]:
    """Integer class per image: ``targets`` broadcast, or the model's predictions."""
    n = len(x)
    if targets is None:
        device = next(model.parameters()).device
        with torch.no_grad():
            preds = [model(x[i:i + batch_size].to(device)).argmax(dim=1).cpu() for i in range(0, n, batch_size)]
        return torch.cat(preds).tolist()
    if isinstance(targets, (int, np.integer)):
        return [int(targets)] * n
    t = torch.as_tensor(np.asarray(targets)) if not isinstance(targets, torch.Tensor) else targets
    if t.ndim != 1 or len(t) != n or t.is_floating_point():
        raise ValueError(f"targets must be an int or {n} integer class indices (one per image)")
    return [int(v) for v in t.tolist()]


def _targets_list(model: nn.Module, x: torch.Tensor, targets: Targets, batch_size: int) -> list[Callable]:
    """pytorch-grad-cam target objects, one per image."""
    if isinstance(targets, Sequence) and not isinstance(targets, str) and targets and callable(targets[0]):
        if len(targets) != len(x):
            raise ValueError(f"{len(targets)} target objects for {len(x)} images")
        return list(targets)
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    return [ClassifierOutputTarget(c) for c in _target_indices(model, x, targets, batch_size)]


def _as_single_output(model: nn.Module) -> nn.Module:
    # The wrapper takes the model's mode, so restoring the wrapper's mode restores the model's.
    return model if isinstance(model, SingleOutput) else SingleOutput(model).train(model.training)


# --------------------------------------------------------------------------- CAMs


def cam(model: nn.Module, images: Images, targets: Targets = None, *,
        method: Literal["gradcam", "gradcam++"] | type = "gradcam",
        target_layer: LayerSpec | Sequence[LayerSpec] | None = None,
        preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
        mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
        reshape_transform: Callable | None = None, batch_size: int = 32) -> np.ndarray:
    """Grad-CAM or Grad-CAM++ maps, ``B x H x W`` float32 in [0, 1], at the model-input size.

    Args:
        model: any classifier; non-tensor outputs are wrapped in :class:`SingleOutput`
            (pass your own ``SingleOutput(model, select=...)`` to choose the logits).
        images: ``B x C x H x W`` or ``C x H x W``; see :func:`prepare_images`.
        targets: class to explain: ``None`` (each image's predicted class), one int
            for all images, one int per image, or pytorch-grad-cam target objects.
        method: ``"gradcam"``, ``"gradcam++"`` or a pytorch-grad-cam CAM class.
        target_layer: see :func:`resolve_target_layers`.
        preprocess, mean, std: input normalisation, see :func:`prepare_images`.
        reshape_transform: passed to pytorch-grad-cam (token outputs of ViTs).
        batch_size: images per backward pass.

    Each map is min-max scaled to [0, 1] per image by pytorch-grad-cam (an
    all-zero map, where no location raises the target, stays 0) and resized
    bilinearly to the input size.
    """
    if isinstance(method, str):
        if method not in CAM_METHODS:
            raise ValueError(f"unknown CAM method {method!r}; choose from {sorted(CAM_METHODS)} or pass a "
                             f"pytorch-grad-cam class")
        cam_cls = _cam_class(method)
    else:
        cam_cls = method
    layers = resolve_target_layers(model, target_layer)
    x = prepare_images(images, preprocess=preprocess, mean=mean, std=std)
    wrapped = _as_single_output(model)
    out = []
    with _restored(wrapped):
        wrapped.eval()
        # targets=None: pytorch-grad-cam explains each image's arg-max class itself.
        tgts = None if targets is None else _targets_list(wrapped, x, targets, batch_size)
        engine = cam_cls(model=wrapped, target_layers=layers, reshape_transform=reshape_transform)
        try:
            for i in range(0, len(x), batch_size):
                # A leaf that requires grad makes every activation differentiable, so
                # frozen backbones (requires_grad=False) still give gradients.
                xb = x[i:i + batch_size].clone().requires_grad_(True)
                out.append(engine(input_tensor=xb, targets=None if tgts is None else tgts[i:i + batch_size]))
                if i == 0:
                    _warn_if_pointlike(engine.activations_and_grads.activations)
        finally:
            engine.activations_and_grads.release()
    maps = np.concatenate(out).astype(np.float32)
    return np.clip(np.nan_to_num(maps, nan=0.0), 0.0, 1.0)


def _warn_if_pointlike(activations: list[torch.Tensor]) -> None:
    for a in activations:
        if isinstance(a, torch.Tensor) and a.ndim == 4 and tuple(a.shape[-2:]) == (1, 1):
            warnings.warn("the Grad-CAM target layer's output is 1 x 1, so the map carries no location (it comes "
                          "back all zero); use a larger input or an earlier layer", RuntimeWarning, stacklevel=3)
            return


def _relus(module: nn.Module) -> list[tuple[nn.Module, str, nn.Module]]:
    return [(parent, name, child) for parent in module.modules() for name, child in parent._modules.items()
            if isinstance(child, nn.ReLU)]


def guided_backprop(model: nn.Module, images: Images, targets: Targets = None, *,
                    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
                    mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> np.ndarray:
    """Guided back-propagation gradients, ``B x H x W x C`` float32 (raw, signed).

    Uses pytorch-grad-cam's ``GuidedBackpropReLUModel``, which swaps the model's
    ``nn.ReLU`` modules for guided ones during the call; the original modules are
    put back afterwards. Activations applied functionally (``F.relu``) or other
    than ReLU (GELU, SiLU) back-propagate unguided. ``targets`` as in :func:`cam`
    but integers only (``None`` = predicted class).
    """
    x = prepare_images(images, preprocess=preprocess, mean=mean, std=std)
    wrapped = _as_single_output(model)
    out = []
    with _restored(wrapped):
        wrapped.eval()
        classes = _target_indices(wrapped, x, targets, 32)
        originals = _relus(wrapped)
        try:
            from pytorch_grad_cam import GuidedBackpropReLUModel

            gb = GuidedBackpropReLUModel(wrapped)
            for i, c in enumerate(classes):
                out.append(gb(x[i:i + 1].clone().to(gb.device), target_category=c))
        finally:
            for parent, name, relu in originals:
                parent._modules[name] = relu
    return np.stack(out).astype(np.float32)


def _deprocess(img: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's ``deprocess_image`` without the uint8 cast: zero-centred, 0.1 std, around 0.5."""
    img = img - img.mean()
    img = img / (img.std() + 1e-5) * 0.1 + 0.5
    return np.clip(img, 0.0, 1.0)


def guided_gradcam(model: nn.Module, images: Images, targets: Targets = None, *,
                   method: Literal["gradcam", "gradcam++"] | type = "gradcam",
                   target_layer: LayerSpec | Sequence[LayerSpec] | None = None,
                   preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> np.ndarray:
    """Guided Grad-CAM: the CAM times guided back-propagation, ``B x H x W x C`` float32 in [0, 1].

    Each image is rescaled for display as pytorch-grad-cam's ``deprocess_image``
    does (mean 0.5, so 0.5 means no evidence); show it with ``imshow`` directly.
    ``targets`` are integers or ``None`` (predicted class); both parts explain
    the same class.
    """
    x = prepare_images(images, preprocess=preprocess, mean=mean, std=std)
    wrapped = _as_single_output(model)
    with _restored(wrapped):
        wrapped.eval()
        classes = _target_indices(wrapped, x, targets, 32)
    maps = cam(wrapped, x, classes, method=method, target_layer=target_layer)
    gb = guided_backprop(wrapped, x, classes)
    return np.stack([_deprocess(m[..., None] * g) for m, g in zip(maps, gb)]).astype(np.float32)


# --------------------------------------------------------------------------- hooks


def _detached(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.detach()
    if isinstance(out, (tuple, list)):
        return type(out)(_detached(o) for o in out)
    if isinstance(out, Mapping):
        return {k: _detached(v) for k, v in out.items()}
    return out


@contextlib.contextmanager
def capture(model: nn.Module, modules: LayerSpec | Sequence[LayerSpec] | Mapping[str, LayerSpec], *,
            detach: bool = True) -> Iterator[dict[str, Any]]:
    """Record the outputs of some of ``model``'s modules during forward passes.

    Args:
        model: the model whose submodules are hooked.
        modules: dotted names (``"layer4.1.cbam.spatial.gate"``), modules, a list
            of either, or a mapping ``key -> name or module`` to choose the keys.
        detach: store detached outputs (default) so nothing keeps the graph alive.

    Yields:
        A dict filled during each forward pass: key -> the module's latest output
        (a later call of the same module overwrites it). Keys are the given names,
        the modules' dotted names inside ``model``, or the mapping's keys. The
        hooks are removed on exit, also after an error.

    Example::

        with capture(model, ["cbam.spatial.gate"]) as maps:
            model(x)
        attention = maps["cbam.spatial.gate"]   # B x 1 x H x W
    """
    if isinstance(modules, Mapping):
        items = list(modules.items())
    else:
        specs = [modules] if isinstance(modules, (str, nn.Module)) else list(modules)
        names = {id(m): n for n, m in model.named_modules()}
        items = []
        for s in specs:
            if isinstance(s, str):
                items.append((s, s))
            elif id(s) in names:
                items.append((names[id(s)] or "model", s))
            else:
                raise ValueError(f"{type(s).__name__} module is not part of {type(model).__name__}; hook one of "
                                 f"its submodules (see model.named_modules())")
    store: dict[str, Any] = {}
    handles = []
    try:
        for key, spec in items:
            module = _resolve_one(model, spec, "capture")

            def hook(_m: nn.Module, _inp: Any, output: Any, key: str = key) -> None:
                store[key] = _detached(output) if detach else output

            handles.append(module.register_forward_hook(hook))
        yield store
    finally:
        for h in handles:
            h.remove()


# --------------------------------------------------------------------------- localisation


def _as_maps(x: Any, name: str) -> torch.Tensor:
    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    t = t.double()
    if t.ndim == 4 and t.shape[1] == 1:
        t = t[:, 0]
    if t.ndim == 2:
        t = t.unsqueeze(0)
    if t.ndim != 3:
        raise ValueError(f"{name} must be B x H x W or H x W maps, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} hold nan or inf values")
    return t


def _dilate(mask: torch.Tensor, radius: float) -> torch.Tensor:
    """Pixels within ``radius`` (Euclidean) of a ``True`` pixel of each B x H x W mask."""
    if radius <= 0:
        return mask
    r = int(np.floor(radius))
    yy, xx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
    disc = ((yy ** 2 + xx ** 2) <= radius ** 2).double()[None, None]
    hit = F.conv2d(mask.double().unsqueeze(1), disc, padding=r)[:, 0]
    return hit > 0.5


def localisation_scores(heatmaps: Any, relevance: Any, *, threshold: float = 0.5, tolerance: float = 0.0,
                        energy: Literal["soft", "hard"] = "soft", reduce: bool = True) -> dict[str, Any]:
    """How well heat maps fall on the ground-truth evidence, with the chance level of each score.

    Args:
        heatmaps: ``B x h x w`` (or ``h x w``, or ``B x 1 x h x w``) non-negative maps of
            any scale, e.g. :func:`cam` output or attention maps; resized to the
            relevance size by bilinear interpolation (``align_corners=False``).
            Negative values are clipped to 0.
        relevance: ``B x H x W`` (or one ``H x W`` map for all) maps in [0, 1],
            e.g. ``SynFER(...)[i]["relevance"]``.
        threshold: relevance level that counts as "inside" for the pointing game
            (and for ``energy="hard"``).
        tolerance: pointing-game tolerance in relevance-map pixels: a hit if the
            heat peak lies within this distance of an inside pixel.
        energy: ``"soft"`` (default) weighs each pixel's heat by its relevance,
            ``sum(heat * relevance) / sum(heat)``; ``"hard"`` uses the
            thresholded mask ``relevance >= threshold`` instead.
        reduce: average over images (floats) or return per-image arrays.

    Returns:
        ``energy``: share of the heat on the evidence; ``energy_chance``: the same
        for a uniform map, i.e. the mean relevance (soft) or the mask's area share
        (hard). ``pointing``: pointing-game hit rate; ``pointing_chance``: the hit
        rate of a uniformly random peak, i.e. the area share of the (tolerance-
        dilated) mask. ``num_images``.

    Ties and empty maps: when several pixels share the maximum heat, the
    pointing game scores the share of them that hit (the expected hit of a
    random tie-break), so a constant map scores exactly chance. An all-zero heat
    map carries no location and is scored as a uniform one (chance).
    """
    if energy not in ("soft", "hard"):
        raise ValueError(f"energy must be 'soft' or 'hard', got {energy!r}")
    heat = _as_maps(heatmaps, "heatmaps").clamp(min=0)
    rel = _as_maps(relevance, "relevance")
    if rel.shape[0] == 1 and heat.shape[0] > 1:
        rel = rel.expand(heat.shape[0], -1, -1)
    if rel.shape[0] != heat.shape[0]:
        raise ValueError(f"{heat.shape[0]} heat maps but {rel.shape[0]} relevance maps")
    size = tuple(rel.shape[-2:])
    if tuple(heat.shape[-2:]) != size:
        heat = F.interpolate(heat.unsqueeze(1), size=size, mode="bilinear", align_corners=False)[:, 0]
        heat = heat.clamp(min=0)
    b = heat.shape[0]
    flat = heat.reshape(b, -1)
    empty = flat.sum(1) <= 0
    flat = torch.where(empty[:, None], torch.ones_like(flat), flat)

    inside = rel >= threshold
    weight = (rel if energy == "soft" else inside.double()).reshape(b, -1)
    energy_share = (flat * weight).sum(1) / flat.sum(1)
    energy_chance = weight.mean(1)

    near = _dilate(inside, tolerance).reshape(b, -1).double()
    peak = flat.max(1, keepdim=True).values
    ties = (flat >= peak - 1e-6 * peak).double()
    pointing = (ties * near).sum(1) / ties.sum(1)
    pointing_chance = near.mean(1)

    scores = {"energy": energy_share, "energy_chance": energy_chance,
              "pointing": pointing, "pointing_chance": pointing_chance}
    if reduce:
        out: dict[str, Any] = {k: float(v.mean()) for k, v in scores.items()}
    else:
        out = {k: v.numpy() for k, v in scores.items()}
    out["num_images"] = int(b)
    return out
