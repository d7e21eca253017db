"""The launch cell: the first cell of every book notebook, so that Colab and Binder can run it.

The book's Colab and Binder buttons (``launch_buttons`` in ``_config.yml``) open a
page's *source* notebook straight from the repository on GitHub
(``<repository.url>/blob/<repository.branch>/book/<chapter>/<page>.ipynb``), not the
copy :mod:`fer.book` executes into ``_build/src``. So the cell that installs the
package has to be in the source notebooks, and it has to be a no-op wherever
``fer`` is installed (``make book`` runs every notebook with papermill, ``make test``
with nbval, both in the project's environment).

One cell, written by :func:`sync_notebooks` (``python -m fer._launch``), never by
hand. It is generated from ``_config.yml`` (``repository.url`` and
``repository.branch``: the one place to change for a fork), carries the tags
:data:`CELL_TAG` (how it is found again) and ``remove-cell`` (Jupyter Book leaves it
out of the pages), and its source is::

    # Colab / Binder: install this book's `fer` package when it is missing (a no-op where it is installed).
    import importlib.util, subprocess, sys
    if importlib.util.find_spec("fer") is None or importlib.util.find_spec("fer.experiments") is None:
        subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet",
                               "fer-attention[book] @ git+https://github.com/ORG/REPO@BRANCH"])

``fer.experiments`` is looked for too because PyPI has an unrelated package called
``fer``. On Binder the repository's ``environment.yml`` has installed the package
already, so the cell does nothing there either.

``python -m fer._launch`` (re)writes the cell in every notebook of ``_toc.yml`` that
lacks it or holds an outdated one and leaves the others byte for byte;
``python -m fer._launch --check`` only reports them (exit status 1), which
``tests/test_launch.py`` runs, so a fork that edits ``_config.yml`` without
rewriting the cells fails its tests with the command to run.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

__all__ = ["CELL_TAG", "HIDE_TAG", "DISTRIBUTION", "launch_config", "cell_source", "launch_cell",
           "sync_notebook", "sync_notebooks", "notebooks", "main"]

#: Tag that marks the launch cell (found and replaced by it).
CELL_TAG = "fer-launch-install"
#: Jupyter Book's tag for a cell left out of the rendered page (input and output).
HIDE_TAG = "remove-cell"
#: The distribution that provides ``fer`` (pyproject.toml's ``project.name``) and the extra it needs.
DISTRIBUTION = "fer-attention[book]"

_GITHUB = re.compile(r"^https://github\.com/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


def _root(root: str | Path | None) -> Path:
    if root is not None:
        return Path(root)
    from . import REPO_ROOT

    return REPO_ROOT


def launch_config(root: str | Path | None = None) -> tuple[str, str]:
    """``(repository.url, repository.branch)`` from ``<root>/_config.yml``.

    Raises:
        ValueError: missing or not a ``https://github.com/<owner>/<repo>`` address
            (Colab opens notebooks from GitHub only), or no branch.
    """
    path = _root(root) / "_config.yml"
    cfg = yaml.safe_load(path.read_text()) or {}
    repo = cfg.get("repository") or {}
    url = str(repo.get("url") or "").rstrip("/")
    if url.endswith(".git"):
        url = url[:-4]
    branch = str(repo.get("branch") or "")
    if not _GITHUB.match(url):
        raise ValueError(f"{path}: repository.url must be https://github.com/<owner>/<repo> (Colab opens notebooks "
                         f"from GitHub), got {url!r}")
    if not branch:
        raise ValueError(f"{path}: repository.branch is not set (the branch the launch buttons open)")
    return url, branch


def cell_source(url: str, branch: str) -> str:
    """The launch cell's code for the repository ``url`` at ``branch``."""
    target = f"{DISTRIBUTION} @ git+{url}@{branch}"
    return (
        "# Colab / Binder: install this book's `fer` package when it is missing (a no-op where it is installed).\n"
        "import importlib.util, subprocess, sys\n"
        'if importlib.util.find_spec("fer") is None or importlib.util.find_spec("fer.experiments") is None:\n'
        '    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet",\n'
        f"                           {json.dumps(target)}])"
    )


def launch_cell(url: str, branch: str) -> dict[str, Any]:
    """The launch cell as a notebook (nbformat 4.5) code cell, with a stable id; ``source`` is a
    list of lines, as Jupyter stores it."""
    return {
        "cell_type": "code",
        "execution_count": None,
        "id": "fer-launch",
        "metadata": {"tags": [HIDE_TAG, CELL_TAG]},
        "outputs": [],
        "source": cell_source(url, branch).splitlines(keepends=True),
    }


def _source(cell: dict[str, Any]) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else str(src)


def _is_launch(cell: dict[str, Any]) -> bool:
    return CELL_TAG in (cell.get("metadata", {}).get("tags") or [])


def sync_notebook(path: str | Path, url: str, branch: str, *, check: bool = False) -> bool:
    """Make the launch cell the first cell of notebook ``path``; ``True`` when it was (or would be) changed.

    An existing launch cell (found by its tag, anywhere) is replaced; any other cell
    is left as it is. ``check=True`` writes nothing. The notebook is written as
    ``nbformat`` writes it (sorted keys, ``indent=1``, a final newline), so only the
    cell's lines change in a diff.
    """
    path = Path(path)
    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = nb.get("cells", [])
    want = launch_cell(url, branch)
    if nb.get("nbformat", 4) == 4 and nb.get("nbformat_minor", 0) < 5:
        want = {k: v for k, v in want.items() if k != "id"}  # cell ids came with nbformat 4.5
    first = cells[0] if cells else None
    others = [c for c in cells if not _is_launch(c)]
    if (first is not None and _is_launch(first) and _source(first) == _source(want)
            and first.get("metadata", {}).get("tags") == want["metadata"]["tags"]
            and len(others) == len(cells) - 1):
        return False
    if check:
        return True
    nb["cells"] = [want, *others]
    path.write_text(json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    return True


def notebooks(root: str | Path | None = None) -> list[Path]:
    """The book's notebooks, in ``_toc.yml`` order (as :mod:`fer.book` executes them)."""
    base = _root(root)
    toc = yaml.safe_load((base / "_toc.yml").read_text()) or {}
    found: list[Path] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key in ("root", "file"):
                if isinstance(node.get(key), str):
                    p = base / node[key]
                    p = p if p.suffix else p.with_suffix(".ipynb")
                    if p.suffix == ".ipynb" and p.is_file() and p not in found:
                        found.append(p)
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(toc)
    return found


def sync_notebooks(root: str | Path | None = None, *, check: bool = False) -> list[Path]:
    """:func:`sync_notebook` over every notebook of the book; returns those changed (or to change)."""
    url, branch = launch_config(root)
    return [p for p in notebooks(root) if sync_notebook(p, url, branch, check=check)]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fer._launch", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only report notebooks whose launch cell is missing or "
                                                        "outdated (exit status 1 if any)")
    p.add_argument("--root", default=None, help="the book's root (default: the repository)")
    args = p.parse_args(argv)
    base = _root(args.root)
    try:
        changed = sync_notebooks(base, check=args.check)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    url, branch = launch_config(base)
    for path in changed:
        rel = path.relative_to(base)
        print(f"{'outdated or missing launch cell' if args.check else 'wrote the launch cell'}: {rel}")
    if args.check and changed:
        print(f"{len(changed)} notebook(s) need the launch cell for {url}@{branch}: run `python -m fer._launch`",
              file=sys.stderr)
        return 1
    if not changed:
        print(f"all {len(notebooks(base))} notebooks have the launch cell for {url}@{branch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
