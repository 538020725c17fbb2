import h5py
import pytest
import torch

from ch03_tensors import serialize
from ch03_tensors.tensors_basics import book_points


def test_torch_save_load_round_trip(tmp_path):
    points = book_points()
    loaded = serialize.save_load(points, tmp_path / "p.t")
    assert torch.equal(loaded, points) and loaded.dtype == points.dtype
    loaded_f = serialize.save_load_file_object(points, tmp_path / "f.t")
    assert torch.equal(loaded_f, points)


def test_hdf5_round_trip_and_partial_read(tmp_path):
    points = book_points()
    path = tmp_path / "ourpoints.hdf5"
    serialize.write_hdf5(points, path)
    last_points, shape = serialize.read_hdf5_tail(path)
    assert shape == (3, 2)
    assert last_points.shape == (2, 2) and last_points.dtype == torch.float32
    assert torch.equal(last_points, points[-2:])


def test_hdf5_dataset_is_read_lazily(tmp_path):
    points = book_points()
    path = tmp_path / "ourpoints.hdf5"
    serialize.write_hdf5(points, path)
    f = h5py.File(path, "r")
    dset = f["coords"]
    assert isinstance(dset, h5py.Dataset)          # a handle on the file, not an array
    assert dset.shape == (3, 2) and dset.dtype == "float32"
    last = dset[-2:]                               # the slice is what gets read
    assert last.shape == (2, 2)
    f.close()
    assert not dset.id.valid
    with pytest.raises((OSError, ValueError)):
        dset[-2:]                                  # closed file: the data never was in memory
    assert torch.equal(torch.from_numpy(last), points[-2:])  # the slice read before stays


def test_saving_a_view_saves_its_storage(tmp_path):
    view_bytes, clone_bytes = serialize.saved_view_size(tmp_path)
    assert view_bytes > 256 * 256 * 4 > 50 * clone_bytes


def test_missing_book_files_name_the_download(tmp_path):
    with pytest.raises(serialize.DataError, match="download p1ch3"):
        serialize.load_book_points(tmp_path)


def test_main_without_book_files(tmp_path, capsys):
    out = serialize.main(["--out", str(tmp_path / "out"), "--data-dir", str(tmp_path)])
    assert out["book"] is None
    assert torch.equal(out["points"], book_points())
    assert out["last_points"].shape == (2, 2)
    assert (tmp_path / "out" / "ourpoints.t").exists()
    assert (tmp_path / "out" / "ourpoints.hdf5").exists()
    assert "python -m common.data download p1ch3" in capsys.readouterr().out


@pytest.mark.realdata
def test_book_ourpoints_files_load(p1ch3_root):
    book = serialize.load_book_points(p1ch3_root)
    assert torch.equal(book["points"], torch.ones(3, 4))   # the book saved torch.ones(3, 4)
    assert book["hdf5_shape"] == (3, 4)
    assert torch.equal(book["last_points"], torch.ones(2, 4))


@pytest.mark.realdata
def test_main_with_book_files(p1ch3_root, tmp_path):
    out = serialize.main(["--out", str(tmp_path), "--data-dir", str(p1ch3_root)])
    assert out["book"]["points"].shape == (3, 4)
