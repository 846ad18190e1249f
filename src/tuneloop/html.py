"""Self-contained HTML reports: one file, inline CSS, plots as inline PNG, readable offline.

Every stage's report (gate, run card, eval, export, summary) is built from these pieces:

    html = page("Data gate r0001", [
        section("Counts", table([{"file": "train.jsonl", "rows": 120}])),
        section("Lengths", plot(lambda ax: ax.hist(lengths, bins=30), title="tokens per row")),
    ])
    files.write_text(path, html)
"""

from __future__ import annotations

import base64
import html as _html
import io
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:1100px;color:#1d1d1f;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}td,th{border:1px solid #ddd;padding:.3rem .6rem;
vertical-align:top;text-align:left}th{background:#f5f5f7}td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{white-space:pre-wrap;word-break:break-word;margin:0;font-size:.82rem;max-width:420px}
.ok{color:#1a7f37;font-weight:600}.bad{color:#cf222e;font-weight:600}.muted{color:#6e6e73}
img{max-width:100%}.kv td:first-child{font-weight:600}
"""


def escape(value: Any) -> str:
    return _html.escape("" if value is None else str(value))


def page(title: str, sections: Iterable[str], subtitle: str = "") -> str:
    body = "\n".join(sections)
    sub = f'<p class="muted">{escape(subtitle)}</p>' if subtitle else ""
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>{sub}\n{body}\n</body></html>\n"
    )


def section(title: str, *content: str) -> str:
    return f"<h2>{escape(title)}</h2>\n" + "\n".join(content)


def paragraph(text: str, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return f"<p{cls}>{escape(text)}</p>"


def link(href: str, text: str) -> str:
    return f'<a href="{escape(href)}">{escape(text)}</a>'


def status(ok: bool, yes: str = "pass", no: str = "fail") -> str:
    return f'<span class="{"ok" if ok else "bad"}">{escape(yes if ok else no)}</span>'


def _cell(value: Any, raw: bool) -> str:
    if raw:
        return f"<td>{value}</td>"
    if isinstance(value, float):
        return f'<td class="num">{value:.4g}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value}</td>'
    text = escape(value)
    return f"<td><pre>{text}</pre></td>" if "\n" in text or len(text) > 60 else f"<td>{text}</td>"


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, raw_columns: Iterable[str] = (),
          limit: int | None = None) -> str:
    """An HTML table of dict rows; `raw_columns` hold trusted HTML (links, status badges)."""
    if not rows:
        return '<p class="muted">(none)</p>'
    columns = list(columns or rows[0].keys())
    raw = set(raw_columns)
    shown = rows if limit is None else rows[:limit]
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(_cell(r.get(c, ""), c in raw) for c in columns) + "</tr>" for r in shown)
    more = f'<p class="muted">… {len(rows) - len(shown)} more rows in the JSON files</p>' if len(shown) < len(rows) else ""
    return f"<table><tr>{head}</tr>{body}</table>{more}"


def key_values(values: Mapping[str, Any]) -> str:
    return table([{"key": k, "value": v} for k, v in values.items()], ["key", "value"]).replace("<table>", '<table class="kv">', 1)


def plot(draw: Callable[[Any], Any], title: str = "", width: float = 6.4, height: float = 3.4) -> str:
    """Render a matplotlib drawing (a function of the axes) to an inline PNG <img>."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    try:
        draw(ax)
        if title:
            ax.set_title(title)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{escape(title)}" src="data:image/png;base64,{encoded}">'
