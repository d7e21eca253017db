"""``python -m fer.data``: data-root tools.

    python -m fer.data check --data-root DIR [--quick] [--require rafdb,affectnet]

``check`` reports, for every dataset under ``DIR``, its layout, images per split and class
beside the published counts, missing or undecodable files and the landmark cache, and
exits non-zero when a dataset is unusable (see :mod:`fer.data.check`). The landmark cache
itself is written by ``python -m fer.data.landmarks``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from . import check

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fer.data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="is a data root ready for the paper profile?",
                       description=check.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_arguments(c)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check":
        return check.main(args)
    raise AssertionError(args.command)  # pragma: no cover - argparse refuses other commands


if __name__ == "__main__":
    sys.exit(main())
