"""Runs are data: a training run is a folder, found again by the hash of what made it.

:func:`run` trains a model once and caches the result::

    result = run("cbam-vgg-smoke", config, build_model, train_ds, val_ds, eval_sets={"test": test_ds})
    result.model, result.metrics["test"]["accuracy"]

Each run lives in ``<root>/<name>-<hash>/`` (``root``: the argument, else the
``FER_RUNS`` environment variable, else ``fer.REPO_ROOT / "runs"``) and holds

* ``config.json``: the :class:`~fer.train.TrainConfig`, the model spec, the data
  fingerprints, the hash of the ``fer`` source, versions; written first;
* ``history.jsonl``: one JSON record per epoch;
* ``checkpoint.pt``: model, optimizer, schedule, RNG states, epoch, step, stage;
* ``predictions.pt``: per evaluation set, predictions, targets and logits;
* ``metrics.json``: the evaluation metrics; written last, it marks the run complete.

Every file is written atomically (temp file in the same folder, fsync, ``os.replace``).
The hash covers the config (canonical JSON, without the fields that only change how a
run executes), the model spec, the data fingerprints and every ``*.py`` of the ``fer``
package: change any of them and the run is new. A complete run is loaded, not
retrained ("cache hit: runs/..."); an interrupted one resumes from its checkpoint.

From the command line (:func:`main`, implemented in :mod:`fer._runs_cli`)::

    python -m fer.runs plan --profile paper --data-root DIR [--json]   # every run the book trains
    python -m fer.runs train NAME... --profile paper --data-root DIR    # train some, for `make book`
    accelerate launch -m fer.runs train NAME... --profile paper ...     # the same, data parallel
    python -m fer.runs list [--json]                                    # every run in the cache

The command line sits on top of the stack, like :mod:`fer.book`: ``plan`` and ``train``
import the chapters (:mod:`fer.experiments.plan`), which import this module; nothing
here imports them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Collection

import torch
from torch import nn
from torch.utils.data import ConcatDataset, Dataset, Subset

from . import PACKAGE_DIR, REPO_ROOT, __version__
from ._hashing import package_fingerprint
from .io import CHECKPOINT_FILE, HISTORY_FILE, atomic_write_json, load_checkpoint, save_checkpoint
from .io import jsonable as _jsonable
from .train import (
    ForwardFn,
    History,
    LossFn,
    OutputToLogits,
    TrainConfig,
    default_output_to_logits,
    evaluate,
    fit,
    metrics_summary,
    seed_everything,
    use_cpu,
)
from .train import use_bf16 as _use_bf16

__all__ = [
    "Run",
    "RunResult",
    "run",
    "find_runs",
    "runs_root",
    "run_key",
    "source_hash",
    "protocols_of",
    "PRESENTATION_MODULES",
    "data_fingerprint",
    "spec_of",
    "CONFIG_FILE",
    "METRICS_FILE",
    "PREDICTIONS_FILE",
    "main",
]

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.pt"
#: Hex digits of the run hash in folder names.
HASH_LENGTH = 12
#: Bumped when the meaning of a run folder changes (part of every hash).
RUNS_FORMAT = "fer.runs/1"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# =========================================================================== keys


def runs_root(root: str | os.PathLike | None = None) -> Path:
    """Where runs live: ``root``, else ``$FER_RUNS``, else ``fer.REPO_ROOT / "runs"``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("FER_RUNS")
    return Path(env).expanduser() if env else REPO_ROOT / "runs"


#: Modules of ``fer`` that no training run executes: what draws, explains, tabulates or
#: publishes results. Editing them must not retrain anything, so a run's identity leaves
#: them out (the book's page cache still covers them: a page re-renders, its runs load).
PRESENTATION_MODULES: tuple[str, ...] = (
    "plots.py", "explain.py", "book.py", "pages.py", "profiles.py", "predict.py", "_launch.py", "_progress.py",
    "_runs_cli.py", "experiments/claims.py", "experiments/realism.py", "experiments/plan.py",
)


def source_hash(package_dir: str | os.PathLike = PACKAGE_DIR, *, protocols: Collection[str] | None = None) -> str:
    """sha256 over the relative path and bytes of every ``*.py`` of the ``fer`` package that
    training executes: models, layers, losses, data, train, runs and the chapters' protocols,
    i.e. all but :data:`PRESENTATION_MODULES`.

    ``protocols`` narrows the chapter protocols to the named modules of ``experiments/``
    (e.g. ``{"cbam_vgg"}``); ``experiments/_common.py`` always counts. ``None`` keeps them all.
    """
    exclude = set(PRESENTATION_MODULES)
    if protocols is not None:
        chapters = Path(package_dir) / "experiments"
        exclude |= {f"experiments/{p.name}" for p in chapters.glob("*.py")
                    if not p.name.startswith("_") and p.stem not in protocols}
    return package_fingerprint(package_dir, exclude=exclude)


_PROTOCOL = re.compile(r"\bfer\.experiments\.([A-Za-z0-9_]+)\.")


def protocols_of(spec: Any) -> set[str]:
    """The chapter modules (``fer.experiments.<name>``) whose code a run spec names: its
    ``build_model``, losses, ``forward_fn`` or ``output_to_logits`` (:func:`spec_of` form).

    Training executes a chapter's code only through those callables; the rest of what a
    chapter decides (config, data) is hashed as values. So a run is keyed by the chapters
    it calls into, and an edit to another chapter's module does not retrain it.
    """
    return set(_PROTOCOL.findall(_canonical(spec)))


def data_fingerprint(ds: Any) -> str:
    """A dataset's fingerprint: same fingerprint, same samples.

    ``ds.fingerprint()`` when it has one (SynFER, :class:`~fer.data.CachedDataset`,
    the masked-face sets); for a ``Subset`` or ``ConcatDataset``, a hash of the parts'
    fingerprints (and the subset's indices). Anything else is an error asking for
    ``data_fingerprint=`` in :func:`run`.
    """
    fn = getattr(ds, "fingerprint", None)
    if callable(fn):
        return str(fn())
    if isinstance(ds, Subset):
        inner = data_fingerprint(ds.dataset)
        return _short_hash({"subset_of": inner, "indices": [int(i) for i in ds.indices]}, 16)
    if isinstance(ds, ConcatDataset):
        return _short_hash({"concat": [data_fingerprint(d) for d in ds.datasets]}, 16)
    raise TypeError(f"{type(ds).__name__} has no fingerprint() to key the run cache with; pass "
                    f"data_fingerprint='...' to run() (a string that changes whenever the samples do, e.g. the "
                    f"dataset's name, split, root and file count), or cache it with fer.data.cache_dataset, "
                    f"which hashes the pixels")


def _canonical(obj: Any) -> str:
    return json.dumps(_jsonable(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def _short_hash(obj: Any, n: int = HASH_LENGTH) -> str:
    return hashlib.sha256(_canonical(obj).encode()).hexdigest()[:n]


def spec_of(obj: Any) -> Any:
    """A JSON description of a callable (``build_model``, a loss) for the run hash.

    Functions and classes give ``module.qualname``; ``functools.partial`` adds its
    arguments; a module (loss) adds its class, ``repr`` and a hash of its state dict.
    A lambda or closure is described by name only: pass ``spec=`` to :func:`run` for
    whatever it closes over.
    """
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    if isinstance(obj, (list, tuple)):
        return [spec_of(v) for v in obj]
    if isinstance(obj, Mapping):
        return {str(k): spec_of(v) for k, v in obj.items()}
    if isinstance(obj, functools.partial):
        return {"partial": spec_of(obj.func), "args": spec_of(list(obj.args)),
                "kwargs": spec_of(dict(obj.keywords))}
    if isinstance(obj, nn.Module):
        digest = hashlib.sha256()
        for k, v in obj.state_dict().items():
            digest.update(k.encode())
            digest.update(v.detach().cpu().contiguous().float().numpy().tobytes())
        return {"module": f"{type(obj).__module__}.{type(obj).__qualname__}", "repr": repr(obj),
                "state": digest.hexdigest()[:16]}
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"dataclass": f"{type(obj).__module__}.{type(obj).__qualname__}", **spec_of(dataclasses.asdict(obj))}
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{getattr(obj, '__module__', None) or type(obj).__module__}.{name}"


def run_key(name: str, config: TrainConfig, *, data: Mapping[str, str], spec: Any = None,
            source: str | None = None) -> tuple[str, dict[str, Any]]:
    """The run hash and the record it is the hash of.

    The record holds the config (without :attr:`TrainConfig.RUNTIME_FIELDS`), the model
    spec, the data fingerprints by split and the source hash; the run name is not part
    of it, so renaming a run does not retrain it.
    """
    _check_name(name)
    record = {
        "format": RUNS_FORMAT,
        "config": config.to_dict(runtime=False),
        "spec": spec_of(spec),
        "data": dict(sorted(data.items())),
        "source": source if source is not None else source_hash(),
    }
    return _short_hash(record), record


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"run name {name!r} must start with a letter or digit and use only letters, digits, "
                         f"'.', '_' and '-' (it names a folder)")


def _display(path: Path) -> str:
    try:
        return path.resolve().relative_to(REPO_ROOT.resolve()).as_posix()
    except ValueError:
        return str(path)


# =========================================================================== runs on disk


@dataclass(frozen=True)
class Run:
    """A run folder: its config, history, metrics and checkpoint.

    Get one with :meth:`load` (from a folder) or :func:`find_runs`; :func:`run` returns
    one in :attr:`RunResult.run`.
    """

    path: Path
    record: dict[str, Any] = field(repr=False)

    @classmethod
    def load(cls, path: str | os.PathLike, *, root: str | os.PathLike | None = None) -> Run:
        """The run in folder ``path`` (or in ``runs_root(root) / path``)."""
        p = Path(path).expanduser()
        if not p.is_dir() and not p.is_absolute() and (runs_root(root) / p).is_dir():
            p = runs_root(root) / p
        cfg = p / CONFIG_FILE
        if not cfg.is_file():
            raise FileNotFoundError(f"{p} is not a run folder: it has no {CONFIG_FILE} (expected "
                                    f"<runs>/<name>-<hash>/{CONFIG_FILE}, written by fer.runs.run)")
        try:
            record = json.loads(cfg.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{cfg} is not valid JSON ({err}); delete {p} to retrain the run") from err
        return cls(p, record)

    # ------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        return self.record.get("name", self.path.name.rsplit("-", 1)[0])

    @property
    def hash(self) -> str:
        return self.record.get("hash", self.path.name.rsplit("-", 1)[-1])

    @property
    def config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.record["config"])

    @property
    def spec(self) -> Any:
        return self.record.get("spec")

    @property
    def data(self) -> dict[str, str]:
        return dict(self.record.get("data", {}))

    # ------------------------------------------------------------------ files
    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT_FILE

    @property
    def complete(self) -> bool:
        """``metrics.json`` and ``checkpoint.pt`` exist (metrics are written last)."""
        return (self.path / METRICS_FILE).is_file() and self.checkpoint_path.is_file()

    def history(self) -> History:
        """The per-epoch records so far (empty before the first epoch ends)."""
        p = self.path / HISTORY_FILE
        return History.from_jsonl(p) if p.is_file() else History()

    def metrics(self) -> dict[str, Any]:
        """The contents of ``metrics.json`` (an error while the run is incomplete)."""
        p = self.path / METRICS_FILE
        if not p.is_file():
            raise FileNotFoundError(f"run {_display(self.path)} is not complete ({METRICS_FILE} missing): "
                                    f"call fer.runs.run(...) with its config to train or resume it")
        return json.loads(p.read_text())

    def predictions(self) -> dict[str, dict[str, torch.Tensor]]:
        """Per evaluation set: ``predictions``, ``targets`` and ``logits`` tensors."""
        p = self.path / PREDICTIONS_FILE
        if not p.is_file():
            raise FileNotFoundError(f"run {_display(self.path)} has no {PREDICTIONS_FILE}")
        return torch.load(p, map_location="cpu", weights_only=True)

    def checkpoint(self) -> dict[str, Any]:
        """The checkpoint dict (see :func:`fer.io.load_checkpoint`)."""
        return load_checkpoint(self.checkpoint_path)

    def load_model(self, model: nn.Module, *, strict: bool = True) -> nn.Module:
        """Load this run's trained weights into ``model`` (built as the run built it); returns it in eval mode."""
        # mapped, not read: only the model's tensors are touched (not the optimizer state)
        model.load_state_dict(load_checkpoint(self.checkpoint_path, mmap=True)["model"], strict=strict)
        return model.eval()

    def __str__(self) -> str:
        return _display(self.path)


#: ``torch.nn.init`` functions that :func:`_no_weight_init` turns into no-ops.
_INIT_FUNCTIONS = ("uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
                   "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
                   "sparse_")


@contextlib.contextmanager
def _no_weight_init() -> Any:
    """Inside, ``torch.nn.init``'s initialisers return their tensor untouched.

    A cache hit builds the model only to load every parameter and buffer of it from the
    checkpoint with ``strict=True`` (a key the checkpoint lacks is an error), so drawing
    random weights first is wasted: about 2 s for VGG16 on 2 CPU cores, on every page that
    loads the run. The same trick as ``transformers``' ``no_init_weights``. It patches the
    module, so it is not for a model another thread builds meanwhile to train.
    """
    from torch.nn import init

    saved = {name: getattr(init, name) for name in _INIT_FUNCTIONS if hasattr(init, name)}
    try:
        for name in saved:
            setattr(init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(init, name, fn)


def find_runs(name: str | None = None, *, root: str | os.PathLike | None = None, complete: bool | None = None
              ) -> list[Run]:
    """Runs under ``runs_root(root)``, optionally only those named ``name`` / (in)complete; sorted by folder."""
    base = runs_root(root)
    if not base.is_dir():
        return []
    out = []
    for p in sorted(base.iterdir()):
        if not (p / CONFIG_FILE).is_file():
            continue
        if name is not None and p.name.rsplit("-", 1)[0] != name:
            continue
        r = Run.load(p)
        if complete is None or r.complete == complete:
            out.append(r)
    return out


# =========================================================================== run


@dataclass
class RunResult:
    """What :func:`run` returns, whether it trained or loaded.

    Attributes:
        model: the trained model (eval mode).
        metrics: ``metrics.json``: per evaluation set (``val``, ``test``, ...) its
            loss, accuracy, mean_class_accuracy, per_class_accuracy and confusion;
            plus ``epochs``, ``device``, ``precision`` and ``timing``.
        history: the per-epoch :class:`~fer.train.History`.
        run: the :class:`Run` folder.
        cached: ``True`` when the run was loaded, not trained.
    """

    model: nn.Module
    metrics: dict[str, Any]
    history: History
    run: Run
    cached: bool

    @property
    def path(self) -> Path:
        return self.run.path


def _say(msg: str, verbose: bool) -> None:
    """Print ``msg`` (through tqdm, so bars stay intact) or, when not verbose, log it.

    ``FER_RUNS_QUIET=1`` (the book runner sets it for its kernels) logs instead of printing:
    the pages' banners list the runs, and run logs do not belong on a page.
    """
    if verbose and os.environ.get("FER_RUNS_QUIET") != "1":
        from tqdm.auto import tqdm

        tqdm.write(msg)
    else:
        log.info(msg)


def _fingerprints(datasets: Mapping[str, Any], given: str | Mapping[str, str] | None) -> dict[str, str]:
    out = {}
    for split, ds in datasets.items():
        if isinstance(given, Mapping) and split in given:
            out[split] = str(given[split])
            continue
        try:
            out[split] = data_fingerprint(ds)
        except TypeError:
            if not isinstance(given, str):
                raise
            out[split] = f"{given}:{split}"
    return out


def run(name: str, config: TrainConfig, build_model: Callable[[], nn.Module], train_ds: Dataset,
        val_ds: Dataset | None = None, *, eval_sets: Mapping[str, Dataset] | None = None, spec: Any = None,
        data_fingerprint: str | Mapping[str, str] | None = None, root: str | os.PathLike | None = None,
        loss_fn: LossFn | nn.Module | None = None, losses: Mapping[str, LossFn | nn.Module] | None = None,
        output_to_logits: OutputToLogits = default_output_to_logits, forward_fn: ForwardFn | None = None,
        retrain: bool = False, progress: bool = True, verbose: bool = True) -> RunResult:
    """Train ``build_model()`` with ``config`` once; later calls load the result.

    Args:
        name: the run's name (its folder is ``<name>-<hash>``).
        config: the :class:`~fer.train.TrainConfig`.
        build_model: returns a fresh model; called after ``seed_everything(config.seed)``,
            both when training and when loading.
        train_ds, val_ds: as in :func:`fer.train.fit`; ``val_ds`` is also evaluated at
            the end under the key ``"val"``.
        eval_sets: more sets to evaluate at the end, by name (``{"test": test_ds}``).
        spec: anything else that determines the result and is not in ``config``: the
            model name and keyword arguments above all (``build_model`` itself is hashed
            by name, with a ``functools.partial``'s arguments; a lambda's closure is not
            seen).
        data_fingerprint: for datasets without ``fingerprint()``: one string (suffixed
            with the split name) or a ``{split: string}`` mapping (``train``, ``val``,
            and the ``eval_sets`` keys).
        root: the runs folder (default: ``$FER_RUNS``, else ``fer.REPO_ROOT / "runs"``).
        loss_fn, losses, output_to_logits, forward_fn: as in :func:`fer.train.fit`
            (the losses are part of the hash via :func:`spec_of`).
        retrain: delete a complete run with this hash and train it again.
        progress: tqdm bars; verbose: print one line saying what happened.

    A run killed mid-way resumes from its last checkpoint on the next call and, on
    CPU, ends with the same metrics and weights as if it had never stopped.
    """
    from accelerate import PartialState

    datasets: dict[str, Any] = {"train": train_ds}
    if val_ds is not None:
        datasets["val"] = val_ds
    for k, ds in (eval_sets or {}).items():
        if k in ("train", "val"):
            raise ValueError(f"eval_sets key {k!r} is reserved; use another name")
        datasets[k] = ds
    full_spec = {"build_model": spec_of(build_model), "spec": spec_of(spec), "loss_fn": spec_of(loss_fn),
                 "losses": spec_of(dict(losses or {})), "output_to_logits": spec_of(output_to_logits),
                 "forward_fn": spec_of(forward_fn)}
    digest, record = run_key(name, config, data=_fingerprints(datasets, data_fingerprint), spec=full_spec,
                             source=source_hash(protocols=protocols_of(full_spec)))
    path = runs_root(root) / f"{name}-{digest}"
    state = PartialState(cpu=use_cpu(config))
    main = state.is_main_process

    current = Run(path, {**record, "name": name, "hash": digest})
    if current.complete and retrain and main:
        for f in (METRICS_FILE, CHECKPOINT_FILE, HISTORY_FILE, PREDICTIONS_FILE):
            (path / f).unlink(missing_ok=True)
    state.wait_for_everyone()

    seed_everything(config.seed, deterministic=config.deterministic)
    if current.complete:
        with _no_weight_init():  # every weight comes from the checkpoint (strict)
            model = build_model()
        try:
            current.load_model(model)
        except Exception as err:
            raise RuntimeError(f"cache hit for {_display(path)}, but its checkpoint does not fit the model "
                               f"build_model() returns ({err}); delete {_display(path)} to retrain") from err
        _say(f"cache hit: {_display(path)}", verbose and main)
        model.to(state.device)
        return RunResult(model, current.metrics(), current.history(), current, cached=True)

    model = build_model()
    if main:
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path / CONFIG_FILE, {
            **record, "name": name, "hash": digest, "fer_version": __version__, "torch": str(torch.__version__),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
    state.wait_for_everyone()
    if current.checkpoint_path.is_file():
        done = int(load_checkpoint(current.checkpoint_path, mmap=True)["epoch"])
        _say(f"resuming: {_display(path)} at epoch {done}/{config.epochs}", verbose and main)
    else:
        _say(f"training: {_display(path)} ({config.epochs} epochs)", verbose and main)

    t0 = time.perf_counter()
    history = fit(model, train_ds, val_ds, config, run_dir=path, loss_fn=loss_fn, losses=losses,
                  output_to_logits=output_to_logits, forward_fn=forward_fn, progress=progress)
    t_fit = time.perf_counter() - t0

    stage = config.resolved_stages()[-1]
    eval_loss = loss_fn if stage.loss is None else (losses or {})[stage.loss]
    results: dict[str, dict[str, Any]] = {}
    for split, ds in datasets.items():
        if split == "train":
            continue
        if split == "val" and history.final_eval is not None:
            results[split] = history.final_eval
        else:
            results[split] = evaluate(model, ds, config, loss_fn=eval_loss, output_to_logits=output_to_logits,
                                      forward_fn=forward_fn, module=stage.module, progress=progress, desc=split)
    model.eval()

    metrics: dict[str, Any] = {split: metrics_summary(r) for split, r in results.items()}
    device = next(model.parameters()).device if any(True for _ in model.parameters()) else torch.device("cpu")
    metrics.update(epochs=config.epochs, steps=history.last["step"] if len(history) else 0, device=device.type,
                   precision="bf16" if _use_bf16(config, device) else "fp32",
                   timing={"fit_seconds": round(t_fit, 3), "total_seconds": round(time.perf_counter() - t0, 3),
                           "epoch_seconds": [r.get("seconds") for r in history],
                           "threads": torch.get_num_threads()})
    if main:
        preds = {split: {k: r[k] for k in ("predictions", "targets", "logits") if r.get(k) is not None}
                 for split, r in results.items()}
        save_checkpoint(path / PREDICTIONS_FILE, preds)
        atomic_write_json(path / METRICS_FILE, metrics)
    state.wait_for_everyone()
    _say(f"finished: {_display(path)}" + "".join(
        f"  {split} acc {m['accuracy']:.4f}" for split, m in metrics.items()
        if isinstance(m, dict) and m.get("accuracy") is not None), verbose and main)
    return RunResult(model, json.loads(json.dumps(_jsonable(metrics))), history, current, cached=False)


# =========================================================================== command line


def main(argv: list[str] | None = None) -> int:
    """``python -m fer.runs plan|train|list`` (see the module docstring); returns the exit status.

    The command line lives in :mod:`fer._runs_cli`, which no run executes (it is one of the
    :data:`PRESENTATION_MODULES`), so changing it retrains nothing; it imports the chapters
    only for ``plan`` and ``train``.
    """
    from ._runs_cli import main as cli

    return cli(argv)


if __name__ == "__main__":
    import sys

    sys.exit(main())
