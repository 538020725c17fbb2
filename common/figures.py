"""Saving matplotlib figures as PNG: the one place scripts do it."""
from pathlib import Path


def save_figure(fig, path, dpi=100, tight_layout=True, **savefig_kwargs):
    """Lay out `fig`, write it to `path` (creating its folder), close it; return the Path.

    `tight_layout=False` keeps a layout the caller already made (constrained layout, a
    `tight_layout(rect=...)`, or `bbox_inches="tight"` among `savefig_kwargs`, which go to
    `fig.savefig`). The caller chooses the backend (`matplotlib.use("Agg")`) before it imports
    pyplot; this function only closes the figure, so pyplot no longer holds it.
    """
    import matplotlib.pyplot as plt

    if tight_layout:
        fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, **savefig_kwargs)
    plt.close(fig)
    return path
