"""CIFAR-10 reader, transforms, statistics, CIFAR-2 and the synthetic sample (book ch7)."""
import pickle
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from ch07_cifar import cifar, synthetic
from ch07_cifar.cifar import (
    LABEL_MAP,
    CifarDataset,
    channel_mean_std,
    cifar2,
    compose,
    load_cifar2,
    load_cifar10,
    normalize,
    to_tensor,
)
from ch07_cifar.cifar_files import (
    BATCH_FILES,
    CIFAR_DIR,
    CLASS_NAMES,
    DOWNLOAD_COMMAND,
    read_batch,
    read_cifar_pickle,
    read_meta,
    write_batch,
)
from ch07_cifar.synthetic import choose_cifar_dir, is_complete, write_synthetic_cifar
from common import data as common_data
from common.errors import DataError
from tests.ch07.conftest import TEST_PER_CLASS, TRAIN_PER_CLASS
from tests.conftest import find_book_file


def test_reader_reads_the_generated_sample(tiny_dir):
    assert sorted(p.name for p in tiny_dir.iterdir()) == sorted(BATCH_FILES)
    images, labels = read_batch(tiny_dir / "data_batch_1")
    assert images.dtype == np.uint8 and images.shape[1:] == (3, 32, 32)
    assert labels.dtype == np.int64 and labels.shape == (len(images),)
    assert read_meta(tiny_dir / "batches.meta") == list(CLASS_NAMES)

    train, val = load_cifar10(tiny_dir, train=True), load_cifar10(tiny_dir, train=False)
    assert (len(train), len(val)) == (10 * TRAIN_PER_CLASS, 10 * TEST_PER_CLASS)
    assert np.bincount(train.labels, minlength=10).tolist() == [TRAIN_PER_CLASS] * 10
    img, label = train[3]
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8      # HWC, ready for imshow
    assert isinstance(label, int) and 0 <= label < 10


def test_files_have_the_real_cifar_keys(tiny_dir):
    entry = read_cifar_pickle(tiny_dir / "data_batch_2")
    assert set(entry) == {b"batch_label", b"labels", b"data", b"filenames"}
    assert entry[b"data"].dtype == np.uint8 and entry[b"data"].shape == (2 * TRAIN_PER_CLASS, 3072)
    assert isinstance(entry[b"labels"], list) and isinstance(entry[b"filenames"][0], bytes)
    assert entry[b"batch_label"] == b"training batch 2 of 5"
    meta = read_cifar_pickle(tiny_dir / "batches.meta")
    assert set(meta) == {b"num_cases_per_batch", b"label_names", b"num_vis"}
    assert meta[b"num_vis"] == 3072


def test_write_then_read_round_trips_and_keeps_the_channel_planes(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (7, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, 7)
    write_batch(tmp_path / "b", images, labels, "test", [f"{i}.png" for i in range(7)])
    got_images, got_labels = read_batch(tmp_path / "b")
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    row = read_cifar_pickle(tmp_path / "b")[b"data"][0]
    np.testing.assert_array_equal(row[:1024], images[0, 0].ravel())   # first 1024 bytes: red


def copy_sample(tiny_dir, tmp_path):
    target = tmp_path / CIFAR_DIR
    shutil.copytree(tiny_dir, target)
    return target


def test_missing_batch_file_is_a_data_error_naming_it(tiny_dir, tmp_path):
    target = copy_sample(tiny_dir, tmp_path)
    (target / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3 not found") as e:
        load_cifar10(target, train=True)
    assert DOWNLOAD_COMMAND in str(e.value)
    assert len(load_cifar10(target, train=False)) == 10 * TEST_PER_CLASS   # test batch still fine


def test_corrupt_pickle_is_a_data_error_naming_the_file(tiny_dir, tmp_path):
    target = copy_sample(tiny_dir, tmp_path)
    good = (target / "test_batch").read_bytes()
    (target / "test_batch").write_bytes(good[: len(good) // 2])       # truncated download
    with pytest.raises(DataError, match="test_batch: not a readable CIFAR-10 file"):
        load_cifar10(target, train=False)
    (target / "test_batch").write_bytes(b"<html>404</html>")
    with pytest.raises(DataError, match="test_batch"):
        read_batch(target / "test_batch")


@pytest.mark.parametrize("entry, message", [
    ({b"data": np.zeros((2, 3000), np.uint8), b"labels": [0, 1]}, r"shape \(N, 3072\)"),
    ({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "should be 2 integers"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "outside 0..9"),
    ({b"labels": [0]}, "no b'data'"),
    ([1, 2, 3], "expected a dict"),
])
def test_wrong_contents_are_data_errors(tmp_path, entry, message):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(entry))
    with pytest.raises(DataError, match=message) as e:
        read_batch(path)
    assert "data_batch_1" in str(e.value)


def test_meta_with_other_class_names_is_rejected(tiny_dir, tmp_path):
    target = copy_sample(tiny_dir, tmp_path)
    (target / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"x"] * 10}))
    with pytest.raises(DataError, match="not CIFAR-10's"):
        load_cifar10(target)


def test_to_tensor_is_chw_float_in_0_1():
    img = np.zeros((32, 32, 3), np.uint8)
    img[..., 0], img[0, 1, 2] = 255, 51
    t = to_tensor(img)
    assert t.shape == (3, 32, 32) and t.dtype == torch.float32
    assert t[0].eq(1).all() and t[1].eq(0).all() and t[2, 0, 1] == pytest.approx(0.2)


def test_normalize_with_dataset_stats_gives_mean_0_std_1(tiny_dir):
    train = load_cifar10(tiny_dir)
    mean, std = channel_mean_std(train)
    stacked = torch.stack([to_tensor(img) for img, _ in train], dim=3)   # the book's way
    flat = stacked.view(3, -1).double()
    torch.testing.assert_close(torch.tensor(mean, dtype=torch.float64), flat.mean(dim=1),
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.tensor(std, dtype=torch.float64), flat.std(dim=1),
                               rtol=0, atol=1e-6)
    train.transform = compose(to_tensor, lambda t: normalize(t, mean, std))
    normed = torch.stack([img for img, _ in train], dim=3).view(3, -1)
    torch.testing.assert_close(normed.mean(dim=1), torch.zeros(3), rtol=0, atol=1e-4)
    torch.testing.assert_close(normed.std(dim=1), torch.ones(3), rtol=0, atol=1e-4)


def test_cifar2_keeps_airplanes_and_birds_relabelled(tiny_dir):
    val = load_cifar10(tiny_dir, train=False)
    pairs = cifar2(val)
    assert len(pairs) == 2 * TEST_PER_CLASS
    assert sorted({label for _, label in pairs}) == [0, 1]
    originals = [int(label) for label in val.labels if label in LABEL_MAP]
    assert [label for _, label in pairs] == [LABEL_MAP[o] for o in originals]  # order kept
    first_bird = int(np.flatnonzero(val.labels == 2)[0])
    assert any(np.array_equal(img, val[first_bird][0]) for img, label in pairs if label == 1)


def test_load_cifar2_is_normalized_tensors(tiny_dir):
    train, val, stats = load_cifar2(tiny_dir)
    assert (len(train), len(val)) == (2 * TRAIN_PER_CLASS, 2 * TEST_PER_CLASS)
    img, label = train[0]
    assert img.shape == (3, 32, 32) and img.dtype == torch.float32 and label in (0, 1)
    assert len(stats["mean"]) == len(stats["std"]) == 3


def test_synthetic_sample_is_deterministic_and_seeded(tmp_path):
    a = write_synthetic_cifar(tmp_path / "a", 3, 2, seed=5)
    b = write_synthetic_cifar(tmp_path / "b", 3, 2, seed=5)
    c = write_synthetic_cifar(tmp_path / "c", 3, 2, seed=6)
    for name in BATCH_FILES:
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "test_batch").read_bytes() != (c / "test_batch").read_bytes()
    assert not list(tmp_path.glob(".*writing*"))                       # no staging left behind


def test_synthetic_sample_is_not_blank_and_textures_differ_by_class(tiny_dir):
    images = load_cifar10(tiny_dir).images
    assert images.std() > 20 and 0 < images.mean() < 255
    yy, xx = np.mgrid[:14, :14]
    patterns = [synthetic.texture(c, yy, xx) for c in range(10)]
    assert len({p.tobytes() for p in patterns}) == 10


def test_choose_cifar_dir_falls_back_loudly_and_prefers_real(tmp_path, capsys):
    folder, is_synthetic = choose_cifar_dir(tmp_path, train_per_class=2, test_per_class=1)
    assert is_synthetic and folder == tmp_path / "synthetic" / CIFAR_DIR and is_complete(folder)
    err = capsys.readouterr().err
    assert "SYNTHETIC DATA" in err and DOWNLOAD_COMMAND in err and "not found" in err
    (tmp_path / CIFAR_DIR).mkdir()
    assert choose_cifar_dir(tmp_path) == (tmp_path / CIFAR_DIR, False)
    assert capsys.readouterr().err == ""
    assert choose_cifar_dir(tmp_path, synthetic=True) == (folder, True)   # --synthetic forces it
    assert "--synthetic" in capsys.readouterr().err


def test_unwritable_data_root_is_a_data_error(tmp_path):
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(DataError, match=r"cannot write the synthetic sample to .*file/synthetic/"
                                        r"cifar-10-batches-py .*--data-dir with a writable"):
        choose_cifar_dir(tmp_path / "file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_synthetic_script_writes_the_requested_sizes(tmp_path):
    out = synthetic.main(["--data-dir", str(tmp_path), "--train-per-class", "2",
                          "--test-per-class", "1"])
    assert len(load_cifar10(out)) == 20 and len(load_cifar10(out, train=False)) == 10


def test_cifar_script_reports_and_plots(tiny_root, tmp_path):
    result = cifar.main(["--data-dir", str(tiny_root), "--synthetic", "--out", str(tmp_path)])
    assert result["synthetic"] and result["n_train"] == 10 * TRAIN_PER_CLASS
    assert (result["n_train2"], result["n_val2"]) == (2 * TRAIN_PER_CLASS, 2 * TEST_PER_CLASS)
    assert result["png"].stat().st_size > 10_000


def tar_gz(folder, path):
    with tarfile.open(path, "w:gz") as tar:
        tar.add(folder, arcname=CIFAR_DIR)
    return path


def test_downloader_rejects_a_wrong_md5_and_unpacks_a_right_one(tiny_dir, tmp_path):
    """The registry's cifar10 entry, pointed at a tiny archive of the synthetic batches."""
    entry = common_data.registry()["cifar10"]
    assert entry.files[0].md5 == "c58f30108f718f92721af3b95e74349a"
    assert entry.extract_to == CIFAR_DIR                  # where choose_cifar_dir looks
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    archive = tar_gz(tiny_dir, mirror / entry.files[0].relpath)
    _, md5 = common_data.digests(archive, md5=True)
    root = tmp_path / "root"

    wrong = entry._replace(files=(entry.files[0]._replace(url=None, size=None, md5="0" * 32),))
    with pytest.raises(DataError, match="checksum failed"):
        common_data.download_entry(wrong, root, mirror=str(mirror))
    assert not (root / CIFAR_DIR).exists()
    assert not list(root.glob("*.part"))                  # the partial file is removed

    right = entry._replace(files=(entry.files[0]._replace(url=None, size=None, md5=md5),))
    common_data.download_entry(right, root, mirror=str(mirror))
    folder, is_synthetic = choose_cifar_dir(root)
    assert (folder, is_synthetic) == (root / CIFAR_DIR, False)
    assert len(load_cifar10(folder)) == 10 * TRAIN_PER_CLASS


def test_dataset_built_from_arrays_applies_its_transform():
    images = np.zeros((2, 3, 32, 32), np.uint8)
    images[1, 2] = 255                                     # second image: blue plane full
    ds = CifarDataset(images, np.array([0, 2]), transform=to_tensor)
    img, label = ds[1]
    assert len(ds) == 2 and label == 2 and img.shape == (3, 32, 32)
    assert img[2].eq(1).all() and img[:2].eq(0).all()
    assert [label for _, label in cifar2(ds)] == [0, 1]


@pytest.mark.realdata
def test_real_cifar10_counts_and_book_stats():
    path = find_book_file(f"{CIFAR_DIR}/test_batch")
    if path is None:
        pytest.skip(f"CIFAR-10 not downloaded ({DOWNLOAD_COMMAND})")
    folder = Path(path).parent
    train, val = load_cifar10(folder), load_cifar10(folder, train=False)
    assert (len(train), len(val)) == (50_000, 10_000)
    mean, std = channel_mean_std(train)
    # the book summed 51 million float32 values: its mean drifts by up to 3e-4 (0.4468 vs 0.4465)
    np.testing.assert_allclose(mean, cifar.BOOK_MEAN, atol=5e-4)
    np.testing.assert_allclose(std, cifar.BOOK_STD, atol=5e-4)
    assert (len(cifar2(train)), len(cifar2(val))) == (10_000, 2_000)
