"""The paper path, proven on CPU: every page of the book, ``--profile paper --dry-run``, over a
data root written in the five datasets' real on-disk formats (a few faces per class), after
the landmark-cache step the masked chapter needs.

The dry run keeps the paper profile's settings (224 px, full-width models, the papers'
optimisers and schedules, the real loaders and the weight-loading code) and caps training at
2 optimiser steps per stage and evaluation at 2 batches. No pretrained file is present here,
so every chapter that starts from one goes on with random weights and its page lists the file.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import nbformat
import pytest

from fer import REPO_ROOT, book
from fer.data.landmarks.__main__ import main as landmarks_main

from fixtures_datasets import write_affectnet, write_ckplus, write_fedro, write_fer2013, write_rafdb

WEIGHT_FILES = {"vgg_face_dag.pth", "resnet50-0676ba61.pth", "vgg16-397923af.pth",
                "inception_v3_google-0cc3c7bd.pth", "resnet18-f37072fd.pth", "vgg11-8a719046.pth"}


def write_data_root(root: Path) -> Path:
    """RAF-DB, FER2013, AffectNet, CK+ and FED-RO in their release layouts, 2-6 faces per class."""
    write_rafdb(root / "rafdb", n_train=28, n_test=14)
    write_fer2013(root / "fer2013", usages=("Training",) * 28 + ("PublicTest",) * 14 + ("PrivateTest",) * 14)
    write_affectnet(root / "affectnet", n_train=32, n_test=16)
    write_ckplus(root / "ckplus")
    write_fedro(root / "fedro", per_class=2)
    return root


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


def test_the_whole_book_dry_runs_on_real_format_data(copied_book: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    start = time.perf_counter()
    data = write_data_root(tmp_path / "data")
    assert landmarks_main(["--dataset", "rafdb", "--root", str(data / "rafdb"), "--no-progress"]) == 0
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("FER_WEIGHTS", str(tmp_path / "weights"))
    runs = tmp_path / "runs"
    monkeypatch.setenv("FER_RUNS", str(runs))
    rc = book.main(["run", "--root", str(copied_book), "--profile", "paper", "--data-root", str(data),
                    "--dry-run", "--no-build"])
    seconds = time.perf_counter() - start
    print(f"dry run of the whole book: {seconds:.0f} s")
    assert rc == 0
    report = json.loads((copied_book / "_build" / "book-report.json").read_text())
    assert report["dry_run"] is True and report["profile"] == "paper"
    pages = [p for p in book.read_toc(copied_book) if p.suffix == ".ipynb"]
    assert sorted(report["notebooks"]) == sorted(p.as_posix() for p in pages)
    assert {e["status"] for e in report["notebooks"].values()} == {"executed"}
    # nothing entered a cache: no page cache, no run outside the dry run's own folder
    assert not (copied_book / "_build" / "cache").exists()
    assert not runs.exists()
    assert any((copied_book / "_build" / "dry-run" / "runs").iterdir())
    listed = set()
    for rel in pages:
        nb = nbformat.read(copied_book / "_build" / "src" / rel, as_version=4)
        assert nb.metadata["fer_book"]["dry_run"] is True
        html = "".join(o.get("data", {}).get("text/html", "") for c in nb.cells if c.cell_type == "code"
                       for o in c.get("outputs", []))
        if "fer-banner" in html:
            assert "Dry run: these numbers mean nothing" in html, rel
        listed |= {name for name in WEIGHT_FILES if name in html}
    assert listed == WEIGHT_FILES  # each missing file is named on a page that needed it
