"""Files that survive a crash: atomic writes, checkpoints, weights and RNG states.

Every file a run writes (``config.json``, ``metrics.json``, ``history.jsonl``,
``checkpoint.pt``, a prediction's JSON and image) goes through :func:`atomic_write_bytes`
(a temporary file next to the target, fsync, ``os.replace``), so a reader sees the old
file or the whole new one, never half of it. :func:`save_checkpoint` /
:func:`load_checkpoint` write and read :func:`fer.train.fit`'s checkpoints
(``torch.load(weights_only=True)``, a format tag checked on load), :func:`load_weights`
loads a state dict from a checkpoint or a user-supplied file, and :func:`get_rng_state` /
:func:`set_rng_state` carry the random streams across a resume.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import os
import random
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "CheckpointError",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "clean_temp_files",
    "jsonable",
    "save_checkpoint",
    "load_checkpoint",
    "load_weights",
    "get_rng_state",
    "set_rng_state",
    "CHECKPOINT_FILE",
    "HISTORY_FILE",
    "CHECKPOINT_FORMAT",
]

#: File names inside a run directory.
CHECKPOINT_FILE = "checkpoint.pt"
HISTORY_FILE = "history.jsonl"
#: Version tag stored in every checkpoint (the value predates this module: existing checkpoints stay readable).
CHECKPOINT_FORMAT = "fer.train/1"


class CheckpointError(RuntimeError):
    """A checkpoint or weights file that cannot be read; the message names the file and the fix."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _atomic_file(path: str | os.PathLike) -> Iterator[io.BufferedWriter]:
    """Open a temporary file next to ``path``; on success fsync it and ``os.replace`` it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: readers see the old file or the whole new one."""
    with _atomic_file(path) as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON atomically (tensors and NumPy values become plain numbers; NaN -> null)."""
    return atomic_write_text(path, json.dumps(jsonable(obj), indent=indent, sort_keys=True, allow_nan=False) + "\n")


def clean_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Remove temporary files left in ``folder`` by an interrupted atomic write."""
    removed = []
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob(".*.tmp"):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types: mappings, dataclasses, tuples, tensors and NumPy values become dicts, lists and
    numbers; non-finite floats become ``None``; paths become strings."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return jsonable(dataclasses.asdict(obj))
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return jsonable(obj.tolist())
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def get_rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) random states as tensors and plain types."""
    np_state = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                         npst["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))


def save_checkpoint(path: str | os.PathLike, state: Mapping[str, Any]) -> Path:
    """``torch.save`` ``state`` to ``path`` atomically (temp file, fsync, ``os.replace``)."""
    with _atomic_file(path) as f:
        torch.save(dict(state), f)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, *, mmap: bool = False) -> dict[str, Any]:
    """Read a checkpoint written by :func:`fit` (``torch.load(weights_only=True)``).

    Raises :class:`CheckpointError` naming the file and the fix when it cannot be read
    (truncated, from another program, or from another format version). ``mmap=True``
    maps the tensors instead of reading them (cheap when only ``epoch`` etc. are needed).
    """
    path = Path(path)
    fix = f"delete {path} to restart the run from scratch"
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same thing here
        raise CheckpointError(f"cannot read checkpoint {path} ({type(err).__name__}: {str(err)[:200]}); "
                              f"it is damaged or was not written by fer.train: {fix}") from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"checkpoint {path} has format {found!r}, expected {CHECKPOINT_FORMAT!r}: {fix}")
    return ckpt


def load_weights(model: nn.Module, path: str | os.PathLike, *, strict: bool = True, key: str | None = None
                 ) -> nn.Module:
    """Load weights from ``path`` into ``model`` with ``torch.load(weights_only=True)``.

    ``path`` may hold a state dict, a :func:`fit` checkpoint, or a dict with the state
    dict under ``key`` (default: ``"model"``, ``"state_dict"`` or ``"model_state_dict"``,
    whichever is present). A ``module.`` prefix (DDP) is stripped. Missing or
    unexpected keys, or tensors of another shape, are an error (``strict=True``)
    naming the file; ``strict=False`` loads the tensors that fit (a new classifier head).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"cannot read weights {path} with torch.load(weights_only=True) "
                              f"({type(err).__name__}: {str(err)[:200]}); re-save it as a plain state dict "
                              f"(torch.save(model.state_dict(), path)) or download it again") from err
    state = obj
    if isinstance(obj, Mapping):
        for k in ([key] if key else ["model", "state_dict", "model_state_dict"]):
            if k in obj and isinstance(obj[k], Mapping):
                state = obj[k]
                break
        else:
            if key:
                raise CheckpointError(f"weights file {path} has no {key!r} entry (keys: {sorted(obj)[:10]})")
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"weights file {path} does not hold a state dict of tensors")
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    if strict:
        own = model.state_dict()
        wrong = [f"{k}: {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model"
                 for k, v in state.items() if k in own and own[k].shape != v.shape]
        if wrong:
            raise CheckpointError(f"weights {path} do not fit {type(model).__name__}: shapes differ for "
                                  f"{wrong[:4]}; check num_classes / in_chans / width, or pass strict=False to "
                                  f"load the tensors whose shapes match")
    else:
        own = model.state_dict()
        state = {k: v for k, v in state.items() if k not in own or own[k].shape == v.shape}
    result = model.load_state_dict(state, strict=False)
    if strict and (result.missing_keys or result.unexpected_keys):
        raise CheckpointError(f"weights {path} do not fit {type(model).__name__}: missing "
                              f"{result.missing_keys[:8]}, unexpected {result.unexpected_keys[:8]}; "
                              f"pass strict=False to load the matching part")
    return model
