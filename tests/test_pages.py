"""fer.pages: the page helpers that are not drawing (cached_frame) and the page-key imports."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from fer import _dry_run, pages
from fer._hashing import import_closure, imported_modules


def test_cached_frame_computes_once_per_setting_and_never_in_a_dry_run(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def compute(value: float = 0.25) -> pd.DataFrame:
        calls.append(value)
        return pd.DataFrame({"train": ["clean"], "accuracy": [value], "faces": [140]})

    first = pages.cached_frame("probe", {"n": 1}, compute, root=tmp_path)
    again = pages.cached_frame("probe", {"n": 1}, lambda: compute(0.9), root=tmp_path)
    assert calls == [0.25]  # the second call read the file
    pd.testing.assert_frame_equal(first, again)
    assert again["faces"].dtype.kind == "i" and again.loc[0, "accuracy"] == 0.25
    [path] = (tmp_path / pages.TABLES_DIR).glob("probe-*.json")
    assert not list(path.parent.glob(".*tmp*"))  # written atomically, nothing left behind

    pages.cached_frame("probe", {"n": 2}, lambda: compute(0.5), root=tmp_path)  # another setting
    assert calls == [0.25, 0.5]

    path.write_text("{not json")  # damaged: computed again, and the file mended
    assert pages.cached_frame("probe", {"n": 1}, lambda: compute(0.3), root=tmp_path).loc[0, "accuracy"] == 0.3
    assert json.loads(path.read_text())["data"][0][1] == 0.3

    monkeypatch.setenv(_dry_run.DRY_RUN_ENV, "1")
    pages.cached_frame("probe", {"n": 1}, lambda: compute(0.7), root=tmp_path)
    assert calls[-1] == 0.7  # a dry run neither reads nor writes the cache
    assert len(list((tmp_path / pages.TABLES_DIR).glob("*.json"))) == 2

    with pytest.raises(TypeError, match="must return a pandas DataFrame"):
        monkeypatch.delenv(_dry_run.DRY_RUN_ENV)
        pages.cached_frame("bad", {}, lambda: [1, 2], root=tmp_path)


def test_imported_modules_sees_every_import_form() -> None:
    src = ("%matplotlib inline\nimport fer.plots\nfrom fer import pages, data as D\n"
           "from fer.experiments import manet as M\nimport numpy\n"
           "def f():\n    from fer.explain import cam\n")
    assert imported_modules(src) == {"fer.plots", "fer", "fer.pages", "fer.data", "fer.experiments",
                                     "fer.experiments.manet", "fer.explain", "fer.explain.cam"}
    assert imported_modules("from ..io import x\nfrom . import y\n", current="fer.data.cached") == {
        "fer.io", "fer.io.x", "fer.data", "fer.data.y"}


def test_import_closure_follows_the_package_not_the_book_runner() -> None:
    from fer import PACKAGE_DIR

    names = {p.relative_to(PACKAGE_DIR).as_posix() for p in import_closure(PACKAGE_DIR, ["fer.plots"])}
    assert {"__init__.py", "plots.py"} <= names
    assert "book.py" not in names and "experiments/manet.py" not in names
    every_page = import_closure(PACKAGE_DIR, ["fer.experiments", "fer.pages", "fer.plots", "fer.explain"])
    assert PACKAGE_DIR / "experiments" / "manet.py" in every_page and PACKAGE_DIR / "book.py" not in every_page


def test_a_dry_run_caps_page_face_counts_only() -> None:
    params = {"profile": "paper", "n_explain": 200, "n_show": 1, "n_people": 4, "seed": 7, "rows": ["a"],
              "gt_ablation": True}
    capped = _dry_run.cap_page_parameters(params)
    assert capped == {**params, "n_explain": _dry_run.EXPLAIN, "n_people": 1}
    assert params["n_explain"] == 200  # not changed in place
