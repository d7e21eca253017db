"""The real-datasets page, run as the `paper` profile would, on fixture copies of the datasets."""
from __future__ import annotations

import json
from pathlib import Path

import papermill as pm

import fixtures_datasets as fx

from fer import REPO_ROOT


def test_real_datasets_page_reads_your_copies(tmp_path: Path):
    root = tmp_path / "data"
    fx.write_rafdb(root / "rafdb")
    fx.write_fer2013(root / "fer2013")
    fx.write_fedro(root / "fedro")
    out = tmp_path / "real.ipynb"
    pm.execute_notebook(str(REPO_ROOT / "book" / "datasets" / "real.ipynb"), str(out),
                        parameters={"profile": "paper", "data_root": str(root), "n_show": 3},
                        kernel_name="python3", cwd=str(tmp_path), progress_bar=False)
    text = json.dumps(json.loads(out.read_text())["cells"])
    assert "real datasets found: ['fedro', 'fer2013', 'rafdb']" in text
    assert "affectnet: not found" in text
    assert "rafdb: your copy, 14 images" in text and "affectnet: SynFER affectnet" in text
