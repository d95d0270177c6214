"""The HTML of a run report: :func:`render` turns :class:`~segkit.engine.run_report.ReportData`
into one page with its style and pictures inside (PNG ``data:`` URIs), so it opens offline
and can be mailed or archived as one file. No script runs in it.

Sections, by ``id``: ``summary`` (best and last scores, status, time), ``recipe``, ``curves``,
``classes`` (per-class IoU and accuracy), ``confusion`` (row-normalised), ``samples`` (the
worst and best validation images), ``validations`` (every validation). Scores are shown with
four decimals; each score's element carries the exact value in ``data-value``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from segkit.engine.report_classes import classes_section, confusion_section
from segkit.engine.report_markup import (
    STYLE,
    card,
    esc,
    metric,
    note,
    number,
    section,
    table_head,
)
from segkit.engine.report_pictures import curves_section, samples_section
from segkit.engine.run_report import REPORT_FILE, ReportData, collect
from segkit.files import write_atomically

#: Recipe values shown first (``section.key``), when set; the whole config.yaml follows.
KEY_SETTINGS = (
    "model.name", "model.backbone", "model.output_stride", "model.aux", "model.jpu",
    "model.attention", "model.pretrained_backbone", "data.dataset", "data.root", "data.crop_size",
    "data.scale_range", "train.iters", "train.epochs", "train.batch_size", "train.optimizer",
    "train.lr", "train.lr_policy", "train.weight_decay", "train.backbone_lr_mult", "train.loss",
    "train.class_weights", "train.aux_weight", "train.freeze_backbone_iters", "train.init_from",
    "train.amp", "train.seed", "eval.mode", "eval.window", "eval.scales", "eval.flip",
)  # fmt: skip
#: The scores of a validation record, and their names on the page.
SCORES = {
    "mIoU": "mIoU",
    "pixel_acc": "pixel accuracy",
    "mean_acc": "mean accuracy",
    "fw_iou": "frequency-weighted IoU",
}


def render(data: ReportData) -> str:
    """The report page of ``data`` as HTML text."""
    name = esc(data.folder.name)
    parts = [
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{name} - segkit run report</title>",
        f"<style>{STYLE}</style></head>",
        f"<body><main>\n<h1>{name}</h1>",
        f'<p class="meta">{" · ".join(esc(item) for item in _header(data))}</p>',
        _summary(data),
        _recipe(data),
        curves_section(data),
        classes_section(data),
        confusion_section(data),
        samples_section(data),
        _validations(data),
        "</main></body></html>",
    ]
    return "\n".join(part for part in parts if part) + "\n"


def write_report(run_dir: Path, out: Path | None = None, **known: Any) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default ``run_dir/report.html``),
    atomically; ``known`` goes to :func:`collect`. Returns the file written."""
    out = out if out is not None else run_dir / REPORT_FILE
    text = render(collect(run_dir, **known)).encode()
    write_atomically(out, lambda handle: handle.write(text))
    return out


def _header(data: ReportData) -> list[str]:
    device = data.log.summary.get("device", "").split(",")[0]
    items = [str(data.folder), f"segkit {data.version}"]
    items += [f"device {device}"] if device else []
    items += [f"host {data.host}"] if data.host else []
    return [*items, f"report written {data.written:%Y-%m-%d %H:%M:%S}"]


def _summary(data: ReportData) -> str:
    best, last = data.best, data.last
    if last is None:
        return section("summary", "Summary", note("No validation yet."))
    total = f" of {data.total_iters}" if data.total_iters else ""
    cards = []
    if best is not None:
        value = metric(best["mIoU"], "best-mIoU", tag="span")
        cards.append(card("best mIoU", value, f"at iteration {best['iter']}"))
    value = metric(last.get("mIoU"), "last-mIoU", tag="span")
    cards.append(card("last mIoU", value, f"at iteration {last['iter']}"))
    for key in ("pixel_acc", "mean_acc"):
        cards.append(card(SCORES[key], metric(last.get(key), f"last-{key}", tag="span"), "last"))
    cards.append(card("iterations", f"{last['iter']}{total}", data.log.status))
    seconds = training_seconds(data.records)
    if seconds > 0:
        cards.append(card("training time", duration(seconds), f"{last['iter'] / seconds:.2f} it/s"))
    log = data.log
    if log.started and log.ended:
        wall = duration((log.ended - log.started).total_seconds())
        sessions = f", {log.sessions} sessions" if log.sessions > 1 else ""
        cards.append(card("wall clock", wall, f"from {log.started:%Y-%m-%d %H:%M}{sessions}"))
    return section("summary", "Summary", f'<div class="cards">{"".join(cards)}</div>')


def _recipe(data: ReportData) -> str:
    items = []
    for key in KEY_SETTINGS:
        part, _, name = key.partition(".")
        value = data.config.get(part, {}).get(name)
        if value is not None and value != []:
            items.append(f"<div><dt>{key}</dt><dd>{esc(_show(value))}</dd></div>")
    body = [f'<dl class="settings" id="key-settings">{"".join(items)}</dl>'] if items else []
    facts = [*data.log.summary.items(), *([("command", data.command)] if data.command else [])]
    if facts:
        listed = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts)
        body.append(f"<dl>{listed}</dl>")
    if data.config_text:
        text = esc(data.config_text)
        body.append(f"<details><summary>config.yaml</summary><pre>{text}</pre></details>")
    else:
        body.append(note("The run folder has no config.yaml."))
    return section("recipe", "Recipe", "\n".join(body))


def _validations(data: ReportData) -> str:
    if not data.records:
        return ""
    best = data.best
    head = ["iteration", *SCORES.values(), "training loss", "learning rate", "elapsed (s)"]
    rows = []
    for record in data.records:
        cells = [f"<td>{record['iter']}</td>"]
        cells += [metric(record.get(key), key) for key in SCORES]
        loss, lr = record.get("loss"), record.get("lr")
        cells.append(f"<td>{loss:.4f}</td>" if isinstance(loss, float) else "<td>-</td>")
        cells.append(f"<td>{lr:.2e}</td>" if isinstance(lr, float | int) else "<td>-</td>")
        cells.append(f"<td>{esc(record.get('seconds', '-'))}</td>")
        mark = ' class="best"' if record is best else ""
        rows.append(f'<tr{mark} data-iter="{record["iter"]}">{"".join(cells)}</tr>')
    table = f'<table id="validation-table">{table_head(head)}{"".join(rows)}</table>'
    shown = " open" if len(rows) <= 25 else ""
    summary = f"{len(rows)} validation(s), the best highlighted"
    body = (
        f'<details{shown}><summary>{summary}</summary><div class="scroll">{table}</div></details>'
    )
    return section("validations", "Validations", body)


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def training_seconds(records: Sequence[dict[str, Any]]) -> float:
    """Seconds spent training: a record's ``seconds`` counts from the start of its session,
    so a drop marks a resume, and the sessions' last values add up."""
    total, previous = 0.0, 0.0
    for record in records:
        seconds = number(record.get("seconds"), 0.0)
        if seconds < previous:
            total += previous
        previous = seconds
    return total + previous


def duration(seconds: float) -> str:
    """``42 s``, ``4 min 05 s``, ``2 h 07 min``."""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"
