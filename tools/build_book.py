"""Build the book: the website, and the PDF of the whole book.

Usage (from the repository root)::

    python tools/build_book.py            # _build/html/ and _build/html/optimizers-that-run.pdf
    python tools/build_book.py --no-pdf   # the website only

1. ``jupyter-book build . --all -W -n --keep-going``: the website, from the committed, executed
   notebooks, with every warning an error.
2. The PDF: Jupyter Book's single-page build (``--builder singlehtml``) printed by headless
   Chromium, so that MathJax typesets the equations exactly as on the website, figures are the
   same images, and long code lines wrap (see the print rules in ``book/_static/book.css``). The
   single page lands at ``book/intro.html`` (the toc's root) while its links assume the top
   folder, so it is printed from a copy in the top folder. The PDF is written into the website,
   where the landing page links to it.

Chromium is Debian's ``chromium`` package (``apt-get install chromium``). Without it the PDF is
skipped with a message, except under ``CI=true``, where a missing PDF is an error.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
SINGLE = ROOT / "_build" / "singlehtml"
PDF_NAME = "optimizers-that-run.pdf"


STAMP = HTML / ".sources-digest"


def sources_digest() -> str:
    """A digest of everything the build reads: the executed notebooks, the other pages, the
    configuration, the bibliography, the static files and the build's own code."""
    import hashlib

    files = sorted([*(ROOT / "book").rglob("*.ipynb"), ROOT / "book" / "intro.md",
                    ROOT / "book" / "references.md", *(ROOT / "book" / "_static").rglob("*"),
                    ROOT / "_config.yml", ROOT / "_toc.yml", ROOT / "references.bib",
                    ROOT / "tools" / "book_sphinx.py", Path(__file__).resolve()])
    digest = hashlib.sha256()
    for f in files:
        if f.is_file() and ".ipynb_checkpoints" not in f.parts:
            digest.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()


def is_current() -> bool:
    """True when _build/html (with its PDF) was built from exactly the current sources."""
    return (STAMP.exists() and STAMP.read_text().strip() == sources_digest()
            and (HTML / PDF_NAME).exists())


def jupyter_book() -> str:
    local = Path(sys.executable).with_name("jupyter-book")
    return str(local) if local.exists() else "jupyter-book"


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def build_html() -> None:
    STAMP.unlink(missing_ok=True)
    subprocess.run([jupyter_book(), "build", ".", "--all", "-W", "-n", "--keep-going"], cwd=ROOT,
                   check=True)


def pdf_pages(pdf: Path) -> int:
    """Number of pages, read from the PDF's page objects (no PDF library needed)."""
    return len(re.findall(rb"/Type\s*/Page(?![s\w])", pdf.read_bytes()))


def build_pdf(browser: str) -> Path:
    subprocess.run([jupyter_book(), "build", ".", "--all", "--builder", "singlehtml", "-n", "--keep-going"],
                   cwd=ROOT, check=True)
    page = SINGLE / "book.html"
    shutil.copy(SINGLE / "book" / "intro.html", page)
    pdf = HTML / PDF_NAME
    pdf.unlink(missing_ok=True)
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--run-all-compositor-stages-before-draw", "--virtual-time-budget=90000",
                    "--no-pdf-header-footer", f"--print-to-pdf={pdf}", page.as_uri()],
                   check=True, capture_output=True, timeout=900)
    if not pdf.exists() or pdf_pages(pdf) == 0:
        raise SystemExit(f"Chromium wrote no PDF at {pdf}")
    return pdf


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-pdf", action="store_true", help="build the website only")
    args = parser.parse_args(argv)
    build_html()
    print(f"website: {HTML / 'index.html'}")
    if args.no_pdf:
        return 0
    browser = chromium()
    if browser is None:
        message = ("no Chromium found, so no PDF was built: install Debian's chromium "
                   "(apt-get install chromium) and run this again")
        if os.environ.get("CI") == "true":
            print(f"error: {message}", file=sys.stderr)
            return 1
        print(f"note: {message}")
        return 0
    pdf = build_pdf(browser)
    STAMP.write_text(sources_digest() + "\n")
    print(f"PDF: {pdf} ({pdf_pages(pdf)} pages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
