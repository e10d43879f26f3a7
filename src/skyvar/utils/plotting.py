"""Figures without pyplot: no global figure registry, no backend switch (a notebook keeps its inline
backend, a headless run needs no ``MPLBACKEND``), no figures left open by a long pipeline.

Plot functions build a :class:`matplotlib.figure.Figure` with :func:`subplots` and return it;
:func:`save_or_return` lets the pipelines (and only they) write it to disk.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["subplots", "save_or_return"]

_FIGURE_KW = ("figsize", "dpi", "layout", "constrained_layout", "facecolor")


def subplots(nrows: int = 1, ncols: int = 1, **kwargs):
    """Like ``pyplot.subplots`` (same arguments) but the Figure is not registered with pyplot."""
    from matplotlib.figure import Figure

    fig = Figure(**{k: kwargs.pop(k) for k in _FIGURE_KW if k in kwargs})
    return fig, fig.subplots(nrows, ncols, **kwargs)


def save_or_return(fig, path: str | os.PathLike | None, **kwargs):
    """Write ``fig`` atomically to ``path`` and return the path; with no path, return the Figure."""
    if path is None:
        return fig
    from skyvar.utils.atomic import savefig_atomic

    return savefig_atomic(fig, Path(path), **kwargs)
