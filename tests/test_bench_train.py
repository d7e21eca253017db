"""benchmarks/bench_train.py: a tiny run writes train.json with four positive rates and their ratios."""
from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_train", ROOT / "benchmarks" / "bench_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# n = 20 faces in batches of 8: every epoch is batches of 8, 8, 4. With 2 warm-up steps and 2 timed
# steps the data paths (a stamp after each batch) time batches 4-5 (8 + 8 images) and the training
# paths (a stamp before each step) steps 3-4 (4 + 8): a bench that counts the wrong batches, counts
# batch size x steps, or times the wrong interval reports another rate.
N, BATCH, WARMUP, STEPS = 20, 8, 2, 2
EPOCH = [8, 8, 4]


def _batches(count: int) -> list[int]:
    """Sizes of the first ``count`` batches of fresh epochs, one after another."""
    return [EPOCH[i % len(EPOCH)] for i in range(count)]


def test_bench_train_tiny(tmp_path, capsys, monkeypatch):
    bench = _load_bench()
    clocks: list = []  # data reference, data fer, train reference, train fer: the order main() measures in
    seen: dict[str, list[int]] = {"loader": [], "transform": [], "models": []}

    class Clock(bench._Clock):  # the bench's own clock; kept to read its raw stamps afterwards
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            clocks.append(self)

    class CountingLoader:  # the reference's loader: batches actually handed out
        def __init__(self, loader):
            self.loader = loader

        def __iter__(self):
            for x, y in self.loader:
                seen["loader"].append(len(y))
                yield x, y

    class CountingTransform:  # fer's data path: batches actually transformed
        @staticmethod
        def from_config(*args, **kw):
            transform = input_transform.from_config(*args, **kw)

            def call(batch, **kw2):
                out = transform(batch, **kw2)
                seen["transform"].append(len(out["image"]))
                return out
            return call

    def make_model(*args):  # both training paths: images actually run forward, per model
        model = make(*args)
        sizes: list[int] = []
        seen["models"].append(sizes)
        model.register_forward_pre_hook(lambda m, inputs: sizes.append(len(inputs[0])))
        return model

    make, reference_loader, input_transform = bench._make_model, bench.reference_loader, bench.InputTransform
    monkeypatch.setattr(bench, "_Clock", Clock)
    monkeypatch.setattr(bench, "reference_loader", lambda *a, **kw: CountingLoader(reference_loader(*a, **kw)))
    monkeypatch.setattr(bench, "InputTransform", CountingTransform)
    monkeypatch.setattr(bench, "_make_model", make_model)
    out = tmp_path / "bench"
    threads = torch.get_num_threads()
    try:
        rc = bench.main(["--out", str(out), "--model", "small_cnn", "--n", str(N), "--batch", str(BATCH), "--size",
                         "32", "--steps", str(STEPS), "--warmup", str(WARMUP), "--data-steps", str(STEPS),
                         "--workers", "0", "--threads", "1", "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)  # main() sets it for the whole process
    assert rc == 0
    result = json.loads((out / "train.json").read_text())

    # What was processed: the data paths stop at the stamp after batch WARMUP + STEPS + 1, the
    # training paths at the stamp before step WARMUP + STEPS + 1 (not run).
    stamps = WARMUP + STEPS + 1
    assert seen["loader"] == _batches(stamps) * 2  # data, then training: each from a fresh epoch
    assert seen["transform"] == _batches(stamps)
    assert seen["models"] == [_batches(stamps - 1)] * 2  # reference, fer: the timed steps ran forward
    assert [c.sizes for c in clocks] == [_batches(stamps)] * 4  # the clocks counted those batches

    # Each rate from the raw stamps: images processed between stamp WARMUP and stamp WARMUP + STEPS.
    def rate(clock, images):
        assert len(clock.times) == stamps
        return images / (clock.times[WARMUP + STEPS] - clock.times[WARMUP])

    data_images = sum(seen["transform"][WARMUP + 1:stamps])  # finished after the first stamp
    train_images = sum(seen["models"][0][WARMUP:stamps - 1])  # started after the first stamp
    assert (data_images, train_images) == (16, 12)
    expect = {"data_reference": rate(clocks[0], data_images), "data_fer": rate(clocks[1], data_images),
              "train_reference": rate(clocks[2], train_images), "train_fer": rate(clocks[3], train_images)}
    rates = {
        "data_reference": result["reference"]["data_images_per_second"],
        "data_fer": result["fer"]["data_images_per_second"],
        "train_reference": result["reference"]["train_images_per_second"],
        "train_fer": result["fer"]["train_images_per_second"],
    }
    assert rates == pytest.approx(expect, rel=1e-12)
    for name, r in rates.items():
        assert math.isfinite(r) and r > 0, (name, r)
    assert result["ratio"]["data"] == pytest.approx(expect["data_fer"] / expect["data_reference"], rel=1e-12)
    assert result["ratio"]["train"] == pytest.approx(expect["train_fer"] / expect["train_reference"], rel=1e-12)

    s = result["settings"]
    assert (s["model"], s["size"], s["n"], s["batch"]) == ("small_cnn", 32, N, BATCH)
    assert (s["warmup_steps"], s["train_steps"], s["data_steps"]) == (WARMUP, STEPS, STEPS)
    assert result["fer"]["model_input_shape"] == [3, 32, 32]  # fit resized the 48 px cache on the device
    assert result["fer"]["decode_seconds"] > 0 and result["fer"]["cache_bytes"] == N * 3 * 48 * 48 + N * 8
    assert result["machine"]["device"] == "cpu" and result["fer"]["precision"] == "float32"
    printed = capsys.readouterr().out
    assert "fer/reference" in printed and "data pipeline alone" in printed
    assert f"{rates['train_reference']:12.1f}{rates['train_fer']:12.1f}{result['ratio']['train']:15.2f}x" in printed
