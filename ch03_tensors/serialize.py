"""Chapter 3: saving tensors with torch.save and HDF5 (h5py), and reading part of a file.

    python ch03_tensors/serialize.py                   # writes runs/ch03/ourpoints.{t,hdf5}
                                                       # (in the repository, from any folder)
    python ch03_tensors/serialize.py --data-dir data   # and reads the book's p1ch3/ourpoints.*

The book's own files come from:  python -m common.data download p1ch3
"""
import argparse
from pathlib import Path

import h5py
import torch

from ch03_tensors.tensors_basics import book_points
from common.data import add_data_dir_argument, book_file, data_root
from common.errors import DataError, one_line, run_cli
from common.files import atomic_path, output_dir, read_torch, runs_dir

DEFAULT_OUT = str(runs_dir("ch03"))        # the repository's runs/ch03, from any folder
BOOK_T = "p1ch3/ourpoints.t"
BOOK_HDF5 = "p1ch3/ourpoints.hdf5"
WRITE_ERRORS = (RuntimeError,)             # torch's zip writer and h5py report a full disk so


def save_load(points, path):
    """`torch.save` to a path and `torch.load` it back (weights_only: tensors, no pickled code).

    The file is written under a temporary name and renamed when whole (common.files)."""
    with atomic_path(path, "--out", WRITE_ERRORS) as tmp:
        torch.save(points, tmp)
    return read_torch(path, "--out")


def save_load_file_object(points, path):
    """The same through open file objects, as for any stream torch.save can write to."""
    with atomic_path(path, "--out", WRITE_ERRORS) as tmp:
        with open(tmp, "wb") as f:
            torch.save(points, f)
    with open(path, "rb") as f:
        return torch.load(f, weights_only=True)


def write_hdf5(points, path, name="coords"):
    """One HDF5 dataset `name` holding `points` (a NumPy copy of it); `with` closes the file."""
    with atomic_path(path, "--out", WRITE_ERRORS) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset(name, data=points.numpy())


def read_hdf5_tail(path, rows=2, name="coords"):
    """The last `rows` rows only: `f[name]` is a handle on disk, slicing it reads just that slice.

    Returns the rows as a tensor and the dataset's full shape (read from the file's metadata).
    A file that is not HDF5, or lacks a numeric dataset `name`, is a DataError naming it.
    """
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DataError(f"{path}: not a readable HDF5 file ({one_line(e, 80)})") from None
    with f:
        dset = f.get(name)                            # an h5py.Dataset: nothing loaded yet
        if not isinstance(dset, h5py.Dataset) or dset.ndim < 1 or dset.dtype.kind not in "iuf":
            raise DataError(f"{path}: no numeric dataset {name!r} (holds {sorted(f)[:5]})")
        last_points = torch.from_numpy(dset[-rows:])  # reads `rows` rows into a NumPy array
        return last_points, dset.shape                # valid after close: they are in memory


def saved_view_size(out, n=256):
    """Bytes on disk of `torch.save(big[0])` and of `torch.save(big[0].clone())`.

    A view is saved with its whole storage (so views still share after a load); clone a small
    slice of a big tensor before saving it.
    """
    big = torch.zeros(n, n)
    view_path, clone_path = Path(out) / "row_view.t", Path(out) / "row_clone.t"
    for tensor, path in ((big[0], view_path), (big[0].clone(), clone_path)):
        with atomic_path(path, "--out", WRITE_ERRORS) as tmp:
            torch.save(tensor, tmp)
    return view_path.stat().st_size, clone_path.stat().st_size


def load_book_points(data_dir=None):
    """The book's p1ch3 files: the whole ourpoints.t and the last 2 rows of ourpoints.hdf5."""
    t_path = book_file(BOOK_T, data_dir, name="p1ch3")
    hdf5_path = book_file(BOOK_HDF5, data_dir, name="p1ch3")
    points = read_torch(t_path, "book file")
    if not torch.is_tensor(points):
        raise DataError(f"book file {t_path}: holds a {type(points).__name__}, not a tensor")
    last_points, shape = read_hdf5_tail(hdf5_path)
    return {"t_path": t_path, "points": points, "hdf5_path": hdf5_path,
            "hdf5_shape": shape, "last_points": last_points}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for the files (default: %(default)s)")
    add_data_dir_argument(p)
    args = p.parse_args(argv)
    out = output_dir(args.out, "--out")
    root = data_root(args.data_dir)
    book = None                                    # the book's files are optional: a note
    if all((root / rel).exists() for rel in (BOOK_T, BOOK_HDF5)):
        book = load_book_points(args.data_dir)     # present but broken: one line, exit 2

    points = book_points()
    t_path, hdf5_path = out / "ourpoints.t", out / "ourpoints.hdf5"
    loaded = save_load(points, t_path)
    loaded_f = save_load_file_object(points, t_path)
    print(f"torch.save -> {t_path} ({t_path.stat().st_size} bytes); torch.load equal: "
          f"{torch.equal(loaded, points)} (path), {torch.equal(loaded_f, points)} (file object)")
    write_hdf5(points, hdf5_path)
    last_points, shape = read_hdf5_tail(hdf5_path)
    print(f"h5py dataset 'coords' {shape} -> {hdf5_path}; dset[-2:] read alone: "
          f"{tuple(last_points.shape)} {last_points.dtype} {last_points.tolist()}")
    view_bytes, clone_bytes = saved_view_size(out)
    print(f"torch.save(big[0]) of a (256, 256) tensor: {view_bytes} bytes; "
          f"of big[0].clone(): {clone_bytes} bytes (a view takes its whole storage along)")

    result = {"out": out, "points": loaded, "last_points": last_points, "book": book}
    if book is None:
        print(f"book files: {root / BOOK_T} and {root / BOOK_HDF5} not both found; get them "
              f"with:  python -m common.data download p1ch3")
        print(f"  (the files written above, in {out}, show the same steps)")
        return result
    print(f"book {book['t_path']}: {tuple(book['points'].shape)} {book['points'].dtype}, "
          f"all ones: {bool((book['points'] == 1).all())}")
    print(f"book {book['hdf5_path']}: 'coords' {book['hdf5_shape']}, dset[-2:] -> "
          f"{tuple(book['last_points'].shape)}")
    return result


if __name__ == "__main__":
    run_cli(main)
