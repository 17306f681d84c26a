"""Numbers in the prose come from the computation.

A chapter's sentence such as "after 200 steps the loss is 0.031" must show what the cell above
computed, not a number typed by hand. :func:`glue_number` stores the value under a key with
myst-nb's ``glue`` and the prose refers to it with ``{glue:text}`key:.3g```; the rendered page
shows the stored record, and strict nbval compares that record on every test run, so a changed
result fails the tests instead of silently contradicting the text.

The record is the ``repr`` of the glued value, whatever format the prose applies. A value that
carries all its float digits would therefore differ in the last bits between CPUs (AVX-512,
AVX2, scalar kernels); :func:`glue_number` rounds it first to the significant digits the text
shows, so the record is as portable as the sentence.
"""
from __future__ import annotations

import math
import numbers

__all__ = ["glue_number", "rounded"]


def rounded(value, digits: int = 3):
    """``value`` rounded to ``digits`` significant digits (integers and booleans unchanged)."""
    if isinstance(value, (bool, numbers.Integral)):
        return int(value) if not isinstance(value, bool) else value
    value = float(value)
    if not math.isfinite(value) or value == 0.0:
        return value
    return float(f"{value:.{digits}g}")


def glue_number(name: str, value, digits: int = 3):
    """Glue ``value`` (rounded to ``digits`` significant digits) under ``name``; return the rounded value.

    Use ``{glue:text}`name:.3g``` (or another format with at most ``digits`` significant
    digits) in the prose. The return value lets a chapter print or assert exactly what the reader
    sees. As the last line of a cell write ``_ = glue_number(...)``: a trailing ``;`` hides the
    value in Jupyter but not under nbval, which would then see an extra output.
    """
    from myst_nb import glue

    shown = rounded(value, digits)
    glue(name, shown, display=False)
    return shown
