"""Keep the book's chapter pairs consistent: execute them, and check them.

Every chapter is a Jupytext pair: ``book/NN_name.md`` (MyST text, the file people edit and
review) and ``book/NN_name.ipynb`` (the same cells with executed outputs: what the rendered book
shows and what strict nbval re-executes and compares).

Usage (from the repository root)::

    python tools/book.py execute book/01_gradient_descent.md   # .md -> executed .ipynb
    python tools/book.py execute --all                          # every chapter
    python tools/book.py check                                  # pairs, execution, toc

``execute`` rebuilds the notebook from the text file and runs it top to bottom in a fresh kernel
(working directory ``book/``), so the stored outputs are exactly what a reader re-running the
chapter gets. ``check`` is what ``tests/test_book.py`` asserts.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
KERNEL = "python3"


def chapter_pairs(book_dir: Path = BOOK) -> list[tuple[Path, Path]]:
    """All (text, notebook) pairs in ``book_dir``; a chapter is any ``NN_*.md`` or ``NN_*.ipynb``."""
    stems = sorted({p.stem for p in book_dir.glob("[0-9][0-9]_*") if p.suffix in (".md", ".ipynb")})
    return [(book_dir / f"{s}.md", book_dir / f"{s}.ipynb") for s in stems]


def _cells(path: Path):
    import jupytext

    return [(c.cell_type, c.source.strip()) for c in jupytext.read(path).cells]


def pair_problems(md: Path, ipynb: Path) -> list[str]:
    """Differences between the two sides of a pair (missing file, cell count, cell type or source)."""
    missing = [str(p) for p in (md, ipynb) if not p.exists()]
    if missing:
        return [f"{', '.join(missing)} missing: every chapter needs both sides of the pair"]
    a, b = _cells(md), _cells(ipynb)
    problems = []
    if len(a) != len(b):
        problems.append(f"{md.name} has {len(a)} cells, {ipynb.name} has {len(b)}")
    for i, (ca, cb) in enumerate(zip(a, b)):
        if ca != cb:
            first = ca[1].splitlines()[:1] or [""]
            problems.append(f"cell {i} of {md.name} differs from {ipynb.name} (starts {first[0][:60]!r})")
            break
    return problems


def execution_problems(ipynb: Path) -> list[str]:
    """Code cells never executed, or executed out of order (nbval skips unexecuted cells)."""
    nb = json.loads(ipynb.read_text())
    counts = [c.get("execution_count") for c in nb["cells"]
              if c["cell_type"] == "code" and "".join(c["source"]).strip()]
    problems = []
    if any(c is None for c in counts):
        problems.append(f"{ipynb.name}: {counts.count(None)} code cell(s) never executed")
    elif counts != list(range(1, len(counts) + 1)):
        problems.append(f"{ipynb.name}: cells not executed top to bottom in one kernel ({counts})")
    for c in nb["cells"]:
        for out in c.get("outputs", []):
            if out.get("output_type") == "error":
                problems.append(f"{ipynb.name}: a stored output is an error ({out.get('ename')})")
    return problems


def toc_entries(root: Path = ROOT) -> list[str]:
    """Every ``file:`` (and the root) in ``_toc.yml``, in order."""
    import yaml

    toc = yaml.safe_load((root / "_toc.yml").read_text())
    found = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                found.append(node["file"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk({k: v for k, v in toc.items() if k != "root"})
    return found


def toc_problems(root: Path = ROOT) -> list[str]:
    """Toc entries with no source file, and chapters missing from the toc."""
    entries = toc_entries(root)
    problems = []
    for e in entries:
        if not any((root / f"{e}{ext}").exists() for ext in (".ipynb", ".md")):
            problems.append(f"_toc.yml names {e!r} but no {e}.ipynb or {e}.md exists")
    listed = set(entries)
    for md, ipynb in chapter_pairs(root / "book"):
        entry = str(ipynb.relative_to(root).with_suffix(""))
        if entry not in listed:
            problems.append(f"chapter {entry} is not in _toc.yml")
    return problems


def all_problems(root: Path = ROOT) -> list[str]:
    problems = toc_problems(root)
    for md, ipynb in chapter_pairs(root / "book"):
        problems += pair_problems(md, ipynb)
        if ipynb.exists():
            problems += execution_problems(ipynb)
    return problems


# --- numbers typed by hand in the prose -------------------------------------------------------

_STRIP = [
    re.compile(r"^(```|~~~|:::).*?^\1", re.S | re.M),       # fenced blocks and directives
    re.compile(r"\$\$.*?\$\$", re.S),                         # display math
    re.compile(r"\{[\w:-]+\}`[^`]*`"),                         # roles: {glue:text}`k:.3g`, {footcite}`x`
    re.compile(r"``.*?``|`[^`]*`"),                              # inline code
    re.compile(r"\]\([^)]*\)"),                                 # link targets
    re.compile(r"<!--.*?-->", re.S),                             # comments
    re.compile(r"^\s*(?:\d+\.|[-*+])\s", re.M),                  # list markers
    re.compile(r"\((?:eq|fig|sec)-[\w-]+\)|\{(?:eq|numref|ref)\}`[^`]*`"),  # labels, references
]
# A number that is a name, not a result: "chapter 3", "exercise 2", "equation (4)", a year.
_NAMING = re.compile(r"(?:chapters?|sections?|exercises?|equations?|figures?|parts?|tables?|algorithm"
                     r"|theorem|lemma|version|appendix)\s*\(?$", re.I)
_NUMBER = re.compile(r"(?<![\w.\\])\d+(?:\.\d+)?(?:[eE][-+]?\d+)?%?(?![\w])")
_INLINE_MATH = re.compile(r"\$[^$]+\$")
_RESULT_LIKE_IN_MATH = re.compile(r"\.|[eE]|%|^\d{3,}$")
_YEAR = re.compile(r"^(?:19|20)\d\d$")


def hand_typed_numbers(md: Path) -> list[tuple[int, str, str]]:
    """Numbers in the prose of ``md`` that are typed by hand: (cell index, number, context).

    What is not counted: code cells, display math, roles (``{glue:text}``, citations,
    references), inline code, link targets, list markers, years, and numbers that name a
    chapter, section, exercise, equation, figure, or table ("chapter 3"), single digits
    outside math ("two panels", "3 seeds" read as words), and integers of one or two digits in
    inline math (the 2 of $2/L$). A decimal in inline math is counted: a result written as
    ``$0.031$`` is still typed by hand. What remains should be an
    input the reader is told (a learning rate the experiment uses is glued too) or a number that
    is not about the computation; the report is for the reviewer, it does not fail.
    """
    import jupytext

    found = []
    for i, cell in enumerate(jupytext.read(md).cells):
        if cell.cell_type != "markdown":
            continue
        text = cell.source
        for pattern in _STRIP:
            text = pattern.sub(" ", text)
        math = [m.span() for m in _INLINE_MATH.finditer(text)]
        for m in _NUMBER.finditer(text):
            number, before = m.group(), text[max(0, m.start() - 20):m.start()]
            in_math = any(a <= m.start() < b for a, b in math)
            if in_math and not _RESULT_LIKE_IN_MATH.search(number):
                continue          # symbols and constants of a formula: 2/L, x_{t+1}, (1 - beta)
            if not in_math and len(number) == 1:
                continue          # "two panels", "step 1": small counts read as words
            if _YEAR.match(number) or _NAMING.search(before.rstrip("$ ~")):
                continue
            context = " ".join(text[max(0, m.start() - 40):m.end() + 30].split())
            found.append((i, number, context))
    return found


def execute(md: Path, timeout: int = 600) -> Path:
    """Rebuild ``md``'s notebook from the text and execute it top to bottom in a fresh kernel."""
    import jupytext
    from nbclient import NotebookClient

    md = Path(md).resolve()
    if md.suffix == ".ipynb":
        md = md.with_suffix(".md")
    nb = jupytext.read(md)
    nb.metadata.pop("jupytext", None)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": KERNEL}
    client = NotebookClient(nb, timeout=timeout, kernel_name=KERNEL, record_timing=False,
                            resources={"metadata": {"path": str(md.parent)}})
    client.execute()
    out = md.with_suffix(".ipynb")
    jupytext.write(nb, out, fmt="ipynb")
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("execute", help="rebuild and execute chapter notebooks from their text files")
    ex.add_argument("chapters", nargs="*", type=Path)
    ex.add_argument("--all", action="store_true")
    sub.add_parser("check", help="report unsynced pairs, unexecuted cells and toc problems, "
                                 "and count the numbers still typed by hand in each chapter's prose")
    num = sub.add_parser("numbers", help="list the numbers typed by hand in the prose, with context")
    num.add_argument("chapters", nargs="*", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "execute":
        chapters = [md for md, _ in chapter_pairs()] if args.all else args.chapters
        if not chapters:
            parser.error("name chapters or pass --all")
        for md in chapters:
            print(f"executing {md} ...", flush=True)
            print(f"  wrote {execute(md)}")
        return 0
    if args.cmd == "numbers":
        for md in args.chapters or [md for md, _ in chapter_pairs()]:
            for i, number, context in hand_typed_numbers(Path(md).with_suffix(".md")):
                print(f"{Path(md).stem} cell {i}: {number:>8}   ... {context} ...")
        return 0
    counts = {md.stem: len(hand_typed_numbers(md)) for md, _ in chapter_pairs() if md.exists()}
    print("numbers typed by hand in the prose (tools/book.py numbers lists them): "
          + ", ".join(f"{k[:2]}: {v}" for k, v in counts.items()) + f"; total {sum(counts.values())}")
    problems = all_problems()
    print("\n".join(problems) if problems else "book is consistent")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
