"""Plotting helpers shared by the chapters (the only module of the package that imports matplotlib).

The figures are drawn from data the chapter computed in the cells above; nothing here computes
an optimizer step.
"""
from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np

from .problems import Problem

__all__ = ["use_book_style", "contours", "trajectories", "loss_curves"]

_COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]


def use_book_style() -> None:
    """One style for every figure of the book, identical on every machine.

    A colour-blind-safe palette, a light grid, text sizes chosen so that a figure of the book's
    usual width (up to 11 inches, two panels) stays legible when a phone shrinks it to the
    screen, legends placed where they cover the fewest points, and high-density output (PNG at
    twice the resolution, shown at the same size) so lines stay sharp on high-density screens.
    The figure's logical size (``figure.dpi``) is unchanged, so the ``<Figure size ...>`` text
    that nbval compares is too.
    """
    plt.rcParams.update({
        "figure.figsize": (6.4, 4.0),
        "figure.dpi": 100,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.prop_cycle": plt.cycler(color=_COLORS),
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.titlesize": 11,
        "axes.labelsize": 10,
        "legend.frameon": True,
        "legend.framealpha": 0.85,
        "legend.edgecolor": "none",
        "legend.loc": "best",
        "legend.fontsize": 9,
        "lines.linewidth": 1.8,
        "font.size": 10,
    })
    try:   # inside IPython / Jupyter: high-density PNGs
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("retina")
    except ImportError:
        pass


use_book_style()


def contours(problem: Problem, ax=None, levels: int = 25, log: bool = True, n: int = 300,
             xlim=None, ylim=None):
    """Draw the level sets of a 2-D problem (log-spaced by default) and mark its minimizer."""
    if ax is None:
        _, ax = plt.subplots()
    xlim = problem.xlim if xlim is None else xlim
    ylim = problem.ylim if ylim is None else ylim
    xs = np.linspace(*xlim, n)
    ys = np.linspace(*ylim, n)
    X, Y = np.meshgrid(xs, ys)
    Z = problem.f(np.stack([X, Y]))
    if log:
        zmin = max(float(Z.min()), 0.0)
        lv = zmin + np.geomspace(1e-3, 1.0, levels) * (float(Z.max()) - zmin)
        ax.contour(X, Y, Z, levels=np.unique(lv), cmap="Greys_r", linewidths=0.6, alpha=0.7)
    else:
        ax.contour(X, Y, Z, levels=levels, cmap="Greys_r", linewidths=0.6, alpha=0.7)
    ax.plot(*problem.minimizer, marker="*", color="black", markersize=11, linestyle="none")
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    ax.grid(False)
    return ax


def trajectories(problem: Problem, paths: Mapping[str, np.ndarray], ax=None, title=None,
                 markers: bool = True, **contour_kw):
    """Contours of ``problem`` with one polyline per trajectory (rows are iterates)."""
    ax = contours(problem, ax=ax, **contour_kw)
    for i, (label, path) in enumerate(paths.items()):
        path = np.asarray(path)
        color = _COLORS[i % len(_COLORS)]
        ax.plot(path[:, 0], path[:, 1], "-", color=color, lw=1.4, label=label,
                marker="o" if markers else None, markersize=2.5)
        ax.plot(path[0, 0], path[0, 1], "s", color=color, markersize=5)
    ax.legend(loc="best")
    if title:
        ax.set_title(title)
    return ax


def loss_curves(curves: Mapping[str, np.ndarray], ax=None, log: bool = True, xlabel="step",
                ylabel="loss", title=None):
    """One line per labelled sequence; log-scaled y by default."""
    if ax is None:
        _, ax = plt.subplots()
    for label, ys in curves.items():
        ax.plot(np.arange(len(ys)), ys, label=label, lw=1.5)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.legend()
    return ax
