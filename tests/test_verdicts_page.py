"""The claims a page tests (fer.experiments.claims.claims_table), gathered by the book runner into
the report and the summary page (fer.book.page_claims, write_verdicts_page; issue 17 §5)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nbformat
import pytest

from fer import REPO_ROOT, book
from fer.experiments import claims as C


def _claims():
    return [{"claim": "MAPNet beats the baseline | RAF-DB", "paper": 1.71,
             "verdict": C.claim_verdict([72.0, 73.0, 74.0], [70.0, 70.5, 71.5], claim="MAPNet beats the baseline | RAF-DB")},
            {"claim": "FECN beats ABN", "verdict": C.claim_verdict([0.1, -0.2, 0.0], claim="FECN beats ABN")}]


def _page(path: Path, *html: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("x", outputs=[nbformat.v4.new_output(
        "display_data", data={"text/html": h, "text/plain": "<HTML>"})]) for h in html]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))
    return path


def test_claims_table_shows_each_claim_and_the_rule():
    html = C.claims_table(_claims(), paper="MAPNet").data
    assert "<strong>holds</strong>" in html and "<strong>does not hold</strong>" in html
    assert "+1.7 points" in html and "+2.3 ± 0.2 points" in html and "—" in html  # FECN/ABN: no paper number
    shown_rule = html.split("</table>")[1]
    assert "mean minus 2 SE is above 0" in shown_rule and "**" not in shown_rule
    records = C.claim_records(_claims(), paper="MAPNet")
    assert [r["verdict"] for r in records] == ["holds", "does not hold"] and records[0]["paper_value"] == 1.71
    assert records[0]["seeds"] == 3 and records[0]["rule"] == C.VERDICT_RULE


def test_the_book_gathers_claims_into_the_report_and_the_verdicts_page(tmp_path):
    paths = book.BookPaths(tmp_path)
    a = _page(paths.src / "book/mapnet/ablation.ipynb", C.claims_table(_claims()[:1], paper="MAPNet").data)
    b = _page(paths.src / "book/masked/shared.ipynb", "<p>no claims here</p>",
              C.claims_table(_claims()[1:], paper="Masked FER").data)
    assert [c["claim"] for c in book.page_claims(a)] == ["MAPNet beats the baseline | RAF-DB"]
    assert book.page_claims(_page(tmp_path / "none.ipynb", "<p>x</p>")) == []
    results = [book.NotebookResult("book/mapnet/ablation.ipynb", "demo", {}, claims=book.page_claims(a),
                                   runs=["r1", "r2", "r3"], not_learned=["r2"]),
               book.NotebookResult("book/masked/shared.ipynb", "demo", {}, claims=book.page_claims(b))]

    report = book.write_report(paths, "demo", None, results, 1.0)
    assert [(c["page"], c["verdict"]) for c in report["claims"]] == [
        ("book/mapnet/ablation.ipynb", "holds"), ("book/masked/shared.ipynb", "does not hold")]

    assert book.write_verdicts_page(paths, results, "demo") is None  # a book without the page
    staged = paths.src / book.VERDICTS_PAGE
    staged.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO_ROOT / book.VERDICTS_PAGE, staged)
    assert book.write_verdicts_page(paths, results, "demo") == staged
    text = staged.read_text()
    assert book.VERDICTS_MARKER not in text and text.startswith("# Every claim the book tests")
    assert "2 claims tested with the `demo` profile: 1 holds, 1 does not hold, 0 inconclusive." in text
    assert ("| MAPNet | MAPNet beats the baseline \\| RAF-DB | +1.7 points | +2.3 ± 0.2 points | 3 | **holds** "
            "| 2 of 3 | [mapnet/ablation](../mapnet/ablation.ipynb) |") in text
    assert "| Masked FER | FECN beats ABN | — |" in text and "**The rule.** A claimed gain" in text
    assert "| **does not hold** | — | [masked/shared]" in text  # a page naming no runs
    assert C.mean_se_text(2.0, float("nan")) == "+2.0 points (one seed: no SE)"
    assert C.mean_se_text(-0.25, 0.5, "%") == "-0.2 ± 0.5%"
    assert "**Runs that did not learn.** 1 of 2 verdicts come from pages where some runs did not learn" in text

    shutil.copy(REPO_ROOT / book.VERDICTS_PAGE, staged)  # staging copies the page afresh on every run
    book.write_verdicts_page(paths, results, "paper", dry_run=True)
    assert "Dry run (`--dry-run`)" not in text and "Dry run (`--dry-run`)" in staged.read_text()

    staged.write_text("# no marker\n")
    with pytest.raises(book.BookError, match="lacks the line"):
        book.write_verdicts_page(paths, results, "demo")
    staged.write_text(f"# Verdicts\n\n{book.VERDICTS_MARKER}\n")
    book.write_verdicts_page(paths, [], "demo")
    assert "No page of this build (`demo` profile) tested a claim" in staged.read_text()


def test_the_verdicts_page_is_in_the_book():
    assert book.VERDICTS_PAGE in book.read_toc(REPO_ROOT)
    assert book.VERDICTS_MARKER in (REPO_ROOT / book.VERDICTS_PAGE).read_text()
