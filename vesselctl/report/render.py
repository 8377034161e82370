"""Render a report, described once as a list of blocks, to Markdown and to self-contained HTML.

Building the content once and rendering it twice keeps report.md and report.html saying the same
thing. The HTML embeds every image as a base64 data URI and its CSS inline, so the single file
opens offline, mailed or archived, with nothing else beside it.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str  # `code` spans are rendered as code in HTML


@dataclass
class Notice:
    text: str
    kind: str = "warning"  # warning | error | info | ok


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str | None = None


@dataclass
class Image:
    file_name: str  # relative path written beside report.md
    data: bytes
    caption: str
    mime: str = "image/png"


@dataclass
class Code:
    text: str
    language: str = ""


@dataclass
class Details:
    """Collapsible in HTML (settings, long lists); a sub-section in Markdown."""

    summary: str
    blocks: list = field(default_factory=list)


Block = Heading | Paragraph | Notice | Table | Image | Code | Details

_CODE_SPAN = re.compile(r"`([^`]+)`")


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, blocks: list[Block]) -> str:
    """Markdown; images are referenced by their relative file names."""
    out = [f"# {title}", ""]

    def emit(block: Block, depth: int = 0) -> None:
        if isinstance(block, Heading):
            out.extend([f"{'#' * min(block.level + depth, 6)} {block.text}", ""])
        elif isinstance(block, Paragraph):
            out.extend([block.text, ""])
        elif isinstance(block, Notice):
            label = {"warning": "Warning", "error": "Problem", "info": "Note", "ok": "OK"}
            out.extend([f"> **{label.get(block.kind, 'Note')}:** {block.text}", ""])
        elif isinstance(block, Table):
            if block.caption:
                out.extend([f"*{block.caption}*", ""])
            out.append("| " + " | ".join(_md_cell(h) for h in block.headers) + " |")
            out.append("|" + "|".join("---" for _ in block.headers) + "|")
            for row in block.rows:
                out.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
            out.append("")
        elif isinstance(block, Image):
            out.extend([f"![{block.caption}]({block.file_name})", "", f"*{block.caption}*", ""])
        elif isinstance(block, Code):
            out.extend([f"```{block.language}", block.text.rstrip("\n"), "```", ""])
        elif isinstance(block, Details):
            out.extend([f"{'#' * min(4 + depth, 6)} {block.summary}", ""])
            for inner in block.blocks:
                emit(inner, depth + 1)

    for block in blocks:
        emit(block)
    return "\n".join(out).rstrip("\n") + "\n"


def _inline(text: str) -> str:
    return _CODE_SPAN.sub(lambda m: f"<code>{m.group(1)}</code>", html.escape(text, quote=False))


_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;
background:#f6f7f9;color:#1d2330;line-height:1.45}
main{max-width:1080px;margin:0 auto;padding:24px 32px 64px;background:#fff}
h1{font-size:1.7em;margin:0.2em 0 0.4em}h2{border-bottom:1px solid #dde1e7;padding-bottom:4px;
margin-top:1.8em}h3{margin-top:1.4em}
table{border-collapse:collapse;margin:8px 0 16px;font-size:0.9em}
th,td{border:1px solid #d5dae1;padding:4px 9px;text-align:left;vertical-align:top}
th{background:#eef1f5}tr:nth-child(even) td{background:#fafbfc}
caption{caption-side:top;text-align:left;font-style:italic;color:#4a5568;padding-bottom:4px}
figure{margin:12px 0 20px}figure img{max-width:100%;border:1px solid #e2e6eb}
figcaption{font-size:0.88em;color:#4a5568;margin-top:4px}
.notice{padding:9px 13px;border-left:5px solid;margin:10px 0;border-radius:3px}
.notice.warning{background:#fff8e6;border-color:#e0a800}.notice.error{background:#fdecec;
border-color:#d93025}.notice.info{background:#eef5ff;border-color:#3b82f6}
.notice.ok{background:#ecf8ef;border-color:#1e8e3e}
pre{background:#f3f4f6;padding:10px;overflow-x:auto;font-size:0.85em}
code{background:#f0f1f3;padding:0 3px;border-radius:3px}
details{margin:8px 0}summary{cursor:pointer;font-weight:600}
.overlays img{max-width:48%;margin:4px;vertical-align:top}
"""

# Sets a flag on <body> once every image has decoded, so a headless browser test can check.
_SCRIPT = """
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var ok = images.every(function (im) { return im.complete && im.naturalWidth > 0; });
  document.body.setAttribute('data-images', images.length + (ok ? ' decoded' : ' broken'));
});
"""


def to_html(title: str, blocks: list[Block]) -> str:
    """One self-contained HTML page: inline CSS, images as data URIs, no external requests."""
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style>",
        f"<script>{_SCRIPT}</script>",
        "</head><body><main>",
        f"<h1>{html.escape(title)}</h1>",
    ]

    def emit(block: Block) -> None:
        if isinstance(block, Heading):
            level = min(block.level, 6)
            out.append(f"<h{level}>{_inline(block.text)}</h{level}>")
        elif isinstance(block, Paragraph):
            out.append(f"<p>{_inline(block.text)}</p>")
        elif isinstance(block, Notice):
            out.append(f'<div class="notice {html.escape(block.kind)}">{_inline(block.text)}</div>')
        elif isinstance(block, Table):
            out.append("<table>")
            if block.caption:
                out.append(f"<caption>{_inline(block.caption)}</caption>")
            out.append(
                "<thead><tr>"
                + "".join(f"<th>{_inline(str(h))}</th>" for h in block.headers)
                + "</tr></thead><tbody>"
            )
            for row in block.rows:
                out.append("<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in row) + "</tr>")
            out.append("</tbody></table>")
        elif isinstance(block, Image):
            encoded = base64.b64encode(block.data).decode("ascii")
            out.append(
                f'<figure><img src="data:{block.mime};base64,{encoded}" '
                f'alt="{html.escape(block.caption)}">'
                f"<figcaption>{_inline(block.caption)}</figcaption></figure>"
            )
        elif isinstance(block, Code):
            out.append(f"<pre><code>{html.escape(block.text)}</code></pre>")
        elif isinstance(block, Details):
            out.append(f"<details><summary>{_inline(block.summary)}</summary>")
            for inner in block.blocks:
                emit(inner)
            out.append("</details>")

    for block in blocks:
        emit(block)
    out.append("</main></body></html>")
    return "\n".join(out) + "\n"
