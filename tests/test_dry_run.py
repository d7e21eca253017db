"""The paper path's guard: a ``--profile paper`` run checks every pretrained file its
chapters load before anything executes, and names each missing one with where to get it.

(The whole-book ``--dry-run`` over a real-format data root, written by
``fixtures_datasets.write_data_root``, is run by hand for now:
``python -m fer.book run --profile paper --data-root DIR --dry-run``.)
"""
from __future__ import annotations

import dataclasses
import importlib
import shutil
from pathlib import Path

import pytest

from fer import REPO_ROOT, _dry_run, book

WEIGHT_FILES = {"vgg_face_dag.pth", "resnet50-0676ba61.pth", "vgg16-397923af.pth",
                "inception_v3_google-0cc3c7bd.pth", "resnet18-f37072fd.pth", "vgg11-8a719046.pth"}


@pytest.fixture
def copied_book(tmp_path: Path) -> Path:
    root = tmp_path / "book-root"
    root.mkdir()
    shutil.copytree(REPO_ROOT / "book", root / "book", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO_ROOT / name, root / name)
    return root


def test_a_paper_run_refuses_to_start_without_its_weights(copied_book: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("FER_WEIGHTS", str(tmp_path / "weights"))
    data = tmp_path / "data"
    data.mkdir()
    assert book.main(["run", "--root", str(copied_book), "--profile", "paper", "--data-root", str(data),
                      "--no-build"]) == 1
    err = capsys.readouterr().err
    assert "pretrained weights that are missing" in err and "Nothing was run" in err and "--dry-run" in err
    for name in WEIGHT_FILES:
        assert name in err, name
    assert "https://download.pytorch.org/models/vgg11-8a719046.pth" in err
    assert not (copied_book / "_build" / "cache").exists()


@pytest.mark.parametrize("chapter", ["cbam_vgg", "manet", "mapnet", "msanet", "masked"])
def test_a_dry_run_caps_repetitions_and_changes_nothing_else(chapter: str, monkeypatch: pytest.MonkeyPatch) -> None:
    setup_cls = importlib.import_module(f"fer.experiments.{chapter}").Setup
    monkeypatch.delenv(_dry_run.DRY_RUN_ENV, raising=False)
    real = setup_cls.for_profile("paper", data_root="/data")
    monkeypatch.setenv(_dry_run.DRY_RUN_ENV, "1")
    dry = setup_cls.for_profile("paper", data_root="/data")
    changed = {f.name for f in dataclasses.fields(real) if getattr(real, f.name) != getattr(dry, f.name)}
    assert changed <= set(_dry_run.REPEATED + _dry_run.SWEPT), changed
    for name in changed:
        values, kept = list(getattr(real, name)), list(getattr(dry, name))
        assert kept == (values[:1] if name in _dry_run.REPEATED else [values[0], values[-1]]), name
    if chapter in ("manet", "mapnet", "masked"):  # the paper profile repeats these over seeds or folds
        assert changed, f"{chapter}: the dry run should cap its paper profile's repetitions"
