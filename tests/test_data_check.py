"""``python -m fer.data check`` on data roots written in each dataset's real format.

One fault per test (a truncated JPEG, a missing listed file, a missing label file ...),
each in a private copy of a good root, so each check is tested alone.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from fer.data import check as C
from fer.data.__main__ import main as cli
from fer.data.datasets import DATASETS, load_dataset
from fer.data.synfer import variants

import fixtures_datasets as fx  # tests/ helper module (pytest puts tests/ on sys.path)

WRITERS = {"rafdb": fx.write_rafdb, "fer2013": fx.write_fer2013, "affectnet": fx.write_affectnet,
           "ckplus": fx.write_ckplus, "fedro": fx.write_fedro}


@pytest.fixture(scope="module")
def good_root(tmp_path_factory) -> Path:
    """Every dataset once, under one root (read-only: tests that break it copy it)."""
    root = tmp_path_factory.mktemp("data")
    for name, write in WRITERS.items():
        write(root / name)
    return root


@pytest.fixture
def root(good_root, tmp_path) -> Path:
    """A private copy of the good root."""
    dst = tmp_path / "data"
    shutil.copytree(good_root, dst)
    return dst


def _check(root: Path, **kw) -> C.CheckReport:
    return C.check_data_root(root, progress=False, **kw)


def _one_problem(report: C.CheckReport) -> C.Problem:
    problems = report.all_problems
    assert len(problems) == 1, [(p.dataset, p.kind, p.file) for p in problems]
    assert not report.ok and report.exit_code == 1
    return problems[0]


# ---------------------------------------------------------------------- published counts as data
def test_published_counts_are_the_papers_numbers():
    P = {name: cls.published for name, cls in DATASETS.items()}
    totals = {name: {split: sum(c.values()) for split, c in p.counts.items()} for name, p in P.items()}
    assert totals["rafdb"] == {"train": 12_271, "test": 3_068}
    assert totals["fer2013"] == {"train": 28_709, "val": 3_589, "test": 3_589}
    assert totals["affectnet"] == {"train": 287_651, "test": 4_000}
    assert totals["affectnet"]["train"] - P["affectnet"].counts["train"]["contempt"] == 283_901  # MSA-Net's 7 classes
    assert totals["ckplus"] == {"all": 327} and P["ckplus"].unit == "sequences"
    assert P["fedro"].totals == {"test": 400} and not P["fedro"].counts
    assert all(p.source for p in P.values())
    # SynFER's stand-ins draw their proportions from the same data, not from a copy of it
    assert variants.RAFDB_COUNTS is P["rafdb"].counts and variants.FER2013_COUNTS is P["fer2013"].counts
    assert variants.AFFECTNET_COUNTS is P["affectnet"].counts and variants.CKPLUS_COUNTS is P["ckplus"].counts


def test_loaders_state_published_counts_for_their_split(good_root):
    seven = load_dataset("affectnet", good_root, "test")  # contempt left out: 3,500 (MAPNet's validation set)
    assert seven.published_total() == 3_500 and "contempt" not in seven.published_counts()
    ck = load_dataset("ckplus", good_root)  # 327 sequences x 3 frames = MANet's 981 images
    assert ck.published_total() == 981 and ck.published_counts()["surprise"] == 3 * 83
    assert load_dataset("ckplus", good_root, "test", fold=0).published_total() is None  # no published fold sizes
    folders = load_dataset("fer2013", good_root, "test", layout="folders")  # PublicTest + PrivateTest
    assert folders.published_total() == 7_178
    fed = load_dataset("fedro", good_root)
    assert fed.published_counts() is None and fed.published_total() == 400
    assert load_dataset("fedro", good_root, classes=["happy", "sad"]).published_total() is None


# ---------------------------------------------------------------------- a good root
def test_good_root_passes_and_prints_the_counts(good_root, capsys):
    report = _check(good_root)
    assert report.ok and report.exit_code == 0
    assert [d.name for d in report.found] == list(DATASETS)
    for d in report.found:
        assert d.status == "OK"
        for s in d.splits:
            if s.counts is None:
                continue
            ds = load_dataset(d.name, good_root, s.split, **C.LOAD_KWARGS.get(d.name, {}))
            assert s.counts == ds.class_counts and s.decoded == len(ds) and not s.sampled
            assert not s.missing and not s.undecodable
    raf = {s.split: s for s in report.datasets[0].splits}
    assert raf["train"].published_total == 12_271 and raf["train"].published["happy"] == 4_772
    assert raf["test"].total == 7

    assert cli(["check", "--data-root", str(good_root), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "FAIL" not in out
    assert re.search(r"train\s+found\s+14\s+-12,257(\s+2){7}\n\s+published\s+12,271\s+2,524\s+4,772", out)
    for total in ("28,709", "3,589", "287,651", "981", "400"):
        assert total in out
    assert "layout: EmoLabel/list_patition_label.txt + Image/aligned/" in out
    assert "7 class folders: Angry, Happiness" in out  # the FED-RO folders found (synonyms)
    assert "24 labelled + 1 unlabelled sequences from 23 subjects" in out
    assert "landmark cache: none" in out and "python -m fer.data.landmarks --dataset rafdb" in out


# ---------------------------------------------------------------------- one fault each
def test_truncated_jpeg_fails_naming_the_file(root, capsys):
    bad = root / "rafdb/Image/aligned/train_00003_aligned.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    p = _one_problem(_check(root))
    assert (p.dataset, p.kind, p.file) == ("rafdb", "undecodable", str(bad))
    assert str(bad) in p.message and "archive" in p.fix
    assert cli(["check", "--data-root", str(root), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"rafdb: undecodable: {bad}" in out and "fix:" in out and "FAIL" in out
    assert "rafdb  [BROKEN" in out and "affectnet  [OK]" in out


def test_missing_listed_file_fails_naming_the_file_and_its_list(root):
    row = (root / "affectnet/training.csv").read_text().splitlines()[1]
    gone = root / "affectnet/Manually_Annotated_Images" / row.split(",")[0]
    gone.unlink()
    report = _check(root)
    p = _one_problem(report)
    assert (p.dataset, p.kind, p.file) == ("affectnet", "missing", str(gone))
    assert "training.csv" in p.message and "on_error='skip'" in p.fix
    train = next(s for s in report.datasets[2].splits if s.split == "train")
    assert train.missing == [str(gone)] and train.listed == 16 and train.total == 15


def test_missing_label_file_fails_naming_the_file(root, capsys):
    label = root / "rafdb/EmoLabel/list_patition_label.txt"
    label.unlink()
    p = _one_problem(_check(root))  # both splits fail on it; reported once
    assert (p.dataset, p.kind, p.file) == ("rafdb", "layout", str(label))
    assert str(label) in p.message and "Expected tree" in p.message and "data/README.md" in p.fix
    assert cli(["check", "--data-root", str(root), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"rafdb: layout: {label}" in out and "not as expected" in out


def test_corrupt_fer2013_row_names_the_csv_line(root):
    lines = (root / "fer2013/fer2013.csv").read_text().splitlines()
    lines[1] = lines[1].replace(" ", " 300 ", 1)  # 2,305 values, one above 255
    (root / "fer2013/fer2013.csv").write_text("\n".join(lines) + "\n")
    p = _one_problem(_check(root))
    assert (p.dataset, p.kind, p.file) == ("fer2013", "undecodable", f"{root / 'fer2013/fer2013.csv'}:2")


def test_malformed_label_file_is_a_format_problem(root):
    emo = next((root / "ckplus/Emotion").rglob("*_emotion.txt"))
    emo.write_text("   9.0000000e+00\n")
    p = _one_problem(_check(root))
    assert (p.dataset, p.kind, p.file) == ("ckplus", "format", str(emo))


def test_unreadable_landmark_cache_fails_where_the_loader_reads_it(root):
    np.savez(root / "rafdb/landmarks68-test.npz", junk=np.zeros(3))
    np.savez(root / "affectnet/landmarks68-test.npz", junk=np.zeros(3))  # never read: AffectNet ships landmarks
    p = _one_problem(_check(root))
    assert (p.dataset, p.kind, p.file) == ("rafdb", "landmark cache", str(root / "rafdb/landmarks68-test.npz"))
    assert "python -m fer.data.landmarks --dataset rafdb" in p.fix


# ---------------------------------------------------------------------- landmark cache, --quick, --require
def test_landmark_cache_coverage(root):
    from fer.data.landmarks import annotate_dataset, landmarks_path

    ds = load_dataset("rafdb", root, "test")
    pts = np.tile(np.linspace(10, 90, 68, dtype=np.float32)[:, None], (1, 2))
    calls = iter(range(10**6))

    def backend(images, **_):  # the third image: no face found
        return [pts.copy() if next(calls) != 2 else np.full((68, 2), np.nan, np.float32) for _ in images]

    annotate_dataset(ds, landmarks_path(ds.root, "test"), backend=backend, progress=False, base_dir=ds.root)
    report = _check(root)
    assert report.ok
    test = next(s for s in report.datasets[0].splits if s.split == "test")
    assert test.landmarks.startswith("landmarks68-test.npz: landmarks for 6 of 7 images")
    assert next(s for s in report.datasets[0].splits if s.split == "train").landmarks.startswith("none")


def test_quick_decodes_a_stated_seeded_sample(root, capsys):
    bad = root / "rafdb/Image/aligned/train_00003_aligned.jpg"
    bad.write_bytes(bad.read_bytes()[:200])
    runs = [_check(root, quick=True, sample=8, seed=s) for s in range(6)]
    for r in runs:
        train = next(s for s in r.datasets[0].splits if s.split == "train")
        assert train.sampled and train.decoded == 8 and train.total == 14
        assert not train.missing
    found = [bool(r.all_problems) for r in runs]
    assert any(found) and not all(found)  # a sample: the bad file is in some seeds' draws only
    again = _check(root, quick=True, sample=8, seed=found.index(True))
    assert [p.file for p in again.all_problems] == [str(bad)]  # the same seed draws the same sample
    test = next(s for s in runs[0].datasets[0].splits if s.split == "test")
    assert test.decoded == 7 and not test.sampled  # fewer images than the sample: all of them
    cli(["check", "--data-root", str(root), "--quick", "--sample", "8", "--seed", "0", "--no-progress"])
    out = capsys.readouterr().out
    assert "random sample of up to 8 images per split (seed 0; --quick)" in out
    assert "decoded a seeded sample of 8 of 14" in out and "decoded all 7" in out


def test_missing_files_are_all_found_even_with_quick(root):
    gone = sorted((root / "rafdb/Image/aligned").glob("train_0000[1-4]_aligned.jpg"))
    for p in gone:
        p.unlink()
    report = _check(root, quick=True, sample=1)
    assert sorted(p.file for p in report.all_problems) == [str(p) for p in gone]


def test_require_names_datasets_or_chapters(root, tmp_path):
    assert C.resolve_required(["RAF-DB", "ck+"]) == {"rafdb", "ckplus"}
    assert C.resolve_required(["mapnet"]) == {"rafdb", "affectnet", "fedro"}
    with pytest.raises(ValueError, match="unknown dataset or chapter 'jaffe'"):
        C.resolve_required(["jaffe"])
    shutil.rmtree(root / "fedro")
    assert _check(root, require=["rafdb", "affectnet"]).ok
    p = _one_problem(_check(root, require=["mapnet"]))
    assert (p.dataset, p.kind, p.file) == ("fedro", "absent", str(root / "fedro"))
    assert "required" in p.message and "request it from" in p.fix
    assert cli(["check", "--data-root", str(root), "--require", "rafdb,fedro", "--no-progress"]) == 1
    assert cli(["check", "--data-root", str(root), "--require", "jaffe", "--no-progress"]) == 2


def test_a_root_with_none_of_the_datasets_is_a_clear_error(good_root, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "RAF-DB").mkdir()
    p = _one_problem(_check(empty))
    assert p.kind == "no dataset found" and "rafdb/, fer2013/" in p.message and "RAF-DB/" in p.message
    p = _one_problem(_check(good_root / "rafdb"))  # a dataset's own folder, not the data root
    assert f"pass its parent, --data-root {good_root}" in p.fix
    assert "does not exist" in _one_problem(_check(tmp_path / "nowhere")).message
    assert cli(["check", "--data-root", str(empty), "--no-progress"]) == 1
    assert "no dataset found" in capsys.readouterr().out
