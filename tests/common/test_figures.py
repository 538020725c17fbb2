"""common/figures.py: save_figure writes the PNG, makes its folder, closes the figure."""
import struct

import pytest

from common.figures import save_figure


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
