"""The pictures of a run report: the training curves (matplotlib) and the grid of the best
and worst validation images (drawn by :mod:`segkit.visualize`), embedded as PNG ``data:``
URIs."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator
from PIL import Image

from segkit.engine.report_markup import data_uri, esc, note, section, swatch
from segkit.engine.run_report import ReportData
from segkit.engine.val_samples import Thumbnail
from segkit.visualize import colour_mask, error_map, hatch

# Metric -> line colour in the validation panel.
VAL_LINES = {"mIoU": "#1f77b4", "pixel_acc": "#2ca02c", "mean_acc": "#ff7f0e"}
VAL_NAMES = {"mIoU": "mIoU", "pixel_acc": "pixel accuracy", "mean_acc": "mean accuracy"}


def curves_section(data: ReportData) -> str:
    """The training and validation curves as one picture."""
    if not data.records and not data.curves.loss:
        return section("curves", "Curves", note("Nothing logged yet."))
    png = curves_png(data.curves.loss, data.curves.lr, data.records)
    return section("curves", "Curves", f'<img class="curves" alt="curves" src="{data_uri(png)}">')


def samples_section(data: ReportData) -> str:
    """A legend of the classes, then the worst and the best validation images, each as a row
    of :func:`sample_panels`."""
    picks = data.picks
    title = "Validation samples"
    if picks is None or not (picks.best or picks.worst):
        return section("samples", title, note("No validation samples recorded."))
    names = enumerate(data.class_names)
    legend = "".join(f"<span>{swatch(data.palette, i)}{esc(n)}</span>" for i, n in names)
    legend += '<span><span class="sw hatch"></span>ignored</span>'
    legend += '<span><span class="sw" style="background:#f00"></span>wrong (errors)</span>'
    body = [f'<p class="legend">{legend}</p>']
    for group, thumbs in (("worst", picks.worst), ("best", picks.best)):
        if thumbs:
            body.append(f"<h3>The {len(thumbs)} {group} by mIoU</h3>")
            figures = "".join(_figure(group, n, t, data) for n, t in enumerate(thumbs, start=1))
            body.append(f'<div class="grid" id="{group}">{figures}</div>')
    return section("samples", f"{title}, iteration {picks.iteration}", "\n".join(body))


def _figure(group: str, number: int, thumb: Thumbnail, data: ReportData) -> str:
    width = thumb.image.shape[1]
    shown = width * max(1, 160 // width)  # small images grow by a whole factor: even pixels
    panels = "".join(
        f'<div><img alt="{esc(label)}" width="{shown}" src="{data_uri(png_bytes(picture))}">'
        f"{esc(label)}</div>"
        for label, picture in sample_panels(thumb, data.palette, data.ignore_index).items()
    )
    caption = (
        f"{group} #{number}: {esc(thumb.name)} · mIoU {thumb.miou:.4f} · "
        f"pixel accuracy {thumb.pixel_acc:.4f}"
    )
    return (
        f'<figure class="s" data-miou="{thumb.miou!r}" data-index="{thumb.index}">'
        f'<figcaption>{caption}</figcaption><div class="panels">{panels}</div></figure>'
    )


def png_bytes(array: np.ndarray) -> bytes:
    """An ``H x W x 3`` uint8 array as PNG file bytes."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def sample_panels(
    thumb: Thumbnail, palette: Sequence[Sequence[int]], ignore_index: int
) -> dict[str, np.ndarray]:
    """The four pictures of a sample row: ``input``, ``ground truth`` (ignored pixels
    hatched), ``prediction`` and ``errors`` (:func:`~segkit.visualize.error_map`)."""
    ignored = thumb.truth == ignore_index
    return {
        "input": thumb.image,
        "ground truth": hatch(colour_mask(thumb.truth, palette), ignored),
        "prediction": colour_mask(thumb.prediction, palette),
        "errors": error_map(thumb.image, thumb.truth, thumb.prediction, ignore_index=ignore_index),
    }


def curves_png(
    loss: Sequence[tuple[int, float]],
    lr: Sequence[tuple[int, float]],
    records: Sequence[dict[str, Any]],
) -> bytes:
    """Three panels side by side: training loss (each logged value, with a moving average
    over them when there are many, and the mean loss between validations as dots; a log
    scale when it falls tenfold), learning rate, and the validation metrics with the best
    mIoU starred. The learning rate falls back on the validation records' ``lr`` when the
    run logged no training scalars."""
    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(13, 3.4))
    valid = [r for r in records if isinstance(r.get("loss"), float | int)]
    if loss:
        its, values = zip(*loss, strict=True)
        many = len(values) >= 20
        faint = {"lw": 0.6, "alpha": 0.35} if many else {"lw": 1.2}
        left.plot(its, values, color="#1f77b4", label="logged", **faint)
        if many:
            left.plot(its, _smooth(values), lw=1.4, color="#1f77b4", label="moving average")
    if valid:
        left.plot(
            [r["iter"] for r in valid],
            [r["loss"] for r in valid],
            "o",
            ms=3.5,
            color="#d62728",
            label="mean between validations",
        )
    shown = [v for _, v in loss] + [r["loss"] for r in valid]
    if shown and min(shown) > 0 and max(shown) / min(shown) >= 10:
        left.set_yscale("log")
    if shown:
        left.legend(fontsize=7, frameon=False)
    left.set(title="training loss", xlabel="iteration")

    lr_points = list(lr) or [(r["iter"], r["lr"]) for r in records if r.get("lr") is not None]
    if lr_points:
        its, values = zip(*lr_points, strict=True)
        middle.plot(its, values, lw=1.2, color="#9467bd", marker="o" if len(its) < 3 else None)
    middle.set(title="learning rate", xlabel="iteration")
    middle.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))

    its = [r["iter"] for r in records]
    for key, colour in VAL_LINES.items():
        values = [r.get(key) for r in records]
        if any(isinstance(v, float) for v in values):
            right.plot(its, values, marker="o", ms=3.5, lw=1.2, color=colour, label=VAL_NAMES[key])
    scored = [r for r in records if isinstance(r.get("mIoU"), float) and r["mIoU"] == r["mIoU"]]
    if scored:
        best = max(scored, key=lambda r: r["mIoU"])
        right.plot(
            [best["iter"]],
            [best["mIoU"]],
            "*",
            ms=13,
            color="#1f77b4",
            mec="black",
            mew=0.6,
            label=f"best mIoU {best['mIoU']:.4f}",
        )
        right.legend(fontsize=7, frameon=False, loc="best")
    right.set(title="validation", xlabel="iteration", ylim=(0, 1))
    for ax in (left, middle, right):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3, lw=0.5)
        ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def _smooth(values: Sequence[float], weight: float | None = None) -> list[float]:
    """Exponential moving average (TensorBoard's smoothing), debiased at the start; the weight
    follows the number of points so a long run is smoothed over about 2% of it."""
    if weight is None:
        weight = min(0.98, 1 - 1 / max(2.0, len(values) / 50))
    out, last, norm = [], 0.0, 0.0
    for value in values:
        last = weight * last + (1 - weight) * value
        norm = weight * norm + (1 - weight)
        out.append(last / norm)
    return out
