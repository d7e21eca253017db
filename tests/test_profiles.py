"""book/profiles.yml resolves for every page and profile; chapter entries feed Setup.for_profile."""
from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import pytest
import yaml

from fer import REPO_ROOT, book
from fer.profiles import (ProfileError, chapter_entry, chapter_of, expected_minutes, find_root, page_entries,
                          read_profiles)

CHAPTERS = ("cbam_vgg", "manet", "mapnet", "msanet", "masked")


def _pages() -> list[Path]:
    return [p for p in book.read_toc(REPO_ROOT) if p.suffix == ".ipynb"]


@pytest.mark.parametrize("profile", ["smoke", "demo", "paper"])
def test_every_page_resolves(profile: str) -> None:
    """What the runner checks before executing anything, for the real book, and each chapter
    page's setup: the one call it makes gives the chapter's setup for that profile."""
    pages = _pages()
    entries = page_entries(REPO_ROOT, profile)
    chapters = {}
    for rel in pages:
        params = book.notebook_parameters(rel.as_posix(), book.parameter_names(REPO_ROOT / rel), profile, entries,
                                          None)
        assert params["profile"] == profile
        chapter = chapter_of(rel)
        if chapter in CHAPTERS:
            chapters.setdefault(chapter, []).append(rel)
            # the page's own knobs only: no Setup field is injected past Setup.for_profile
            fields = {f.name for f in dataclasses.fields(importlib.import_module(f"fer.experiments.{chapter}").Setup)}
            assert not (set(params) - {"profile", "data_root", "device"}) & fields, rel
    assert set(chapters) == set(CHAPTERS)
    for chapter in CHAPTERS:
        E = importlib.import_module(f"fer.experiments.{chapter}")
        setup = E.Setup.for_profile(profile, data_root="/data", device="cpu")
        assert (setup.profile, setup.data_root, setup.device) == (profile, "/data", "cpu")
        assert dataclasses.replace(setup, data_root=None, device="auto") == E.profile_setups()[profile]
        if profile == "smoke":
            assert dataclasses.replace(setup, data_root=None, device="auto") == E.Setup()


def test_no_stray_entries() -> None:
    """Every page entry is a notebook of the book and every chapter entry a chapter."""
    pages = {p.as_posix() for p in _pages()}
    for key in read_profiles(REPO_ROOT):
        assert key in pages or key in CHAPTERS, f"book/profiles.yml: {key!r} is neither a page nor a chapter"
    for profile in ("demo", "paper"):
        stray = set(expected_minutes(REPO_ROOT, profile)) - pages
        assert not stray, f"book/profiles.yml: schedule -> {profile} names pages not in _toc.yml: {sorted(stray)}"
    # the demo book's schedule covers every page (a page left out would be started as if it were short)
    assert set(expected_minutes(REPO_ROOT, "demo")) == {p for p in pages if p.endswith(".ipynb")}


def test_the_schedule_is_minutes_per_page_and_no_entry(tmp_path: Path) -> None:
    root = _tiny_root(tmp_path, {"book/x/p.ipynb": {"demo": {"n": 1}},
                                 "schedule": {"demo": {"book/x/p.ipynb": 2.5}, "paper": None}})
    assert read_profiles(root) == {"book/x/p.ipynb": {"demo": {"n": 1}}}
    assert expected_minutes(root, "demo") == {"book/x/p.ipynb": 2.5}
    assert expected_minutes(root, "paper") == {}
    for i, bad in enumerate(({"demo": {"cbam_vgg": 3}}, {"demo": {"book/x/p.ipynb": -1}},
                             {"demo": {"book/x/p.ipynb": "long"}}, {"demo": [1]})):
        with pytest.raises(ProfileError, match="schedule"):
            expected_minutes(_tiny_root(tmp_path / str(i), {"schedule": bad}), "demo")


def _tiny_root(tmp_path: Path, entry: dict) -> Path:
    (tmp_path / "book").mkdir(parents=True)
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/intro\n")
    (tmp_path / "book/profiles.yml").write_text(yaml.safe_dump(entry))
    return tmp_path


def test_for_profile_reads_the_chapter_entry_and_refuses_bad_ones(tmp_path: Path) -> None:
    from fer.experiments import msanet as M

    root = _tiny_root(tmp_path, {"msanet": {"demo": {"epochs": 7, "seeds": [3, 4]}}})
    s = M.Setup.for_profile("demo", root=root, lr=0.5)
    assert (s.epochs, s.seeds, s.lr, s.profile) == (7, (3, 4), 0.5, "demo")
    assert s.width == M.Setup().width  # left out: the default
    with pytest.raises(ProfileError, match="no 'paper' entry for the chapter 'msanet'"):
        M.Setup.for_profile("paper", root=root)
    bad = _tiny_root(tmp_path / "b", {"msanet": {"demo": {"epoch": 7}}})
    with pytest.raises(ProfileError, match="sets epoch, which .*Setup has no field"):
        M.Setup.for_profile("demo", root=bad)
    with pytest.raises(ProfileError, match="unknown profile"):
        chapter_entry("msanet", "full", root)


def test_find_root_prefers_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _tiny_root(tmp_path, {})
    monkeypatch.setenv("FER_BOOK_ROOT", str(root))
    assert find_root() == root.resolve()
    monkeypatch.delenv("FER_BOOK_ROOT")
    monkeypatch.chdir(tmp_path.parent)
    assert find_root() == REPO_ROOT.resolve()  # the checkout this package runs from


def test_chapter_entry_is_part_of_the_page_cache_key(tmp_path: Path) -> None:
    """Editing a chapter entry re-executes that chapter's pages and no other."""
    import shutil

    root = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "book", root / "book", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy(REPO_ROOT / name, root / name)
    paths = book.BookPaths(root)
    pages = _pages()

    def keys() -> dict[str, str]:
        jobs = book._plan(paths, pages, "demo", None, None, REPO_ROOT / "fer")
        return {job.rel.as_posix(): job.key for job in jobs}

    before = keys()
    profiles = yaml.safe_load((root / "book/profiles.yml").read_text())
    profiles["msanet"]["demo"]["epochs"] += 1
    (root / "book/profiles.yml").write_text(yaml.safe_dump(profiles))
    after = keys()
    changed = sorted(k for k in before if before[k] != after[k])
    # the chapter's pages, and the pages outside it that name it (the comparison of all five)
    assert changed == sorted(p.as_posix() for p in pages if "msanet" in book.page_chapters(root, p))
    assert "book/beyond/compare.ipynb" in changed and "book/beyond/photo.ipynb" not in changed
    # a page outside the chapters re-executes with the chapters it names (notebook metadata fer_chapters)
    users = {p.as_posix() for p in pages if "cbam_vgg" in book.page_chapters(root, p)}
    assert "book/beyond/photo.ipynb" in users
    profiles["cbam_vgg"]["demo"]["lr"] *= 2
    (root / "book/profiles.yml").write_text(yaml.safe_dump(profiles))
    again = keys()
    assert sorted(k for k in after if after[k] != again[k]) == sorted(users)


def test_a_page_outside_the_chapters_is_checked_for_the_weights_of_the_chapters_it_names(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FER_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    paths = book.BookPaths(REPO_ROOT)
    missing = {f.path.name for f in book.missing_weight_files(paths, [Path("book/beyond/photo.ipynb")], "paper")}
    assert "vgg_face_dag.pth" in missing  # the CBAM chapter's, which the page names
    assert not missing & {"resnet18-f37072fd.pth", "vgg11-8a719046.pth"}  # MSA-Net's and the masked chapter's
