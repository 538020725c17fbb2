"""Chapter 4.2: volumetric data, a lung CT as a DICOM series.  python ch04_data/volumetric.py

Reads the 99 DICOM slices of 512 x 512 voxels into one (99, 512, 512) array with
imageio's DICOM reader, as the book does, adds a channel axis -> (1, 99, 512, 512), and
reads the same series with SimpleITK through common.ct.load_ct (the reader chapters 10-14
use) to show they agree. Writes runs/ch04/volumetric.png in the repository (slice 50 and two
reformats).

Both readers apply the files' rescale slope and intercept, so both give Hounsfield units
(-1024 .. 3071 here); load_ct's `.hu` is the same volume clipped to [-1000, 1000]. They
stack the slices in opposite orders: imageio by InstanceNumber (head first in this series),
SimpleITK by position along the slice normal (feet first, increasing z).
"""
import argparse
import warnings

import imageio.v2 as imageio
import numpy as np
import torch
from imageio.config import known_plugins

from common.ct import load_ct
from common.data import add_data_dir_argument, book_file
from common.errors import DataError, run_cli
from common.figures import new_figure, save_figure
from common.files import check_writable, runs_dir

DICOM_DIR = "p1ch4/volumetric-dicom/2-LUNG 3.0  B70f-04083"   # two spaces before B70f
SLICE = 50


def read_dicom_imageio(folder):
    """(slices, rows, cols) int16 HU in InstanceNumber order, or None when this imageio
    has no DICOM plugin (it is deprecated and slated for removal)."""
    if "DICOM" not in known_plugins:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)   # the legacy plugin says so
        try:
            volume = imageio.volread(folder, "DICOM", progress=False)
        except (OSError, ValueError, RuntimeError) as e:
            raise DataError(f"{folder}: imageio cannot read the DICOM series ({e})") from None
    return np.asarray(volume)


def plot_slices(hu, spacing_irc, out_dir, index=SLICE):
    """An axial slice and the coronal and sagittal planes through the volume's middle, each
    drawn at its true millimetre aspect. `hu` is (I, R, C) in imageio's (book) slice order."""
    si, sr, sc = spacing_irc
    n_i, n_r, n_c = hu.shape
    views = [
        (hu[index], sr / sc, f"axial slice {index} of {n_i} (the book's)"),
        (hu[:, n_r // 2, :], si / sc, f"coronal, row {n_r // 2}"),
        (hu[:, :, n_c // 2], si / sr, f"sagittal, column {n_c // 2}"),
    ]
    fig = new_figure(figsize=(14, 4.6))
    axes = fig.subplots(1, 3)
    for ax, (image, aspect, title) in zip(axes, views, strict=True):
        shown = ax.imshow(image, cmap="gray", vmin=-1000, vmax=1000, aspect=aspect)
        ax.set_title(title)
        ax.axis("off")
    axes[0].axhline(n_r // 2, color="tab:orange", linewidth=0.8)    # where the reformats cut
    axes[0].axvline(n_c // 2, color="tab:cyan", linewidth=0.8)
    axes[1].axhline(index, color="tab:red", linewidth=0.8)
    axes[2].axhline(index, color="tab:red", linewidth=0.8)
    fig.colorbar(shown, ax=axes, label="HU (clipped to ±1000)", shrink=0.7)
    return save_figure(fig, out_dir / "volumetric.png", dpi=90, tight_layout=False,
                       bbox_inches="tight")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_data_dir_argument(p)
    p.add_argument("--out", default=str(runs_dir("ch04")),
                   help="folder for volumetric.png (default: %(default)s)")
    args = p.parse_args(argv)

    folder = book_file(DICOM_DIR, args.data_dir, name="dicom-ct")
    if not folder.is_dir():
        raise DataError(f"{folder}: a file, not the folder of the DICOM series")
    out = check_writable(args.out, "--out")             # made by the first write, not before
    ct = load_ct(folder)                                 # SimpleITK, slices by position
    if ct.shape[0] <= SLICE:
        raise DataError(f"{folder}: a series of {ct.shape[0]} slices, the book shows slice "
                        f"{SLICE}: expected the 99-slice CT")
    sitk_in_book_order = ct.voxels[::-1]                 # -> imageio's InstanceNumber order
    vol_arr = read_dicom_imageio(folder)
    if vol_arr is None:
        print("this imageio has no DICOM plugin: using SimpleITK's volume, reversed to the "
              "book's slice order")
        vol_arr = np.ascontiguousarray(sitk_in_book_order)
    else:
        print(f"imageio.volread: {vol_arr.shape} {vol_arr.dtype}, HU {vol_arr.min()} .. "
              f"{vol_arr.max()}")
        same = np.array_equal(vol_arr, sitk_in_book_order)
        print(f"SimpleITK (load_ct): {ct.shape} {ct.voxels.dtype}, same voxels in reverse slice "
              f"order: {same}; spacing xyz {tuple(ct.spacing_xyz)} mm")
        if not same:
            raise DataError(f"{folder}: imageio and SimpleITK read different volumes")

    vol = torch.from_numpy(vol_arr).float().unsqueeze(0)  # (C, D, H, W) = (1, 99, 512, 512)
    print(f"tensor with a channel axis: {tuple(vol.shape)}")
    hu = np.clip(vol_arr, -1000, 1000)
    png = plot_slices(hu, tuple(reversed(ct.spacing_xyz)), out)
    print(f"wrote {png}")
    return {"vol_arr": vol_arr, "vol": vol, "ct": ct, "png": png}


if __name__ == "__main__":
    run_cli(main)
