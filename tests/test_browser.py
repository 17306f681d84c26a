"""The built book, read in a real browser: headless Chromium driven by Playwright.

The book is built by ``tools/build_book.py`` (website and PDF) unless ``_build/html`` already
holds a build of exactly the current sources (a digest of them is stamped into the build). Every
chapter page is then loaded at a desktop width (1400 px) and a phone width (400 px) and checked
the way a reader would see it: the math is typeset (no MathJax error), no markdown table is left
as raw ``| ... |`` text, every figure has a caption and real alt text, nothing but a scrollable
code or equation box is wider than a phone's screen, no page raises a JavaScript error, no
internal label (``eq-...``) shows where the reader expects an equation number, every internal
link resolves, the search page finds a chapter, and the PDF exists.

Chromium is Debian's ``chromium`` package. Where it is missing the tests skip and say how to
install it, except under ``CI=true``, where they fail: CI must run them.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tools import build_book

ROOT = build_book.ROOT

HTML = build_book.HTML
CHAPTERS = sorted(p.stem for p in (ROOT / "book").glob("[0-9][0-9]_*.ipynb"))
PAGES = ["intro", *CHAPTERS, "references"]
WIDTHS = (1400, 400)

BROWSER = build_book.chromium()
try:
    import playwright.sync_api as pw
except ImportError:       # pragma: no cover - requirements.txt installs it
    pw = None
MISSING = None if BROWSER and pw else (
    "headless Chromium is needed for the browser checks: install Debian's chromium "
    "(apt-get install chromium) and the pinned requirements (playwright)")
if MISSING and os.environ.get("CI") == "true":
    raise RuntimeError(MISSING)
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")


# A build elsewhere can be checked as it is (no PDF): BOOK_HTML=/tmp/x/_build/html pytest ...
OTHER_BUILD = os.environ.get("BOOK_HTML")


@pytest.fixture(scope="module")
def site() -> Path:
    if OTHER_BUILD:
        return Path(OTHER_BUILD)
    if not build_book.is_current():
        subprocess.run([sys.executable, str(ROOT / "tools" / "build_book.py")], cwd=ROOT, check=True)
    assert build_book.is_current(), "the build does not match the sources after building"
    return HTML


@pytest.fixture(scope="module")
def browser(site):
    with pw.sync_playwright() as p:
        b = p.chromium.launch(executable_path=BROWSER, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


_LOADED = {}


def load(browser, site, name: str, width: int) -> dict:
    """Open a page at a width, wait for MathJax, and collect what the checks look at."""
    key = (name, width)
    if key in _LOADED:
        return _LOADED[key]
    page = browser.new_page(viewport={"width": width, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto((site / "book" / f"{name}.html").as_uri())
    if page.evaluate("!!document.querySelector('script[src*=\"mathjax\"]')"):
        page.wait_for_function("window.MathJax && MathJax.startup && MathJax.startup.promise",
                               timeout=30000)
        page.evaluate("MathJax.startup.promise")
    found = page.evaluate(r"""() => {
      const article = document.querySelector('article') || document.body;
      const visible = (el) => !el.closest('details:not([open])') && el.offsetParent !== null;
      const prose = [...article.querySelectorAll('p, li, h1, h2, h3, h4, dt, dd, figcaption')]
        .filter(el => !el.closest('pre, .cell_input, .highlight'));
      const scrollable = (el) => {
        for (let a = el; a && a !== document.body; a = a.parentElement) {
          const o = getComputedStyle(a).overflowX;
          if (o === 'auto' || o === 'scroll') return true;
        }
        return false;
      };
      const wide = [...article.querySelectorAll('*')]
        .filter(el => el.getBoundingClientRect().right > window.innerWidth + 1)
        .filter(el => visible(el) && !scrollable(el))
        .filter(el => ![...el.children].some(c => c.getBoundingClientRect().right > window.innerWidth + 1))
        .map(el => el.tagName.toLowerCase() + ': ' + (el.textContent || '').trim().slice(0, 60));
      const cut = [...article.querySelectorAll('mjx-container[display="true"]')]
        .filter(el => visible(el) && el.scrollWidth > el.clientWidth + 1 && !scrollable(el))
        .map(el => (el.textContent || '').slice(0, 60));
      const images = [...article.querySelectorAll('img')].map(img => ({
        alt: img.getAttribute('alt') || '',
        caption: !!(img.closest('figure') && img.closest('figure').querySelector('figcaption')),
        full_size: !!(img.closest('a') && img.closest('a').getAttribute('href') === img.getAttribute('src')),
        distorted: img.naturalWidth > 0 && img.height > 0 &&
          Math.abs((img.width / img.height) / (img.naturalWidth / img.naturalHeight) - 1) > 0.02,
        src: img.getAttribute('src') || ''}));
      return {
        merrors: [...document.querySelectorAll('mjx-merror')].map(e => e.textContent),
        typeset: document.querySelectorAll('mjx-container').length,
        // text inside formulas (\\text, \\texttt) that still shows a TeX escape such as \\_
        math_text_escapes: [...document.querySelectorAll('mjx-assistive-mml mtext')]
          .map(e => e.textContent).filter(t => t.includes('\\')),
        raw_tables: prose.map(el => el.textContent.trim()).filter(t =>
          /\|\s*:?[-\u2013\u2014]+:?\s*\|/.test(t) ||
          t.split('\n').filter(line => /^\s*\|.*\|\s*$/.test(line)).length >= 2),
        prose: prose.map(el => el.textContent).join('\n'),
        outputs: [...article.querySelectorAll('.cell_output')].map(el => el.textContent).join('\n'),
        wide: [...new Set(wide)].slice(0, 10),
        cut: cut.slice(0, 10),
        images: images,
        page_width: document.documentElement.scrollWidth,
      };
    }""")
    found["errors"] = errors
    page.close()
    _LOADED[key] = found
    return found


@pytest.mark.parametrize("name", PAGES)
def test_math_is_typeset_without_errors(browser, site, name):
    page = load(browser, site, name, 1400)
    assert page["merrors"] == []
    assert page["math_text_escapes"] == [], "a TeX escape shown as text inside a formula"
    source = (ROOT / "book" / f"{name}.ipynb")
    if source.exists() and "$" in source.read_text():
        assert page["typeset"] > 0, "the page has math but MathJax typeset none of it"
    assert "\\begin{" not in page["prose"] and "\\frac" not in page["prose"], "raw LaTeX in the prose"


@pytest.mark.parametrize("name", PAGES)
def test_no_raw_markdown_tables(browser, site, name):
    assert load(browser, site, name, 1400)["raw_tables"] == []


@pytest.mark.parametrize("name", PAGES)
def test_every_figure_has_a_caption_and_alt_text(browser, site, name):
    bad = [img for img in load(browser, site, name, 1400)["images"]
           if "logo" not in img["src"] and (
               not img["caption"] or len(img["alt"]) < 10 or re.fullmatch(r"[0-9a-f]{16,}.*", img["alt"])
               or img["alt"].endswith(".png"))]
    assert bad == [], f"{len(bad)} figure(s) without a caption or real alt text: {bad[:3]}"


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", PAGES)
def test_figures_keep_their_aspect_ratio(browser, site, name, width):
    bad = [img["src"] for img in load(browser, site, name, width)["images"] if img["distorted"]]
    assert bad == [], f"figures squashed at {width} px: {bad[:3]}"


@pytest.mark.parametrize("name", CHAPTERS)
def test_figures_open_at_full_size(browser, site, name):
    """On a phone a two-panel figure is small: a tap opens the full-resolution image."""
    images = [img for img in load(browser, site, name, 400)["images"] if "logo" not in img["src"]]
    assert images and all(img["full_size"] for img in images)


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", PAGES)
def test_nothing_wider_than_the_screen(browser, site, name, width):
    page = load(browser, site, name, width)
    assert page["page_width"] <= width, f"the page scrolls sideways ({page['page_width']} px)"
    assert page["wide"] == [], "wider than the screen outside a scrollable box"
    assert page["cut"] == [], "displayed equations cut off"


@pytest.mark.parametrize("name", PAGES)
def test_no_javascript_errors(browser, site, name):
    assert load(browser, site, name, 1400)["errors"] == []


@pytest.mark.parametrize("name", PAGES)
def test_no_internal_labels_or_doubled_brackets_shown(browser, site, name):
    page = load(browser, site, name, 1400)
    text = page["prose"] + "\n" + page["outputs"]
    assert re.findall(r"\(eq-[\w-]+\)|\beq-[a-z0-9]+-[\w-]+", text) == []
    assert re.findall(r"\(\(\d", text) == []


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.hrefs = set(), []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id"):
            self.ids.add(attrs["id"])
        if tag == "a" and attrs.get("href"):
            self.hrefs.append(attrs["href"])


def test_internal_links_and_equation_references_resolve(site):
    parsed = {}
    for page in site.rglob("*.html"):
        links = _Links()
        links.feed(page.read_text(errors="replace"))
        parsed[page.resolve()] = links
    broken = []
    for page, links in parsed.items():
        if "_static" in page.parts or "_sources" in page.parts:
            continue
        for href in links.hrefs:
            if re.match(r"^[a-z]+:", href) or href.startswith("//"):
                continue
            path, _, anchor = href.partition("#")
            target = (page.parent / path).resolve() if path else page
            if not target.exists():
                broken.append(f"{page.name}: {href} (no such file)")
            elif anchor and target.suffix == ".html" and anchor not in parsed.get(target, _Links()).ids:
                broken.append(f"{page.name}: {href} (no such anchor)")
    assert broken == [], broken[:10]


def test_search_finds_a_chapter_by_a_word(browser, site):
    page = browser.new_page()
    page.goto((site / "search.html").as_uri() + "?q=Nesterov")
    page.wait_for_selector("#search-results li a", timeout=30000)
    hrefs = page.eval_on_selector_all("#search-results li a", "els => els.map(e => e.href)")
    page.close()
    assert any("05_nesterov" in h for h in hrefs), hrefs


def test_the_pdf_exists_and_has_the_whole_book(site):
    if OTHER_BUILD:
        pytest.skip("BOOK_HTML names a build without its PDF")
    pdf = site / build_book.PDF_NAME
    assert pdf.exists(), "no PDF in the build"
    assert 150 <= build_book.pdf_pages(pdf) <= 800
    intro = (site / "book" / "intro.html").read_text()
    assert f'href="../{build_book.PDF_NAME}"' in intro, "the landing page does not offer the PDF"
