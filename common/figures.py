"""Figures as PNG: built on matplotlib.figure.Figure (the user's backend is never switched)
and written through the atomic writer, the one place scripts save a picture.

The CT pictures of chapters 10-14 (ch10_luna/vis.py's candidate, train_seg's overlays, the
analysis picture of ch13_segment/analysis_outputs.py) share one lung window (LUNG_WINDOW_HU)
and one colour per meaning (the *_COLOR constants, LEGEND and add_legend).
"""
from pathlib import Path

import numpy as np

from common.files import atomic_path

# Lung window: air (-1000 HU) black, soft tissue (0-100 HU) near white, bone (+400 HU and up)
# white; lung vessels and nodules (-700..+100 HU) stand out against the air of the lung.
LUNG_WINDOW_HU = (-1000.0, 400.0)

# One colour per meaning (RGB in [0, 1]). TP, FP and FN are the book's segmentation overlay
# colours (chapter 13: green, red, orange), which the detections take over.
TP_COLOR = (0.0, 1.0, 0.0)          # detected nodule / predicted and labelled voxel: green
FP_COLOR = (1.0, 0.0, 0.0)          # detection that matches no nodule / predicted only: red
MISSED_COLOR = (1.0, 0.5, 0.0)      # annotated nodule not detected / labelled only: orange
FILTERED_COLOR = (0.75, 0.45, 1.0)  # candidate that is not a nodule (the classifier's or
                                    # candidates.csv's verdict): violet
LABEL_COLOR = (0.0, 0.8, 1.0)       # the annotation, ground truth: cyan
MASK_COLOR = (1.0, 1.0, 0.0)        # the U-Net's mask (P > 0.5) outline: yellow
DETECTED_COLOR = (1.0, 1.0, 1.0)    # detection on a CT without annotations to score it: white

# Legend keys -> (colour, text, marker): the marker is how the figures draw that meaning.
LEGEND = {
    "tp": (TP_COLOR, "TP: detected nodule", "o"),
    "fp": (FP_COLOR, "FP: detection, no nodule", "o"),
    "missed": (MISSED_COLOR, "missed nodule", "o"),
    "filtered": (FILTERED_COLOR, "candidate filtered out", "."),
    "label": (LABEL_COLOR, "annotated nodule", "o"),
    "mask": (MASK_COLOR, "U-Net mask outline", "s"),
    "detected": (DETECTED_COLOR, "detection (no annotations)", "o"),
}


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


def lung_gray(hu):
    """(H, W) HU -> (H, W, 3) float32 gray in [0, 1] through LUNG_WINDOW_HU."""
    low, high = LUNG_WINDOW_HU
    g = np.clip((np.asarray(hu, dtype=np.float32) - low) / (high - low), 0, 1)
    return np.repeat(g[:, :, None], 3, axis=2)


def show_ct(ax, hu, aspect=1.0, origin="upper", extent=None):
    """Draw a (H, W) HU image on `ax` in the lung window, without ticks; `aspect` is a pixel's
    height over its width (the voxel spacings), `origin="lower"` puts row 0 at the bottom."""
    image = ax.imshow(hu, cmap="gray", clim=LUNG_WINDOW_HU, aspect=aspect, origin=origin,
                      extent=extent, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    return image


def add_legend(target, keys=tuple(LEGEND), texts=None, marker=None, **legend_kwargs):
    """A legend of LEGEND entries on a Figure or Axes; `texts` maps a key to other words and
    `marker` replaces every entry's (for a view that draws the same meanings otherwise)."""
    from matplotlib.lines import Line2D

    texts = texts or {}
    handles = []
    for key in keys:
        color, text, default_marker = LEGEND[key]
        marker_here = marker or default_marker
        filled = marker_here not in ("o", "s")      # circles and boxes are drawn open
        handles.append(Line2D([], [], linestyle="none", marker=marker_here, markersize=9,
                              markeredgewidth=2, markeredgecolor=color,
                              markerfacecolor=color if filled else "none",
                              label=texts.get(key, text)))
    legend_kwargs.setdefault("frameon", True)
    legend = target.legend(handles=handles, **legend_kwargs)
    legend.get_frame().set_facecolor((0.15, 0.15, 0.15))
    for text in legend.get_texts():
        text.set_color("white")
    return legend
