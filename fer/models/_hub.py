"""Where weights live, and torchvision weights with a useful error when offline.

* User-supplied files (VGG-Face, ...) are looked up in :func:`weights_dir`:
  ``$FER_WEIGHTS`` when set, else ``<repo>/weights``.
* torchvision ImageNet weights go through torch.hub's cache,
  ``$TORCH_HOME/hub/checkpoints/<file>`` (``~/.cache/torch/hub/checkpoints`` by
  default); :func:`load_torchvision_state_dict` downloads there when it can and
  otherwise says which file to put where.
* In a dry run (``FER_DRY_RUN=1``, set by ``python -m fer.book run --dry-run``) a weight
  file that is not there does not stop the run: the model keeps its random initialisation,
  and the file is recorded (:func:`fer._dry_run.missing_weights`, re-exported here) so the page and the report list it,
  with the same message a real run fails with.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict
from urllib.parse import urlparse

import torch
from torchvision.models import WeightsEnum

import fer
from .._dry_run import dry_run, missing_weights, note_missing_weights

__all__ = ["weights_dir", "torch_hub_checkpoint_path", "load_torchvision_state_dict", "missing_weights",
           "note_missing_weights", "WeightFile", "torchvision_weight_file"]

#: Environment variable naming the folder of user-supplied weight files.
WEIGHTS_ENV = "FER_WEIGHTS"


@dataclass(frozen=True)
class WeightFile:
    """A pretrained-weight file a run needs: where it must be, and how to get it there."""

    path: Path
    fix: str

    @property
    def present(self) -> bool:
        return self.path.is_file()


def torchvision_weight_file(weights: WeightsEnum) -> WeightFile:
    """The :class:`WeightFile` of torchvision ``weights`` (in the torch.hub cache)."""
    target = torch_hub_checkpoint_path(weights.url)
    return WeightFile(target, _fix_message(weights, target))


def _random_state_dict(weights: WeightsEnum) -> Dict[str, Any]:
    """A randomly initialised state dict with the keys and shapes of ``weights``' file."""
    from torchvision.models import get_model, get_model_weights, list_models

    names = [m for m in list_models() if get_model_weights(m) is type(weights)]
    if not names:
        raise RuntimeError(f"no torchvision architecture takes {weights}")
    kwargs: Dict[str, Any] = {"num_classes": len(weights.meta["categories"])}
    if names[0] == "inception_v3":
        kwargs.update(aux_logits=True, init_weights=True)
    return get_model(names[0], weights=None, **kwargs).state_dict()


def weights_dir() -> Path:
    """Folder of user-supplied weight files: ``$FER_WEIGHTS``, else ``<repo>/weights``."""
    env = os.environ.get(WEIGHTS_ENV)
    return Path(env).expanduser() if env else fer.REPO_ROOT / "weights"


def torch_hub_checkpoint_path(url: str) -> Path:
    """Where torch.hub caches the file of ``url`` (``$TORCH_HOME/hub/checkpoints/<name>``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def load_torchvision_state_dict(weights: WeightsEnum, progress: bool = True) -> Dict[str, Any]:
    """State dict of torchvision ``weights``, from the torch.hub cache or downloaded there.

    Loads with ``weights_only=True`` and checks the file's hash.

    Raises:
        RuntimeError: when the file is neither cached nor downloadable (offline
            machine) or is corrupt; the message names the file, the URL and
            where to put it.
    """
    target = torch_hub_checkpoint_path(weights.url)
    if dry_run() and not target.is_file():
        note_missing_weights(target, _fix_message(weights, target))
        return _random_state_dict(weights)
    try:
        return torch.hub.load_state_dict_from_url(
            weights.url, map_location="cpu", progress=progress, check_hash=True, weights_only=True
        )
    except Exception as err:  # URLError/HTTPError/OSError offline, RuntimeError on a bad hash
        raise RuntimeError(
            f"Could not load torchvision weights {weights} ({type(err).__name__}: {err}).\n"
            + _fix_message(weights, target)
        ) from err


def _fix_message(weights: WeightsEnum, target: Path) -> str:
    return (f"Expected file: {target}\n"
            f"Fix: on a machine with internet, download {weights.url} and copy it to "
            f"{target.parent}/ (set TORCH_HOME to use another cache folder), or build "
            f"the model with pretrained=False.")
