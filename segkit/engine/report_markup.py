"""Small HTML pieces of a run report (:mod:`segkit.engine.report_html`): escaped text,
sections, cards, table cells that carry their exact value, colour swatches, ``data:`` URIs."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Sequence
from typing import Any

#: The page style, inside each page.
STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d232a;
 background:#f4f6f8;margin:0}
main{max-width:1320px;margin:0 auto;padding:20px 28px 40px}
h1{font-size:22px;margin:0 0 4px;word-break:break-all}
h2{font-size:17px;margin:0 0 10px}
section{background:#fff;border:1px solid #dde2e7;border-radius:8px;padding:16px 20px;
 margin:16px 0}
.meta{color:#5b6670;margin:0}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #dde2e7;border-radius:6px;padding:8px 14px;min-width:130px}
.card .k{color:#5b6670;font-size:12px}.card .v{font-size:21px;font-weight:600}
.card .s{color:#5b6670;font-size:12px}
table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{padding:3px 10px;border-bottom:1px solid #eceff2;text-align:right;white-space:nowrap}
th{font-weight:600;background:#f7f8fa}
td.l,th.l{text-align:left}
tr.best td{font-weight:600;background:#eef5ff}
.sw{display:inline-block;width:12px;height:12px;border:1px solid #777;vertical-align:-1px;
 margin-right:6px}
.hatch{background:repeating-linear-gradient(45deg,#000 0 3px,#fff 3px 6px)}
.bar{background:linear-gradient(90deg,#9ecae1 var(--w),transparent var(--w))}
.note{color:#8a6d00}
.scroll{overflow-x:auto}
img.curves{width:100%;max-width:1300px}
pre{background:#f7f8fa;padding:10px;overflow-x:auto;font-size:12px}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 14px;margin:10px 0}
dt{color:#5b6670}dd{margin:0}
dl.settings{grid-template-columns:repeat(auto-fill,minmax(290px,1fr));gap:0 28px}
dl.settings div{display:flex;justify-content:space-between;gap:12px;padding:3px 0;
 border-bottom:1px solid #eceff2}
dl.settings dd{font-weight:600;text-align:right;word-break:break-all}
table.cm td{text-align:center;padding:2px 4px;min-width:26px;border:1px solid #fff}
table.cm th.v{writing-mode:vertical-rl;transform:rotate(180deg);text-align:left;padding:4px 2px}
.grid{display:flex;flex-wrap:wrap;gap:14px}
figure.s{margin:0;border:1px solid #dde2e7;border-radius:6px;padding:8px}
figure.s figcaption{font-size:12px;margin-bottom:6px;max-width:680px;word-break:break-all}
.panels{display:flex;gap:6px}.panels div{text-align:center;font-size:11px;color:#5b6670}
.panels img{display:block;image-rendering:pixelated;border:1px solid #ccc}
.legend span{margin-right:14px;white-space:nowrap}
"""


def esc(value: Any) -> str:
    """``value`` as text safe inside HTML elements and quoted attributes."""
    return html.escape(str(value))


def number(value: Any, default: float) -> float:
    """``value`` as a float, or ``default`` when it is missing or NaN."""
    return float(value) if isinstance(value, float | int) and not math.isnan(value) else default


def section(key: str, title: str, body: str) -> str:
    """``<section id=key>`` with a heading."""
    return f'<section id="{key}"><h2>{esc(title)}</h2>\n{body}\n</section>'


def note(text: str) -> str:
    """A remark about something the page cannot show."""
    return f'<p class="note">{esc(text)}</p>'


def card(key: str, value: str, sub: str) -> str:
    """A key figure of the summary: ``key`` above, ``value`` (markup) large, ``sub`` below."""
    return (
        f'<div class="card"><div class="k">{esc(key)}</div><div class="v">{value}</div>'
        f'<div class="s">{esc(sub)}</div></div>'
    )


def table_head(labels: Iterable[str]) -> str:
    """A header row; the first column is left-aligned."""
    cells = (f'<th class="{"l" if n == 0 else ""}">{esc(x)}</th>' for n, x in enumerate(labels))
    return f"<tr>{''.join(cells)}</tr>"


def metric(value: Any, key: str, *, tag: str = "td", bar: bool = False) -> str:
    """A score in ``tag`` shown with four decimals, its exact value in ``data-value`` and its
    name in ``data-key``; ``-`` when missing; ``bar`` draws it as a bar behind the text."""
    if not isinstance(value, float | int) or math.isnan(value):
        return f'<{tag} data-key="{key}">-</{tag}>'
    style = f' class="bar" style="--w:{100 * value:.1f}%"' if bar else ""
    return f'<{tag} data-key="{key}" data-value="{float(value)!r}"{style}>{value:.4f}</{tag}>'


def swatch(palette: Sequence[Sequence[int]], index: int) -> str:
    """A small square of class ``index``'s colour."""
    r, g, b = (palette[index] if index < len(palette) else (0, 0, 0))[:3]
    return f'<span class="sw" style="background:rgb({r},{g},{b})"></span>'


def data_uri(png: bytes) -> str:
    """PNG file bytes as a ``data:`` URI, so the page needs no other file."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
