"""Benchmark: which SynFER pretraining makes the best start, per minute of CPU (issue 17 §1).

    python benchmarks/bench_pretrain.py --out _build/bench                       # demo scale, seed 0
    python benchmarks/bench_pretrain.py --out _build/bench --seeds 0 1 2         # with spread
    python benchmarks/bench_pretrain.py --out _build/bench --profile smoke       # a check of the code
    python benchmarks/bench_pretrain.py --out _build/bench --norm bn --finetune all   # issue 17's finding

For the VGG16 + CBAM chapter at the profile's scale (``book/profiles.yml``: the fer2013
stand-in, its input size and VGG16 width), each candidate start
(:data:`fer.experiments.pretraining.PRETRAIN_TASKS`) is pretrained with the chapter's
pretraining budget (``pretrain_n`` faces, ``pretrain_epochs``), then Figure 7's row
``--row`` (default ``g``: VGG16 + GAP from "VGG-Face") is fine-tuned from its conv base
under the profile's protocol (:func:`fer.experiments.cbam_vgg.run_row`: in ``demo``
every layer at ``finetune_lr``, issue 17's choice; staged in ``smoke`` and ``paper``).
The reference ``scratch`` trains the same VGG16 with all layers from random weights for
as many epochs.

``--norm bn`` pretrains VGG16 with a batch norm after each conv, folded into the convs when
the plain VGG16 loads them (:func:`fer.models.cbam_vgg.fold_batchnorm`; the chapters'
``face_pretrain`` always does); ``--finetune all`` trains every layer of the row from the
first step, at a tenth of the chapter's learning rate, whatever the profile's protocol.

Reported per candidate and seed: the expression run's test accuracy, mean per-class
accuracy, the majority-class share and whether it learned (:func:`fer.pages.learned`);
the pretraining's own validation score; and the CPU wall time of the teacher (dlib's
descriptors), the pretraining and the fine-tuning, from each run's ``metrics.json`` (so a
cached run reports the time it took when it trained). Runs are cached under ``--runs``
(default ``<out>/pretrain-runs``): a second call only reads them.

Prints a table and writes ``<out>/pretrain.json``.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
from functools import partial
from pathlib import Path
from typing import Any

import torch


def _seconds(result: Any) -> float:
    return float((result.metrics.get("timing") or {}).get("total_seconds") or 0.0)


def _score(result: Any) -> dict[str, Any]:
    from fer.pages import run_learning

    check = run_learning(result.run)
    return {"run": result.path.name, "accuracy": check.accuracy, "mean_class_accuracy": check.mean_class_accuracy,
            "majority_share": check.majority_share, "learned": check.learned, "seconds": _seconds(result)}


def _finetune(setup: Any, data: Any, row: str, face: Any, finetune: str, progress: bool) -> Any:
    """Row ``row`` from ``face``'s conv base (``None``: from scratch): the profile's
    protocol (``finetune="chapter"``), or every layer from the first step at a tenth of the
    chapter's learning rate for as many epochs (``"all"``)."""
    from fer.experiments import cbam_vgg
    from fer.runs import run

    if finetune == "chapter" and face is not None:
        return cbam_vgg.run_row(setup, data, row, face=face, progress=progress)
    model_name = next(r.model for r in cbam_vgg.FIGURE7 if r.key == row)
    face_name = None if face is None else face.path.name
    build = partial(cbam_vgg.build_model, model_name, input_size=setup.input_size, width=setup.width,
                    weights=None if face is None else "synfer-face", face_run=face_name)
    config = cbam_vgg.train_config(setup, build(load=False), pretrained=False)
    if face is not None:  # all layers, gently: the start is worth keeping
        config = dataclasses.replace(config, lr=setup.lr / 10)
    start = "scratch" if face is None else face_name
    return run(f"bench-{setup.profile}-{finetune}-{row}-s{setup.seed}", config, build, data.train, data.val,
               eval_sets=data.eval_sets(), spec={"row": row, "start": start, "finetune": finetune},
               progress=progress)


def measure(profile: str, seeds: list[int], tasks: list[str], row: str, progress: bool, *, norm: str = "none",
            finetune: str = "chapter", pretrain_epochs: int | None = None) -> list[dict[str, Any]]:
    from torch import nn

    from fer.experiments import cbam_vgg, pretraining
    from fer.models import create_model

    rows = []
    for seed in seeds:
        setup = dataclasses.replace(cbam_vgg.Setup.for_profile(profile), seed=seed)
        if pretrain_epochs is not None:
            setup = dataclasses.replace(setup, pretrain_epochs=pretrain_epochs)
        data = cbam_vgg.load_data(setup, progress=progress)
        for task in tasks:
            rec: dict[str, Any] = {"start": task, "seed": seed, "row": row, "norm": norm, "finetune": finetune,
                                   "pretrain_epochs": setup.pretrain_epochs}
            if task == "scratch":
                res = _finetune(setup, data, row, None, finetune, progress)
                rec.update(teacher_seconds=0.0, pretrain_seconds=0.0, pretrain_val=None)
            else:
                build = partial(create_model, "vgg16_gap", img_size=setup.input_size, width=setup.width,
                                norm_layer=nn.BatchNorm2d if norm == "bn" else None)
                tag = task.replace("+", "-") + ("-bn" if norm == "bn" else "")
                pre, teacher = pretraining.pretrain(setup, f"bench-{profile}-pt-{tag}", build,
                                                    task=task, variant="fer2013", seed=seed, lr=setup.lr,
                                                    progress=progress)
                val = pre.metrics.get("val") or {}
                rec.update(teacher_seconds=round(teacher, 1), pretrain_seconds=_seconds(pre),
                           pretrain_val={"loss": val.get("loss"), "identity_accuracy": val.get("accuracy")})
                res = _finetune(setup, data, row, pre, finetune, progress)
            rec["finetune"] = _score(res)
            rec["total_minutes"] = round((rec["teacher_seconds"] + rec["pretrain_seconds"]
                                          + rec["finetune"]["seconds"]) / 60, 2)
            rows.append(rec)
            print(json.dumps(rec), flush=True)
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    head = ["start", "seed", "acc %", "class-mean %", "majority %", "learned", "teacher s", "pretrain s",
            "finetune s", "total min"]
    cells = [head] + [[r["start"], str(r["seed"]), f"{100 * r['finetune']['accuracy']:.1f}",
                       f"{100 * r['finetune']['mean_class_accuracy']:.1f}",
                       f"{100 * r['finetune']['majority_share']:.1f}", str(r["finetune"]["learned"]),
                       f"{r['teacher_seconds']:.0f}", f"{r['pretrain_seconds']:.0f}",
                       f"{r['finetune']['seconds']:.0f}", f"{r['total_minutes']:.1f}"] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells)


def main(argv: list[str] | None = None) -> int:
    from fer.experiments.pretraining import PRETRAIN_TASKS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("_build/bench"))
    ap.add_argument("--runs", type=Path, default=None, help="runs cache (default <out>/pretrain-runs)")
    ap.add_argument("--profile", default="demo", choices=("smoke", "demo"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--starts", nargs="+", default=["scratch", *PRETRAIN_TASKS],
                    choices=["scratch", *PRETRAIN_TASKS])
    ap.add_argument("--row", default="g", help="Figure 7 row fine-tuned from each start (g, f or cbam)")
    ap.add_argument("--norm", default="none", choices=("none", "bn"),
                    help="pretrain VGG16 plain, or with batch norm folded into the convs afterwards (bn)")
    ap.add_argument("--finetune", default="chapter", choices=("chapter", "all"),
                    help="the profile's protocol (cbam_vgg.run_row), or every layer at a tenth of its "
                         "learning rate (all)")
    ap.add_argument("--pretrain-epochs", type=int, default=None, help="default: the profile's pretrain_epochs")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    os.environ["FER_RUNS"] = str((args.runs or args.out / "pretrain-runs").resolve())
    rows = measure(args.profile, args.seeds, args.starts, args.row, args.progress, norm=args.norm,
                   finetune=args.finetune, pretrain_epochs=args.pretrain_epochs)
    print(_table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    name = "pretrain.json" if (args.norm, args.finetune) == ("none", "chapter") else \
        f"pretrain-{args.norm}-{args.finetune}.json"
    record = {"profile": args.profile, "row": args.row, "norm": args.norm, "finetune": args.finetune,
              "pretrain_epochs": args.pretrain_epochs,
              "threads": torch.get_num_threads(),
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "rows": rows}
    path = args.out / name
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
