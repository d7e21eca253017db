"""fer.runs: run folders, hashes, cache hits, and resuming a run killed with SIGKILL."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import Subset

import fer
import fer.runs as runs_mod
from fer.data import SynFER
from fer.data.cached import cache_dataset
from fer.io import load_checkpoint
from fer.runs import Run, data_fingerprint, find_runs, protocols_of, run, run_key, runs_root, source_hash
from fer.train import Stage, TrainConfig


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def data():
    train = cache_dataset(SynFER("clean", "train", n=16, image_size=16, class_balance="uniform",
                                 with_relevance=False), progress=False)
    val = cache_dataset(SynFER("clean", "val", n=8, image_size=16, with_relevance=False), progress=False)
    return train, val


def build_tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 7))


CFG = TrainConfig(epochs=2, batch_size=8, lr=1e-2)


# ----------------------------------------------------------------------------- keys


def test_hash_covers_config_data_spec_and_source():
    data = {"train": "aaaa", "val": "bbbb"}
    h, record = run_key("x", CFG, data=data, source="src1")
    assert record["config"]["lr"] == 0.01 and record["data"] == data
    assert run_key("renamed", CFG, data=data, source="src1")[0] == h  # the name is not hashed
    assert run_key("x", CFG.replace(num_workers=4), data=data, source="src1")[0] == h  # runtime-only field
    changed = [
        run_key("x", CFG.replace(lr=0.02), data=data, source="src1")[0],
        run_key("x", CFG.replace(stages=[Stage(epochs=2, trainable=["4"])]), data=data, source="src1")[0],
        run_key("x", CFG, data={"train": "aaab", "val": "bbbb"}, source="src1")[0],
        run_key("x", CFG, data=data, source="src2")[0],
        run_key("x", CFG, data=data, spec={"width": 8}, source="src1")[0],
    ]
    assert len({h, *changed}) == 6
    with pytest.raises(ValueError, match="run name"):
        run_key("bad name/..", CFG, data=data)


def test_source_hash_covers_the_code_training_runs_and_nothing_else(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "experiments").mkdir()
    (pkg / "a.py").write_text("x = 1\n")
    (pkg / "sub" / "b.py").write_text("y = 2\n")
    for name in runs_mod.PRESENTATION_MODULES:
        (pkg / name).write_text("z = 1\n")
    (pkg / "experiments" / "chapter.py").write_text("w = 1\n")
    h = source_hash(pkg)
    (pkg / "notes.txt").write_text("not code")
    assert source_hash(pkg) == h
    for name in ("plots.py", "explain.py", "book.py", "experiments/claims.py"):  # cosmetic: no retraining
        (pkg / name).write_text("z = 2  # a comment\n")
        assert source_hash(pkg) == h, name
    for name in ("sub/b.py", "experiments/chapter.py", "a.py"):
        before = source_hash(pkg)
        (pkg / name).write_text((pkg / name).read_text() + "# changed\n")
        assert source_hash(pkg) != before, name
    # a run is keyed by the chapter protocols its callables name, and by _common.py
    (pkg / "experiments" / "other.py").write_text("v = 1\n")
    (pkg / "experiments" / "_common.py").write_text("u = 1\n")
    mine = source_hash(pkg, protocols={"chapter"})
    (pkg / "experiments" / "other.py").write_text("v = 2\n")
    assert source_hash(pkg, protocols={"chapter"}) == mine
    for name in ("experiments/chapter.py", "experiments/_common.py"):
        before = source_hash(pkg, protocols={"chapter"})
        (pkg / name).write_text((pkg / name).read_text() + "# changed\n")
        assert source_hash(pkg, protocols={"chapter"}) != before, name
    assert protocols_of({"build_model": "fer.experiments.chapter.build_model", "loss": "fer.losses.X"}) == {"chapter"}
    assert protocols_of({"build_model": {"partial": "fer.models._registry.create_model"}}) == set()
    assert len(source_hash()) == 64  # the real package
    assert {"plots.py", "explain.py", "book.py"} <= set(runs_mod.PRESENTATION_MODULES)
    assert not {"train.py", "runs.py", "losses.py"} & set(runs_mod.PRESENTATION_MODULES)


def test_data_fingerprints(data):
    train, _ = data
    ds = SynFER("clean", "train", n=4, image_size=16)
    assert data_fingerprint(ds) == ds.fingerprint()
    assert data_fingerprint(SynFER("clean", "train", n=5, image_size=16)) != ds.fingerprint()
    assert data_fingerprint(Subset(ds, [0, 1])) != data_fingerprint(Subset(ds, [0, 2]))
    with pytest.raises(TypeError, match="data_fingerprint="):
        data_fingerprint([1, 2, 3])


def test_runs_root(monkeypatch, tmp_path):
    monkeypatch.delenv("FER_RUNS", raising=False)
    assert runs_root() == fer.REPO_ROOT / "runs"
    monkeypatch.setenv("FER_RUNS", str(tmp_path))
    assert runs_root() == tmp_path
    assert runs_root(tmp_path / "x") == tmp_path / "x"


# ----------------------------------------------------------------------------- run and cache


def test_run_writes_a_complete_folder_then_hits_the_cache(tmp_path, data, capsys, monkeypatch):
    train, val = data
    built = []

    def build() -> nn.Module:
        built.append(1)
        return build_tiny()

    first = run("tiny", CFG, build, train, val, eval_sets={"test": val}, root=tmp_path, progress=False)
    assert not first.cached and first.run.complete
    out = capsys.readouterr().out
    assert "training: " in out and "finished: " in out
    files = sorted(p.name for p in first.path.iterdir())
    assert files == ["checkpoint.pt", "config.json", "history.jsonl", "metrics.json", "predictions.pt"]
    assert first.path.name.startswith("tiny-") and len(first.path.name) == len("tiny-") + 12
    record = json.loads((first.path / "config.json").read_text())
    assert record["data"] == {"train": train.fingerprint(), "val": val.fingerprint(), "test": val.fingerprint()}
    assert record["hash"] == first.path.name[-12:] and record["source"] == source_hash(protocols=set())
    assert len(first.history) == 2 and set(first.metrics) >= {"val", "test", "epochs", "timing"}
    assert first.metrics["val"] == {k: v for k, v in first.metrics["test"].items()}
    preds = first.run.predictions()
    assert torch.equal(preds["test"]["targets"], val.labels)

    # second call: nothing is trained (fit would raise), the same weights and metrics come back;
    # the model is built without drawing random weights (all come from the checkpoint), and
    # torch.nn.init works again afterwards
    monkeypatch.setattr(runs_mod, "fit", lambda *a, **k: pytest.fail("a cache hit must not train"))
    kaiming, inits = nn.init.kaiming_uniform_, []

    def build() -> nn.Module:  # noqa: F811 - the same model, recording whether init ran
        built.append(1)
        w = torch.zeros(3, 3)
        inits.append(nn.init.uniform_(w, 1.0, 2.0).abs().sum().item())
        return build_tiny()

    second = run("tiny", CFG, build, train, val, eval_sets={"test": val}, root=tmp_path, progress=False)
    assert inits == [0.0] and nn.init.kaiming_uniform_ is kaiming
    assert nn.init.uniform_(torch.zeros(2), 1.0, 2.0).min() >= 1.0
    assert second.cached
    assert f"cache hit: {first.path}" in capsys.readouterr().out
    assert second.metrics == first.metrics and second.history.records == first.history.records
    for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values(), strict=True):
        assert torch.equal(a.cpu(), b.cpu())
    assert len(built) == 2 and not second.model.training

    # a changed config or data is a new run
    monkeypatch.undo()
    third = run("tiny", CFG.replace(lr=2e-2), build_tiny, train, val, root=tmp_path, progress=False)
    assert not third.cached and third.path != first.path
    assert [r.path for r in find_runs("tiny", root=tmp_path)] == sorted([first.path, third.path])
    loaded = Run.load(first.path.name, root=tmp_path)
    assert loaded.config == CFG and loaded.complete and loaded.metrics() == first.metrics
    assert loaded.hash == first.path.name[-12:] and loaded.name == "tiny"


def test_an_incomplete_run_says_so(tmp_path):
    folder = tmp_path / "x-000000000000"
    folder.mkdir()
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        Run.load(folder)
    (folder / "config.json").write_text(json.dumps({"config": CFG.to_dict(), "name": "x"}))
    r = Run.load(folder)
    assert not r.complete and len(r.history()) == 0
    with pytest.raises(FileNotFoundError, match="not complete"):
        r.metrics()


def test_datasets_without_fingerprint_need_one(tmp_path):
    items = [{"image": torch.zeros(3, 16, 16, dtype=torch.uint8), "label": i % 2} for i in range(4)]
    with pytest.raises(TypeError, match="data_fingerprint="):
        run("plain", CFG.replace(epochs=1), build_tiny, items, root=tmp_path, progress=False)
    res = run("plain", CFG.replace(epochs=1), build_tiny, items, root=tmp_path, progress=False,
              data_fingerprint="four-blank-images-v1", verbose=False)
    assert json.loads((res.path / "config.json").read_text())["data"] == {"train": "four-blank-images-v1:train"}


# ----------------------------------------------------------------------------- resume after SIGKILL

CHILD = textwrap.dedent('''
    """Train a tiny model on a tiny SynFER set through fer.runs.run.

    PAUSE_AT=k sleeps at the k-th training batch of this process (after touching MARKER);
    OPTIM=adam trains with Adam and an iteration-based step schedule instead of SGD with
    an epoch-based one. Prints how many training batches this process ran.
    """
    import os, sys, time
    import torch
    from torch import nn
    from fer.data import SynFER
    import fer.runs
    from fer.runs import run
    from fer.data.cached import cache_dataset
    from fer.train import Stage, TrainConfig

    torch.set_num_threads(1)
    fer.runs.source_hash = lambda *a, **k: "pinned"  # other edits to fer/ while the test runs must not split the runs
    PAUSE_AT = int(os.environ.get("PAUSE_AT", "0"))
    MARKER = os.environ.get("MARKER", "")
    calls = 0


    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.drop = nn.Dropout(0.3)
            self.head = nn.Linear(8, 7)

        def forward(self, x):
            global calls
            if self.training:
                calls += 1
                if calls == PAUSE_AT:
                    open(MARKER, "w").close()
                    time.sleep(600)
            return self.head(self.drop(self.features(x).mean((2, 3))))


    def build():
        return Net()


    train = cache_dataset(SynFER("clean", "train", n=24, image_size=16, class_balance="uniform",
                                 with_relevance=False), progress=False)
    val = cache_dataset(SynFER("clean", "val", n=12, image_size=16, with_relevance=False), progress=False)
    stages = [Stage(epochs=1, trainable=["head"], name="head"), Stage(epochs=3, lr_scale=0.5)]
    if os.environ.get("OPTIM") == "adam":
        cfg = TrainConfig(optimizer="adam", lr=3e-3, schedule="step", schedule_unit="iteration", step_size=4,
                          gamma=0.5, batch_size=8, hflip=True, shift=2, seed=7, stages=stages)
    else:
        cfg = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="step",
                          step_size=2, batch_size=8, hflip=True, shift=2, seed=7, stages=stages)
    res = run("resume", cfg, build, train, val, progress=False)
    print("CACHED" if res.cached else "TRAINED", res.metrics["val"]["accuracy"], flush=True)
    print(f"BATCHES {calls}", flush=True)
''')
#: 24 samples / batch 8 = 3 batches per epoch; stage "head" is epoch 1, the rest epochs 2-4.
BATCHES_PER_EPOCH, EPOCHS = 3, 4


def _child(script: Path, root: Path, **env: str) -> subprocess.Popen:
    full = {**os.environ, "FER_RUNS": str(root), "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", **env}
    return subprocess.Popen([sys.executable, str(script)], env=full, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out
    return out


def _batches(out: str) -> int:
    return int(out.split("BATCHES ")[1].split()[0])


def _comparable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k != "timing"}


def _kill_at(script: Path, root: Path, marker: Path, pause_at: int, **env: str) -> None:
    """Run the child until its ``pause_at``-th training batch, then SIGKILL it."""
    marker.unlink(missing_ok=True)
    victim = _child(script, root, PAUSE_AT=str(pause_at), MARKER=str(marker), **env)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert victim.poll() is None, victim.communicate()[0]
            assert time.monotonic() < deadline, f"the child never reached batch {pause_at}"
            time.sleep(0.05)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
        assert victim.returncode == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()


def _history(folder: Path) -> list[str]:
    return (folder / "history.jsonl").read_text().splitlines()


@pytest.fixture(scope="module")
def child_script(tmp_path_factory) -> Path:
    script = tmp_path_factory.mktemp("child") / "child.py"
    script.write_text(CHILD)
    return script


@pytest.fixture(scope="module")
def references(child_script, tmp_path_factory) -> dict[str, Path]:
    """Uninterrupted runs, one per optimiser, trained at once in two processes."""
    roots = {optim: tmp_path_factory.mktemp(f"reference-{optim}") for optim in ("sgd", "adam")}
    procs = {optim: _child(child_script, root, OPTIM=optim) for optim, root in roots.items()}
    folders = {}
    for optim, proc in procs.items():
        out = _finish(proc)
        assert "TRAINED" in out and _batches(out) == BATCHES_PER_EPOCH * EPOCHS
        (folders[optim],) = roots[optim].iterdir()
    return folders


# (kill at these training batches of successive processes, optimiser, epochs on disk after each kill)
KILLS = {
    "stage-boundary": ([4], "sgd", [1]),  # 1st batch of stage 2: only stage "head" is done
    "adam-iterations": ([8], "adam", [2]),  # mid-epoch 3: Adam moments and an iteration-counted lr step
    "two-kills": ([5, 5], "sgd", [1, 2]),  # mid-epoch 2, then (after resuming at 1) mid-epoch 3
}


@pytest.mark.parametrize("case", list(KILLS), ids=list(KILLS))
def test_resume_after_sigkill_continues_and_matches_an_uninterrupted_run(case, child_script, references, tmp_path):
    pauses, optim, epochs_on_disk = KILLS[case]
    root, marker = tmp_path / "killed", tmp_path / "paused"
    kept: list[str] = []
    for pause_at, epochs in zip(pauses, epochs_on_disk, strict=True):
        _kill_at(child_script, root, marker, pause_at, OPTIM=optim)
        (folder,) = root.iterdir()
        ckpt = load_checkpoint(folder / "checkpoint.pt")
        assert ckpt["epoch"] == epochs and not ckpt["finished"]
        assert ckpt["step"] == epochs * BATCHES_PER_EPOCH
        assert ckpt["stage"] == (0 if epochs == 1 else 1)  # stage "head" is epoch 1
        assert not (folder / "metrics.json").exists()
        history = _history(folder)
        assert len(history) == epochs
        assert history[: len(kept)] == kept  # records written before an earlier kill survive as written
        kept = history

    out = _finish(_child(child_script, root, OPTIM=optim))
    assert "resuming: " in out and f"at epoch {epochs_on_disk[-1]}/{EPOCHS}" in out and "TRAINED" in out
    # the last process trained only the epochs that were missing: a silent retrain would run all 12
    assert _batches(out) == (EPOCHS - epochs_on_disk[-1]) * BATCHES_PER_EPOCH
    history = _history(folder)
    assert history[: len(kept)] == kept and len(history) == EPOCHS

    ref_folder = references[optim]
    assert ref_folder.name == folder.name  # same config, code and data: same hash

    def read(f: Path, name: str):
        return json.loads((f / name).read_text())

    assert _comparable(read(folder, "metrics.json")) == _comparable(read(ref_folder, "metrics.json"))
    strip = lambda lines: [{k: v for k, v in json.loads(r).items() if k != "seconds"} for r in lines]  # noqa: E731
    assert strip(history) == strip(_history(ref_folder))
    a, b = load_checkpoint(folder / "checkpoint.pt"), load_checkpoint(ref_folder / "checkpoint.pt")
    assert a["finished"] and b["finished"] and a["step"] == b["step"] == EPOCHS * BATCHES_PER_EPOCH
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]

    # and now it is cached: nothing trains
    out = _finish(_child(child_script, root, OPTIM=optim))
    assert "CACHED" in out and _batches(out) == 0
