"""Markdown for pages: table cells and tables, written once for every page that makes one."""

from __future__ import annotations


def cell(text) -> str:
    """Text safe inside a Markdown pipe-table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(head: list[str], body: list[list[str]]) -> str:
    """A Markdown pipe table. Tables stay narrow (six short columns at most) so a page never scrolls sideways."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)
