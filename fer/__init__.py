"""fer: the package behind the attention-FER paper companion.

Everything a chapter notebook imports lives here: datasets (``fer.data``),
models, losses, training, explanation and plotting helpers, and the book
runner (``python -m fer.book``).
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["__version__", "PACKAGE_DIR", "REPO_ROOT"]

__version__ = "0.1.0"

#: Directory of the installed ``fer`` package.
PACKAGE_DIR = Path(__file__).resolve().parent
#: Repository root for an editable install (the folder holding ``_toc.yml``).
REPO_ROOT = PACKAGE_DIR.parent
