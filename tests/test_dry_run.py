"""The paper path's guard: a ``--profile paper`` run checks every pretrained file its
chapters load before anything executes, and names each missing one with where to get it.

(The whole-book ``--dry-run`` over a real-format data root, written by
``fixtures_datasets.write_data_root``, is run by hand for now:
``python -m fer.book run --profile paper --data-root DIR --dry-run``.)
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fer import REPO_ROOT, book

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
