"""Where weights live, and torchvision weights with a useful error when offline.

* User-supplied files (VGG-Face, ...) are looked up in :func:`weights_dir`:
  ``$FER_WEIGHTS`` when set, else ``<repo>/weights``.
* torchvision ImageNet weights go through torch.hub's cache,
  ``$TORCH_HOME/hub/checkpoints/<file>`` (``~/.cache/torch/hub/checkpoints`` by
  default); :func:`load_torchvision_state_dict` downloads there when it can and
  otherwise says which file to put where.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict
from urllib.parse import urlparse

import torch
from torchvision.models import WeightsEnum

import fer

__all__ = ["weights_dir", "torch_hub_checkpoint_path", "load_torchvision_state_dict"]

#: Environment variable naming the folder of user-supplied weight files.
WEIGHTS_ENV = "FER_WEIGHTS"


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
    try:
        return torch.hub.load_state_dict_from_url(
            weights.url, map_location="cpu", progress=progress, check_hash=True, weights_only=True
        )
    except Exception as err:  # URLError/HTTPError/OSError offline, RuntimeError on a bad hash
        raise RuntimeError(
            f"Could not load torchvision weights {weights} ({type(err).__name__}: {err}).\n"
            f"Expected file: {target}\n"
            f"Fix: on a machine with internet, download {weights.url} and copy it to "
            f"{target.parent}/ (set TORCH_HOME to use another cache folder), or build "
            f"the model with pretrained=False."
        ) from err
