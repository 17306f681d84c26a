"""Figure layouts that stay legible on a phone.

On a phone 400 px wide the book's content column is about 352 px wide, and a figure is scaled
down to it. At the book style's text sizes (9 pt legends, 10 pt ticks) a figure 6.4 inches wide
(about 630 px once the notebook crops it) keeps its legend text 7 px high and its tick labels about
8 px; a figure 11 inches wide, two panels side by side, shrinks them to 4-5 px. So several panels
are stacked in a column instead of set side by side. Importing this module applies
the book style (it imports :mod:`optimizers.book.plot`).
"""
from __future__ import annotations

from .plot import plt

__all__ = ["PHONE_WIDTH", "PANEL_HEIGHT", "CONSTRAINED_WIDTH", "stacked"]

PHONE_WIDTH = 6.4    # inches: the style's default figure width
PANEL_HEIGHT = 3.2   # inches per stacked panel
CONSTRAINED_WIDTH = 6.2  # inches: a constrained layout's figure, cropped, shows as wide as PHONE_WIDTH


def stacked(n: int, height: float = PANEL_HEIGHT, sharex: bool = False, width: float | None = None,
            **subplots_kw):
    """``n`` panels in one column, ``width`` inches wide and ``height`` inches each.

    ``sharex=True`` drops the repeated x tick labels of the upper panels (use it when the panels
    share the same x quantity, e.g. the step). Other keywords (e.g. ``layout="constrained"``, for a
    figure legend placed ``"outside lower center"``) go to ``plt.subplots``, whose ``(fig, axes)`` is
    returned.

    A constrained layout fills the figure to its edges, so the notebook's tight-cropped PNG comes
    out about 0.2 inches wider than a ``tight_layout`` figure of the same size; with
    ``layout="constrained"`` and no explicit ``width``, the width is :data:`CONSTRAINED_WIDTH`, so
    that every figure is shown at the same scale and its text at the same size.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if width is None:
        width = CONSTRAINED_WIDTH if subplots_kw.get("layout") == "constrained" else PHONE_WIDTH
    if width > 7:
        raise ValueError(f"width must be at most 7 inches to stay legible on a phone, got {width}")
    return plt.subplots(n, 1, figsize=(width, height * n), sharex=sharex, **subplots_kw)
