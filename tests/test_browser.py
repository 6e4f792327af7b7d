"""The built book read as a person reads it: every page opened at 1280, 800 and 390 px in headless Chromium.

Debian's `chromium` package drives the pages through the Chrome DevTools Protocol (`websocket-client`);
`make test` installs it (.ci/install-chromium.sh). The book is served from 127.0.0.1, and each page is
checked for what a reader would see: real tables, loaded figures, nothing scrolling sideways in the
text column, no request leaving the machine, no machine path, traceback or warning, a unique title; no
code identifier, Python literal, reST markup or unreadable number in its prose; alt text on every image
and a numbered caption on every figure. On a tablet (800 px) and a phone (390 px): the page never scrolls
sideways, no table is wider than its box (book.js shows a wide table as one block per row), and a figure
the column shrinks links to its full-size image.
One chapter page is kept as a full-page screenshot under _build/test-artifacts/, at each width.

Where Chromium is missing the test skips and says how to install it; with VLMLIB_REQUIRE_BROWSER=1
(set by .ci/run) it fails instead, so CI cannot pass without having looked at the book.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.server
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from conftest import save_artifact

WIDTH, HEIGHT = 1280, 900
NARROW_WIDTHS = (800, 390)  # a tablet and a phone: what the narrow checks read the book at
BROWSERS = ("chromium", "chromium-browser", "google-chrome")  # Debian's package installs `chromium`
REQUIRE_VARIABLE = "VLMLIB_REQUIRE_BROWSER"
CHAPTER_PAGE = re.compile(r"^book/[^/]+/\d\d_[^/]+\.html$")  # executed notebooks, one folder per family
SCREENSHOT_PAGE = (
    "book/paligemma/03_attention_patching.html"  # the page kept as an artifact (else the first chapter)
)

# What a reader must never see in a page's text.
MACHINE_PATH = re.compile(
    r"(?<![\w.])(/work/|/tmp/|/root/|/home/|/usr/|/opt/|/var/folders/|/private/var/)"
    r"|site-packages|dist-packages|PosixPath\(|[A-Za-z]:\\Users\\"
)
TRACEBACK = re.compile(r"Traceback \(most recent call last\)|^\s*\w+(Error|Exception): ", re.MULTILINE)
WARNING = re.compile(
    r"\b[A-Z]\w+Warning\b|warnings\.warn|^\s*WARNING\b|\d+%\|[^|\n]*\|\s*\d+/\d+", re.MULTILINE
)
# A table's rule row (|---|, or |—| once typography turned --- into a dash) shown as text: not a table.
MARKDOWN_TABLE = re.compile(r"\|\s*:?(?:-{3,}|[—–])[-—–]*:?\s*\|")

# What a reader must not meet in prose (text outside code, math and figures), with what each is.
RAW_PROSE = {
    # snake_case words ("vision_question"); a machine name such as x86_64 is not one
    "code identifier": re.compile(r"(?<![\w./-])[a-z][a-z0-9]*(?:_[a-z][a-z0-9]*)+(?![\w(/-]|\.\w)"),
    "Python list": re.compile(r"\[\s*-?\d+(?:\.\d+)?(?:\s*,\s*-?\d+(?:\.\d+)?)+\s*\]|\[\s*\]"),
    "Python dict or set": re.compile(r"\{\s*['\"]?[A-Za-z_]\w*['\"]?\s*[:,]"),
    "reST markup": re.compile(
        r"``|:(?:func|class|mod|meth|attr|data|obj|exc|ref|py:\w+|param|returns?|rtype):"
    ),
    "exponent notation": re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?e[-+]\d+\b"),
    "a spread of 0%": re.compile(r"±\s*0(?:\.0+)?\s*%"),
    "an optional plural": re.compile(r"\w\(s\)"),
}
# Alt text that is only a file's name or address (what Sphinx writes when a figure has none).
FILE_NAME_ALT = re.compile(
    r"^\S*(?:\.(?:png|jpe?g|svg|gif|webp)|_images/\S*|[0-9a-f]{32,}\S*)$", re.IGNORECASE
)
FIGURE_NUMBER = re.compile(r"^Figure (\d+)\.\s+\S")

# Run once the page has loaded: what a reader scrolling down would wait for (lazy figures, MathJax
# typesetting).
SETTLE_PAGE = r"""
Promise.race([
  Promise.all([
    ...[...document.images].map(img => {
      if (img.loading === "lazy") img.loading = "eager";
      return img.complete ? null : new Promise(done => {
        img.addEventListener("load", done);
        img.addEventListener("error", done);
      });
    }),
    window.MathJax && window.MathJax.startup && window.MathJax.startup.promise,
  ]),
  new Promise(done => setTimeout(done, 15000)),
]).then(() => true)
"""

# Measures one loaded page in the browser and returns a JSON-able summary of what the reader sees.
READ_PAGE = r"""
(() => {
  const article = document.querySelector("article.bd-article") || document.querySelector("main")
    || document.body;
  // Shown to a reader: laid out, not hidden, and not inside a collapsed <details> (a hide-input cell's code).
  const visible = el => el.getClientRects().length > 0 && getComputedStyle(el).visibility !== "hidden"
    && (!el.closest("details:not([open])") || !!el.closest("summary"))
    && (!el.checkVisibility || el.checkVisibility({visibilityProperty: true}));
  const describe = el => {
    const cls = (el.getAttribute("class") || "").trim().split(/\s+/).filter(Boolean).slice(0, 3).join(".");
    const text = (el.innerText || el.getAttribute("src") || el.getAttribute("alt") || "")
      .replace(/\s+/g, " ");
    return `<${el.tagName.toLowerCase()}${cls ? "." + cls : ""}> ${text.slice(0, 90)}`;
  };
  const columnRight = article.getBoundingClientRect().right;
  // A sideways scrollbar (a scroll container narrower than its content), or a box sticking out past the
  // column's right edge with nothing clipping it. Content wider than a box that does not scroll but stays
  // inside the column (a math glyph's overhang) is not counted. Only the innermost such blocks are reported.
  const clipped = el => {
    for (let up = el.parentElement; up && up !== article; up = up.parentElement) {
      if (getComputedStyle(up).overflowX !== "visible") return true;
    }
    return false;
  };
  const wide = [];
  for (const el of article.querySelectorAll("*")) {
    if (!visible(el)) continue;
    const style = getComputedStyle(el);
    if (style.overflowX === "hidden" || style.overflowX === "clip" || style.position === "fixed") continue;
    const scrolls = (style.overflowX === "auto" || style.overflowX === "scroll")
      && el.scrollWidth > el.clientWidth + 1;
    const right = el.getBoundingClientRect().right;
    const sticksOut = right > columnRight + 1 && !clipped(el);
    if (scrolls || sticksOut) wide.push({el, scrolls, sticksOut,
      text: `${describe(el)} [scrollWidth ${el.scrollWidth}, clientWidth ${el.clientWidth}, `
        + `right edge ${Math.round(right)} of column ${Math.round(columnRight)}]`});
  }
  const innermost = wide.filter(a => !wide.some(b => b.el !== a.el && a.el.contains(b.el))).map(a => ({
    text: a.text,
    // a block with a sideways scroll of its own (a long formula on a phone) is not the page scrolling;
    // a table is never allowed one: its columns would be off screen
    ownScroll: a.scrolls && !a.sticksOut,
    table: a.el.tagName === "TABLE" || !!a.el.querySelector("table"),
  }));
  const images = [...article.querySelectorAll("img")];
  // The text a reader sees with some blocks left out (hidden for a moment, then shown again).
  const textWithout = (root, blocks) => {
    const display = blocks.map(el => el.style.display);
    blocks.forEach(el => { el.style.display = "none"; });
    const text = root.innerText;
    blocks.forEach((el, i) => { el.style.display = display[i]; });
    return text;
  };
  // Without the code cells: a table printed or rendered as pipes is output, not code.
  const outputText = textWithout(article, [...article.querySelectorAll(".cell_input")]);
  // Without code blocks written by an author outside notebook cells: their example paths
  // (`--out /tmp/trial`) are instructions, not this machine leaking into the page.
  const authoredCode = [...document.body.querySelectorAll('[class*="highlight-"]')]
    .filter(el => !el.closest(".cell"));
  const leakText = textWithout(document.body, authoredCode);
  const rawMath = [...article.querySelectorAll(".math")].filter(
    el => visible(el) && !el.querySelector("mjx-container, .katex, svg, math"));
  // Prose: the article's text without code, math, figures' images and link anchors, solutions included
  // (a reader who opens one reads it).
  const prose = article.cloneNode(true);
  prose.querySelectorAll("code, pre, kbd, samp, script, style, .highlight, .cell_input, mjx-container, "
    + ".math, math, svg, img, a.headerlink").forEach(el => el.remove());
  prose.querySelectorAll("p, li, td, th, h1, h2, h3, h4, dt, dd, figcaption, div, br")
    .forEach(el => el.append(" "));
  const shown = img => Math.round(img.getBoundingClientRect().width);
  return {
    url: location.href,
    title: document.title,
    text: document.body.innerText,
    leakText,
    articleText: article.innerText,
    outputText,
    tables: article.querySelectorAll("table").length,
    images: images.length,
    brokenImages: images.filter(img => !img.complete || img.naturalWidth === 0)
                    .map(img => img.getAttribute("src")),
    wide: innermost,
    pageScrollWidth: document.documentElement.scrollWidth,
    // a phone zooms out to fit a page wider than its screen (innerWidth grows with it): the screen's width
    // is the window the reader has
    viewportWidth: Math.min(window.innerWidth, screen.width),
    rawMath: rawMath.map(describe),
    errorOutputs: [...article.querySelectorAll(".output.traceback, .output.error, .output.stderr")]
                    .filter(visible).map(describe),
    resources: performance.getEntriesByType("resource").map(r => r.name),
    proseText: prose.textContent.replace(/\s+/g, " "),
    imageInfo: images.map(img => ({
      src: img.getAttribute("src") || "",
      alt: img.getAttribute("alt"),
      inFigure: !!img.closest("figure"),
      inSolution: !!img.closest("details"),
      shown: shown(img),
      natural: img.naturalWidth,
      link: img.closest("a[href]") ? img.closest("a[href]").href : null,
      url: img.src,
    })),
    figureCaptions: [...article.querySelectorAll("figure")].map(f => {
      const caption = f.querySelector("figcaption");
      return caption ? caption.innerText.replace(/\s+/g, " ").trim() : null;
    }),
    sidebar: [...document.querySelectorAll(".bd-sidebar-primary nav a, nav.bd-links a")]
               .map(a => a.innerText.replace(/\s+/g, " ").trim()).filter(Boolean),
    height: Math.ceil(document.documentElement.scrollHeight),
  };
})()
"""


# ---------------------------------------------------------------------------------------------------
# Chromium and the DevTools Protocol


def find_browser() -> str | None:
    for name in BROWSERS:
        if found := shutil.which(name):
            return found
    return None


class DevTools:
    """A minimal Chrome DevTools Protocol client over the browser's websocket (flattened sessions)."""

    def __init__(self, url: str):
        import websocket

        self.socket = websocket.create_connection(url, timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []  # every event received, in order (the checks read the Network ones)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self.socket.send(json.dumps(message))
        while True:
            reply = self._receive()
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"DevTools {method} failed: {reply['error']}")
                return reply.get("result", {})

    def wait_for(self, matches, timeout: float, since: int = 0) -> dict | None:
        """The first event from events[since:] on (or arriving within timeout) for which matches(event)
        holds."""
        seen = since
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events[seen:]:
                if matches(event):
                    return event
            seen = len(self.events)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.socket.settimeout(remaining)
            try:
                self._receive()
            except Exception as error:  # websocket timeout
                if "timed out" in str(error).lower():
                    return None
                raise
            finally:
                self.socket.settimeout(60)

    def _receive(self) -> dict:
        message = json.loads(self.socket.recv())
        if "method" in message:
            self.events.append(message)
        return message

    def close(self):
        self.socket.close()


class Browser:
    """Headless Chromium with one tab, 1280 px wide, that records every request it makes."""

    def __init__(self, executable: str, profile: Path):
        self.process = subprocess.Popen(
            [
                executable,
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--hide-scrollbars",
                f"--window-size={WIDTH},{HEIGHT}",
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        # Chromium writes the port it chose (and the browser's websocket path) once it listens.
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and len(port_file.read_text().split("\n")) >= 2):
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{executable} exited with {self.process.returncode}: "
                    f"{self.process.stderr.read().decode(errors='replace')[-2000:]}"
                )
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"{executable} did not open its DevTools port within 60 s")
            time.sleep(0.1)
        port, path = port_file.read_text().split("\n")[:2]
        self.devtools = DevTools(f"ws://127.0.0.1:{port.strip()}{path.strip()}")
        target = self.devtools.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.devtools.call("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Network", "Runtime"):
            self.call(f"{domain}.enable")
        self.call("Page.setLifecycleEventsEnabled", {"enabled": True})
        self.width = WIDTH
        self.set_width(WIDTH)

    def set_width(self, width: int, height: int = HEIGHT) -> None:
        """The window's width (a phone's below 600 px, with its viewport rules); pages read after this."""
        self.width = width
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {
                "width": width,
                "height": height,
                "screenWidth": width,
                "screenHeight": height,
                "deviceScaleFactor": 1,
                "mobile": width < 600,
            },
        )

    def call(self, method: str, params: dict | None = None) -> dict:
        return self.devtools.call(method, params, self.session)

    def open(self, url: str) -> tuple[dict, list[str]]:
        """Load url, wait until its network is idle; returns what READ_PAGE measured and every URL
        requested."""
        first_event = len(self.devtools.events)
        frame = self.call("Page.navigate", {"url": url})
        if frame.get("errorText"):
            raise AssertionError(f"{url} did not load: {frame['errorText']}")
        mine = lambda e: e.get("sessionId") == self.session  # noqa: E731
        if not self.devtools.wait_for(
            lambda e: mine(e) and e["method"] == "Page.loadEventFired", timeout=60, since=first_event
        ):
            raise AssertionError(f"{url} did not finish loading within 60 s")
        # Scripts (MathJax, search) fetch more after the load event: wait for this page's network to go quiet.
        self.devtools.wait_for(
            lambda e: (
                mine(e)
                and e["method"] == "Page.lifecycleEvent"
                and e["params"]["name"] == "networkIdle"
                and e["params"].get("loaderId") == frame.get("loaderId")
            ),
            timeout=15,
            since=first_event,
        )
        self.call("Runtime.evaluate", {"expression": SETTLE_PAGE, "awaitPromise": True})
        reading = self.call("Runtime.evaluate", {"expression": READ_PAGE, "returnByValue": True})
        if "exceptionDetails" in reading:
            raise RuntimeError(f"reading {url} failed: {reading['exceptionDetails']}")
        requested = [
            e["params"]["request"]["url"]
            for e in self.devtools.events[first_event:]
            if mine(e) and e["method"] == "Network.requestWillBeSent"
        ]
        return reading["result"]["value"], requested

    def screenshot(self, height: int) -> bytes:
        """The whole page (height px tall) at the reading width, as PNG."""
        width = self.width
        self.set_width(width, min(height, 16000))
        try:
            shot = self.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
        finally:
            self.set_width(width)
        return base64.b64decode(shot["data"])

    def close(self):
        if getattr(self, "devtools", None):
            try:
                self.devtools.call("Browser.close")
            except Exception:
                pass
            self.devtools.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# ---------------------------------------------------------------------------------------------------
# Fixtures: the book served from 127.0.0.1, every page read once


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the test reports what matters; no access log on the terminal
        pass


@contextlib.contextmanager
def serve(html: Path):
    """html served from 127.0.0.1 on a free port; yields the base URL."""
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(html))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


REDIRECT = re.compile(
    r"<meta\s+http-equiv=[\"']?refresh[\"']?\s+content=[\"']?\d+;\s*url=([^\"'>\s]+)", re.IGNORECASE
)


def book_pages(html: Path) -> list[str]:
    """Every page of the book a reader can reach (paths relative to the HTML root), without redirect stubs
    (Jupyter Book's index.html only forwards to the root page, which is read under its own name)."""
    skip = {"search.html", "genindex.html", "py-modindex.html"}
    pages = []
    for path in sorted(html.rglob("*.html")):
        page = path.relative_to(html).as_posix()
        if any(part.startswith("_") for part in path.relative_to(html).parts) or path.name in skip:
            continue
        if forward := REDIRECT.search(path.read_text(errors="replace")[:2000]):
            assert (path.parent / forward.group(1)).is_file(), (
                f"{page} forwards to a missing page {forward.group(1)}"
            )
            continue
        pages.append(page)
    return pages


def read_book(
    browser: Browser, html: Path, screenshot_of: str | None = None, width: int = WIDTH, pages=None
) -> dict:
    """page -> (what the reader sees, every URL the page requested), read at `width` px; screenshot_of's
    page is kept as a PNG."""
    found = {}
    browser.set_width(width)
    try:
        with serve(html) as base:
            for page in book_pages(html) if pages is None else pages:
                found[page] = browser.open(base + page)
                assert found[page][0]["url"] == base + page, f"{page} went on to {found[page][0]['url']}"
                if page == screenshot_of:
                    name = page.removesuffix(".html").replace("/", "-") + f"-{width}px.png"
                    save_artifact(name, browser.screenshot(found[page][0]["height"]))
    finally:
        browser.set_width(WIDTH)
    return found


@pytest.fixture(scope="module")
def browser():
    executable = os.environ.get("CHROMIUM") or find_browser()
    if not executable:
        message = (
            "no Chromium found (looked for " + ", ".join(BROWSERS) + "): install Debian's package with "
            "`apt-get install -y chromium` (as root; `make test` does it through .ci/install-chromium.sh) "
            "or point CHROMIUM at a Chromium/Chrome binary"
        )
        if os.environ.get(REQUIRE_VARIABLE) == "1":
            pytest.fail(f"{REQUIRE_VARIABLE}=1 but {message}")
        pytest.skip(message)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        opened = Browser(executable, Path(profile))
        try:
            yield opened
        finally:
            opened.close()


def _screenshot_page(book_html: Path) -> str:
    chapters = [p for p in book_pages(book_html) if CHAPTER_PAGE.match(p)]
    assert chapters, f"no chapter pages (book/<family>/NN_*.html) in {book_html}"
    return SCREENSHOT_PAGE if SCREENSHOT_PAGE in chapters else chapters[0]


@pytest.fixture(scope="module")
def readings(browser, book_html):
    """Every page of the built book as the browser shows it. (The browser comes first: without one the
    test skips before the book is built.)"""
    return read_book(browser, book_html, _screenshot_page(book_html))


@pytest.fixture(scope="module")
def narrow_readings(browser, book_html):
    """Every page of the built book at a tablet's and a phone's width: {width: {page: reading}}."""
    return {
        width: read_book(browser, book_html, _screenshot_page(book_html), width=width)
        for width in NARROW_WIDTHS
    }


def report(problems: dict[str, list[str]], what: str) -> str:
    lines = [f"{len(problems)} page(s) {what}:"]
    for page, found in problems.items():
        lines.append(f"  {page}:")
        lines += [f"    {item}" for item in found[:6]] + (
            [f"    ... and {len(found) - 6} more"] if len(found) > 6 else []
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# The checks: each takes the readings and returns {page: [what is wrong]} (empty when all is well)


def tables_not_rendered(readings) -> dict[str, list[str]]:
    """Chapter pages need real tables (parameters, the paper's numbers, ours); no page shows one as pipes."""
    problems = {}
    for page, (seen, _) in readings.items():
        found = []
        if CHAPTER_PAGE.match(page) and seen["tables"] == 0:
            found.append(
                "no <table> on the page (the parameters, the paper's numbers and ours belong in tables)"
            )
        found += [
            f"Markdown table shown as text: {line.strip()[:120]}"
            for line in seen["outputText"].splitlines()
            if MARKDOWN_TABLE.search(line)
        ]
        if found:
            problems[page] = found
    return problems


def figures_missing(readings) -> dict[str, list[str]]:
    problems = {}
    for page, (seen, _) in readings.items():
        found = [f"figure did not load (naturalWidth 0): {src}" for src in seen["brokenImages"]]
        if CHAPTER_PAGE.match(page) and seen["images"] == 0:
            found.append("no figure on the page")
        if found:
            problems[page] = found
    return problems


def too_wide(readings) -> dict[str, list[str]]:
    problems = {}
    for page, (seen, _) in readings.items():
        found = [item["text"] for item in seen["wide"]]
        if seen["pageScrollWidth"] > seen["viewportWidth"]:
            found.append(
                f"the page itself is {seen['pageScrollWidth']} px wide at a {seen['viewportWidth']} px window"
            )
        if found:
            problems[page] = found
    return problems


def requests_outside(readings) -> dict[str, list[str]]:
    problems = {}
    for page, (seen, requested) in readings.items():
        outside = sorted(
            {
                url
                for url in requested + seen["resources"]
                if urlsplit(url).scheme not in ("data", "blob", "about")
                and urlsplit(url).hostname != "127.0.0.1"
            }
        )
        if outside:
            problems[page] = outside
    return problems


def raw_math(readings) -> dict[str, list[str]]:
    return {
        page: [f"raw TeX: {item}" for item in seen["rawMath"]]
        for page, (seen, _) in readings.items()
        if seen["rawMath"]
    }


def leaks(readings) -> dict[str, list[str]]:
    """Machine paths, tracebacks, warnings and progress bars in what a reader sees."""
    problems = {}
    for page, (seen, _) in readings.items():
        found = [f"error/stderr output block: {item}" for item in seen["errorOutputs"]]
        for kind, pattern, text in (
            ("machine path", MACHINE_PATH, seen["leakText"]),
            ("traceback", TRACEBACK, seen["text"]),
            ("warning", WARNING, seen["text"]),
        ):
            found += [f"{kind}: {line.strip()[:160]}" for line in text.splitlines() if pattern.search(line)]
        if found:
            problems[page] = found
    return problems


def repeated_titles(readings) -> dict[str, list[str]]:
    """Titles shared by pages (document.title: tabs, history, search) or entries repeated in the sidebar."""
    by_title: dict[str, list[str]] = {}
    for page, (seen, _) in readings.items():
        by_title.setdefault(seen["title"].strip(), []).append(page)
    problems = {}
    for title, pages in by_title.items():
        if len(pages) > 1:
            for page in pages:
                problems.setdefault(page, []).append(
                    f"title {title!r} also on {[p for p in pages if p != page]}"
                )
    reported = set()  # every page shows the same sidebar: say what repeats once, on the first page showing it
    for page, (seen, _) in readings.items():
        entries = seen["sidebar"]
        repeated = tuple(sorted({entry for entry in entries if entries.count(entry) > 1}))
        if repeated and repeated not in reported:
            reported.add(repeated)
            problems.setdefault(page, []).append(f"sidebar entries shown more than once: {list(repeated)}")
    return problems


def too_wide_narrow(readings) -> dict[str, list[str]]:
    """At a tablet's or a phone's width: the page never scrolls sideways and nothing sticks out of the
    column; a block may scroll inside its own box (a long formula), a table may not (it reflows)."""
    problems = {}
    for page, (seen, _) in readings.items():
        found = [
            ("table wider than its box: " if item["table"] else "") + item["text"]
            for item in seen["wide"]
            if item["table"] or not item["ownScroll"]
        ]
        if seen["pageScrollWidth"] > seen["viewportWidth"]:
            found.append(
                f"the page itself is {seen['pageScrollWidth']} px wide at a {seen['viewportWidth']} px window"
            )
        if found:
            problems[page] = found
    return problems


def figures_not_enlargeable(readings) -> dict[str, list[str]]:
    """A figure the column shrinks (its labels with it) must link to its full-size image."""
    problems = {}
    for page, (seen, _) in readings.items():
        found = [
            f"{image['src']} is shown {image['shown']} px wide of its {image['natural']} px and links to "
            f"{image['link'] or 'nothing'}"
            for image in seen["imageInfo"]
            if image["natural"]
            and 0 < image["shown"] < image["natural"] - 1
            and image["link"] != image["url"]
        ]
        if found:
            problems[page] = found
    return problems


def raw_prose(readings) -> dict[str, list[str]]:
    """Code identifiers, Python literals, reST markup and numbers a person does not write, in prose."""
    problems = {}
    for page, (seen, _) in readings.items():
        text = seen["proseText"]
        found = []
        for what, pattern in RAW_PROSE.items():
            for match in pattern.finditer(text):
                context = text[max(0, match.start() - 50) : match.end() + 30].strip()
                found.append(f"{what} {match.group(0)!r}: ...{context}...")
        if found:
            problems[page] = found
    return problems


def images_without_alt(readings) -> dict[str, list[str]]:
    """Every image needs alt text that says what it shows: not missing, not empty, not a file's name."""
    problems = {}
    for page, (seen, _) in readings.items():
        found = []
        for image in seen["imageInfo"]:
            alt = (image["alt"] or "").strip()
            if not alt:
                found.append(f"{image['src']}: no alt text")
            elif FILE_NAME_ALT.match(alt) or len(alt.split()) < 3:
                found.append(f"{image['src']}: alt text {alt[:80]!r} does not say what the image shows")
        if found:
            problems[page] = found
    return problems


def unnumbered_figures(readings) -> dict[str, list[str]]:
    """Every figure has a caption "Figure N. ..." numbered 1, 2, ... on its page, and every image outside
    an exercise's solution is such a figure."""
    problems = {}
    for page, (seen, _) in readings.items():
        found = []
        numbers = []
        for caption in seen["figureCaptions"]:
            match = FIGURE_NUMBER.match(caption or "")
            if not match:
                found.append(f"a figure without a numbered caption: {(caption or 'no caption')[:80]!r}")
            else:
                numbers.append(int(match.group(1)))
        if numbers and numbers != list(range(1, len(numbers) + 1)):
            found.append(f"figures numbered {numbers} on the page, not 1 to {len(numbers)}")
        found += [
            f"{image['src']}: an image outside a figure (no number, no caption)"
            for image in seen["imageInfo"]
            if not image["inFigure"] and not image["inSolution"]
        ]
        if found:
            problems[page] = found
    return problems


# ---------------------------------------------------------------------------------------------------
# The checks catch what they look for: a small site with one page that does everything wrong


LONG_LINE = "x" * 400  # far wider than the 600 px column of the pages below
GOOD_PAGE = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1"></head><body>
<nav class="bd-links"><a href="a.html">A</a> <a href="b.html">B</a></nav>
<article class="bd-article" style="max-width: 600px">
<h1>{title}</h1><p>Prose that wraps inside the column, with a figure and a table: the final layer moves
the answer by 5 points (83% ± 4%, all 200 correct), read in <code>vision_question</code>.</p>
<figure><a href="{figure}"><img src="{figure}" alt="A line rising from left to right"
style="max-width: 100%"></a><figcaption>Figure 1. A line that rises.</figcaption></figure>
<table><tr><th>paper</th><th>ours</th></tr><tr><td>0.9</td><td>0.8 ± 0.1</td></tr></table>
<div class="highlight-bash"><div class="highlight"><pre>run --out /tmp/trial</pre></div></div>
<details><summary>Show code cell source</summary>\
<pre style="overflow: auto">{long} /work/hidden</pre></details>
</article></body></html>"""

BAD_ARTICLE = """<article class="bd-article" style="width: 600px"><h1>A</h1>
<p>| | paper | ours | |—|—|—| | in words | high | low |</p>
<img src="missing.png"><img src="http://example.invalid/remote.png">
<div class="cell"><div class="cell_output"><pre style="overflow: auto">{long}</pre>
<pre>results = "/work/main/book/a.json"</pre><pre>UserWarning: something was deprecated</pre></div></div>
<p><span class="math">\\(H^{{(l)}}\\)</span></p>
<p>The probe reads vision_question in layers [1, 2, 5] (see :func:`probe` and ``code``), moves 7.69e+00
and keeps 83% ± 0% in the final 1 layer(s) of {{claim_id: 1}}.</p>
<img src="figure.png" alt="figure.png" style="max-width: 100%">
<figure><img src="figure.png" alt="ok"><figcaption>A caption without its number</figcaption></figure>
<figure><img src="figure.png" alt="A line that rises">
<figcaption>Figure 3. Numbered out of order.</figcaption></figure>
</article>"""
# A page whose one fault shows on a phone: a table wider than its box, scrolling sideways inside it.
WIDE_TABLE_ARTICLE = """<article class="bd-article" style="max-width: 600px"><h1>C</h1>
<div style="overflow-x: auto"><table><tr><th>a</th><th>b</th></tr>
<tr><td>{long}</td><td>1</td></tr></table></div></article>"""


@pytest.fixture(scope="module")
def bad_and_good_site(tmp_path_factory):
    """book/x/01_a.html does everything wrong; book/x/02_b.html is a good chapter page; book/x/03_c.html has
    a table too wide for a phone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    html = tmp_path_factory.mktemp("site")
    chapter_dir = html / "book" / "x"
    chapter_dir.mkdir(parents=True)
    fig, ax = plt.subplots(figsize=(8, 2))  # 800 px: a 600 px column (or a phone) shrinks it
    ax.plot([0, 1], [0, 1])
    fig.savefig(chapter_dir / "figure.png")
    plt.close(fig)
    bad = GOOD_PAGE.format(title="Same title", figure="figure.png", long=LONG_LINE).replace(
        '<nav class="bd-links">', '<nav class="bd-links"><a>A</a>'
    )
    bad = re.sub(r"<article.*</article>", lambda _: BAD_ARTICLE.format(long=LONG_LINE), bad, flags=re.DOTALL)
    (chapter_dir / "01_a.html").write_text(bad)
    wide = GOOD_PAGE.format(title="Wide table", figure="figure.png", long=LONG_LINE)
    wide = re.sub(
        r"<article.*</article>", lambda _: WIDE_TABLE_ARTICLE.format(long=LONG_LINE), wide, flags=re.DOTALL
    )
    (chapter_dir / "03_c.html").write_text(wide)
    (chapter_dir / "02_b.html").write_text(
        GOOD_PAGE.format(title="Another title", figure="figure.png", long=LONG_LINE)
    )
    (html / "index.html").write_text(
        GOOD_PAGE.format(title="Same title", figure="book/x/figure.png", long=LONG_LINE)
    )
    return html


def test_the_checks_catch_a_bad_page_and_pass_a_good_one(browser, bad_and_good_site):
    seen = read_book(browser, bad_and_good_site)
    assert set(seen) == {"index.html", "book/x/01_a.html", "book/x/02_b.html", "book/x/03_c.html"}
    bad, good = "book/x/01_a.html", "book/x/02_b.html"
    expected = {  # check -> what it must say about the bad page
        tables_not_rendered: ["no <table>", "Markdown table shown as text"],
        figures_missing: ["missing.png"],
        too_wide: ["<pre>"],
        requests_outside: ["http://example.invalid/remote.png"],
        raw_math: ["raw TeX"],
        leaks: ['machine path: results = "/work/main', "warning: UserWarning"],
        repeated_titles: [
            "title 'Same title' also on ['index.html']",
            "sidebar entries shown more than once: ['A']",
        ],
        raw_prose: [
            "code identifier 'vision_question'",
            "Python list '[1, 2, 5]'",
            "reST markup ':func:'",
            "reST markup '``'",
            "exponent notation '7.69e+00'",
            "a spread of 0% '± 0%'",
            "an optional plural 'r(s)'",
            "Python dict or set '{claim_id:'",
        ],
        images_without_alt: [
            "missing.png: no alt text",
            "http://example.invalid/remote.png: no alt text",
            "figure.png: alt text 'figure.png' does not say",
            "figure.png: alt text 'ok' does not say",
        ],
        unnumbered_figures: [
            "a figure without a numbered caption: 'A caption without its number'",
            "figures numbered [3] on the page, not 1 to 1",
            "missing.png: an image outside a figure",
        ],
    }
    for check, phrases in expected.items():
        problems = check(seen)
        said = "\n".join(problems.get(bad, []))
        for phrase in phrases:
            assert phrase in said, f"{check.__name__} missed {phrase!r} on the bad page; it said:\n{said}"
        assert good not in problems, f"{check.__name__} flagged the good page: {problems[good]}"
    # An author's example command (`--out /tmp/trial` in a code block outside cells) is not a leak, and
    # code a reader has not opened (a collapsed <details>) neither scrolls nor leaks.
    assert "index.html" not in leaks(seen) and "index.html" not in figures_missing(seen)


def test_the_narrow_checks_catch_a_bad_page_and_pass_a_good_one(browser, bad_and_good_site):
    """At a phone's width: a page wider than the window, a table wider than its box and a shrunk figure
    without a link to its full size are found; the good page (a column that narrows, a linked figure)
    passes."""
    seen = read_book(browser, bad_and_good_site, width=390)
    bad, good = "book/x/01_a.html", "book/x/02_b.html"
    expected = {  # (check, bad page) -> what it must say there
        (too_wide_narrow, bad): ["the page itself is"],
        (too_wide_narrow, "book/x/03_c.html"): ["table wider than its box"],
        (figures_not_enlargeable, bad): ["figure.png is shown", "links to nothing"],
    }
    for (check, page), phrases in expected.items():
        problems = check(seen)
        said = "\n".join(problems.get(page, []))
        for phrase in phrases:
            assert phrase in said, f"{check.__name__} missed {phrase!r} on {page}; it said:\n{said}"
        assert good not in problems, f"{check.__name__} flagged the good page: {problems[good]}"
    assert seen[good][0]["viewportWidth"] == 390


# ---------------------------------------------------------------------------------------------------
# The built book as a reader sees it


def test_every_book_page_is_read(book_html, readings):
    """The crawl covered the whole book: the start page and each family's chapters, each showing text."""
    start = REDIRECT.search((book_html / "index.html").read_text(errors="replace"))
    assert (start.group(1) if start else "index.html") in readings, "the book's start page was not read"
    families = {page.split("/")[1] for page in readings if CHAPTER_PAGE.match(page)}
    assert len(families) >= 2, f"chapter pages for only {families}: expected one folder per model family"
    for page, (seen, _) in readings.items():
        assert seen["articleText"].strip(), f"{page} shows no text"
    sidebar = next(iter(readings.values()))[0]["sidebar"]
    assert len(sidebar) >= len(readings) - 1, (
        f"the sidebar lists fewer entries than the book has pages: {sidebar}"
    )


def test_chapter_tables_are_html_tables(readings):
    problems = tables_not_rendered(readings)
    assert not problems, report(problems, "without real tables")


def test_figures_load(readings):
    problems = figures_missing(readings)
    assert not problems, report(problems, "with missing figures")


def test_nothing_scrolls_sideways(readings):
    problems = too_wide(readings)
    assert not problems, report(problems, f"with blocks wider than the text column at {WIDTH} px")


def test_no_request_leaves_the_machine(readings):
    problems = requests_outside(readings)
    assert not problems, report(problems, "requesting something outside the book (it must work offline)")


def test_math_is_rendered(readings):
    problems = raw_math(readings)
    assert not problems, report(problems, "showing math as raw TeX (MathJax/KaTeX must ship with the book)")


def test_no_machine_path_traceback_or_warning_shows(readings):
    problems = leaks(readings)
    assert not problems, report(problems, "showing machine paths, tracebacks or warnings")


def test_titles_are_unique(readings):
    problems = repeated_titles(readings)
    assert not problems, report(
        problems, "whose title tabs, history, search or the sidebar cannot tell apart"
    )


def test_no_raw_identifiers_literals_or_markup_in_prose(readings):
    problems = raw_prose(readings)
    assert not problems, report(
        problems, "with code names, Python literals, reST markup or unreadable numbers in their prose"
    )


def test_every_image_has_alt_text(readings):
    problems = images_without_alt(readings)
    assert not problems, report(problems, "with images whose alt text is missing or a file name")


def test_every_figure_has_a_numbered_caption(readings):
    problems = unnumbered_figures(readings)
    assert not problems, report(problems, "with figures that are not numbered and captioned")


@pytest.mark.parametrize("width", NARROW_WIDTHS)
def test_nothing_scrolls_the_page_sideways_on_a_tablet_or_a_phone(narrow_readings, width):
    problems = too_wide_narrow(narrow_readings[width])
    assert not problems, report(
        problems, f"wider than the window or with tables wider than their box at {width} px"
    )


@pytest.mark.parametrize("width", NARROW_WIDTHS)
def test_figures_the_column_shrinks_open_at_full_size(narrow_readings, width):
    problems = figures_not_enlargeable(narrow_readings[width])
    assert not problems, report(
        problems, f"with shrunk figures that do not link to their full size at {width} px"
    )
