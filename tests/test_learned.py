"""Every demo run learns (issue 17 §2): the rule (fer.pages.learned), a run's numbers against it
(run_learning), the warning box a page shows (banner), and the count the book report keeps
(fer.book.page_runs, write_report)."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
import torch
from torch import nn

from fer import book, pages
from fer.data import CachedDataset
from fer.pages import LEARNED_MARGIN, Learning, learned, run_learning
from fer.runs import run
from fer.train import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

CLASSES = ("a", "b", "c")


@pytest.mark.parametrize("accuracy, mean_class, majority, classes, expected", [
    (0.40, 0.40, 0.25, 7, True),            # 15 points above the majority, class mean ≥ 2/7
    (0.40 - 1e-6, 0.40, 0.25, 7, False),    # just under majority + 15 points
    (0.60, 2 / 7, 0.25, 7, True),           # class mean exactly twice chance
    (0.60, 2 / 7 - 1e-6, 0.25, 7, False),   # just under it
    (0.95, 0.49, 0.30, 4, False),           # high accuracy from the big class alone
    (0.208, 0.15, 0.208, 7, False),         # the old demo's CBAM rows: the majority plateau
    (None, 0.5, 0.2, 7, None),              # a run without numbers: the rule cannot tell
    (0.5, 0.5, None, 7, None),
    (0.5, 0.5, 0.2, None, None),
])
def test_the_rule(accuracy, mean_class, majority, classes, expected):
    assert learned(accuracy, mean_class, majority, classes) is expected
    assert LEARNED_MARGIN == 0.15 and "15 points" in pages.LEARNING_RULE and "2× chance" in pages.LEARNING_RULE


def _data(n: int, seed: int, *, blank: bool = False) -> CachedDataset:
    """3 balanced classes; channel 0 says the class (learnable), or every face the same (``blank``)."""
    y = torch.arange(n) % 3
    x = torch.randint(0, 256, (n, 3, 8, 8), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    x[:, 0] = (y[:, None, None] * 100).to(torch.uint8)
    if blank:
        x[:] = 7
    return CachedDataset({"image": x, "label": y}, classes=CLASSES, source_fingerprint=f"t{n}-{seed}-{blank}")


def _build() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(192, 16), nn.ReLU(), nn.Linear(16, 3))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """A run that learned, and one whose test faces are all the same picture (one answer for all)."""
    root = tmp_path_factory.mktemp("runs")
    cfg = TrainConfig(epochs=15, batch_size=16, lr=1e-2)
    train = _data(60, 0)
    good = run("good", cfg, _build, train, eval_sets={"test": _data(30, 1)}, root=root, progress=False,
               verbose=False)
    bad = run("bad", cfg, _build, train, eval_sets={"test": _data(30, 1, blank=True)}, root=root, progress=False,
              verbose=False)
    return root, good.path.name, bad.path.name


def test_run_learning_reads_a_runs_numbers(two_runs):
    root, good, bad = two_runs
    ok = run_learning(good, root=root)
    assert (ok.eval_set, ok.classes, ok.majority_share) == ("test", 3, pytest.approx(1 / 3))
    assert ok.mean_class_accuracy > 2 / 3 and ok.learned is True
    missed = run_learning(root / bad)  # a folder works as well as an id
    assert missed.accuracy == pytest.approx(1 / 3) and missed.mean_class_accuracy == pytest.approx(1 / 3)
    assert missed.learned is False
    assert "largest class 33.3%, needs ≥ 48.3%" in missed.shortfall()
    assert "needs ≥ 66.7%, 2× chance with 3 classes" in missed.shortfall()
    assert run_learning("no-such-run-000000000000", root=root) == Learning("no-such-run-000000000000")
    assert run_learning("no-such-run-000000000000", root=root).learned is None


def test_the_banner_lists_runs_that_did_not_learn(two_runs, monkeypatch):
    root, good, bad = two_runs
    monkeypatch.setenv("FER_RUNS", str(root))
    monkeypatch.delenv("FER_DRY_RUN", raising=False)
    html = pages.banner("demo", "SynFER stand-ins", "8 px", [good, bad]).data
    box = html[html.index("warning fer-not-learned"):]
    assert "1 of 2 runs on this page did not learn" in box and bad in box and good not in box
    assert "needs ≥ 48.3%" in box and "15 points above" in box
    assert pages.banner("demo", "SynFER", "8 px", [good]).data.count("warning fer-not-learned") == 0
    # smoke runs are not expected to learn; a dry run's numbers mean nothing
    assert "warning fer-not-learned" not in pages.banner("smoke", "SynFER", "8 px", [good, bad]).data
    monkeypatch.setenv("FER_DRY_RUN", "1")
    assert "warning fer-not-learned" not in pages.banner("demo", "SynFER", "8 px", [good, bad]).data


def _page(path: Path, *outputs: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# A page")] + [
        nbformat.v4.new_code_cell("banner(...)", outputs=[nbformat.v4.new_output(
            "display_data", data={"text/html": html, "text/plain": "<HTML>"})]) for html in outputs]
    nbformat.write(nb, str(path))
    return path


def test_the_book_report_counts_them(two_runs, monkeypatch, tmp_path):
    root, good, bad = two_runs
    monkeypatch.setenv("FER_RUNS", str(root))
    monkeypatch.delenv("FER_DRY_RUN", raising=False)
    first = _page(tmp_path / "a.ipynb", pages.banner("demo", "SynFER", "8 px", [good, bad]).data)
    second = _page(tmp_path / "b.ipynb", pages.banner("demo", "SynFER", "8 px", [bad], model="x'y").data,
                   pages.banner("demo", "SynFER", "8 px", [good]).data)
    assert book.page_runs(first) == ([good, bad], [bad])
    assert book.page_runs(second) == ([bad, good], [bad])
    assert book.page_runs(_page(tmp_path / "c.ipynb")) == ([], [])

    paths = book.BookPaths(tmp_path)
    results = [book.NotebookResult(f"book/{p.name}", "demo", {}, runs=r, not_learned=n)
               for p in (first, second) for r, n in [book.page_runs(p)]]
    report = book.write_report(paths, "demo", None, results, 1.0)
    assert report["runs"] == 2 and report["runs_not_learned"] == [bad]
    saved = json.loads(paths.report.read_text())
    assert saved["notebooks"]["book/a.ipynb"]["not_learned"] == [bad]
    book._report_not_learned(report)
