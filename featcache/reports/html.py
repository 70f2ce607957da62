"""report.html: report.md as one self-contained page (every image inlined as base64, the styles in the page),
under a header saying which command made it, with which featcache, when, and on how many spectra.

The Markdown featcache writes is a small dialect (headings, paragraphs, pipe tables, bullet lists, images,
bold and code spans), so it is converted here rather than with a Markdown library the package would have to
depend on.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path
from typing import Any

from ..common.files import write_text

STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1180px; margin: 0 auto;
       padding: 0 24px 48px; color: #1d1d1f; }
header { background: #f3f4f8; border-bottom: 1px solid #d8dbe5; margin: 0 -24px 24px; padding: 16px 24px; }
header h1 { margin: 0 0 6px; font-size: 22px; }
header dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 0; font-size: 13px; }
header dt { color: #5b6070; } header dd { margin: 0; }
h1 { font-size: 22px; border-bottom: 1px solid #e3e5ec; padding-bottom: 4px; margin-top: 32px; }
h2 { font-size: 19px; margin-top: 28px; } h3 { font-size: 16px; }
table { border-collapse: collapse; margin: 12px 0; font-size: 13px; display: block; overflow-x: auto; }
th, td { border: 1px solid #d8dbe5; padding: 4px 8px; } th { background: #f3f4f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code { background: #f3f4f8; padding: 1px 4px; border-radius: 3px; font-size: 90%; }
figure { margin: 16px 0 28px; } figure img { max-width: 100%; border: 1px solid #e3e5ec; }
figcaption { color: #5b6070; font-size: 13px; }
"""


def _inline(text: str) -> str:
    """Escape, then code spans, bold and links."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) >= 2:
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        escaped = html.escape(part, quote=False)
        escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
        escaped = re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", r'<a href="\2">\1</a>', escaped)
        out.append(escaped)
    return "".join(out)


def _image(alt: str, src: str, folder: Path) -> str:
    path = folder / src
    if path.is_file() and path.suffix.lower() == ".png":
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        src_attr = f"data:image/png;base64,{data}"
    else:  # not beside the report: a link a reader can follow
        src_attr = html.escape(src)
    return (f'<figure><img src="{src_attr}" alt="{html.escape(alt)}"><figcaption>{html.escape(alt)}'
            "</figcaption></figure>")


def _table(rows: list[str]) -> str:
    cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in rows]
    head, body = cells[0], [r for r in cells[2:]]
    numeric = re.compile(r"^\**[-+]?(\d|—|\.\d)")
    out = ["<table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead><tbody>"]
    for row in body:
        out.append("<tr>" + "".join(f'<td class="num">{_inline(c)}</td>' if numeric.match(c) else
                                    f"<td>{_inline(c)}</td>" for c in row) + "</tr>")
    return "\n".join(out) + "</tbody></table>"


def markdown_to_html(markdown: str, folder: Path) -> str:
    """The body of report.html from report.md (images read from `folder` and inlined)."""
    lines = markdown.splitlines()
    out: list[str] = []
    paragraph: list[str] = []
    items: list[str] = []

    def flush() -> None:
        if paragraph:
            out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
            paragraph.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>")
            items.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        image = re.fullmatch(r"!\[([^\]]*)\]\(([^)\s]+)\)", stripped)
        if not stripped:
            flush()
        elif heading := re.match(r"^(#{1,6})\s+(.*)$", stripped):
            flush()
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif image:
            flush()
            out.append(_image(image.group(1), image.group(2), folder))
        elif stripped.startswith("|"):
            flush()
            rows = []
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(lines[i])
                i += 1
            out.append(_table(rows) if len(rows) >= 2 else f"<p>{_inline(rows[0])}</p>")
            continue
        elif stripped.startswith(("- ", "* ")):
            if paragraph:
                flush()
            items.append(stripped[2:])
        elif items and line.startswith("  "):
            items[-1] += " " + stripped
        else:
            paragraph.append(stripped)
        i += 1
    flush()
    return "\n".join(out)


def write_html(path: Path, markdown: str, folder: Path, header: dict[str, Any]) -> Path:
    """report.html beside report.md: the header (title, command, version, date, data) and the report."""
    title = str(header.get("title") or "featcache report")
    facts = [(name, header[key]) for key, name in (("command", "command"), ("version", "featcache"),
                                                    ("date", "date"), ("data", "data"), ("caches", "caches"))
             if header.get(key)]
    meta = "".join(f"<dt>{html.escape(name)}</dt><dd>{_inline(str(value))}</dd>" for name, value in facts)
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body><header><h1>{html.escape(title)}</h1><dl>{meta}</dl></header>"
            f"<main>{markdown_to_html(markdown, folder)}</main></body></html>\n")
    return write_text(path, page)


def report_header(command: str | None, sources: list[Any], splits: list[str], title: str = "featcache report"
                  ) -> dict[str, Any]:
    """The header facts of a comparison's report.html: its command (as typed, or that it came from Python),
    featcache's version, the date (UTC) and each cache's spectra per split."""
    from datetime import UTC, datetime

    from .._version import __version__

    sizes = []
    for src in sources:
        cache = src.cache
        parts = [f"{split} {cache.n_spectra(split)}" for split in splits if split and split in cache.splits]
        sizes.append(f"`{src.name}`: " + ", ".join(parts) + " spectra")
    return {"title": title, "command": f"`{command}`" if command else "compare() from Python",
            "version": __version__, "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "data": "; ".join(sizes)}
