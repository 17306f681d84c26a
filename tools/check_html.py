"""Check a built book: every page loads MathJax from the build itself, and that file exists.

Usage: ``python tools/check_html.py _build/html``. Exits non-zero (listing the pages) if any page
would need a network connection to typeset its math.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path


def problems(html_dir: Path) -> list[str]:
    found = []
    pages = sorted(html_dir.rglob("*.html"))
    if not pages:
        return [f"no HTML pages under {html_dir}"]
    mathjax = html_dir / "_static" / "mathjax" / "tex-chtml.js"
    if not mathjax.exists():
        found.append(f"{mathjax} is missing")
    for page in pages:
        text = page.read_text(errors="replace")
        for src in re.findall(r'<script[^>]+src="([^"]*mathjax[^"]*)"', text, flags=re.I):
            if src.startswith(("http:", "https:", "//")):
                found.append(f"{page.relative_to(html_dir)} loads MathJax from {src}")
    return found


if __name__ == "__main__":
    html = Path(sys.argv[1] if len(sys.argv) > 1 else "_build/html")
    issues = problems(html)
    print("\n".join(issues) if issues else f"MathJax is served locally by every page in {html}")
    sys.exit(1 if issues else 0)
