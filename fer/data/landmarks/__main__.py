"""``python -m fer.data.landmarks``: cache 68-point landmarks for a dataset, once.

Examples::

    python -m fer.data.landmarks --dataset rafdb --root data/rafdb
    python -m fer.data.landmarks --dataset rafdb --root data/rafdb --backend face_alignment --device cuda
    python -m fer.data.landmarks --dataset synfer --split test --set variant=clean --set n=200 --out /tmp/lm.npz

Writes ``<root>/landmarks68-<split>.npz`` for each split (see
:func:`fer.data.landmarks.landmarks_path`); rerunning skips finished splits and
resumes interrupted ones.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from .backends import BACKENDS
from .cache import annotate_dataset, landmarks_path

__all__ = ["main", "build_parser", "DEFAULT_SPLITS"]

#: Splits annotated when ``--split`` is not given.
DEFAULT_SPLITS: dict[str, tuple[str, ...]] = {
    "rafdb": ("train", "test"),
    "fer2013": ("train", "val", "test"),
    "affectnet": ("train", "test"),
    "ckplus": ("all",),
    "fedro": ("test",),
    "synfer": ("train", "test"),
}


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(text.lower(), text)


def _parse_sets(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for it in items:
        if "=" not in it:
            raise SystemExit(f"--set expects key=value, got {it!r}")
        k, v = it.split("=", 1)
        out[k.strip().replace("-", "_")] = _value(v.strip())
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fer.data.landmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", required=True, help="rafdb, fer2013, affectnet, ckplus, fedro or synfer")
    p.add_argument("--root", default=None, help="the dataset's folder (default: $FER_DATA_ROOT/<name> or data/<name>)")
    p.add_argument("--split", nargs="+", default=None, help="splits to annotate (default: all of the dataset's)")
    p.add_argument("--backend", default="dlib", choices=BACKENDS)
    p.add_argument("--device", default=None, help="torch device for face_alignment (default: cuda if available)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers decoding images")
    p.add_argument("--checkpoint-every", type=int, default=512, help="images between checkpoints")
    p.add_argument("--fallback", default="image", choices=("image", "none"),
                   help="no face found: fit in the image box (face crops) or leave NaN")
    p.add_argument("--out", default=None, help="output .npz (only with one split; required for synfer)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra keyword argument for the loader, e.g. --set images=original")
    p.add_argument("--overwrite", action="store_true", help="redo finished splits")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from .. import load_dataset
    except ImportError as e:  # pragma: no cover - the loaders ship with fer.data
        raise SystemExit(f"fer.data.load_dataset is not available ({e}); update the fer package") from e
    name = args.dataset.lower()
    splits = tuple(args.split) if args.split else DEFAULT_SPLITS.get(name, ("train",))
    if args.out and len(splits) != 1:
        raise SystemExit(f"--out names one file but {len(splits)} splits were asked for ({', '.join(splits)}); "
                         "pass one --split or drop --out")
    if name == "synfer" and not args.out:
        raise SystemExit("synfer has no folder to write next to: pass --out PATH (and one --split)")
    extra = _parse_sets(args.set)
    for split in splits:
        ds = load_dataset(name, args.root if name != "synfer" else None, split, **extra)
        root = Path(getattr(ds, "root", None) or args.root or ".")
        out = Path(args.out) if args.out else landmarks_path(root, split)
        table = annotate_dataset(ds, out, backend=args.backend, batch_size=args.batch_size, device=args.device,
                                 checkpoint_every=args.checkpoint_every, num_workers=args.workers,
                                 overwrite=args.overwrite, progress=not args.no_progress, fallback=args.fallback)
        s = table.summary()
        print(f"{name}/{split}: {s['n']} images, {s['detected']} faces detected, {s['ok']} with landmarks "
              f"({args.backend}) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
