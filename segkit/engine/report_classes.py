"""The per-class sections of a run report: IoU and accuracy per class, and the row-normalised
confusion matrix, both of the latest validation (its ``metrics.jsonl`` record:
``per_class_iou``, ``per_class_acc``, ``confusion``; rows are the ground truth, columns the
prediction)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from segkit.engine.report_markup import esc, metric, note, section, swatch, table_head
from segkit.engine.run_report import ReportData

#: Above this many classes the confusion matrix shows colours only (numbers on hover).
NUMBERED_CLASSES = 30


def classes_section(data: ReportData) -> str:
    """A table with one row per class: IoU (with a bar), accuracy, the IoU at the best
    validation (when that is not the last), the class's share of the labelled pixels and the
    class it is most often taken for."""
    last, best = data.last, data.best
    if last is None:
        return ""
    ious, accs = last.get("per_class_iou", {}), last.get("per_class_acc") or {}
    matrix = last.get("confusion")
    earlier_best = best is not None and best["iter"] != last["iter"]
    head = ["class", "IoU", "accuracy"]
    head += [f"IoU at {best['iter']} (best)"] if earlier_best else []
    head += ["share of pixels", "most often taken for"] if matrix else []
    rows = []
    for index, name in enumerate(data.class_names):
        cells = [
            f'<td class="l">{swatch(data.palette, index)}{esc(name)}</td>',
            metric(ious.get(name), f"iou-{index}", bar=True),
            metric(accs.get(name), f"acc-{index}"),
        ]
        if earlier_best:
            cells.append(metric(best.get("per_class_iou", {}).get(name), f"best-iou-{index}"))
        if matrix:
            cells += _confusion_facts(matrix, index, data.class_names)
        rows.append(f'<tr data-class="{esc(name)}">{"".join(cells)}</tr>')
    missing = "" if accs else note("This run did not record per-class accuracy.")
    table = f'<table id="class-table">{table_head(head)}{"".join(rows)}</table>'
    title = f"Per class, validation at iteration {last['iter']}"
    return section("classes", title, f'{missing}<div class="scroll">{table}</div>')


def _confusion_facts(matrix: list[list[int]], index: int, names: Sequence[str]) -> list[str]:
    """Cells: the share of labelled pixels that are of class ``index``, and the class most
    often predicted for it instead (with the share of its pixels)."""
    total = sum(sum(row) for row in matrix)
    row = matrix[index] if index < len(matrix) else []
    count = sum(row)
    share = f"{100 * count / total:.2f}%" if total else "-"
    wrong = [(value, j) for j, value in enumerate(row) if j != index and value > 0]
    taken = "-"
    if wrong and count:
        value, other = max(wrong)
        taken = f"{esc(names[other])} ({_percent(value / count, 1)})"
    return [f"<td>{share}</td>", f'<td class="l">{taken}</td>']


def confusion_section(data: ReportData) -> str:
    """The confusion matrix as a table of shares of each ground-truth row, shaded by value."""
    last = data.last
    if last is None:
        return ""
    title = "Confusion matrix (row-normalised)"
    matrix = last.get("confusion")
    if not matrix:
        return section("confusion", title, note("This run did not record its confusion matrix."))
    names, palette = data.class_names, data.palette
    numbered = len(names) <= NUMBERED_CLASSES
    columns = "".join(
        f'<th class="v">{swatch(palette, j)}{esc(n)}</th>' for j, n in enumerate(names)
    )
    rows = [f'<tr><th class="l">truth \\ prediction</th>{columns}</tr>']
    for i, row in enumerate(matrix):
        count = sum(row)
        cells = [f'<th class="l">{swatch(palette, i)}{esc(names[i])}</th>']
        for j, value in enumerate(row):
            share = value / count if count else math.nan
            cells.append(_heat_cell(share, value, names[i], names[j], numbered))
        rows.append(f"<tr>{''.join(cells)}</tr>")
    text = (
        f"Validation at iteration {last['iter']}. Each row is a ground-truth class, each "
        "column the class predicted for its pixels; a cell is the percentage of the row's "
        "pixels (hover for the pixel count)."
    )
    table = f'<table class="cm" id="confusion-table">{"".join(rows)}</table>'
    return section(
        "confusion", title, f'<p class="meta">{text}</p><div class="scroll">{table}</div>'
    )


def _percent(share: float, decimals: int) -> str:
    """``share`` in percent; a share that would round to 0 or 100 without being it reads
    ``<0.1%`` or ``>99.9%`` (at ``decimals`` 1), never "never" or "always"."""
    smallest = 10.0**-decimals
    if 0 < 100 * share < smallest / 2:
        return f"<{smallest:.{decimals}f}%"
    if 100 - smallest / 2 <= 100 * share < 100:
        return f">{100 - smallest:.{decimals}f}%"
    return f"{100 * share:.{decimals}f}%"


def _heat_cell(share: float, count: int, truth: str, predicted: str, numbered: bool) -> str:
    """One cell, white (0) to dark blue (1), its exact share in ``data-value``."""
    if math.isnan(share):
        return '<td title="no pixel of this class in the validation set">-</td>'
    colour = f"rgb({round(255 - 217 * share)},{round(255 - 174 * share)},{round(255 - 99 * share)})"
    ink = "#fff" if share > 0.5 else "#1d232a"
    title = f"{truth} predicted as {predicted}: {100 * share:.2f}% ({count} pixels)"
    text = _percent(share, 0).rstrip("%") if numbered and count else ""
    return (
        f'<td data-value="{share!r}" title="{esc(title)}" '
        f'style="background:{colour};color:{ink}">{text}</td>'
    )
