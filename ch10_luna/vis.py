"""Chapter 10: look at a candidate, in the whole CT and in the 32x48x48 crop the model sees.

    python ch10_luna/vis.py              # the largest nodule (the synthetic sample without LUNA16)
    python ch10_luna/vis.py 1.3.6.1.4.1.14519.5.2.1.6279.6001.100225287222365663678666836860
    python ch10_luna/vis.py SERIES_UID --index 3 --out runs/ch10

Writes runs/ch10/candidate_<series uid>_<index>.png, the book's `showCandidate` figure: the
three orthogonal slices of the full CT through the candidate (index = axial, row = coronal,
col = sagittal; the crop's box drawn in), the same three slices through the middle of the crop,
then crop slices 9, 11, 13, 15, 16, 17, 19, 21, 23 (of 32), in the lung window the CT views share
(common/figures.py, -1000..400 HU); the box is cyan for a nodule, violet for a non-nodule.
`--index` picks among the series' candidates in `read_candidates` order (nodules first,
largest first); the default is its first nodule. Unlike the book, the side views use the true
voxel aspect (slices are thicker than pixels are wide), so anatomy is not squashed.
"""
import argparse
import warnings
from pathlib import Path

from ch10_luna.dsets import LunaDataset, cached_ct, locate_luna, read_candidates
from common.ct import crop_bounds, to_hu
from common.data import add_data_dir_argument
from common.errors import DataError, run_cli
from common.figures import (
    FILTERED_COLOR,
    LABEL_COLOR,
    add_legend,
    new_figure,
    save_figure,
    show_ct,
)
from common.files import runs_dir

DEFAULT_OUT = str(runs_dir("ch10"))
GRID_SLICES = ((9, 11, 13), (15, 16, 17), (19, 21, 23))


def positive_samples(candidates, limit=100):
    """The book's findPositiveSamples: the first `limit` nodules (largest first when sorted)."""
    return [c for c in candidates if c.is_nodule][:limit]


def series_candidates(candidates, series_uid):
    return [c for c in candidates if c.series_uid == series_uid]


def pick_candidate(candidates, series_uid, index=None):
    """(index, Candidate) in one series; default: its first nodule, else its first candidate."""
    mine = series_candidates(candidates, series_uid)
    if not mine:
        raise DataError(f"series {series_uid} has no candidate in candidates.csv")
    if index is None:
        index = next((i for i, c in enumerate(mine) if c.is_nodule), 0)
    if not 0 <= index < len(mine):
        raise DataError(f"--index {index}: series {series_uid} has {len(mine)} candidates "
                        f"(0..{len(mine) - 1})")
    return index, mine[index]


def show_candidate(ct, crop, center_irc, title, is_nodule=None):
    """The figure: 3 full-CT slices, 3 crop slices, a 3x3 grid of crop slices; the crop's box
    in the annotation colour for a nodule, the filtered-out one for a non-nodule (None: the
    annotation colour, no legend)."""
    from matplotlib.patches import Rectangle

    i, r, c = (int(v) for v in center_irc)
    sx, sy, sz = ct.spacing_xyz
    bounds = crop_bounds(center_irc, crop.shape, ct.shape)     # where the crop came from
    (i0, i1), (r0, r1), (c0, c1) = bounds
    side = sz / sx                                             # pixel height/width in side views
    views = [  # (title, image, aspect, box (x0, x1, y0, y1) or None, index axis vertical)
        (f"index {i}", to_hu(ct.voxels[i]), sy / sx, (c0, c1, r0, r1), False),
        (f"row {r}", to_hu(ct.voxels[:, r, :]), side, (c0, c1, i0, i1), True),
        (f"col {c}", to_hu(ct.voxels[:, :, c]), sz / sy, (r0, r1, i0, i1), True),
        ("crop: index", crop[crop.shape[0] // 2], sy / sx, None, False),
        ("crop: row", crop[:, crop.shape[1] // 2], side, None, True),
        ("crop: col", crop[:, :, crop.shape[2] // 2], sz / sy, None, True),
    ]
    views += [(f"slice {s}", crop[s], sy / sx, None, False) for row in GRID_SLICES for s in row]
    box_color = FILTERED_COLOR if is_nodule is False else LABEL_COLOR
    fig = new_figure(figsize=(12, 21))
    axes = fig.subplots(2 + len(GRID_SLICES), 3)
    for ax, (name, image, aspect, box, vertical_index) in zip(axes.flat, views, strict=True):
        # Index axis drawn upwards (the book inverts y): the head is at the top.
        show_ct(ax, image, aspect, "lower" if vertical_index else "upper")
        if box is not None:
            x0, x1, y0, y1 = box
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False,
                                   edgecolor=box_color, linewidth=1))
        ax.set_title(name)
    if is_nodule is not None:
        add_legend(axes.flat[0], ("label" if is_nodule else "filtered",), loc="lower left",
                   fontsize=8, marker="s", texts={"label": "crop: annotated nodule",
                                                  "filtered": "crop: candidate, not a nodule"})
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    return fig


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("series_uid", nargs="?", default=None,
                   help="series to show (default: the one with the largest nodule)")
    p.add_argument("--index", type=int, default=None,
                   help="candidate index within the series (default: its first nodule)")
    add_data_dir_argument(p)
    p.add_argument("--synthetic", action="store_true",
                   help="use the built-in synthetic sample even if LUNA16 is present")
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for the PNG (default: %(default)s)")
    args = p.parse_args(argv)

    luna = locate_luna(args.data_dir, args.synthetic)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                 # absent series: expected with few subsets
        candidates = read_candidates(luna)
    positives = positive_samples(candidates)
    uid = args.series_uid
    if uid is None:
        uid = (positives[0] if positives else candidates[0]).series_uid
    elif uid not in luna.series:
        raise DataError(f"series {uid} is not on disk under {luna.root}")
    print(f"{len(candidates):,} candidates in the series on disk, "
          f"{sum(c.is_nodule for c in candidates):,} of them nodules; the largest:")
    for n, c in enumerate(positives[:5]):
        print(f"  {n}: {c.diameter_mm:5.1f} mm  {c.series_uid}  xyz "
              f"({', '.join(f'{v:.1f}' for v in c.center_xyz)})")

    index, candidate = pick_candidate(candidates, uid, args.index)
    if not candidate.is_nodule and args.index is None:
        print(f"warning: series {uid} has no nodule; showing its first candidate")
    x, _label, _uid, center_irc = LunaDataset([candidate], luna.series)[0]
    crop = x[0].numpy()                                    # (32, 48, 48) HU
    ct = cached_ct(luna.series[uid])
    center_irc = tuple(int(v) for v in center_irc)
    title = (f"series {uid}\ncandidate {index}: is_nodule {candidate.is_nodule}, "
             f"diameter {candidate.diameter_mm:.1f} mm, center irc {center_irc}, "
             f"CT {ct.shape}{'  [synthetic]' if luna.synthetic else ''}")
    fig = show_candidate(ct, crop, center_irc, title, candidate.is_nodule)
    path = save_figure(fig, Path(args.out) / f"candidate_{uid}_{index}.png", dpi=80,
                       tight_layout=False)                 # laid out with room for the title
    print(f"candidate {index} of series {uid} (is_nodule {candidate.is_nodule}, diameter "
          f"{candidate.diameter_mm:.1f} mm, center irc {center_irc}) -> {path}")
    return {"path": path, "series_uid": uid, "index": index, "candidate": candidate,
            "center_irc": center_irc, "positives": positives}


if __name__ == "__main__":
    run_cli(main)
