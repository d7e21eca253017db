"""fer.plots figure helpers, headless: figures, axes, cells and tables."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from fer import metrics, plots  # noqa: E402

CLASSES = ("neutral", "happy", "sad")


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _texts(ax: plt.Axes) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_confusion_matrix_percentages_and_labels():
    cm = np.array([[8, 2, 0], [1, 3, 0], [0, 0, 5]])
    fig = plots.confusion_matrix(cm, CLASSES, title="val")
    assert isinstance(fig, plt.Figure)
    assert len(fig.axes) == 2  # heat map + colour bar
    ax = fig.axes[0]
    assert _texts(ax) == ["80%", "20%", "0%", "25%", "75%", "0%", "0%", "0%", "100%"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["neutral (n=10)", "happy (n=4)", "sad (n=5)"]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(CLASSES)
    assert ax.get_title() == "val" and ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"


def test_confusion_matrix_counts_report_and_given_axes():
    rep = metrics.classification_report([0, 1, 1, 0], [0, 1, 0, 0], CLASSES)  # "sad" absent
    fig, ax = plt.subplots()
    out = plots.confusion_matrix(rep, ax=ax, normalise=False, colorbar=False)
    assert out is fig and len(fig.axes) == 1
    assert _texts(ax) == ["2", "1", "0", "0", "1", "0", "0", "0", "0"]
    fig = plots.confusion_matrix(rep)  # the absent class's row stays blank
    assert len(fig.axes[0].texts) == 6
    with pytest.raises(ValueError, match="2 class names"):
        plots.confusion_matrix(torch.eye(3), CLASSES[:2])


def _history() -> list[dict]:
    rows = []
    for e in range(1, 7):
        stage = 0 if e <= 3 else 1
        rows.append({"epoch": e, "stage": stage, "stage_name": ["head", "finetune"][stage],
                     "train_loss": 2.0 / e, "train_accuracy": 0.1 * e,
                     "val_loss": 2.2 / e if e % 2 == 0 else None,
                     "val_accuracy": 0.09 * e if e % 2 == 0 else None, "lr": 0.01})
    return rows


def test_training_curves_panels_lines_and_stage_marks():
    fig = plots.training_curves(_history())
    assert isinstance(fig, plt.Figure) and len(fig.axes) == 2
    loss, acc = fig.axes
    assert loss.get_ylabel() == "loss" and acc.get_ylabel() == "accuracy"
    lines = [ln for ln in loss.get_lines() if ln.get_label() in ("train", "val")]
    assert [ln.get_label() for ln in lines] == ["train", "val"]
    assert len(lines[0].get_xdata()) == 6 and list(lines[1].get_xdata()) == [2, 4, 6]  # None skipped
    vlines = [ln for ln in loss.get_lines() if ln.get_linestyle() == "--"]
    assert len(vlines) == 1 and vlines[0].get_xdata()[0] == pytest.approx(3.5)
    assert "finetune" in _texts(loss) and "head" in _texts(loss)


def test_training_curves_plots_what_is_present():
    fig = plots.training_curves(pd.DataFrame(_history()).set_index("epoch"),
                                metrics=("loss", "mean_class_accuracy", "lr"))
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "lr"]
    with pytest.raises(ValueError, match="none of the metrics"):
        plots.training_curves(_history(), metrics=("f1",))


def _images(n: int = 3) -> torch.Tensor:
    return (torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)


def test_cam_grid_single_row():
    cams = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    fig = plots.cam_grid(_images(), cams, titles=["a", "b", "c"])
    assert isinstance(fig, plt.Figure) and len(fig.axes) == 3
    assert [ax.get_title() for ax in fig.axes] == ["a", "b", "c"]
    assert all(len(ax.get_images()) == 2 for ax in fig.axes)  # image + heat map


def test_cam_grid_methods_as_rows_with_inputs_and_contours():
    rng = np.random.default_rng(0)
    cams = {"Grad-CAM": rng.random((3, 32, 32)), "Grad-CAM++": rng.random((3, 4, 4))}
    rel = np.zeros((3, 32, 32))
    rel[:, 8:24, 8:24] = 1.0
    fig = plots.cam_grid(_images(), cams, show_images=True, contours=rel, titles=["x", "y", "z"])
    assert len(fig.axes) == 9
    assert [fig.axes[k].get_ylabel() for k in (0, 3, 6)] == ["input", "Grad-CAM", "Grad-CAM++"]
    assert [len(ax.get_images()) for ax in fig.axes] == [1] * 3 + [2] * 6
    assert all(ax.collections for ax in fig.axes)  # contour drawn on every cell
    assert fig.axes[0].get_xlim() == pytest.approx((-0.5, 31.5))
    with pytest.raises(ValueError, match="has 2 maps for 3 images"):
        plots.cam_grid(_images(), {"bad": rng.random((2, 4, 4))})


def test_image_grid_accepts_none_heatmaps():
    fig = plots.image_grid(_images(2), heatmaps=[None, np.ones((4, 4))])
    assert [len(ax.get_images()) for ax in fig.axes] == [1, 2]


def test_paper_vs_ours_table():
    rows = [{"model": "CBAM-VGG", "dataset": "FER2013", "paper": 69.4, "ours": 41.3},
            {"model": "MANet", "dataset": "RAF-DB", "paper": 88.4, "ours": None}]
    df = plots.paper_vs_ours(rows, direct=True, caption="paper profile, FER2013", styled=False)
    assert isinstance(df, pd.DataFrame) and df.shape == (2, 5)
    assert list(df.columns) == ["model", "dataset", "paper", "ours", "difference"]
    assert df.loc[0, "difference"] == pytest.approx(41.3 - 69.4) and np.isnan(df.loc[1, "difference"])
    assert df.attrs["caption"] == "paper profile, FER2013"
    styler = plots.paper_vs_ours(rows, direct=True, caption="paper profile, FER2013")
    html = styler.to_html()
    assert "paper profile, FER2013" in html and "-28.1" in html and "—" in html
    assert html.count("<tr>") == 3  # header + 2 rows
    with pytest.raises(ValueError, match="lack one of the keys"):
        plots.paper_vs_ours([{"model": "x", "paper": 1.0}], direct=True)


def test_paper_vs_ours_on_a_stand_in_compares_gains_not_levels():
    rows = [{"model": m, "split": s, "paper": p + (1 if s == "test" else 0), "ours": o + (2 if s == "test" else 0)}
            for s in ("val", "test") for m, p, o in (("g", 68.0, 30.0), ("cbam", 70.0, 29.0), ("a", 20.0, 25.0))]
    df = plots.paper_vs_ours(rows, direct=False, baseline="g", within=("split",), styled=False)
    assert "difference" not in df.columns  # a real dataset against a stand-in measures nothing
    cbam = df[df["model"] == "cbam"].set_index("split")
    assert cbam.loc["val", "paper gain"] == pytest.approx(2.0) and cbam.loc["test", "our gain"] == pytest.approx(-1.0)
    assert (df[df["model"] == "g"][["paper gain", "our gain"]] == 0).all().all()
    html = plots.paper_vs_ours(rows, direct=False, baseline="g", within=("split",)).to_html()
    assert "+2.0" in html and "-1.0" in html and "difference" not in html
    with pytest.raises(ValueError, match="has 2 rows: name the columns"):
        plots.paper_vs_ours(rows, direct=False, baseline="g")
    with pytest.raises(ValueError, match="'vgg' is not a model of the table"):
        plots.paper_vs_ours(rows, direct=False, baseline="vgg", within=("split",))
    # a group without the baseline's number: no gain there
    rows[0]["ours"] = None
    df = plots.paper_vs_ours(rows, direct=False, baseline="g", within=("split",), styled=False)
    assert df[df["split"] == "val"]["our gain"].isna().all() and df[df["split"] == "val"]["paper gain"].notna().all()
