"""The paper path's guard: a ``--profile paper`` run checks every pretrained file its
chapters load before anything executes, and names each missing one with where to get it.

And the whole paper path, proven: every page of the book executes under ``--profile paper
--dry-run`` over a data root written in the five datasets' real on-disk formats
(``fixtures_datasets.write_data_root``, with RAF-DB's landmark cache written by
``python -m fer.data.landmarks`` as a user would), full-size models, 224 px, the papers'
optimisers, with random weights standing in for the missing pretrained files.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import shutil
import time
from pathlib import Path

import nbformat
import pytest

from fer import REPO_ROOT, _dry_run, book
from fer.data.landmarks.__main__ import main as landmarks_main

from fixtures_datasets import write_data_root

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
    # a repetition left at the Setup's default (here: every field of the smoke profile) is capped too
    defaults, dry_smoke = setup_cls(), setup_cls.for_profile("smoke")
    for name in _dry_run.REPEATED + _dry_run.SWEPT:
        values = getattr(defaults, name, None)
        if isinstance(values, (list, tuple)) and len(values) > 1:
            assert len(getattr(dry_smoke, name)) == (1 if name in _dry_run.REPEATED else 2), name


def test_the_whole_book_dry_runs_on_real_format_data(copied_book: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    start = time.perf_counter()
    data = write_data_root(tmp_path / "data")
    # the data root holds what a user must add too: Pose-AffectNet's lists (write_data_root) and the
    # landmark caches of the datasets that ship no landmarks and feed MAPNet, MANet and masked FER
    for name in ("rafdb", "fedro"):
        assert landmarks_main(["--dataset", name, "--root", str(data / name), "--no-progress"]) == 0
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("FER_WEIGHTS", str(tmp_path / "weights"))
    runs = tmp_path / "runs"
    monkeypatch.setenv("FER_RUNS", str(runs))
    # two chapters at a time (book.page_groups), as a user with two cores would: about 12 min
    rc = book.main(["run", "--root", str(copied_book), "--profile", "paper", "--data-root", str(data),
                    "--dry-run", "--no-build", "--jobs", "2"])
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
    # the dry run's full-size checkpoints (VGG16 and its optimizer state: GBs) mean nothing: free the disk
    shutil.rmtree(copied_book / "_build" / "dry-run")
