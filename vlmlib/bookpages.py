"""Pages generated at build time from the chapters' results files (What holds, side by side, provenance).

`generate_pages(root, parts)` is called by the book runner after the chapters ran and before the HTML
build; it returns the pages it wrote.
"""

from __future__ import annotations

from pathlib import Path


def generate_pages(root: Path, parts: dict[str, str]) -> list[Path]:
    """Write the generated pages under root/book/; `parts` maps book part -> model name."""
    return []
