"""fer._launch: the first cell of every notebook installs the package on Colab / Binder, and only there."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import fer
from fer import _launch
from fer._launch import CELL_TAG, HIDE_TAG, cell_source, launch_cell, launch_config, main, sync_notebooks

ROOT = fer.REPO_ROOT
URL, BRANCH = "https://github.com/someone/fork-of-fer", "dev"


def _nb(*cells: dict) -> dict:
    return {"cells": list(cells), "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python",
                                                               "name": "python3"}},
            "nbformat": 4, "nbformat_minor": 5}


def _md(text: str, i: int) -> dict:
    return {"cell_type": "markdown", "id": f"md{i}", "metadata": {}, "source": [text]}


def _code(text: str, i: int, tags=()) -> dict:
    return {"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {"tags": list(tags)},
            "outputs": [], "source": text.splitlines(keepends=True)}


@pytest.fixture()
def book(tmp_path) -> Path:
    """A tiny book: config, toc, two notebooks (one in a part) and a markdown page."""
    (tmp_path / "_config.yml").write_text(yaml.safe_dump({"title": "t", "repository": {"url": URL, "branch": BRANCH}}))
    (tmp_path / "_toc.yml").write_text(yaml.safe_dump({
        "format": "jb-book", "root": "book/intro",
        "parts": [{"caption": "A", "chapters": [{"file": "book/a/index", "sections": [{"file": "book/a/one"}]}]}]}))
    (tmp_path / "book" / "a").mkdir(parents=True)
    (tmp_path / "book" / "intro.md").write_text("# Intro\n")
    for name in ("index", "one"):
        nb = _nb(_md(f"# {name}", 0), _code("profile = 'smoke'\ndata_root = None", 1, ["parameters"]),
                 _code("x = 1", 2))
        (tmp_path / "book" / "a" / f"{name}.ipynb").write_text(json.dumps(nb, indent=1, sort_keys=True) + "\n")
    return tmp_path


# ----------------------------------------------------------------------------- the repository


def test_config_names_one_github_repository_for_buttons_and_cell():
    url, branch = launch_config()
    assert url.startswith("https://github.com/") and branch
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    buttons = cfg["launch_buttons"]
    assert buttons["colab_url"] == "https://colab.research.google.com"
    assert buttons["binderhub_url"] == "https://mybinder.org"
    # pages are addressed from the repository root (the toc's `book/...` paths)
    assert cfg["repository"].get("path_to_book", "") == ""


def test_every_book_notebook_starts_with_the_current_launch_cell():
    stale = sync_notebooks(ROOT, check=True)
    assert stale == [], (f"{len(stale)} notebook(s) lack the launch cell for _config.yml's repository, or hold an "
                         f"old one: run `python -m fer._launch` and commit them: "
                         f"{[str(p.relative_to(ROOT)) for p in stale]}")
    assert len(_launch.notebooks(ROOT)) >= 20  # every notebook of the toc was looked at


def test_the_cell_installs_this_distribution_with_the_book_extra():
    from packaging.requirements import Requirement

    meta = _toml(ROOT / "pyproject.toml")
    src = cell_source(URL, BRANCH)
    req = Requirement(json.loads(src.split("\n")[-1].strip().rstrip("])")))
    assert req.name == meta["project"]["name"] and req.extras == {"book"}
    assert "book" in meta["project"]["optional-dependencies"]
    assert req.url == f"git+{URL}@{BRANCH}"


def _toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # python 3.10
        import tomli as tomllib
    return tomllib.loads(path.read_text())


# ----------------------------------------------------------------------------- the cell


def _run_cell(monkeypatch, *, missing: set[str]) -> list:
    calls: list = []
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a))
    monkeypatch.setattr(subprocess, "check_call", lambda cmd, *a, **k: calls.append(cmd) or 0)
    exec(compile(cell_source(URL, BRANCH), "<launch cell>", "exec"), {})
    return calls


def test_the_cell_does_nothing_where_fer_is_installed(monkeypatch):
    assert _run_cell(monkeypatch, missing=set()) == []


@pytest.mark.parametrize("missing", [{"fer"}, {"fer.experiments"}])  # no fer, or PyPI's unrelated `fer`
def test_the_cell_installs_where_fer_is_missing(monkeypatch, missing):
    calls = _run_cell(monkeypatch, missing=missing)
    assert calls == [[sys.executable, "-m", "pip", "install", "--quiet",
                      f"fer-attention[book] @ git+{URL}@{BRANCH}"]]


def test_the_cell_is_left_out_of_the_pages():
    cell = launch_cell(URL, BRANCH)
    assert cell["cell_type"] == "code" and cell["outputs"] == []
    assert cell["metadata"]["tags"] == [HIDE_TAG, CELL_TAG] and HIDE_TAG == "remove-cell"  # Jupyter Book's tag


# ----------------------------------------------------------------------------- writing it


def test_sync_writes_the_cell_first_then_leaves_notebooks_alone(book, capsys):
    raw = {p: p.read_bytes() for p in _launch.notebooks(book)}
    assert main(["--root", str(book), "--check"]) == 1
    assert "book/a/index.ipynb" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in raw} == raw  # --check writes nothing
    before = {p: json.loads(p.read_text()) for p in _launch.notebooks(book)}
    assert main(["--root", str(book)]) == 0
    for p, old in before.items():
        nb = json.loads(p.read_text())
        assert nb["cells"][0] == launch_cell(URL, BRANCH)
        assert nb["cells"][1:] == old["cells"] and nb["metadata"] == old["metadata"]
        assert p.read_text() == json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"  # nbformat's layout
    stamps = {p: p.stat().st_mtime_ns for p in before}
    time.sleep(0.01)
    assert main(["--root", str(book)]) == 0 and main(["--root", str(book), "--check"]) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == stamps  # nothing rewritten
    assert sorted(p.name for p in _launch.notebooks(book)) == ["index.ipynb", "one.ipynb"]  # the .md page is not


def test_a_fork_changes_the_config_and_the_cells_follow(book, capsys):
    assert main(["--root", str(book)]) == 0
    cfg = yaml.safe_load((book / "_config.yml").read_text())
    cfg["repository"] = {"url": "https://github.com/other/repo.git", "branch": "main"}
    (book / "_config.yml").write_text(yaml.safe_dump(cfg))
    assert main(["--root", str(book), "--check"]) == 1
    assert "run `python -m fer._launch`" in capsys.readouterr().err
    assert main(["--root", str(book)]) == 0
    for p in _launch.notebooks(book):
        cells = json.loads(p.read_text())["cells"]
        assert sum(CELL_TAG in c["metadata"].get("tags", []) for c in cells) == 1  # replaced, not added
        assert "git+https://github.com/other/repo@main" in "".join(cells[0]["source"])


def test_a_launch_cell_moved_down_comes_back_first(book):
    p = book / "book" / "a" / "one.ipynb"
    nb = json.loads(p.read_text())
    nb["cells"].append(launch_cell(URL, BRANCH))
    p.write_text(json.dumps(nb, indent=1, sort_keys=True) + "\n")
    assert sync_notebooks(book) == _launch.notebooks(book)
    cells = json.loads(p.read_text())["cells"]
    assert [CELL_TAG in c["metadata"].get("tags", []) for c in cells] == [True, False, False, False]


@pytest.mark.parametrize("repo, error", [({"url": "https://gitlab.com/a/b", "branch": "main"}, "github.com"),
                                         ({"url": "https://github.com/a/b"}, "branch")])
def test_bad_repository_settings_are_errors(book, repo, error, capsys):
    (book / "_config.yml").write_text(yaml.safe_dump({"repository": repo}))
    with pytest.raises(ValueError, match=error):
        launch_config(book)
    assert main(["--root", str(book)]) == 2 and error in capsys.readouterr().err


@pytest.mark.slow
def test_papermill_runs_a_notebook_with_the_cell_without_installing(book):
    """As fer.book executes the pages: the cell runs, prints nothing, installs nothing (offline, pip would fail)."""
    papermill = pytest.importorskip("papermill")
    assert main(["--root", str(book)]) == 0
    src = book / "book" / "a" / "one.ipynb"
    out = book / "out.ipynb"
    papermill.execute_notebook(str(src), str(out), parameters={"profile": "demo"}, kernel_name="python3",
                               progress_bar=False, cwd=str(book))
    nb = json.loads(out.read_text())
    assert nb["cells"][0]["metadata"]["tags"][-1] == CELL_TAG and nb["cells"][0]["outputs"] == []
    assert nb["cells"][0]["execution_count"] == 1
