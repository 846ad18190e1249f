"""The SOP's Markdown as a tree the page builds with DOM calls: no HTML string ever reaches the browser.

markdown-it-py (CommonMark, tables on, raw HTML off) parses the text; its tokens become nested lists
`[tag, {attrs}, child, ...]` where a child is a string (text) or another node. Only the tags of an SOP survive
(headings, paragraphs, lists, tables, code, emphasis, links, rules, quotes); a link keeps its href only when it is
http(s), mailto or a fragment. Raw HTML in the SOP is text, shown as written.

>>> sop_tree("# Rules\\n\\n<script>alert(1)</script> and `code`")
[['h1', {}, 'Rules'], ['p', {}, '<script>alert(1)</script> and ', ['code', {}, 'code']]]
"""

from __future__ import annotations

import re
from typing import Any

from markdown_it import MarkdownIt

TAGS = {"h1", "h2", "h3", "h4", "h5", "h6", "p", "ul", "ol", "li", "table", "thead", "tbody", "tr", "th", "td",
        "pre", "code", "strong", "em", "s", "a", "hr", "blockquote", "br"}
SAFE_HREF = re.compile(r"^(https?:|mailto:|#)", re.IGNORECASE)
ALIGN = re.compile(r"text-align:(left|right|center)")

Node = list[Any]


def _parser() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False}).enable("table").enable("strikethrough")


def _attrs(token: Any) -> dict[str, str]:
    out = {}
    href = token.attrGet("href")
    if token.tag == "a" and isinstance(href, str) and SAFE_HREF.match(href.strip()):
        out["href"] = href
    style = token.attrGet("style")
    if token.tag in ("th", "td") and isinstance(style, str) and ALIGN.search(style):
        out["align"] = ALIGN.search(style).group(1)
    return out


def _build(tokens: list[Any], root: Node) -> None:
    stack = [root]
    for token in tokens:
        if token.nesting == 1:
            node: Node = [token.tag if token.tag in TAGS else "span", _attrs(token)]
            stack[-1].append(node)
            stack.append(node)
        elif token.nesting == -1:
            if len(stack) > 1:
                stack.pop()
        elif token.type == "inline":
            _build(token.children or [], stack[-1])
        elif token.type in ("fence", "code_block"):
            stack[-1].append(["pre", {}, ["code", {}, token.content]])
        elif token.type == "code_inline":
            stack[-1].append(["code", {}, token.content])
        elif token.type in ("softbreak",):
            stack[-1].append("\n")
        elif token.type == "hardbreak":
            stack[-1].append(["br", {}])
        elif token.type == "hr":
            stack[-1].append(["hr", {}])
        elif token.type == "image":
            stack[-1].append(token.content or "")
        elif token.content:  # text, html_inline/html_block shown as written
            stack[-1].append(token.content)


def sop_tree(text: str) -> list[Node]:
    """The SOP as nodes `[tag, attrs, *children]` (see the module docstring); tight list paragraphs unwrapped."""
    root: Node = ["root", {}]
    _build([t for t in _parser().parse(text) if not (t.type.startswith("paragraph") and t.hidden)], root)
    return root[2:]


def headings(tree: list[Node], level: str = "h2") -> list[str]:
    """The text of every heading of one level: the SOP panel's table of contents."""
    return [text_of(node) for node in tree if isinstance(node, list) and node[0] == level]


def text_of(node: Any) -> str:
    if isinstance(node, str):
        return node
    return "".join(text_of(child) for child in node[2:])
