"""Bad CIFAR-10 files at every entry point that reads them (ch7 and ch8): one line, exit 2,
nothing run from the file and nothing written, not even the output folder."""
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from ch07_cifar.cifar_files import (
    CIFAR_DIR,
    CLASS_NAMES,
    read_batch,
    read_cifar_pickle,
    read_meta,
)
from common.errors import DataError
from tests.common.cli import assert_one_error_line, run_main


class Marker:
    """Unpickling this creates `path`: a CIFAR file that is code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def entry_points(root, out):
    """(module, argv, files it reads) for every script that reads CIFAR-10 from `root`."""
    data = ["--data-dir", root, "--device", "cpu"]
    every = ("data_batch_1", "test_batch", "batches.meta")
    return [
        ("ch07_cifar.cifar", ["--data-dir", root, "--out", out], every),
        ("ch07_cifar.train_fc", [*data, "--epochs", "1"], every),
        ("ch08_convnets.train", [*data, "--epochs", "1", "--save", out / "net.pt"], every),
        ("ch08_convnets.compare", [*data, "--epochs", "1", "--only", "baseline", "--out", out],
         every),
        ("ch08_convnets.conv_demo", ["--data-dir", root, "--out", out],
         ("test_batch", "batches.meta")),
    ]


@pytest.fixture
def cifar_root(tiny_dir, tmp_path):
    """A data root whose cifar-10-batches-py (a copy of the tiny sample) the scripts take as
    the real CIFAR-10."""
    root = tmp_path / "root"
    shutil.copytree(tiny_dir, root / CIFAR_DIR)
    return root


def cases():
    return [(module, name) for module, _, names in entry_points(Path("r"), Path("o"))
            for name in names]


@pytest.mark.parametrize("module, name", cases(), ids=[f"{m}-{n}" for m, n in cases()])
def test_a_cifar_file_that_is_code_runs_nothing(cifar_root, tmp_path, capsys, module, name):
    marker, out = tmp_path / "marker", tmp_path / "out"
    bad = cifar_root / CIFAR_DIR / name
    bad.write_bytes(pickle.dumps({b"data": Marker(str(marker)), b"labels": [0]}))
    main = __import__(module, fromlist=["main"]).main
    argv = next(a for m, a, _ in entry_points(cifar_root, out) if m == module)
    code, err = run_main(main, argv, capsys)
    assert_one_error_line(code, err, bad, "refused, nothing in it was run")
    assert not marker.exists()
    assert not out.exists()                 # --out / --save checked before, made by no one


def test_the_marker_would_have_run_with_plain_pickle(tmp_path):
    """The test above can fail: plain pickle.loads of the same bytes creates the marker."""
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(Marker(str(marker)))).close()
    assert marker.exists()


def python2_batch(images, labels):
    """A data_batch as the real CIFAR-10 files are: a Python 2 cPickle (protocol 2, str as
    SHORT_BINSTRING, numpy.core.multiarray._reconstruct), built opcode by opcode."""
    def s(text):                                  # SHORT_BINSTRING
        data = text if isinstance(text, bytes) else text.encode()
        return b"U" + bytes([len(data)]) + data
    n = len(images)
    raw = images.reshape(n, -1).tobytes()
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s("b")
             + b"\x87R(K\x01M" + struct.pack("<H", n) + b"M\x00\x0c\x86"
             + b"cnumpy\ndtype\n" + s("u1") + b"K\x00K\x01\x87R(K\x03" + s("|")
             + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T" + struct.pack("<I", len(raw))
             + raw + b"tb")
    label_list = b"](" + b"".join(b"K" + bytes([int(v)]) for v in labels) + b"e"
    return (b"\x80\x02}(" + s("data") + array + s("labels") + label_list
            + s("batch_label") + s("training batch 1 of 5") + b"u.")


def test_the_real_files_python2_format_is_admitted(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    path = tmp_path / "data_batch_1"
    path.write_bytes(python2_batch(images, [2, 0, 9]))
    assert pickle.loads(path.read_bytes(), encoding="bytes")[b"labels"] == [2, 0, 9]  # valid
    got_images, got_labels = read_batch(path)
    np.testing.assert_array_equal(got_images, images)
    assert got_labels.tolist() == [2, 0, 9]
    meta = tmp_path / "batches.meta"
    meta.write_bytes(b"\x80\x02}(U\x0blabel_names](" + b"".join(
        b"U" + bytes([len(n)]) + n.encode() for n in CLASS_NAMES) + b"eU\x07num_visM\x00\x0cu.")
    assert read_meta(meta) == list(CLASS_NAMES)


@pytest.mark.parametrize("payload, words", [
    (pickle.dumps({b"data": np.array([object()], dtype=object)}), "dtype 'O8'"),
    (pickle.dumps({b"f": print}), "builtins.print"),
    (pickle.dumps({b"data": np.zeros(2, dtype=[("a", "u1")])}), "refusing"),
    (b"", "not a readable CIFAR-10 file"),
    (b"<html>404</html>", "not a readable CIFAR-10 file"),
])
def test_anything_but_plain_data_is_refused(tmp_path, payload, words):
    path = tmp_path / "data_batch_1"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=r"^" + str(path).replace("\\", "\\\\") + ": ") as e:
        read_cifar_pickle(path)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_folder_where_a_batch_should_be(tmp_path):
    (tmp_path / "test_batch").mkdir()
    with pytest.raises(DataError, match="a folder, not a CIFAR-10 file"):
        read_batch(tmp_path / "test_batch")


def python3_protocol2_batch(path, images, labels):
    """A data_batch as Python 3 writes it with protocol 2: bytes become _codecs.encode(str,
    'latin1') calls (the dict keys, the array's raw data, the filenames)."""
    entry = {b"batch_label": b"training batch 1 of 5", b"labels": list(labels),
             b"data": images.reshape(len(images), -1),
             b"filenames": [f"{i}.png".encode() for i in range(len(images))]}
    with open(path, "wb") as f:
        pickle.dump(entry, f, protocol=2)
    return path


def test_a_python3_protocol2_pickle_is_admitted(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    path = python3_protocol2_batch(tmp_path / "data_batch_1", images, [2, 0, 9])
    assert b"c_codecs\nencode\n" in path.read_bytes()          # the call the reader must admit
    got_images, got_labels = read_batch(path)
    np.testing.assert_array_equal(got_images, images)
    assert got_labels.tolist() == [2, 0, 9]
    assert read_cifar_pickle(path)[b"filenames"] == [b"0.png", b"1.png", b"2.png"]
    meta = tmp_path / "batches.meta"
    with open(meta, "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in CLASS_NAMES], b"num_vis": 3072}, f,
                    protocol=2)
    assert read_meta(meta) == list(CLASS_NAMES)


@pytest.mark.parametrize("old, new, words, loads", [
    (b"latin1", b"rot_13", "refusing _codecs.encode of str with 'rot_13'", True),
    (b"c_codecs\nencode\n", b"c_codecs\ndecode\n", "refusing _codecs.decode", False),
    (b"c_codecs\nencode\n", b"ccodecs\nencode\n", "refusing codecs.encode", True),
])
def test_other_codec_calls_in_a_protocol2_pickle_stay_refused(tmp_path, old, new, words, loads):
    good = pickle.dumps({b"batch_label": b"training batch 1 of 5", b"labels": [0]}, protocol=2)
    path = tmp_path / "data_batch_1"
    path.write_bytes(good.replace(old, new))
    if loads:                       # a valid pickle: the refusal is the reader's, not a parse error
        assert isinstance(pickle.loads(path.read_bytes()), dict)
    with pytest.raises(DataError) as e:
        read_cifar_pickle(path)
    assert str(e.value).startswith(f"{path}: not a CIFAR-10 file: it asks for more than plain data")
    assert words in str(e.value) and "nothing in it was run" in str(e.value)
