"""Figures as PNG: built on matplotlib.figure.Figure (the user's backend is never switched)
and written through the atomic writer, the one place scripts save a picture."""
from pathlib import Path

from common.files import atomic_path


def new_figure(**figure_kwargs):
    """A matplotlib Figure that belongs to no pyplot window: `fig.subplots(...)` draws on it.

    Unlike `pyplot.figure()`, it needs no backend choice, so importing a chapter's plotting
    function into a notebook leaves the notebook's backend alone.
    """
    from matplotlib.figure import Figure

    return Figure(**figure_kwargs)


def save_figure(fig, path, dpi=100, tight_layout=True, **savefig_kwargs):
    """Lay out `fig`, write it atomically to `path` (creating its folder); return the Path.

    `tight_layout=False` keeps a layout the caller already made (constrained layout, a
    `tight_layout(rect=...)`, or `bbox_inches="tight"` among `savefig_kwargs`, which go to
    `fig.savefig`). A figure made by pyplot is closed afterwards, so pyplot no longer holds it.
    """
    if tight_layout:
        fig.tight_layout()
    path = Path(path)
    with atomic_path(path, "figure") as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png", **savefig_kwargs)
    import sys

    if "matplotlib.pyplot" in sys.modules:          # only pyplot keeps figures alive
        sys.modules["matplotlib.pyplot"].close(fig)
    return path
