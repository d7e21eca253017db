"""Hashing helpers shared by the book runner's cache and the runs' cache."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Collection

__all__ = ["package_fingerprint"]


def package_fingerprint(package_dir: str | os.PathLike, exclude: Collection[str] = ()) -> str:
    """sha256 over the relative path and bytes of every ``*.py`` under ``package_dir``.

    ``exclude`` lists paths relative to ``package_dir`` (POSIX form) left out.
    """
    package_dir = Path(package_dir)
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        if "__pycache__" in path.parts or path.relative_to(package_dir).as_posix() in exclude:
            continue
        digest.update(path.relative_to(package_dir).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()
