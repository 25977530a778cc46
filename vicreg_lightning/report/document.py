"""The report as a document: blocks (headings, paragraphs, tables, figures) rendered to Markdown
and to one self-contained HTML page with the images inlined, and the number format of its
tables."""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Document:
    """A report as blocks, rendered to Markdown and to self-contained HTML (images inlined)."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def text(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.blocks.append(("table", (list(header), [[str(c) for c in row] for row in rows])))

    def figure(self, name: str, caption: str) -> None:
        self.blocks.append(("img", (name, caption)))

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for kind, content in self.blocks:
            if kind == "h2":
                lines += [f"## {content}", ""]
            elif kind == "p":
                lines += [content, ""]
            elif kind == "table":
                header, rows = content
                lines += [_markdown_row(header), "|" + "---|" * len(header)]
                lines += [_markdown_row(row) for row in rows] + [""]
            else:
                name, caption = content
                lines += [f"![{caption}]({name})", "", f"*{caption}*", ""]
        return "\n".join(lines)

    def html(self, folder: Path) -> str:
        def inline(text: str) -> str:
            escaped = html.escape(text)
            escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
            return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", escaped)

        parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>",
                 "<style>body{font-family:sans-serif;max-width:60em;margin:auto}table{border-collapse:collapse}"
                 "td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}</style></head><body>",
                 f"<h1>{html.escape(self.title)}</h1>"]
        for kind, content in self.blocks:
            if kind == "h2":
                parts.append(f"<h2>{inline(content)}</h2>")
            elif kind == "p":
                parts.append(f"<p>{inline(content)}</p>")
            elif kind == "table":
                header, rows = content
                parts.append("<table><tr>" + "".join(f"<th>{inline(h)}</th>" for h in header) + "</tr>")
                parts += ["<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in rows]
                parts.append("</table>")
            else:
                name, caption = content
                data = base64.b64encode((folder / name).read_bytes()).decode("ascii")
                parts.append(f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(caption)}'>"
                             f"<figcaption>{inline(caption)}</figcaption></figure>")
        parts.append("</body></html>")
        return "\n".join(parts)


def _markdown_row(cells: Sequence[str]) -> str:
    # A "|" in a cell (a group's name from a metadata CSV) would end the cell early.
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
