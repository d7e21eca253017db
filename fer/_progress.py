"""One rule for progress bars: shown when asked for, unless ``TQDM_DISABLE`` is set.

tqdm reads ``TQDM_DISABLE`` only for arguments left at their default, so a call that
passes ``disable=not progress`` would show bars in the book's kernels, which set
``TQDM_DISABLE=1`` to keep bars out of the pages. Pass :func:`bar_disabled` instead.
"""
from __future__ import annotations

import os

__all__ = ["bar_disabled"]


def bar_disabled(progress: bool = True) -> bool:
    """``disable=`` for tqdm: ``True`` when ``progress`` is false or ``TQDM_DISABLE`` is set."""
    flag = os.environ.get("TQDM_DISABLE", "").strip().lower()
    return (not progress) or flag not in ("", "0", "false", "no")
