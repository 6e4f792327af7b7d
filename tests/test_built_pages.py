"""The built book's files, read without a browser: one layer notation, a results file a reader can download
from every chapter page, and figures whose checks (`vlmlib.paper.figures.figure_problems`, recorded by
`figures.show` in the executed notebook) found nothing. Each check is first shown to fail on a bad input.

Builds the default book once (or reads the one VLMLIB_TEST_BOOK_ROOT names, see conftest.py).
"""

from __future__ import annotations

import html as html_lib
import json
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

from vlmlib.paper.figures import MIN_TEXT_PX

CHAPTER_PAGE = re.compile(r"^book/[^/]+/\d\d_[^/]+\.html$")
# The book's convention (DESIGN.md, Appendix F): decoder layer l reads H^(l-1) and writes H^(l), H^(0) the
# decoder's input. The contradicting form writes the states of a layer as H^(i) -> H^(i+1), or of layer l
# as H^(l) -> H^(l+1): "layer i reads H^(i) and writes H^(i+1)", "cos(H(i), H(i+1))".
CONTRADICTING_NOTATION = re.compile(
    r"(?<![A-Za-z])H(?:_\{?[a-z]+\}?)?\^?\{?\((?:i(?:\s*\+\s*1)?|l\s*\+\s*1)\)\}?"
)
# What a reader does not read as the page's prose or maths: scripts, styles, code cells' source, code.
NOT_PROSE = re.compile(
    r"<script.*?</script>|<style.*?</style>|<code.*?</code>|<pre.*?</pre>", re.DOTALL | re.IGNORECASE
)
DOWNLOAD_LINK = re.compile(r'<a class="[^"]*\bdownload\b[^"]*"[^>]*href="([^"]+)"')


def page_text(markup: str) -> str:
    """A page's text, TeX and images' alt text as a reader meets them: no scripts, styles or code."""
    markup = NOT_PROSE.sub(" ", markup)
    alts = " ".join(re.findall(r'<img[^>]*\balt="([^"]*)"', markup))
    return html_lib.unescape(re.sub(r"<[^>]+>", " ", markup) + " " + alts)


def book_pages(html: Path) -> dict[str, str]:
    return {
        path.relative_to(html).as_posix(): path.read_text(errors="replace")
        for path in sorted(html.rglob("*.html"))
        if not any(part.startswith("_") for part in path.relative_to(html).parts)
    }


# ---------------------------------------------------------------- the checks: {page: [what is wrong]}


def notation_contradictions(pages: dict[str, str]) -> dict[str, list[str]]:
    problems = {}
    for page, markup in pages.items():
        text = page_text(markup)
        found = [
            f"{m.group(0)!r} in ...{' '.join(text[max(0, m.start() - 60) : m.end() + 40].split())}..."
            for m in CONTRADICTING_NOTATION.finditer(text)
        ]
        if found:
            problems[page] = found
    return problems


def missing_results_links(html: Path, pages: dict[str, str]) -> dict[str, list[str]]:
    """Every chapter page links its results file (<chapter>.json) for download, and the link resolves to
    that chapter's results in the built HTML."""
    problems = {}
    for page, markup in pages.items():
        if not CHAPTER_PAGE.match(page):
            continue
        stem = Path(page).stem
        links = [href for href in DOWNLOAD_LINK.findall(markup) if unquote(href).endswith(f"/{stem}.json")]
        if not links:
            problems[page] = [f"no download link to {stem}.json"]
            continue
        target = (html / page).parent / unquote(links[0])
        try:
            chapter = json.loads(target.read_text()).get("chapter")
        except (OSError, ValueError) as error:
            problems[page] = [f"the link to {links[0]} does not resolve to a results file: {error}"]
            continue
        if chapter != stem:
            problems[page] = [f"{links[0]} holds the results of {chapter!r}, not {stem!r}"]
    return problems


def figure_records(notebooks: dict[str, dict]) -> dict[str, list[str]]:
    """Every figure a chapter shows went through `figures.show`, whose checks found nothing: text of at
    least 10 px at the column's width, nothing cut off, no legend over data, lines told apart without
    colour, colour scales from 0."""
    problems = {}
    for name, notebook in notebooks.items():
        found = []
        for index, cell in enumerate(notebook.get("cells", [])):
            for output in cell.get("outputs", []):
                if "image/png" not in output.get("data", {}):
                    continue
                record = output.get("metadata", {}).get("vlmlib")
                if record is None:
                    found.append(f"cell {index}: a figure not shown with figures.show (unchecked)")
                    continue
                found += [f"cell {index}, {record.get('figure')}: {p}" for p in record.get("problems", [])]
                smallest = record.get("smallest_text_px")
                if smallest is not None and smallest < MIN_TEXT_PX:
                    found.append(f"cell {index}, {record.get('figure')}: text of {smallest:.1f} px")
        if found:
            problems[name] = found
    return problems


def report(problems: dict[str, list[str]], what: str) -> str:
    lines = [f"{len(problems)} page(s) {what}:"]
    for page, found in problems.items():
        lines += [f"  {page}:"] + [f"    {item}" for item in found[:8]]
    return "\n".join(lines)


# ---------------------------------------------------------------- the checks fail on bad input


BAD_NOTATION = r"""<p>Layer <span class="math">\(i\)</span> reads <span class="math">\(H^{(i)}\)</span> and
writes <span class="math">\(H^{(i+1)}\)</span>.</p><div class="math">\[\cos(H_t^{(l)}, H_t^{(l+1)})\]</div>
<img alt="AvgSim cos(H(i), H(i+1))">"""
GOOD_NOTATION = r"""<p>Decoder layer <span class="math">\(l\)</span> reads
<span class="math">\(H^{(l-1)}\)</span> and writes <span class="math">\(H^{(l)}\)</span>;
<span class="math">\(H^{(0)}\)</span> is the input.</p>
<pre>obs.mean("H^(i+1)")  # code is not prose</pre>"""


def test_the_notation_check_finds_the_contradicting_form():
    problems = notation_contradictions({"bad.html": BAD_NOTATION, "good.html": GOOD_NOTATION})
    assert "good.html" not in problems
    said = "\n".join(problems["bad.html"])
    for form in ("'H^{(i)}'", "'H^{(i+1)}'", "'H_t^{(l+1)}'", "'H(i)'", "'H(i+1)'"):  # the last two: alt text
        assert form in said, said


def test_the_results_link_check_finds_a_missing_or_broken_link(tmp_path):
    page = "book/x/01_a.html"
    (tmp_path / "book" / "x").mkdir(parents=True)
    (tmp_path / "_downloads" / "abc").mkdir(parents=True)
    (tmp_path / "_downloads" / "abc" / "01_a.json").write_text(json.dumps({"chapter": "01_a"}))
    link = '<a class="reference download internal" download="" href="../../_downloads/{}/01_a.json">'
    assert missing_results_links(tmp_path, {page: "<p>no link</p>"}) == {
        page: ["no download link to 01_a.json"]
    }
    broken = missing_results_links(tmp_path, {page: link.format("nowhere")})
    assert "does not resolve" in broken[page][0]
    assert missing_results_links(tmp_path, {page: link.format("abc")}) == {}
    assert missing_results_links(tmp_path, {"book/intro.html": "<p>not a chapter</p>"}) == {}


def test_the_figure_record_check_finds_unchecked_and_faulty_figures():
    image = {"output_type": "display_data", "data": {"image/png": "iVBOR"}}
    notebooks = {
        "unchecked.ipynb": {"cells": [{"outputs": [{**image, "metadata": {}}]}]},
        "faulty.ipynb": {
            "cells": [
                {
                    "outputs": [
                        {
                            **image,
                            "metadata": {
                                "vlmlib": {
                                    "figure": "f",
                                    "problems": ["legend covers data"],
                                    "smallest_text_px": 8,
                                }
                            },
                        }
                    ]
                }
            ]
        },
        "fine.ipynb": {
            "cells": [
                {
                    "outputs": [
                        {
                            **image,
                            "metadata": {"vlmlib": {"figure": "g", "problems": [], "smallest_text_px": 12.5}},
                        }
                    ]
                }
            ]
        },
    }
    problems = figure_records(notebooks)
    assert set(problems) == {"unchecked.ipynb", "faulty.ipynb"}
    assert "not shown with figures.show" in problems["unchecked.ipynb"][0]
    assert problems["faulty.ipynb"] == ["cell 0, f: legend covers data", "cell 0, f: text of 8.0 px"]


# ---------------------------------------------------------------- the built book


@pytest.fixture(scope="module")
def pages(book_html):
    return book_pages(book_html)


def test_one_layer_notation_on_every_page(pages):
    problems = notation_contradictions(pages)
    assert not problems, report(
        problems, "writing a layer's states as H^(i) -> H^(i+1), against H^(l-1) -> H^(l)"
    )


def test_every_chapter_page_links_its_results_file(book_html, pages):
    assert any(CHAPTER_PAGE.match(p) for p in pages), "no chapter pages in the built book"
    problems = missing_results_links(book_html, pages)
    assert not problems, report(problems, "without a working link to their results file")


def test_every_figure_passed_its_checks(built_book):
    notebooks = {
        path.relative_to(built_book).as_posix(): json.loads(path.read_text())
        for path in sorted((built_book / "book").glob("*/[0-9][0-9]_*.ipynb"))
    }
    assert notebooks, "no executed chapters in the built book"
    problems = figure_records(notebooks)
    assert not problems, report(problems, "with figures a reader of the column would trip over")


# ---------------------------------------------------------------- findings first (issue 26, points 1 and 2)

SECTION_ID = re.compile(r'<section[^>]*\bid="([^"]+)"')
FIGURE_START = re.compile(r"<figure\b")


def answer_after_method(pages: dict[str, str]) -> dict[str, list[str]]:
    """Every chapter page shows a numbered figure and its conclusion ("What this run shows") before its
    method: the answer first, then how it was found."""
    problems = {}
    for page, markup in pages.items():
        if not CHAPTER_PAGE.match(page):
            continue
        ids = {m.group(1): m.start() for m in SECTION_ID.finditer(markup)}
        found = []
        method = ids.get("method")
        if method is None:
            found.append("no Method section")
        else:
            figure = FIGURE_START.search(markup)
            if figure is None or figure.start() > method:
                found.append("the first figure comes after the Method section (or there is none)")
            conclusion = ids.get("what-this-run-shows")
            if conclusion is None or conclusion > method:
                found.append("the conclusion comes after the Method section (or there is none)")
        if found:
            problems[page] = found
    return problems


def landing_findings(pages: dict[str, str]) -> list[str]:
    """The landing page opens with what the book found: its findings section is the first section under
    the title, in sentences, with a figure once chapters have run."""
    markup = pages.get("book/intro.html", "")
    if not markup:
        return ["no landing page (book/intro.html)"]
    ids = [m.group(1) for m in SECTION_ID.finditer(markup)]
    problems = []
    if "what-this-book-found" not in ids:
        return ["no 'What this book found' section"]
    if ids.index("what-this-book-found") > 1:  # 0: the page's own section (its title)
        problems.append(f"'What this book found' is not the first section under the title: {ids[:3]}")
    start = markup.index('id="what-this-book-found"')
    end = min([markup.index(f'id="{i}"') for i in ids if markup.index(f'id="{i}"') > start] + [len(markup)])
    text = page_text(markup[start:end])
    if not re.search(r"claims tested holds?\b|No chapter has run yet", text):
        problems.append("the findings section states no finding")
    if "No chapter has run yet" not in text and not FIGURE_START.search(markup[start:end]):
        problems.append("the findings section has no figure")
    return problems


CHAPTER_IN_ORDER = """<section id="c"><h1>1. C</h1><p>Question.</p>
<figure><img alt="a"></figure><section id="what-this-run-shows"><p>We found.</p></section>
<section id="method"><p>How.</p></section></section>"""
CHAPTER_METHOD_FIRST = """<section id="c"><h1>1. C</h1><section id="method"><p>How.</p></section>
<figure><img alt="a"></figure><section id="what-this-run-shows"><p>We found.</p></section></section>"""
LANDING = """<section id="book"><h1>Book</h1><section id="what-this-book-found">
<p>On X, 3 of the 8 claims tested hold.</p>
<figure><img alt="a"></figure></section><section id="about-this-book"><p>About.</p></section></section>"""
LANDING_WITHOUT = """<section id="book"><h1>Book</h1><section id="about-this-book"><p>About.</p></section>
<section id="what-this-book-found"><p>Nothing here.</p></section></section>"""


def test_the_answer_first_check_finds_a_chapter_that_starts_with_its_method():
    problems = answer_after_method(
        {"book/x/01_a.html": CHAPTER_IN_ORDER, "book/x/02_b.html": CHAPTER_METHOD_FIRST}
    )
    assert set(problems) == {"book/x/02_b.html"}
    assert len(problems["book/x/02_b.html"]) == 2


def test_the_landing_check_finds_a_page_without_findings_first():
    assert landing_findings({"book/intro.html": LANDING}) == []
    said = landing_findings({"book/intro.html": LANDING_WITHOUT})
    assert any("not the first section" in s for s in said) and any("no finding" in s for s in said)
    assert landing_findings({}) == ["no landing page (book/intro.html)"]


def test_every_chapter_answers_before_its_method(pages):
    problems = answer_after_method(pages)
    assert not problems, report(problems, "that show their method before their answer")


def test_the_landing_page_opens_with_the_findings(pages):
    problems = landing_findings(pages)
    assert not problems, "\n".join(problems)
