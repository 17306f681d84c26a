"""Figure layouts that stay legible on a phone.

A phone shows a figure at about 400 px wide. At the book style's text sizes (9 pt legends, 10 pt
ticks) the text stays at least 7 px high only if the figure is at most about 7 inches wide, so
several panels are stacked in a column instead of set side by side. Importing this module applies
the book style (it imports :mod:`optimizers.book.plot`).
"""
from __future__ import annotations

from .plot import plt

__all__ = ["PHONE_WIDTH", "PANEL_HEIGHT", "stacked"]

PHONE_WIDTH = 6.4    # inches: the style's default figure width
PANEL_HEIGHT = 3.2   # inches per stacked panel


def stacked(n: int, height: float = PANEL_HEIGHT, sharex: bool = False, width: float = PHONE_WIDTH,
            **subplots_kw):
    """``n`` panels in one column, ``width`` inches wide and ``height`` inches each.

    ``sharex=True`` drops the repeated x tick labels of the upper panels (use it when the panels
    share the same x quantity, e.g. the step). Other keywords (e.g. ``layout="constrained"``, for a
    figure legend placed ``"outside lower center"``) go to ``plt.subplots``, whose ``(fig, axes)`` is
    returned.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if width > 7:
        raise ValueError(f"width must be at most 7 inches to stay legible on a phone, got {width}")
    return plt.subplots(n, 1, figsize=(width, height * n), sharex=sharex, **subplots_kw)
