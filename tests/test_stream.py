"""Datasets too big for memory stream from a disk store (issue 15, section 3).

:func:`fer.data.cache_dataset` decodes once, into memory or, over the memory budget, into
a :class:`fer.data.stream.ArrayStore` read by a :class:`fer.train.StreamedDataset`. Checked
on an AffectNet-format fixture: the streamed items equal the in-memory ones; a second
request decodes nothing; an interrupted fill is never taken for a complete store; MAPNet's
uint8 face masks equal the float masks; the budget picks the path.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

import fixtures_datasets as fx
from fer.data import load_dataset
from fer.data import stream
from fer.data.cached import CachedDataset, ConcatCachedDataset, StreamedDataset, cache_dataset, cached_fingerprint
from fer.data.cached import make_loader as _make_loader
from fer.data.masks import face_mask
from fer.train import TrainConfig, evaluate

KEYS = ("image", "label", "landmarks")
SIZE = 32


@pytest.fixture(scope="module")
def affectnet_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("affectnet")
    fx.write_affectnet(root, n_train=24, n_test=4)
    return root


@pytest.fixture(autouse=True)
def _no_user_env(monkeypatch):
    monkeypatch.delenv("FER_CACHE", raising=False)
    monkeypatch.delenv("FER_MEMORY_BUDGET", raising=False)
    monkeypatch.setattr(stream, "SMALL_COLUMN", 0)  # every column read from its file, as at AffectNet scale


class Counting(Dataset):
    """Counts decodes; raises at item ``fail_at`` (an interrupted fill)."""

    def __init__(self, ds, fail_at: int | None = None) -> None:
        self.ds, self.fail_at, self.calls = ds, fail_at, 0
        self.classes = ds.classes

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i):
        if i == self.fail_at:
            raise RuntimeError("interrupted half way")
        self.calls += 1
        return self.ds[i]

    def fingerprint(self) -> str:
        return self.ds.fingerprint()


def _train(root):
    return load_dataset("affectnet", root, "train", image_size=SIZE)


def _equal_items(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
        else:
            assert type(a[k]) is type(b[k]) and a[k] == b[k], k


def _stores(cache):
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_streamed_items_equal_the_in_memory_ones(affectnet_root, tmp_path):
    ds = _train(affectnet_root)
    mem = cache_dataset(ds, keys=KEYS, progress=False)
    st = cache_dataset(ds, keys=KEYS, progress=False, cache_dir=tmp_path, memory_budget=0)
    assert type(mem) is CachedDataset and isinstance(st, StreamedDataset)
    assert len(st) == len(mem) == 21  # 24 listed, contempt left out
    assert st.fingerprint() == mem.fingerprint()  # same run cache keys
    for i in (*range(len(mem)), -1):
        _equal_items(mem[i], st[i])
    order = [17, 3, 3, 0, 20, 9]  # unsorted, repeated: rows come back in the order asked
    _equal_items(mem.__getitems__(order), st.__getitems__(order))
    assert st.targets == mem.targets and st.class_counts == mem.class_counts
    assert torch.equal(st.images, mem.images) and torch.equal(st.tensors["landmarks"], mem.tensors["landmarks"])
    sub_m, sub_s = mem.subset([20, 4, 11, 7]), st.subset([20, 4, 11, 7])
    assert isinstance(sub_s, StreamedDataset) and sub_s.fingerprint() == sub_m.fingerprint()
    _equal_items(sub_m.subset([3, 0]).__getitems__([1, 0]), sub_s.subset([3, 0]).__getitems__([1, 0]))
    # through the training loop's loader, with worker processes
    batches_m = list(_make_loader(mem, batch_size=5, shuffle=True, seed=1, num_workers=0, drop_last=False,
                                  pin_memory=False))
    batches_s = list(_make_loader(st, batch_size=5, shuffle=True, seed=1, num_workers=2, drop_last=False,
                                  pin_memory=False))
    assert len(batches_m) == len(batches_s) == 5
    for bm, bs in zip(batches_m, batches_s):
        _equal_items(bm, bs)
    # evaluate (and so fit's loop) runs unchanged on it
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * SIZE * SIZE, 7))
    cfg = TrainConfig(batch_size=8, cpu=True, precision="fp32", hflip=True, num_workers=2)
    rm, rs = evaluate(model, mem, cfg), evaluate(model, st, cfg)
    assert rm["loss"] == rs["loss"] and rm["accuracy"] == rs["accuracy"]


def test_a_second_request_reads_the_store_instead_of_decoding(affectnet_root, tmp_path):
    ds = _train(affectnet_root)
    first = Counting(ds)
    a = cache_dataset(first, keys=KEYS, progress=False, cache_dir=tmp_path, memory_budget=0)
    assert first.calls == len(ds) and len(_stores(tmp_path)) == 1
    again = Counting(ds)
    b = cache_dataset(again, keys=KEYS, progress=False, cache_dir=tmp_path, memory_budget=0)
    assert again.calls == 0 and isinstance(b, StreamedDataset) and b.fingerprint() == a.fingerprint()
    _equal_items(a.__getitems__(range(len(a))), b.__getitems__(range(len(b))))
    # FER_CACHE names the folder; within the budget the store is loaded into memory, still not decoded
    os.environ["FER_CACHE"] = str(tmp_path)
    try:
        in_mem = Counting(ds)
        c = cache_dataset(in_mem, keys=KEYS, progress=False)
    finally:
        del os.environ["FER_CACHE"]
    assert in_mem.calls == 0 and type(c) is CachedDataset
    _equal_items(c.__getitems__(range(len(c))), b.__getitems__(range(len(b))))
    # other data, another store
    other = cache_dataset(load_dataset("affectnet", affectnet_root, "train", image_size=SIZE + 8), keys=KEYS,
                          progress=False, cache_dir=tmp_path, memory_budget=0)
    assert other.images.shape[-1] == SIZE + 8 and len(_stores(tmp_path)) == 2


def test_an_interrupted_fill_is_never_taken_for_a_complete_store(affectnet_root, tmp_path):
    ds = _train(affectnet_root)
    broken = Counting(ds, fail_at=13)  # in the fourth batch of four: three batches are on disk
    with pytest.raises(RuntimeError, match="interrupted half way"):
        cache_dataset(broken, keys=KEYS, progress=False, cache_dir=tmp_path, memory_budget=0, batch_size=4)
    assert broken.calls == 13  # items 0..12
    assert _stores(tmp_path) == []  # the part folder is gone, no store was published
    # a fill killed outright leaves its part folder (dead pid) and, say, a folder without its marker
    good = Counting(ds)
    expected = cache_dataset(ds, keys=KEYS, progress=False)
    st = cache_dataset(good, keys=KEYS, progress=False, cache_dir=tmp_path, memory_budget=0)
    final = st.store.folder
    (final / stream.COMPLETE).unlink()
    dead = final.with_name(f"{final.name}.part-999999999-deadbeef")
    dead.mkdir()
    assert stream.ArrayStore.open(final) is None
    refill = Counting(ds)
    st = cache_dataset(refill, keys=KEYS, progress=False, cache_dir=tmp_path, memory_budget=0)
    assert refill.calls == len(ds) and _stores(tmp_path) == [final.name]  # refilled; the dead part removed
    _equal_items(expected.__getitems__(range(len(ds))), st.__getitems__(range(len(ds))))
    info = json.loads((final / stream.COMPLETE).read_text())
    assert info["n"] == len(ds) and info["columns"]["image"] == {"dtype": "|u1", "shape": [3, SIZE, SIZE]}
    assert np.array_equal(np.load(final / "image.npy", mmap_mode="r"), expected.images.numpy())  # plain .npy


def test_mapnet_paper_path_streams_uint8_masks_equal_to_the_float_masks(tmp_path, monkeypatch):
    from fer.data.landmarks import annotate_dataset, landmarks_path
    from fer.experiments import mapnet as E

    root = tmp_path / "data"
    fx.write_affectnet(root / "affectnet", n_train=16, n_test=7)
    fx.write_fedro(root / "fedro", per_class=1)
    fedro = load_dataset("fedro", root)
    pts = np.tile(np.linspace(8, 24, 68, dtype=np.float32)[:, None], (1, 2))
    annotate_dataset(fedro, landmarks_path(fedro.root, "test"), backend=lambda ims, **_: [pts] * len(ims),
                     progress=False, base_dir=fedro.root)
    setup = dataclasses.replace(E.profile_setups()["paper"], data_root=str(root), image_size=SIZE, pretrained=False,
                                affectnet_train=None)
    before = E.load_data(setup, "affectnet", progress=False)  # within the default budget: in memory
    monkeypatch.setenv("FER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FER_MEMORY_BUDGET", "0")
    data = E.load_data(setup, "affectnet", progress=False)
    assert isinstance(data.train, StreamedDataset) and isinstance(data.test, StreamedDataset)
    for old, new in ((before.train, data.train), (before.test, data.test)):
        assert new.fingerprint() == old.fingerprint()  # the run cache keys do not move
        _equal_items(old.__getitems__(range(len(old))), new.__getitems__(range(len(new))))
    # the masks: uint8, and as the float masks of the landmarks (0/1: scale 1)
    ds = load_dataset("affectnet", root, "train", image_size=SIZE)
    cached = cache_dataset(ds, keys=KEYS, progress=False)
    want = face_mask(cached.tensors["landmarks"].float(), (SIZE, SIZE), missing="ones")
    assert want.dtype == torch.float32 and 0 < want.mean() < 1
    got = data.train.tensors["mask"]
    assert got.dtype == torch.uint8 and got.shape == (14, 1, SIZE, SIZE)  # 16 listed, contempt left out
    assert torch.equal(got[:, 0].float(), want)
    assert data.train.fingerprint() == E.with_face_masks(cached).fingerprint()
    assert cached_fingerprint(("image", "label", "mask"), "x") == CachedDataset(
        {"image": torch.zeros(1, 1), "label": torch.zeros(1), "mask": torch.zeros(1)}, source_fingerprint="x"
    ).fingerprint()


def test_the_budget_picks_memory_or_disk(affectnet_root, tmp_path, monkeypatch):
    ds = _train(affectnet_root)
    need = len(ds) * (3 * SIZE * SIZE + 8 + 68 * 2 * 4)  # uint8 image, int64 label, float32 landmarks
    at = cache_dataset(ds, keys=KEYS, progress=False, cache_dir=tmp_path / "a", memory_budget=need)
    over = cache_dataset(ds, keys=KEYS, progress=False, cache_dir=tmp_path / "b", memory_budget=need - 1)
    assert type(at) is CachedDataset and isinstance(over, StreamedDataset)
    assert over.store.nbytes == need
    monkeypatch.setenv("FER_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("FER_MEMORY_BUDGET", f"{need - 1}")
    assert isinstance(cache_dataset(ds, keys=KEYS, progress=False), StreamedDataset)
    assert _stores(tmp_path / "c") and not (tmp_path / "d").exists()
    monkeypatch.setenv("FER_MEMORY_BUDGET", "1G")
    assert type(cache_dataset(ds, keys=KEYS, progress=False)) is CachedDataset
    # no cache folder named: within the budget, memory only and nothing written; over it, the default folder
    monkeypatch.delenv("FER_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "d"))
    assert type(cache_dataset(ds, keys=KEYS, progress=False, memory_budget=need)) is CachedDataset
    assert not (tmp_path / "d").exists()
    assert stream.cache_root() == (tmp_path / "d" / "fer" / "datasets", False)
    over = cache_dataset(ds, keys=KEYS, progress=False, memory_budget=need - 1)
    assert isinstance(over, StreamedDataset) and over.store.folder.parent == tmp_path / "d" / "fer" / "datasets"
    assert [stream.parse_bytes(t) for t in ("8G", "512M", "1.5GiB", "1000", "2kb")] == [
        8 << 30, 512 << 20, 3 << 29, 1000, 2048]
    with pytest.raises(ValueError, match="size in bytes"):
        stream.parse_bytes("lots")
    assert stream.memory_budget() == 1 << 30
    # a disk without room is an error that names the fix, and leaves nothing behind
    monkeypatch.setattr("shutil.disk_usage", lambda p: type("U", (), {"free": need - 1})())
    with pytest.raises(OSError, match="FER_CACHE"):
        cache_dataset(ds, keys=KEYS, progress=False, cache_dir=tmp_path / "e", memory_budget=0)
    assert _stores(tmp_path / "e") == []
    monkeypatch.delenv("FER_MEMORY_BUDGET")
    assert 0 < stream.memory_budget() <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def test_a_concatenation_is_a_view_equal_to_torch_cat(affectnet_root, tmp_path):
    """MAPNet's joint AffectNet + RAF-DB set: on-disk parts stay on disk, and every item, batch,
    subset and fingerprint equals that of the ``torch.cat`` set it replaces (same run keys)."""
    ds = _train(affectnet_root)
    mem = cache_dataset(ds, keys=KEYS, progress=False)
    st = cache_dataset(ds, keys=KEYS, progress=False, cache_dir=tmp_path, memory_budget=0)
    small = mem.subset([5, 2, 9])
    joined = CachedDataset({k: torch.cat([mem.tensors[k], small.tensors[k]]) for k in KEYS}, classes=mem.classes,
                           source_fingerprint=f"concat({st.fingerprint()},{small.fingerprint()})")
    view = ConcatCachedDataset([st, small])
    assert len(view) == len(joined) == 24 and view.fingerprint() == joined.fingerprint()
    assert view.targets == joined.targets and view.class_counts == joined.class_counts
    for i in (0, 20, 21, 23, -1):
        _equal_items(view[i], joined[i])
    order = [22, 3, 21, 3, 0, 20]  # across the parts, unsorted, repeated
    _equal_items(view.__getitems__(order), joined.__getitems__(order))
    sub_v, sub_j = view.subset([23, 1, 21]), joined.subset([23, 1, 21])
    assert isinstance(sub_v, ConcatCachedDataset) and sub_v.fingerprint() == sub_j.fingerprint()
    _equal_items(sub_v.__getitems__([2, 0]), sub_j.__getitems__([2, 0]))
    assert torch.equal(view.images, joined.images)
    batches_v = list(_make_loader(view, batch_size=5, shuffle=True, seed=1, num_workers=0, drop_last=False,
                                  pin_memory=False))
    batches_j = list(_make_loader(joined, batch_size=5, shuffle=True, seed=1, num_workers=0, drop_last=False,
                                  pin_memory=False))
    for bv, bj in zip(batches_v, batches_j, strict=True):
        _equal_items(bv, bj)
    with pytest.raises(IndexError):
        view.__getitems__([24])
