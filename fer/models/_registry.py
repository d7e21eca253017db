"""Model registry: ``register_model``, ``create_model``, ``list_models`` (timm style).

A model family lives in one file of :mod:`fer.models`; each builder is a function
``def name(pretrained: bool = False, **kwargs) -> nn.Module`` decorated with
:func:`register_model`, which files it under its function name and under the
file's module name (the paper key, e.g. ``"cbam_vgg"``).
"""
from __future__ import annotations

import difflib
import fnmatch
from typing import Any, Callable, Dict, List, Optional, Sequence, TypeVar, Union

from torch import nn

__all__ = ["register_model", "create_model", "list_models", "is_model", "model_entrypoint"]

_F = TypeVar("_F", bound=Callable[..., nn.Module])

_entrypoints: Dict[str, Callable[..., nn.Module]] = {}
_model_module: Dict[str, str] = {}


def register_model(fn: _F) -> _F:
    """Register a model builder under its function name.

    Raises:
        ValueError: if another builder already uses the name.
    """
    name = fn.__name__
    module = fn.__module__.rsplit(".", 1)[-1]
    if name in _entrypoints and _entrypoints[name] is not fn:
        raise ValueError(
            f"model name {name!r} is already registered by fer.models.{_model_module[name]}; "
            f"rename the builder in {fn.__module__}"
        )
    _entrypoints[name] = fn
    _model_module[name] = module
    return fn


def list_models(
    pattern: Optional[Union[str, Sequence[str]]] = None, module: Optional[str] = None
) -> List[str]:
    """Sorted names of registered models.

    Args:
        pattern: shell-style wildcard(s) on the name (``"vgg16*"``), or ``None`` for all.
        module: only models defined in ``fer.models.<module>`` (the paper key,
            e.g. ``"cbam_vgg"``).
    """
    names = [n for n in _entrypoints if module is None or _model_module[n] == module]
    if pattern is not None:
        patterns = [pattern] if isinstance(pattern, str) else list(pattern)
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    return sorted(names)


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered model."""
    return name in _entrypoints


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The builder registered as ``name``.

    Raises:
        ValueError: for an unknown name, listing the close matches and all models.
    """
    try:
        return _entrypoints[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_entrypoints), n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"Unknown model {name!r}.{hint} Registered models: {', '.join(list_models())}"
        ) from None


def create_model(name: str, num_classes: int = 7, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: registered model name (see :func:`list_models`).
        num_classes: classifier outputs (7 = the package's canonical label order).
        pretrained: load the weights the paper started from (each builder says which
            and where the file must be; nothing is downloaded without saying so).
        **kwargs: passed to the builder (``in_chans``, ``img_size``, ``drop_rate``, ...).
    """
    return model_entrypoint(name)(pretrained=pretrained, num_classes=num_classes, **kwargs)
