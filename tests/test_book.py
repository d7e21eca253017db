"""Tests of the book runner ``fer.book`` on tiny books written in a temporary folder.

They run offline on CPU: each notebook execution is a kernel start plus a print.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nbformat
import pytest
import yaml

from fer import REPO_ROOT
from fer import book, pages

CONFIG = {
    "title": "Tiny book",
    "only_build_toc_files": True,
    "execute": {"execute_notebooks": "off"},
}


def _notebook(path: Path, code: str, *, parameters: str | None, title: str) -> None:
    """Write a notebook: a title, an optional ``parameters`` cell, then ``code``."""
    cells = [nbformat.v4.new_markdown_cell(f"# {title}")]
    if parameters is not None:
        cell = nbformat.v4.new_code_cell(parameters)
        cell.metadata["tags"] = ["parameters"]
        cells.append(cell)
    cells.append(nbformat.v4.new_code_cell(code))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


PARAMS = 'profile = "smoke"\ndata_root = None\nknob = 1\n'
PRINT_KNOB = (
    "import os\n"
    "print(f'knob={knob} profile={profile} data_root={data_root}')\n"
    "print('env', os.environ['FER_PROFILE'], os.environ['PYTHONHASHSEED'], os.environ['MPLBACKEND'])\n"
    "print('cwd', os.getcwd())\n"
)


@pytest.fixture
def tiny_book(tmp_path: Path) -> Path:
    """A book with an intro page and two notebooks, plus a fake package for the cache key."""
    root = tmp_path / "repo"
    (root / "book" / "part").mkdir(parents=True)
    (root / "_config.yml").write_text(yaml.safe_dump(CONFIG))
    toc = {
        "format": "jb-book",
        "root": "book/intro",
        "parts": [{"caption": "Part", "chapters": [{"file": "book/part/a"}, {"file": "book/part/b"}]}],
    }
    (root / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))
    (root / "book" / "intro.md").write_text("# Intro\n\nA tiny book.\n")
    _notebook(root / "book/part/a.ipynb", PRINT_KNOB, parameters=PARAMS, title="A")
    _notebook(root / "book/part/b.ipynb", PRINT_KNOB, parameters=PARAMS, title="B")
    profiles = {
        "book/part/a.ipynb": {"demo": {"knob": 5}, "paper": {"knob": 50}},
        "book/part/b.ipynb": {"demo": {}, "paper": {}},
    }
    (root / "book" / "profiles.yml").write_text(yaml.safe_dump(profiles))
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "mod.py").write_text("from . import helper\nX = 1\n")
    (pkg / "helper.py").write_text("Y = 1\n")
    return root


def _run(root: Path, *args: str) -> int:
    return book.main(["--root", str(root), "--package-dir", str(root.parent / "pkg"), *args])


def _report(root: Path) -> dict[str, Any]:
    return json.loads((root / "_build" / "book-report.json").read_text())


def _stdout_of(root: Path, rel: str) -> str:
    """All stream output of the executed notebook ``rel`` in the staged source."""
    nb = nbformat.read(root / "_build" / "src" / rel, as_version=4)
    return "".join(
        out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
    )


def test_parameters_are_injected(tiny_book: Path) -> None:
    data = tiny_book.parent / "data"
    data.mkdir()
    assert _run(tiny_book, "--profile", "demo", "--no-build", "--data-root", str(data)) == 0
    out_a = _stdout_of(tiny_book, "book/part/a.ipynb")
    assert f"knob=5 profile=demo data_root={data.resolve()}" in out_a
    assert "env demo 0 module://matplotlib_inline.backend_inline" in out_a
    assert f"cwd {(tiny_book / '_build/src/book/part').resolve()}" in out_a
    assert f"knob=1 profile=demo data_root={data.resolve()}" in _stdout_of(tiny_book, "book/part/b.ipynb")
    nb = nbformat.read(tiny_book / "_build/src/book/part/a.ipynb", as_version=4)
    tags = [cell.metadata.get("tags", []) for cell in nb.cells]
    # the injected values sit right after the defaults, collapsed on the page like them
    assert tags.index(["injected-parameters", "hide-cell"]) == tags.index(["parameters"]) + 1
    report = _report(tiny_book)
    assert report["profile"] == "demo"
    assert list(report["notebooks"]) == ["book/part/a.ipynb", "book/part/b.ipynb"]
    assert report["notebooks"]["book/part/a.ipynb"]["parameters"] == {
        "profile": "demo", "knob": 5, "data_root": str(data.resolve())
    }
    assert report["notebooks"]["book/part/a.ipynb"]["cached"] is False
    assert report["notebooks"]["book/part/a.ipynb"]["seconds"] > 0
    # the staged source has the pages and config, not the profiles' raw notebooks only
    assert (tiny_book / "_build/src/book/intro.md").is_file()
    assert (tiny_book / "_build/src/_toc.yml").is_file()


def test_smoke_profile_keeps_notebook_defaults(tiny_book: Path) -> None:
    assert _run(tiny_book, "--profile", "smoke", "--no-build") == 0
    assert "knob=1 profile=smoke data_root=None" in _stdout_of(tiny_book, "book/part/a.ipynb")
    assert _report(tiny_book)["notebooks"]["book/part/a.ipynb"]["parameters"] == {"profile": "smoke"}


def test_second_run_is_cached_and_edits_invalidate_only_their_notebook(
    tiny_book: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(tiny_book, "--profile", "demo", "--no-build", "--jobs", "2") == 0
    staged_a = tiny_book / "_build/src/book/part/a.ipynb"
    mtime_a = staged_a.stat().st_mtime_ns
    capsys.readouterr()

    cache = tiny_book / "_build/cache/demo/book/part"
    cache_mtimes = {p: p.stat().st_mtime_ns for p in cache.iterdir()}
    assert _run(tiny_book, "--profile", "demo", "--no-build") == 0
    assert {p: p.stat().st_mtime_ns for p in cache.iterdir()} == cache_mtimes  # nothing re-stored
    report = _report(tiny_book)
    assert all(e["cached"] and e["status"] == "cached" for e in report["notebooks"].values())
    assert all(e["seconds"] == 0 for e in report["notebooks"].values())
    assert "book/part/a.ipynb: cached" in capsys.readouterr().err
    assert staged_a.stat().st_mtime_ns == mtime_a  # untouched: Sphinx need not reread it
    assert "knob=5" in _stdout_of(tiny_book, "book/part/a.ipynb")

    nb_b = tiny_book / "book/part/b.ipynb"
    nb_b.write_text(nb_b.read_text().replace("knob=", "KNOB="))
    assert _run(tiny_book, "--profile", "demo", "--no-build") == 0
    status = {k: v["status"] for k, v in _report(tiny_book)["notebooks"].items()}
    assert status == {"book/part/a.ipynb": "cached", "book/part/b.ipynb": "executed"}
    assert "KNOB=1" in _stdout_of(tiny_book, "book/part/b.ipynb")

    # another profile is another cache entry
    assert _run(tiny_book, "--profile", "paper", "--no-build") == 0
    assert {v["status"] for v in _report(tiny_book)["notebooks"].values()} == {"executed"}
    assert "knob=50 profile=paper" in _stdout_of(tiny_book, "book/part/a.ipynb")
    # a page is keyed by the package modules it imports, transitively (a imports fer.mod, which
    # imports fer.helper); an edit to a module no page imports re-executes nothing
    pkg = tiny_book.parent / "pkg"
    _notebook(tiny_book / "book/part/a.ipynb", "try:\n    import fer.mod  # not in the installed fer: seen, not run\n"
              "except ImportError:\n    pass\n" + PRINT_KNOB, parameters=PARAMS, title="A")
    assert _run(tiny_book, "--profile", "demo", "--no-build") == 0
    (pkg / "runner.py").write_text("# the book runner: no page imports it\n")
    assert _run(tiny_book, "--profile", "demo", "--no-build") == 0
    assert {v["status"] for v in _report(tiny_book)["notebooks"].values()} == {"cached"}
    (pkg / "helper.py").write_text("Y = 2\n")
    assert _run(tiny_book, "--profile", "demo", "--no-build") == 0
    status = {k: v["status"] for k, v in _report(tiny_book)["notebooks"].items()}
    assert status == {"book/part/a.ipynb": "executed", "book/part/b.ipynb": "cached"}
    # --force executes everything
    assert _run(tiny_book, "--profile", "demo", "--no-build", "--force") == 0
    assert {v["status"] for v in _report(tiny_book)["notebooks"].values()} == {"executed"}


def test_kernels_share_a_dataset_store_keyed_by_the_training_code(
    tiny_book: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FER_CACHE", raising=False)
    show = "import os\nprint('store', os.environ.get('FER_CACHE'))\n"
    _notebook(tiny_book / "book/part/a.ipynb", show, parameters=PARAMS, title="A")
    pkg = tiny_book.parent / "pkg"
    assert _run(tiny_book, "--profile", "demo", "--no-build", "--only", "book/part/a*") == 0
    first = tiny_book / "_build/datasets" / book.source_hash_of(pkg)
    assert f"store {first}" in _stdout_of(tiny_book, "book/part/a.ipynb")
    assert first.is_dir()
    (first / "a-store").mkdir()  # what a page rendered
    # a presentation module (a figure) keeps the store; the training code starts a new one
    (pkg / "plots.py").write_text("# figures\n")
    assert _run(tiny_book, "--profile", "demo", "--no-build", "--only", "book/part/a*", "--force") == 0
    assert (first / "a-store").is_dir()
    (pkg / "helper.py").write_text("Y = 2\n")
    assert _run(tiny_book, "--profile", "demo", "--no-build", "--only", "book/part/a*", "--force") == 0
    second = tiny_book / "_build/datasets" / book.source_hash_of(pkg)
    assert second != first and f"store {second}" in _stdout_of(tiny_book, "book/part/a.ipynb")
    assert not first.exists()  # the old hash's renders are gone
    # the user's own FER_CACHE wins
    monkeypatch.setenv("FER_CACHE", str(tiny_book.parent / "mine"))
    assert _run(tiny_book, "--profile", "demo", "--no-build", "--only", "book/part/a*", "--force") == 0
    assert f"store {tiny_book.parent / 'mine'}" in _stdout_of(tiny_book, "book/part/a.ipynb")


def test_only_runs_matching_notebooks(tiny_book: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(tiny_book, "--profile", "demo", "--no-build", "--only", "book/part/b*") == 0
    status = {k: v["status"] for k, v in _report(tiny_book)["notebooks"].items()}
    assert status == {"book/part/a.ipynb": "skipped", "book/part/b.ipynb": "executed"}
    assert _stdout_of(tiny_book, "book/part/a.ipynb") == ""  # staged unexecuted
    capsys.readouterr()
    assert _run(tiny_book, "--profile", "demo", "--no-build", "--only", "nothing") == 1
    err = capsys.readouterr().err
    assert "--only 'nothing' matches no notebook" in err and "book/part/a.ipynb" in err


def test_failing_notebook_stops_with_its_name(
    tiny_book: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _notebook(
        tiny_book / "book/part/a.ipynb",
        "raise ValueError('boom from a')",
        parameters=PARAMS,
        title="A",
    )
    assert _run(tiny_book, "--profile", "demo") == 1
    err = capsys.readouterr().err
    assert "book/part/a.ipynb failed in cell" in err
    assert "ValueError: boom from a" in err
    partial = tiny_book / "_build/src/book/part/a.ipynb"
    assert f"partially executed notebook: {partial}" in err
    assert "boom from a" in partial.read_text()
    report = _report(tiny_book)
    assert report["notebooks"]["book/part/a.ipynb"]["status"] == "failed"
    assert "book/part/b.ipynb" not in report["notebooks"]  # stopped at the failure
    assert not (tiny_book / "_build/html").exists()
    # failures are not cached: the next run executes (and fails) again
    assert _run(tiny_book, "--profile", "demo", "--no-build") == 1
    assert "boom from a" in capsys.readouterr().err


def test_notebook_without_parameters_cell_is_refused(
    tiny_book: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _notebook(tiny_book / "book/part/b.ipynb", "print(1)", parameters=None, title="B")
    assert _run(tiny_book, "--profile", "demo", "--no-build") == 1
    err = capsys.readouterr().err
    assert "book/part/b.ipynb" in err and "no cell tagged 'parameters'" in err
    assert not (tiny_book / "_build/cache").exists()  # refused before running anything


@pytest.mark.parametrize(
    ("parameters", "profiles_entry", "message"),
    [
        ("profile = 'smoke'\nknob = 1\n", {"demo": {}}, "does not define data_root"),
        (PARAMS, {"demo": {"knobb": 2}}, "injects knobb"),
        (PARAMS, None, "has no 'demo' entry for book/part/b.ipynb"),
        (PARAMS, {"smoke": {"knob": 2}, "demo": {}}, "only ['demo', 'paper'] belong there"),
    ],
)
def test_bad_parameters_are_refused(
    tiny_book: Path,
    capsys: pytest.CaptureFixture[str],
    parameters: str,
    profiles_entry: dict[str, Any] | None,
    message: str,
) -> None:
    _notebook(tiny_book / "book/part/b.ipynb", "print(knob)", parameters=parameters, title="B")
    profiles_path = tiny_book / "book/profiles.yml"
    profiles = yaml.safe_load(profiles_path.read_text())
    if profiles_entry is None:
        del profiles["book/part/b.ipynb"]
    else:
        profiles["book/part/b.ipynb"] = profiles_entry
    profiles_path.write_text(yaml.safe_dump(profiles))
    assert _run(tiny_book, "--profile", "demo", "--no-build") == 1
    err = capsys.readouterr().err
    assert message in err and "book/part/b.ipynb" in err


def test_missing_toc_entry_is_an_error(tiny_book: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tiny_book / "book/part/b.ipynb").unlink()
    assert _run(tiny_book, "--profile", "smoke", "--no-build") == 1
    err = capsys.readouterr().err
    assert "_toc.yml lists 'book/part/b'" in err and "remove the entry" in err


def test_full_build_writes_index_html(tiny_book: Path) -> None:
    assert _run(tiny_book, "--profile", "demo") == 0
    html = tiny_book / "_build" / "html"
    assert (html / "index.html").is_file()
    page = (html / "book/part/a.html").read_text()
    assert "knob=5 profile=demo" in page
    report = _report(tiny_book)
    assert report["build_seconds"] > 0 and report["html"] == str(html / "index.html")


def test_repository_book_sources_build(tmp_path: Path) -> None:
    """The repository's _config.yml, _toc.yml, pages and references.bib build.

    Notebooks are replaced by stubs holding only their markdown cells (so their
    labels exist) and a ``parameters`` cell: this catches broken toc entries, unknown
    citation keys and config errors without executing the chapters (nbval does that).
    """
    root = tmp_path / "repo"
    shutil.copytree(
        REPO_ROOT / "book", root / "book", ignore=shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints")
    )
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO_ROOT / name, root / name)
    # the pages' ``literalinclude`` of ``/fer/...`` read the package's sources (staged by the runner)
    shutil.copytree(REPO_ROOT / "fer", root / "fer", ignore=shutil.ignore_patterns("__pycache__"))
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    stubs = {}
    for kind, entry in book.toc_entries(toc):
        if kind != "file" or any((root / entry).with_suffix(s).is_file() for s in (".md", ".rst")):
            continue
        stub = root / f"{entry}.ipynb"
        _notebook(stub, "print('stub')", parameters=PARAMS, title=entry)
        real = (REPO_ROOT / entry).with_suffix(".ipynb")
        if real.is_file():
            nb = nbformat.read(stub, as_version=4)
            markdown = [c for c in nbformat.read(real, as_version=4).cells if c.cell_type == "markdown"]
            nb.cells = markdown + nb.cells[1:]
            nbformat.write(nb, stub)
        stubs[f"{entry}.ipynb"] = {"demo": {}}
    (root / "book/profiles.yml").write_text(yaml.safe_dump(stubs))
    assert book.main(["--root", str(root), "--profile", "demo"]) == 0
    intro = (root / "_build/html/book/intro.html").read_text()
    assert "Attention for Facial Expression Recognition" in intro
    # every page loads the script that sorts result tables, and the build ships it
    assert "sortable-tables.js" in intro and (root / "_build/html/_static/sortable-tables.js").is_file()
    for author in ("Ghimire", "Gan", "Ju", "Ghadai", "Hayashi", "Woo", "Fukui", "Sagonas"):
        assert author in intro


DEVICE_PARAMS = PARAMS + 'device = "cpu"\n'
PRINT_DEVICE = "import os\nprint(f'device={device} env={os.environ[\"FER_DEVICE\"]}')\n"


def test_run_subcommand_injects_device_only_where_defined(tiny_book: Path) -> None:
    _notebook(tiny_book / "book/part/b.ipynb", PRINT_DEVICE, parameters=DEVICE_PARAMS, title="B")
    run = ["run", "--root", str(tiny_book), "--package-dir", str(tiny_book.parent / "pkg")]
    assert book.main([*run, "--profile", "demo", "--no-build", "--device", "cuda:1"]) == 0
    assert "device=cuda:1 env=cuda:1" in _stdout_of(tiny_book, "book/part/b.ipynb")
    params = {k: v["parameters"] for k, v in _report(tiny_book)["notebooks"].items()}
    assert params["book/part/a.ipynb"] == {"profile": "demo", "knob": 5}  # untouched
    assert params["book/part/b.ipynb"] == {"profile": "demo", "device": "cuda:1"}
    assert "env demo" in _stdout_of(tiny_book, "book/part/a.ipynb")

    # the top-level form is `run`; the default is auto, unless profiles.yml sets a device
    assert _run(tiny_book, "--profile", "demo", "--no-build", "--only", "book/part/b*") == 0
    assert "device=auto env=auto" in _stdout_of(tiny_book, "book/part/b.ipynb")
    profiles_path = tiny_book / "book/profiles.yml"
    profiles = yaml.safe_load(profiles_path.read_text())
    profiles["book/part/b.ipynb"] = {"demo": {"device": "cpu"}}
    profiles_path.write_text(yaml.safe_dump(profiles))
    assert _run(tiny_book, "--profile", "demo", "--no-build", "--only", "book/part/b*") == 0
    assert "device=cpu env=auto" in _stdout_of(tiny_book, "book/part/b.ipynb")
    assert _run(tiny_book, "--profile", "demo", "--no-build", "--only", "book/part/b*",
                "--device", "cuda") == 0
    assert "device=cuda env=cuda" in _stdout_of(tiny_book, "book/part/b.ipynb")
    with pytest.raises(SystemExit):
        _run(tiny_book, "--device", "gpu")


def test_failed_rerun_does_not_publish_the_old_page(
    tiny_book: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    staged = tiny_book / "_build/src/book/part/a.ipynb"
    assert _run(tiny_book, "--profile", "demo", "--no-build", "--only", "book/part/a*") == 0
    good = staged.read_bytes()
    assert b"knob=5" in good
    source = tiny_book / "book/part/a.ipynb"
    original = source.read_bytes()
    _notebook(source, "print('half way')\nraise ValueError('boom from a')",
              parameters=PARAMS, title="A")
    capsys.readouterr()
    assert _run(tiny_book, "--profile", "demo", "--only", "book/part/a*") == 1
    err = capsys.readouterr().err
    assert "book/part/a.ipynb failed in cell" in err and "HTML was not built" in err
    assert not (tiny_book / "_build/html").exists()
    nb = nbformat.read(staged, as_version=4)
    assert staged.read_bytes() != good
    assert "knob=5" not in _stdout_of(tiny_book, "book/part/a.ipynb")
    assert "half way" in _stdout_of(tiny_book, "book/part/a.ipynb")  # the partial run
    assert nb.cells[0].metadata["tags"] == [book.FAILED_TAG]
    assert "failed to execute" in nb.cells[0].source and "boom from a" in nb.cells[0].source
    assert nb.metadata["fer_book"]["status"] == "failed"
    assert book.failed_pages(book.BookPaths(tiny_book)) == ["book/part/a.ipynb"]

    # `build` renders what is staged: the failed page says so
    assert book.main(["build", "--root", str(tiny_book)]) == 0
    assert "book/part/a.ipynb" in capsys.readouterr().err
    page = (tiny_book / "_build/html/book/part/a.html").read_text()
    assert "failed to execute" in page and "boom from a" in page and "knob=5" not in page

    # restoring the notebook restores its cached good page, unmarked
    source.write_bytes(original)
    assert _run(tiny_book, "--profile", "demo", "--no-build", "--only", "book/part/a*") == 0
    assert staged.read_bytes() == good
    assert book.failed_pages(book.BookPaths(tiny_book)) == []


def _page(root: Path, rel: str) -> str:
    return (root / "_build/html" / rel).read_text()


def test_failed_rerun_withdraws_the_built_page(
    tiny_book: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(tiny_book, "--profile", "demo") == 0
    assert "knob=5 profile=demo" in _page(tiny_book, "book/part/a.html")
    assert "knob=1 profile=demo" in _page(tiny_book, "book/part/b.html")
    sources = list((tiny_book / "_build/html/_sources").rglob("a.ipynb*"))
    _notebook(tiny_book / "book/part/a.ipynb", "raise ValueError('boom from a')",
              parameters=PARAMS, title="A")
    capsys.readouterr()
    assert _run(tiny_book, "--profile", "demo") == 1
    assert "withdrew the HTML of 1 page(s)" in capsys.readouterr().err
    page = _page(tiny_book, "book/part/a.html")
    assert "knob=5" not in page and "out of date and was withdrawn" in page
    assert "failed to execute" in page and "profile <code>demo</code>" in page
    assert sources and not any(p.exists() for p in sources)
    # b was not re-executed, but its staged result is this run's (same key): it stays
    assert "knob=1 profile=demo" in _page(tiny_book, "book/part/b.html")
    # the same holds after --no-build runs that re-execute a page
    _notebook(tiny_book / "book/part/a.ipynb", PRINT_KNOB, parameters=PARAMS, title="A")
    assert _run(tiny_book, "--profile", "demo", "--no-build") == 0
    assert "out of date" in _page(tiny_book, "book/part/a.html")
    nb_b = tiny_book / "book/part/b.ipynb"
    nb_b.write_text(nb_b.read_text().replace("knob=", "KNOB="))
    assert _run(tiny_book, "--profile", "demo", "--no-build") == 0
    page_b = _page(tiny_book, "book/part/b.html")
    assert "knob=1" not in page_b and "executed again and the HTML was not rebuilt" in page_b


def test_a_failed_run_never_leaves_another_profiles_page_staged(
    tiny_book: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(tiny_book, "--profile", "paper") == 0
    assert "profile=paper" in _page(tiny_book, "book/part/b.html")
    _notebook(tiny_book / "book/part/a.ipynb", "raise ValueError('boom from a')",
              parameters=PARAMS, title="A")
    assert _run(tiny_book, "--profile", "demo") == 1
    paths = book.BookPaths(tiny_book)
    staged_b = nbformat.read(tiny_book / "_build/src/book/part/b.ipynb", as_version=4)
    assert staged_b.metadata["fer_book"]["profile"] == "demo"
    assert staged_b.metadata["fer_book"]["status"] == "not-run"
    assert staged_b.cells[0].metadata["tags"] == [book.NOT_RUN_TAG]
    assert "not executed" in staged_b.cells[0].source and "`demo`" in staged_b.cells[0].source
    assert "profile=paper" not in _stdout_of(tiny_book, "book/part/b.ipynb")
    assert book.failed_pages(paths) == ["book/part/a.ipynb"]
    assert book.not_run_pages(paths) == ["book/part/b.ipynb"]
    assert book.stale_pages(paths) == {}
    for rel in ("book/part/a.html", "book/part/b.html"):  # both paper pages withdrawn
        assert "profile=paper" not in _page(tiny_book, rel) and "withdrawn" in _page(tiny_book, rel)
    capsys.readouterr()
    # `build` renders the marked pages and says which they are
    assert book.main(["build", "--root", str(tiny_book)]) == 0
    err = capsys.readouterr().err
    assert "book/part/a.ipynb" in err and "not executed by the last run" in err and "book/part/b.ipynb" in err
    page_b = _page(tiny_book, "book/part/b.html")
    assert "This page was not executed" in page_b and "profile=paper" not in page_b


def test_build_refuses_a_notebook_the_last_run_did_not_produce(
    tiny_book: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(tiny_book, "--profile", "demo", "--no-build") == 0
    assert _run(tiny_book, "--profile", "paper", "--no-build") == 0
    staged_b = tiny_book / "_build/src/book/part/b.ipynb"
    # an interrupted run or a hand copy leaves the demo execution of b beside the paper run's a
    shutil.copyfile(tiny_book / "_build/cache/demo/book/part/b.ipynb", staged_b)
    capsys.readouterr()
    assert book.main(["build", "--root", str(tiny_book)]) == 1
    err = capsys.readouterr().err
    assert "refusing to build" in err and "book/part/b.ipynb" in err
    assert "executed with profile 'demo', the last run used 'paper'" in err
    assert not (tiny_book / "_build/html").exists()
    # an unstamped notebook is refused too; the next run restages it
    _notebook(staged_b, "print('hand made')", parameters=PARAMS, title="B")
    assert book.main(["build", "--root", str(tiny_book)]) == 1
    assert "no fer_book stamp" in capsys.readouterr().err
    assert _run(tiny_book, "--profile", "paper") == 0
    assert "knob=1 profile=paper" in _page(tiny_book, "book/part/b.html")


def test_build_needs_a_staged_book(tiny_book: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert book.main(["build", "--root", str(tiny_book)]) == 1
    assert "run 'python -m fer.book run' first" in capsys.readouterr().err


def test_banner_states_profile_data_scale_and_runs() -> None:
    shown = pages.banner("demo", "SynFER stand-ins", "64 px, width 1/4, 8 epochs",
                        run_ids=("cbam-3f2a", "cbam-9b1c"), device="cpu")
    html = shown.data
    for text in ("demo", "SynFER stand-ins", "64 px, width 1/4, 8 epochs", "cbam-3f2a",
                 "cbam-9b1c", "Device", "cpu", "admonition", "not a reproduction"):
        assert text in html
    assert "not a reproduction" not in pages.banner("paper", "RAF-DB <x>", "paper").data
    assert "RAF-DB &lt;x&gt;" in pages.banner("paper", "RAF-DB <x>", "paper", "run-1").data


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    assert book.resolve_device("cuda:1") == "cuda:1"
    monkeypatch.setenv("FER_DEVICE", "cpu")
    assert book.resolve_device() == "cpu"
    monkeypatch.delenv("FER_DEVICE")
    assert book.resolve_device() in {"cpu", "cuda"}


def test_jobs_run_chapters_side_by_side_and_a_chapters_pages_in_order() -> None:
    """--jobs N groups the repository's pages by the chapter whose runs they use."""
    from fer import REPO_ROOT

    pages = [p for p in book.read_toc(REPO_ROOT) if p.suffix == ".ipynb"]
    groups = book.page_groups(REPO_ROOT, pages)
    assert sorted(p for g in groups for p in g) == sorted(pages)
    for group in groups:
        assert group == [p for p in pages if p in group]  # book order within a group
    cbam = next(g for g in groups if Path("book/cbam_vgg/method.ipynb") in g)
    assert cbam[-1] == Path("book/beyond/photo.ipynb")  # it loads the CBAM runs: after them, never beside
    # the comparison loads every chapter's runs: a last group of its own, started after the others
    assert groups[-1] == [Path("book/beyond/compare.ipynb")]
    assert book.after_all(REPO_ROOT, Path("book/beyond/compare.ipynb"))
    assert not book.after_all(REPO_ROOT, Path("book/beyond/photo.ipynb"))
    assert {len({p.parts[1] for p in g} - {"beyond"}) for g in groups[:-1]} == {1}
    assert len(groups) == 7  # datasets, the five chapters, and the comparison


def _add_pages(root: Path, rels: Sequence[str], *, uses: Mapping[str, list[str]] | None = None,
               schedule: Mapping[str, float] | None = None) -> None:
    """Add trivial pages ``rels`` (``book/<folder>/<name>``, no suffix) to the tiny book: a toc
    part, a profiles.yml entry each, ``fer_chapters`` metadata from ``uses``, demo ``schedule`` minutes."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    toc["parts"].append({"caption": "More", "chapters": [{"file": r} for r in rels]})
    (root / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))
    for rel in rels:
        _notebook(root / f"{rel}.ipynb", "print(1)", parameters=PARAMS, title=rel)
    for rel, chapters in (uses or {}).items():
        nb = nbformat.read(root / f"{rel}.ipynb", as_version=4)
        nb.metadata["fer_chapters"] = chapters
        nbformat.write(nb, root / f"{rel}.ipynb")
    profiles = yaml.safe_load((root / "book/profiles.yml").read_text())
    profiles.update({f"{rel}.ipynb": {"demo": {}, "paper": {}} for rel in rels})
    if schedule is not None:
        profiles["schedule"] = {"demo": {f"{rel}.ipynb": m for rel, m in schedule.items()}}
    (root / "book/profiles.yml").write_text(yaml.safe_dump(profiles))


def test_a_page_using_several_chapters_starts_after_them_under_jobs(
        tiny_book: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With --jobs, chapters run side by side, and a page naming several of them waits for all."""
    import threading
    import time

    _add_pages(tiny_book, ("book/c1/a", "book/c2/b", "book/beyond/all"), uses={"book/beyond/all": ["c1", "c2"]})
    spans: dict[str, tuple[float, float]] = {}
    lock = threading.Lock()

    def fake_run_one(paths, job, profile, force, progress, dry_run=False):
        start = time.monotonic()
        time.sleep(0.3)
        with lock:
            spans[job.rel.as_posix()] = (start, time.monotonic())
        return book.NotebookResult(job.rel.as_posix(), profile, {}, seconds=0.3)

    monkeypatch.setattr(book, "_run_one", fake_run_one)
    assert _run(tiny_book, "--profile", "demo", "--no-build", "--jobs", "3") == 0
    last = spans.pop("book/beyond/all.ipynb")
    assert last[0] >= max(end for _, end in spans.values())  # started once every other page had finished
    a, b = spans["book/c1/a.ipynb"], spans["book/c2/b.ipynb"]
    assert a[0] < b[1] and b[0] < a[1]  # the two chapters ran side by side


def test_longest_first_orders_groups_by_their_expected_minutes() -> None:
    a, b, c, d, last = (Path(f"book/{x}/p.ipynb") for x in ("a", "b", "c", "d", "beyond"))
    groups = [[a], [b, Path("book/b/q.ipynb")], [c], [d], [last]]
    minutes = {a: 2.0, b: 1.0, Path("book/b/q.ipynb"): 3.0, c: 2.0, last: 9.0}
    # b's pages add up to 4; a and c tie at 2 and keep book order; d has no estimate (0)
    assert book.longest_first(groups, minutes, keep_last=True) == [groups[1], [a], [c], [d], [last]]
    assert book.longest_first(groups, minutes)[0] == [last]
    assert book.longest_first([], {}, keep_last=True) == []


def test_jobs_start_the_chapters_expected_to_take_longest_first(
        tiny_book: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """profiles.yml's schedule decides which chapter groups --jobs starts first; a cached page counts 0."""
    _add_pages(tiny_book, ("book/c1/a", "book/c2/b", "book/c3/c"),
               schedule={"book/c1/a": 1, "book/c2/b": 30, "book/c3/c": 20})
    started: list[str] = []

    def fake_run_one(paths, job, profile, force, progress, dry_run=False):
        started.append(job.rel.as_posix())
        return book.NotebookResult(job.rel.as_posix(), profile, {}, seconds=0.0)

    monkeypatch.setattr(book, "_run_one", fake_run_one)
    assert _run(tiny_book, "--profile", "demo", "--no-build", "--jobs", "1") == 0
    in_book_order = list(started)
    started.clear()
    assert _run(tiny_book, "--profile", "demo", "--no-build", "--jobs", "2") == 0
    assert started.index("book/c2/b.ipynb") < started.index("book/c3/c.ipynb") < started.index("book/c1/a.ipynb")
    assert in_book_order.index("book/c1/a.ipynb") < in_book_order.index("book/c2/b.ipynb")  # --jobs 1: book order
    # a page whose cached copy is current needs no kernel: its chapter counts no minutes
    monkeypatch.setattr(book, "_cache_lookup", lambda paths, profile, rel, key: (
        paths.root / rel if rel.as_posix() == "book/c2/b.ipynb" else None))
    started.clear()
    assert _run(tiny_book, "--profile", "demo", "--no-build", "--jobs", "2") == 0
    assert started.index("book/c3/c.ipynb") < started.index("book/c1/a.ipynb") < started.index("book/c2/b.ipynb")


def test_kernels_share_the_cores_under_jobs(monkeypatch):
    assert book.kernel_threads(1, cpus=16) is None  # one page at a time: each library's default
    assert (book.kernel_threads(2, cpus=2), book.kernel_threads(3, cpus=2), book.kernel_threads(2, cpus=16)) == (1, 1, 8)
    for name in book.THREAD_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")  # the user's own setting wins
    with book._kernel_environment("smoke", threads=1):
        assert os.environ["OMP_NUM_THREADS"] == "1" and os.environ["MKL_NUM_THREADS"] == "3"
    assert "OMP_NUM_THREADS" not in os.environ  # restored afterwards


def test_a_page_running_alone_gets_every_core(tiny_book: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under --jobs 2 the chapters share the cores; the page that waits for all of them starts alone
    and gets them all (wave_threads), unless the user set the thread count."""
    threads = (book.wave_threads(2, 5, cpus=2), book.wave_threads(2, 1, cpus=2), book.wave_threads(4, 2, cpus=16))
    assert threads == (1, 2, 8)
    _add_pages(tiny_book, ("book/c1/a", "book/c2/b", "book/beyond/all"), uses={"book/beyond/all": ["c1", "c2"]})
    seen: dict[str, tuple[str | None, str | None]] = {}

    def fake_run_one(paths, job, profile, force, progress, dry_run=False):
        seen[job.rel.as_posix()] = (os.environ.get("OMP_NUM_THREADS"), os.environ.get("MKL_NUM_THREADS"))
        return book.NotebookResult(job.rel.as_posix(), profile, {}, seconds=0.0)

    monkeypatch.setattr(book, "_run_one", fake_run_one)
    monkeypatch.setattr(book.os, "cpu_count", lambda: 4)
    for name in book.THREAD_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "3")
    assert _run(tiny_book, "--profile", "demo", "--no-build", "--jobs", "2") == 0
    assert seen["book/c1/a.ipynb"] == seen["book/c2/b.ipynb"] == ("2", "3")
    assert seen["book/beyond/all.ipynb"] == ("4", "3")
    assert "OMP_NUM_THREADS" not in os.environ  # restored afterwards


def test_the_table_sorting_script_parses():
    node = shutil.which("node")
    if node is None:
        pytest.skip("no node.js here to parse book/_static/sortable-tables.js")
    import subprocess

    proc = subprocess.run([node, "--check", str(REPO_ROOT / "book/_static/sortable-tables.js")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_no_page_sets_its_own_thread_count():
    """The runner shares the cores out (``kernel_threads``); a page that asks torch for more
    threads oversubscribes them under ``--jobs`` (the SynFER page's ``set_num_threads(2)``
    made it and the page beside it about 3x slower in the demo build)."""
    pages = sorted((REPO_ROOT / "book").glob("*/*.ipynb"))
    assert pages
    offenders = [p.relative_to(REPO_ROOT).as_posix() for p in pages
                 if re.search(r"set_num_threads|set_num_interop_threads|OMP_NUM_THREADS", p.read_text("utf-8"))]
    assert offenders == [], f"pages that set their own thread count: {offenders}"
