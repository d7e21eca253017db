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


def test_bench_train_tiny(tmp_path, capsys):
    bench = _load_bench()
    out = tmp_path / "bench"
    threads = torch.get_num_threads()
    try:
        rc = bench.main(["--out", str(out), "--model", "small_cnn", "--n", "32", "--batch", "8", "--size", "32",
                         "--steps", "2", "--warmup", "1", "--data-steps", "3", "--workers", "0", "--threads", "1",
                         "--device", "cpu"])
    finally:
        torch.set_num_threads(threads)  # main() sets it for the whole process
    assert rc == 0
    result = json.loads((out / "train.json").read_text())
    rates = {
        "data_reference": result["reference"]["data_images_per_second"],
        "data_fer": result["fer"]["data_images_per_second"],
        "train_reference": result["reference"]["train_images_per_second"],
        "train_fer": result["fer"]["train_images_per_second"],
    }
    for name, rate in rates.items():
        assert math.isfinite(rate) and rate > 0, (name, rate)
    assert result["ratio"]["data"] == pytest.approx(rates["data_fer"] / rates["data_reference"], rel=1e-9)
    assert result["ratio"]["train"] == pytest.approx(rates["train_fer"] / rates["train_reference"], rel=1e-9)
    assert result["settings"]["model"] == "small_cnn" and result["settings"]["size"] == 32
    assert result["fer"]["model_input_shape"] == [3, 32, 32]  # fit resized the 48 px cache on the device
    assert result["fer"]["decode_seconds"] > 0 and result["fer"]["cache_bytes"] == 32 * 3 * 48 * 48 + 32 * 8
    assert result["machine"]["device"] == "cpu" and result["fer"]["precision"] == "float32"
    printed = capsys.readouterr().out
    assert "fer/reference" in printed and "data pipeline alone" in printed
