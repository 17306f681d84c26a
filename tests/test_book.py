"""The book's consistency guarantee, and proof that it can fail.

Strict nbval (configured in pyproject.toml) re-executes every chapter notebook and compares each
stored output. The tests here check what nbval cannot: that the text side of every pair has the
same cells as the executed notebook, that every code cell was executed in order, and that the toc
and the chapters match. The last three tests break temporary copies of a real chapter in the three
ways that matter (a drifted pair, a tampered output, NumPy disagreeing with torch) and show that
each is caught.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tools import book

ROOT = Path(__file__).resolve().parent.parent
PAIRS = book.chapter_pairs()
FIRST = ROOT / "book" / "01_gradient_descent"


def test_there_are_chapters():
    assert PAIRS, "no chapters found in book/"


@pytest.mark.parametrize("md,ipynb", PAIRS, ids=[p[0].stem for p in PAIRS])
def test_pair_in_sync(md, ipynb):
    assert book.pair_problems(md, ipynb) == []


@pytest.mark.parametrize("md,ipynb", PAIRS, ids=[p[0].stem for p in PAIRS])
def test_notebook_executed_in_order(md, ipynb):
    assert book.execution_problems(ipynb) == []


def test_toc_matches_chapters():
    assert book.toc_problems() == []


def test_config_excludes_the_text_side_of_pairs():
    import yaml

    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert "book/[0-9][0-9]_*.md" in config["exclude_patterns"]
    assert config["execute"]["execute_notebooks"] == "off"
    assert config["only_build_toc_files"] is True


# --- the guarantee can fail -------------------------------------------------------------------

def _copy_pair(tmp_path: Path) -> tuple[Path, Path]:
    md, nb = tmp_path / FIRST.with_suffix(".md").name, tmp_path / FIRST.with_suffix(".ipynb").name
    shutil.copy(FIRST.with_suffix(".md"), md)
    shutil.copy(FIRST.with_suffix(".ipynb"), nb)
    return md, nb


def _run_nbval(notebook: Path) -> subprocess.CompletedProcess:
    """Run strict nbval on one notebook in a separate pytest process, as the test command does."""
    ini = notebook.parent / "pytest.ini"
    ini.write_text("[pytest]\n")
    sanitize = ROOT / "tests" / "nbval_sanitize.cfg"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-c", str(ini), "-p", "no:cacheprovider",
         "-p", "no:xdist", "--nbval", "--nbval-current-env", "--nbval-sanitize-with", str(sanitize),
         str(notebook)],
        cwd=notebook.parent, capture_output=True, text=True, timeout=600)


def _truncated(nb: dict, until) -> dict:
    """The notebook's cells up to and including the first code cell for which ``until`` holds."""
    cells = []
    for c in nb["cells"]:
        cells.append(c)
        if c["cell_type"] == "code" and until(c):
            return {**nb, "cells": cells}
    raise AssertionError("no cell matched")


def test_drifted_pair_is_caught(tmp_path):
    md, nb = _copy_pair(tmp_path)
    assert book.pair_problems(md, nb) == []
    text = md.read_text()
    edited = text.replace("return x - lr * g", "return x - 0.5 * lr * g", 1)
    assert edited != text
    md.write_text(edited)
    problems = book.pair_problems(md, nb)
    assert len(problems) == 1 and "differs" in problems[0]


def test_tampered_output_is_caught(tmp_path):
    nb = json.loads(FIRST.with_suffix(".ipynb").read_text())

    def prints(cell):
        return any(o.get("output_type") == "stream" for o in cell.get("outputs", []))

    short = _truncated(nb, prints)
    good = tmp_path / "good.ipynb"
    good.write_text(json.dumps(short))
    result = _run_nbval(good)
    assert result.returncode == 0, result.stdout[-3000:]

    stream = next(o for o in short["cells"][-1]["outputs"] if o.get("output_type") == "stream")
    text = "".join(stream["text"])
    tampered_text = text.replace("1000", "999", 1)
    assert tampered_text != text
    stream["text"] = tampered_text
    bad = tmp_path / "tampered.ipynb"
    bad.write_text(json.dumps(short))
    result = _run_nbval(bad)
    assert result.returncode == 1, result.stdout[-3000:]
    assert "1 failed" in result.stdout


def test_numpy_torch_disagreement_is_caught(tmp_path):
    nb = json.loads(FIRST.with_suffix(".ipynb").read_text())
    marker = "optimizers.SGD(p, lr=lr)"
    short = _truncated(nb, lambda c: marker in "".join(c["source"]))
    # Simulate the package drifting from the derivation by one part in a million: the chapter's
    # assertion of the torch trajectory against the NumPy one must fire.
    cell = short["cells"][-1]
    src = "".join(cell["source"])
    cell["source"] = src.replace(marker, "optimizers.SGD(p, lr=lr * (1 + 1e-6))")
    assert cell["source"] != src
    bad = tmp_path / "disagree.ipynb"
    bad.write_text(json.dumps(short))
    result = _run_nbval(bad)
    assert result.returncode == 1, result.stdout[-3000:]
    assert "1 failed" in result.stdout
    assert "Not equal to tolerance" in result.stdout


# --- numbers in the prose ---------------------------------------------------------------------

def test_hand_typed_numbers_are_reported(tmp_path):
    md = tmp_path / "99_sample.md"
    md.write_text(
        "---\njupytext:\n  text_representation:\n    format_name: myst\n---\n\n"
        "# Sample\n\nAfter 200 steps the loss falls to 0.031, as chapter 3 predicts for\n"
        "$\\eta = 2/L$ (Polyak, 1964); the glued value {glue:text}`ch99_loss:.3g` and `lr=0.5` in\n"
        "code are not typed by hand, nor are two panels. A typed result in math: $0.25$.\n\n"
        "```{code-cell} ipython3\nx = 0.123\n```\n")
    found = [number for _, number, _ in book.hand_typed_numbers(md)]
    assert found == ["200", "0.031", "0.25"]


def test_glued_number_is_compared_by_nbval(tmp_path):
    """A glued value is a stored output like any other: tampering with it fails strict nbval."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "from optimizers.book.prose import glue_number\n"
        "print(glue_number('ch99_pi', 3.14159265, digits=3))")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(nb, kernel_name="python3").execute()
    good = tmp_path / "glued.ipynb"
    nbformat.write(nb, good)
    assert _run_nbval(good).returncode == 0
    record = next(o for o in nb.cells[0].outputs if o.output_type == "display_data")
    assert record.data["application/papermill.record/text/plain"] == "3.14"
    record.data["application/papermill.record/text/plain"] = "3.15"
    bad = tmp_path / "tampered_glue.ipynb"
    nbformat.write(nb, bad)
    result = _run_nbval(bad)
    assert result.returncode == 1, result.stdout[-3000:]


def test_glued_values_are_rounded_to_what_the_text_shows():
    from optimizers.book.prose import rounded

    assert rounded(0.0123456, 2) == 0.012
    assert rounded(123456.0, 3) == 123000.0
    assert rounded(7) == 7 and isinstance(rounded(7), int)
    assert rounded(float("inf")) == float("inf")


def test_landing_page_lists_every_chapter():
    intro = (ROOT / "book" / "intro.md").read_text()
    missing = [md.stem for md, _ in PAIRS if f"{{doc}}`{md.stem}`" not in intro]
    assert missing == [], f"book/intro.md does not list these chapters: {missing}"


def test_bibliography_entries_render_cleanly():
    """No raw math in the bibliography (it is shown as text), and every arXiv reference is an
    ``eprint`` (rendered as a link), never a bare note."""
    bib = (ROOT / "references.bib").read_text()
    assert "$" not in bib
    assert re.findall(r"note\s*=\s*\{arXiv", bib, flags=re.I) == []
