"""A report as one HTML page with its images beside it (``index.html`` + ``img/*.png``).

Sections are built from small blocks (paragraphs, tables, figures, key figures); the page has
no script and no external resource, so it opens anywhere, offline, and prints.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;
background:#fafafa}
header{background:#233;color:#fff;padding:18px 32px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:0;color:#cdd}nav{padding:8px 32px;background:#eef;font-size:13px}
nav a{margin-right:14px;color:#235}main{padding:8px 32px 40px;max-width:1200px}
section{background:#fff;border:1px solid #ddd;border-radius:6px;padding:12px 20px;
margin:16px 0}h2{font-size:18px;margin:6px 0 10px}h3{font-size:15px;margin:14px 0 6px}
p,li{font-size:14px;line-height:1.45}table{border-collapse:collapse;font-size:13px;
margin:8px 0}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f0f4}td:first-child,th:first-child{text-align:left}
figure{margin:10px 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:12px;color:#555;margin-top:4px}.ok{color:#1a9641;font-weight:600}
.bad{color:#d7191c;font-weight:600}.kpis{display:flex;flex-wrap:wrap;gap:10px;margin:8px 0}
.kpi{border:1px solid #ccd;border-radius:6px;padding:6px 12px;background:#f7f8fc}
.kpi b{display:block;font-size:18px}.kpi span{font-size:12px;color:#555}
pre{background:#f4f4f4;padding:8px;font-size:12px;overflow-x:auto}
"""


def esc(value: Any) -> str:
    return html.escape(str(value))


def fmt(value: Any, digits: int = 3) -> str:
    """Numbers rounded for reading; everything else as text."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "–" if value != value else f"{value:.{digits}f}"
    return str(value)


@dataclass
class Section:
    """One titled part of the report; ``blocks`` are HTML fragments in order."""

    title: str
    anchor: str
    blocks: list[str] = field(default_factory=list)

    def para(self, text: str) -> Section:
        self.blocks.append(f"<p>{text}</p>")
        return self

    def heading(self, text: str) -> Section:
        self.blocks.append(f"<h3>{esc(text)}</h3>")
        return self

    def table(self, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None,
              digits: int = 3) -> Section:
        if not rows:
            return self
        columns = list(columns or rows[0].keys())
        head = "".join(f"<th>{esc(c)}</th>" for c in columns)
        body = "".join("<tr>" + "".join(f"<td>{esc(fmt(r.get(c, ''), digits))}</td>"
                                        for c in columns) + "</tr>" for r in rows)
        self.blocks.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        return self

    def figure(self, path: str | Path, caption: str, root: Path) -> Section:
        rel = Path(path).resolve().relative_to(root.resolve()).as_posix()
        self.blocks.append(f'<figure><img src="{esc(rel)}" alt="{esc(caption)}">'
                           f"<figcaption>{esc(caption)}</figcaption></figure>")
        return self

    def kpis(self, items: Sequence[tuple[str, str]]) -> Section:
        cells = "".join(f'<div class="kpi"><b>{esc(v)}</b><span>{esc(k)}</span></div>'
                        for k, v in items)
        self.blocks.append(f'<div class="kpis">{cells}</div>')
        return self

    def code(self, text: str) -> Section:
        self.blocks.append(f"<pre>{esc(text)}</pre>")
        return self

    def verdict(self, ok: bool, text: str) -> Section:
        self.blocks.append(f'<p class="{"ok" if ok else "bad"}">{esc(text)}</p>')
        return self


def render(title: str, subtitle: str, sections: Sequence[Section],
           data: Mapping[str, Any] | None = None) -> str:
    """The whole page; ``data`` (the run's summary) is embedded as JSON for machines."""
    nav = "".join(f'<a href="#{esc(s.anchor)}">{esc(s.title)}</a>' for s in sections)
    body = "".join(f'<section id="{esc(s.anchor)}"><h2>{esc(s.title)}</h2>{"".join(s.blocks)}'
                   f"</section>" for s in sections)
    embedded = ("" if data is None else '<script type="application/json" id="summary">'
                + json.dumps(data, default=str).replace("</", "<\\/") + "</script>")
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
            f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header><nav>{nav}</nav>"
            f"<main>{body}</main>{embedded}</body></html>")
