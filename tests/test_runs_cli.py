"""``python -m fer.runs plan|train|list`` (fer._runs_cli, fer.experiments.plan): the book's runs
outside the notebooks, on one process and on two (CPU, gloo)."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from fer import REPO_ROOT
from fer._runs_cli import main
from fer.pages import learned
from fer.experiments import cbam_vgg, manet, mapnet, masked, msanet
from fer.experiments.plan import CHAPTERS, PlanError, page_knobs, plan, select

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def smoke_plan():
    return plan("smoke")


def _names(runs, chapter):
    return {r.name for r in runs if r.chapter == chapter}


def test_smoke_plan_lists_every_run_the_smoke_pages_train(smoke_plan):
    names = [r.name for r in smoke_plan]
    assert len(names) == len(set(names))
    assert {r.chapter for r in smoke_plan} == set(CHAPTERS)
    knobs = page_knobs("smoke")
    # cbam_vgg: experiment 1's rows, experiment 2's g and cbam, and the VGG-Face stand-in
    s = cbam_vgg.Setup.for_profile("smoke")
    rows = {r.key: r.model for r in cbam_vgg.FIGURE7}
    want = {f"cbam_vgg-smoke-{k}-{rows[k]}" for k in [*knobs["book/cbam_vgg/experiment1.ipynb"]["rows"], "g", "cbam"]}
    want |= {f"cbam_vgg-smoke-{k}-{rows[k]}-s{seed}" for k in ("g", "cbam") for seed in s.seeds if seed != s.seed}
    assert _names(smoke_plan, "cbam_vgg") == want | {"cbam_vgg-smoke-face-pretrain"}
    demo = plan("demo", chapters=["cbam_vgg"])  # experiment 2's claim: g and cbam once per seed
    assert {r.seed for r in demo if r.row == "cbam"} == set(cbam_vgg.Setup.for_profile("demo").seeds) == {0, 1, 2}
    assert "cbam_vgg-demo-g-vgg16_gap-s2" in {r.name for r in demo}
    # mapnet: the ablation rows x seeds, the K and alpha sweeps, the comparison's AffectNet run
    s = mapnet.Setup.for_profile("smoke")
    rows = knobs["book/mapnet/ablation.ipynb"]["rows"]
    want = {mapnet.run_name(s, row, seed=seed) for row in rows for seed in s.seeds}
    want |= {mapnet.run_name(s, "wcl", seed=seed, blocks=k) for k in s.blocks_values for seed in s.sweep_seeds}
    want |= {mapnet.run_name(s, "wcl", seed=seed, alpha=a) for a in s.alpha_values for seed in s.sweep_seeds}
    assert knobs["book/mapnet/comparison.ipynb"]["affectnet"] and not knobs["book/mapnet/comparison.ipynb"]["joint"]
    want.add(mapnet.run_name(s, "wcl", dataset="affectnet", seed=s.seed))
    want.add("mapnet-smoke-trunk-pretrain")  # the ImageNet stand-in every row starts from
    assert _names(smoke_plan, "mapnet") == want
    # msanet: every row on both datasets, each seed
    s = msanet.Setup.for_profile("smoke")
    assert _names(smoke_plan, "msanet") == {f"msanet-smoke-{d}-{row}-s{seed}" for d in msanet.DATASETS
                                            for seed in s.seeds_for(d) for row in msanet.ROWS} | {
                                                "msanet-smoke-trunk-pretrain"}
    assert all(r.needs == ("msanet-smoke-trunk-pretrain",) for r in smoke_plan
               if r.chapter == "msanet" and r.row != "trunk-pretrain")
    # manet: Table 3 (pre-trained and scratch, raf.ipynb's defaults), the ground-truth masks, each CK+ fold
    s = manet.Setup.for_profile("smoke")
    ck = [r for r in smoke_plan if r.chapter == "manet" and r.fold is not None]
    assert {r.fold for r in ck} == set(s.folds) and len(ck) == 3 * len(s.folds)
    assert {r.seed for r in smoke_plan if r.chapter == "manet"} == set(s.seeds)
    assert len(_names(smoke_plan, "manet")) == 1 + 6 * len(s.seeds) + 1 + 3 * len(s.folds)
    # masked: the MCN once, every model for every seed; FECN variants start from the MCN
    s = masked.Setup.for_profile("smoke")
    mcn = f"masked-smoke-mcn-s{s.seeds[0]}"
    trunk = "masked-smoke-trunk-pretrain"  # the ImageNet stand-in every model starts from
    assert _names(smoke_plan, "masked") == {mcn, trunk} | {f"masked-smoke-{m}-s{seed}" for m in masked.MODELS
                                                           for seed in s.seeds}
    assert all(r.needs == (trunk, mcn) for r in smoke_plan if r.row.startswith("fecn"))
    assert all(r.needs == (trunk,) for r in smoke_plan if r.row in ("mcn", "vgg11", "abn"))
    # dependencies come first, sizes are the Setup's (no estimates) except CK+ folds
    order = {r.name: i for i, r in enumerate(smoke_plan)}
    assert all(order[n] < order[r.name] for r in smoke_plan for n in r.needs)
    assert all(r.images == r.train_images * r.epochs > 0 for r in smoke_plan)
    assert {r.name for r in smoke_plan if r.estimate} == {r.name for r in ck}


_TRAINS = re.compile(r"\.(run_row|run_seeds|run_model|run_raf_rows|run_ck_folds|run_mcn|run_all|face_pretrain)\(")


def test_the_plan_covers_every_page_that_trains(smoke_plan):
    """A page whose code calls a chapter's run function (any folder of book/) is in the plan, and only such
    pages are."""
    training_pages = set()
    for nb in sorted((REPO_ROOT / "book").glob("*/*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        if _TRAINS.search(code):
            training_pages.add(nb.relative_to(REPO_ROOT).as_posix())
    assert "book/beyond/photo.ipynb" in training_pages  # the photo page trains (loads) the CBAM chapter's model
    assert {p for r in smoke_plan for p in r.pages} == training_pages


def test_paper_plan_estimates_from_published_sizes_and_names_a_wrong_profile(capsys):
    runs = plan("paper", data_root="/nowhere")
    assert not any("face-pretrain" in r.name for r in runs)  # the paper profile loads VGG-Face
    raf = next(r for r in runs if r.name == "msanet-paper-raf-full-s0")
    assert (raf.train_images, raf.estimate, raf.epochs) == (12271, True, 30)
    assert len([r for r in runs if r.chapter == "manet" and r.fold is not None]) == 30  # 10 folds x 3 models
    assert main(["plan", "--profile", "paper", "--json", "--wave", "1", "--chapter", "masked"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert records and all(r["needs"] == ["masked-paper-mcn-s0"] and r["wave"] == 1 for r in records)
    assert set(records[0]) >= {"name", "chapter", "row", "seed", "fold", "images", "estimate", "needs", "cached"}
    with pytest.raises(PlanError, match="--profile smoke"):
        select(runs, ["masked-smoke-mcn-s0"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """``python -m fer.runs train`` of a smoke run that starts from another (the VGG-Face stand-in)."""
    root = tmp_path_factory.mktemp("runs")
    old = os.environ.get("FER_RUNS")
    os.environ["FER_RUNS"] = str(root)
    try:
        assert main(["train", "cbam_vgg-smoke-f-vgg16_flatten", "--profile", "smoke"]) == 0
        yield root
    finally:
        if old is None:
            os.environ.pop("FER_RUNS")
        else:
            os.environ["FER_RUNS"] = old


def test_train_then_the_notebooks_call_hits_the_cache(trained, capsys, monkeypatch):
    monkeypatch.setenv("FER_RUNS", str(trained))
    assert sorted(p.name.rsplit("-", 1)[0] for p in trained.iterdir()) == [
        "cbam_vgg-smoke-f-vgg16_flatten", "cbam_vgg-smoke-face-pretrain"]
    # the cell of book/cbam_vgg/experiment1.ipynb, for row f
    setup = cbam_vgg.Setup.for_profile("smoke", data_root=None, device="auto")
    data = cbam_vgg.load_data(setup, progress=False)
    face = cbam_vgg.face_pretrain(setup, progress=False)
    result = cbam_vgg.run_row(setup, data, "f", face=face, progress=False)
    assert face.cached and result.cached
    assert len(list(trained.iterdir())) == 2
    capsys.readouterr()
    assert main(["plan", "--profile", "smoke", "--chapter", "cbam_vgg", "--json"]) == 0
    cached = {r["name"]: r["cached"] for r in json.loads(capsys.readouterr().out)}
    assert cached["cbam_vgg-smoke-f-vgg16_flatten"] == "yes" and cached["cbam_vgg-smoke-a-small_cnn"] == "no"


def test_list_json_fields(trained, capsys, monkeypatch):
    monkeypatch.setenv("FER_RUNS", str(trained))  # main(["list", "--runs", ...]) sets it
    assert main(["list", "--json", "--runs", str(trained)]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    row = rows["cbam_vgg-smoke-f-vgg16_flatten"]
    assert row["id"].startswith("cbam_vgg-smoke-f-vgg16_flatten-") and row["complete"]
    assert (row["chapter"], row["profile"], row["row"], row["seed"], row["fold"]) == ("cbam_vgg", "smoke",
                                                                                    "f-vgg16_flatten", 0, None)
    assert row["eval_set"] == "test" and 0 <= row["accuracy"] <= 1 and 0 <= row["mean_class_accuracy"] <= 1
    assert 1 / 7 <= row["majority_share"] <= 1 and row["wall_seconds"] > 0 and row["classes"] == 7
    assert isinstance(row["threads"], int) and row["threads"] >= 1  # the wall time's context
    assert row["learned"] is learned(row["accuracy"], row["mean_class_accuracy"], row["majority_share"], 7)
    assert rows["cbam_vgg-smoke-face-pretrain"]["eval_set"] == "val"  # no test set: its held-out faces
    assert main(["list", "--runs", str(trained)]) == 0
    assert "cbam_vgg-smoke-f-vgg16_flatten-" in capsys.readouterr().out


# --------------------------------------------------------------------------- two processes

_TINY = textwrap.dedent('''
    """A tiny run through fer.runs.run: 1 process, or each process of a torchrun launch."""
    import json, sys
    import torch
    from torch import nn
    from fer._runs_cli import global_batch
    from fer.data import CachedDataset
    from fer.runs import run
    from fer.train import TrainConfig

    torch.set_num_threads(1)

    def data(n, seed):
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 3, (n,), generator=g)
        x = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
        x[:, 0] = (y[:, None, None] * 80).to(torch.uint8)
        return CachedDataset({"image": x, "label": y}, classes=("a", "b", "c"), source_fingerprint=f"tiny{n}-{seed}")

    def build():
        return nn.Sequential(nn.Flatten(), nn.Linear(192, 16), nn.ReLU(), nn.Linear(16, 3))

    def train(batch):
        cfg = TrainConfig(epochs=3, batch_size=batch, optimizer="sgd", lr=0.05, momentum=0.9, seed=0)
        res = run("tiny", cfg, build, data(64, 1), data(32, 2), eval_sets={"test": data(32, 3)}, progress=False)
        return {"folder": res.path.name, "train_loss": [r["train_loss"] for r in res.history],
                "val_loss": res.metrics["val"]["loss"], "test_loss": res.metrics["test"]["loss"],
                "test_acc": res.metrics["test"]["accuracy"],
                "weights": [float(p.detach().double().sum()) for p in res.model.parameters()]}

    out = {}
    for spec in sys.argv[1:]:  # "8": batch 8 per process; "g16": global batch 16 split across processes
        if spec.startswith("g"):
            with global_batch():
                out[spec] = train(int(spec[1:]))
        else:
            out[spec] = train(int(spec))
    from accelerate import PartialState
    if PartialState().is_main_process:
        print("RESULT " + json.dumps(out))
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(script: Path, runs: Path, args: list[str], nproc: int) -> tuple[dict, str]:
    env = {**os.environ, "FER_RUNS": str(runs), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    for k in ("WORLD_SIZE", "FER_RUNS_QUIET"):
        env.pop(k, None)
    cmd = [sys.executable, str(script), *args]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
               "127.0.0.1", "--master_port", str(_free_port()), str(script), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    results = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    assert len(results) == 1, out[-3000:]  # only the main process prints
    return json.loads(results[0][len("RESULT "):]), out


def _close(a: dict, b: dict) -> None:
    assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-6)
    for k in ("val_loss", "test_loss"):
        assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k
    assert a["weights"] == pytest.approx(b["weights"], rel=1e-4, abs=1e-5)
    assert abs(a["test_acc"] - b["test_acc"]) <= 1 / 32 + 1e-9  # at most one test face flips


def test_two_processes_on_cpu_match_one_with_the_same_global_batch(tmp_path):
    """A 2-process torchrun launch (CPU, gloo) of a small run writes one folder per run, and matches
    one process with the same global batch of 16.

    ``TrainConfig.batch_size`` is per process in ``fer.train.fit`` (accelerate shards the
    ``EpochSampler``'s batches: process i takes batches i, i + 2, ...), so two processes of 8
    see the 16 faces one process of 16 sees at each step, and DDP averages their gradients
    into the same mean. Under ``fer._runs_cli.global_batch`` (what ``python -m fer.runs train``
    uses) the config's 16 is split 8 + 8 instead, so the run keeps the 1-process config and
    hash: its folder is the 1-process folder's name.

    Tolerance: rel 1e-4 on the per-epoch training losses, the final val/test losses and the
    sums of the trained weights, and at most one of 32 test faces on accuracy. The model has
    no batch norm, dropout or augmentation (which draw per process), so the only difference
    is float summation order (DDP's all-reduce, the split batch): ~1e-7 relative measured.
    """
    script = tmp_path / "tiny.py"
    script.write_text(_TINY)
    one, _ = _launch(script, tmp_path / "one", ["16"], nproc=1)
    two, out = _launch(script, tmp_path / "two", ["8", "g16"], nproc=2)
    _close(two["8"], one["16"])
    _close(two["g16"], one["16"])
    assert two["g16"]["folder"] == one["16"]["folder"]  # same config, same hash: a shared cache entry
    folders = sorted(p.name for p in (tmp_path / "two").iterdir())
    assert folders == sorted({two["8"]["folder"], two["g16"]["folder"]}), folders  # one folder per run
    for f in folders:
        assert sorted(p.name for p in (tmp_path / "two" / f).iterdir()) == [
            "checkpoint.pt", "config.json", "history.jsonl", "metrics.json", "predictions.pt"]
    assert out.count("finished: ") == 2  # the runs' own lines, from the main process only


# --------------------------------------------------------------------------- benchmarks/gpu_check


def test_gpu_check_runs_every_check_in_its_cpu_dry_mode(tmp_path):
    """``benchmarks/gpu_check.py --cpu-dry``: every check on the CPU at 64 px, width 1/8, 2 steps."""
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "benchmarks" / "gpu_check.py"), "--cpu-dry", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    res = json.loads((tmp_path / "gpu_check_cpu_dry.json").read_text())
    assert res["precision"]["ok"] and res["precision"]["steps"] == 2
    assert len(res["training"]) == 5
    for name, r in res["training"].items():
        assert "error" not in r and r["images_per_s"] > 0, name
    assert res["pipeline"]["memory_images_per_s"] > 0 and res["pipeline"]["streamed_type"] == "StreamedDataset"


def test_gpu_check_sh_says_why_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = subprocess.run(["bash", str(REPO_ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 3 and "no CUDA GPU" in proc.stderr
