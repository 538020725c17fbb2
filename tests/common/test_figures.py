"""common/figures.py: save_figure writes the PNG, makes its folder, closes the figure; the lung
window and the colour legend the CT views share."""
import struct

import numpy as np
import pytest

from common.figures import (
    DETECTED_COLOR,
    FILTERED_COLOR,
    FP_COLOR,
    LABEL_COLOR,
    LEGEND,
    LUNG_WINDOW_HU,
    MASK_COLOR,
    MISSED_COLOR,
    TP_COLOR,
    add_legend,
    lung_gray,
    new_figure,
    save_figure,
    show_ct,
)


@pytest.fixture
def plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    yield plt
    plt.close("all")


def png_size(path):
    """(width, height) in pixels from the PNG header."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_writes_png_in_a_new_folder_and_closes_the_figure(plt, tmp_path):
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [1, 0])
    target = tmp_path / "a" / "b" / "line.png"
    path = save_figure(fig, str(target))
    assert path == target                              # a Path, even from a str
    assert png_size(path) == (200, 100)                # 2 x 1 inches at the default 100 dpi
    assert not plt.fignum_exists(fig.number)


def test_dpi_sets_the_pixel_size(plt, tmp_path):
    fig = plt.figure(figsize=(2, 1))
    assert png_size(save_figure(fig, tmp_path / "x.png", dpi=80)) == (160, 80)


def test_tight_layout_is_applied_unless_turned_off(plt, tmp_path):
    margins = {}
    for tight in (True, False):
        fig, ax = plt.subplots(figsize=(3, 2))
        ax.set_ylabel("label")
        default_left = fig.subplotpars.left
        save_figure(fig, tmp_path / f"{tight}.png", tight_layout=tight)
        margins[tight] = fig.subplotpars.left
    assert margins[False] == default_left
    assert margins[True] != default_left


def test_savefig_keywords_pass_through(plt, tmp_path):
    fig = plt.figure(figsize=(4, 4))
    fig.text(0.5, 0.5, "x")
    width, height = png_size(save_figure(fig, tmp_path / "tight.png", tight_layout=False,
                                         bbox_inches="tight"))
    assert width < 400 and height < 400                # cropped to the text


def test_lung_window_maps_air_to_black_and_soft_tissue_up_to_white():
    low, high = LUNG_WINDOW_HU
    hu = np.array([[-1000.0, (low + high) / 2, high, 1000.0, -2000.0]])
    image = lung_gray(hu)
    assert image.shape == (1, 5, 3) and image.dtype == np.float32
    assert image[0, :, 0].tolist() == [0.0, 0.5, 1.0, 1.0, 0.0]
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()


def test_show_ct_draws_in_the_lung_window_without_ticks():
    fig = new_figure()
    ax = fig.subplots()
    image = show_ct(ax, np.zeros((4, 6)), aspect=2.5, origin="lower")
    assert image.get_clim() == LUNG_WINDOW_HU
    assert ax.get_xticks().size == ax.get_yticks().size == 0
    assert ax.get_aspect() == 2.5 and image.origin == "lower"


def test_legend_entries_carry_the_shared_colours():
    colors = [TP_COLOR, FP_COLOR, MISSED_COLOR, FILTERED_COLOR, LABEL_COLOR, MASK_COLOR,
              DETECTED_COLOR]
    assert len(set(colors)) == len(colors) == len(LEGEND)      # one colour per meaning
    fig = new_figure()
    legend = add_legend(fig, ("tp", "missed"), texts={"missed": "labelled, not predicted"})
    assert [t.get_text() for t in legend.get_texts()] == [LEGEND["tp"][1],
                                                          "labelled, not predicted"]
    assert [h.get_markeredgecolor() for h in legend.legend_handles] == [TP_COLOR, MISSED_COLOR]
    boxes = add_legend(fig.subplots(), ("label",), marker="s")
    assert boxes.legend_handles[0].get_marker() == "s"
