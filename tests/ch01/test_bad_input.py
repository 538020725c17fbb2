"""Every script that reads a torch file a user gives it (ch01, ch03, ch08), against broken and
hostile files: one line naming the flag and the file, exit 2, nothing run from the file, and
a state_dict of another model named in a few keys, not thousands of characters (issue 10,
classes 1 and 7)."""
import importlib
import io
import zipfile

import pytest
import torch

from ch01_intro.cyclegan import ResNetGenerator
from ch01_intro.mnist_net import MnistNet
from ch08_convnets.models import Net, NetWidth
from tests.ch01.conftest import write_image, write_labels
from tests.common.cli import assert_one_error_line, files_under, run_main


class Marker:
    """Unpickling this creates `path`: a weights file that is code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def torch_bytes(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def bad_files(marker):
    """name -> (bytes, or None for a folder; words the one line must hold)."""
    good = torch_bytes(Net().state_dict())
    return {
        "code": (torch_bytes({"w": Marker(str(marker))}), "holds Python objects"),
        "html": (b"<!DOCTYPE html><html>404</html>", "not a readable torch file"),
        "truncated": (good[:len(good) // 2], "not a readable torch file"),
        "empty": (b"", "not a readable torch file"),
        "folder": (None, "a folder, not a file"),
        "tensor": (torch_bytes(torch.zeros(3)), "not a state_dict"),
    }


def entry_points(tmp_path, bad):
    """(module, argv, where the bad file goes, flag named) of every torch-file reader."""
    image, labels = tmp_path / "in/dog.png", tmp_path / "in/labels.txt"
    cpu = ["--device", "cpu"]
    return {
        "classify --weights": ("ch01_intro.classify_resnet",
                               ["--weights", bad, "--image", image, "--labels", labels, *cpu],
                               bad, "--weights"),
        "horse2zebra --weights": ("ch01_intro.horse2zebra",
                                  ["--weights", bad, "--image", image, "--size", "16",
                                   "--out", tmp_path / "out/z.png", *cpu], bad, "--weights"),
        "mnist --init book": ("ch01_intro.mnist_net",
                              ["--init", "book", "--data-dir", tmp_path / "root", "--steps", "1",
                               "--n-test", "8", "--out", tmp_path / "out", *cpu],
                              tmp_path / "root/p1ch2/mnist/mnist.pth", "--init book"),
        "serialize book file": ("ch03_tensors.serialize",
                                ["--data-dir", tmp_path / "root", "--out", tmp_path / "out"],
                                tmp_path / "root/p1ch3/ourpoints.t", "book file"),
        "ch08 --load": ("ch08_convnets.train",
                        ["--load", bad, "--data-dir", tmp_path / "root", "--epochs", "1",
                         "--save", tmp_path / "out/net.pt", *cpu], bad, "--load"),
        "ch08 --load book": ("ch08_convnets.train",
                             ["--load", "book", "--data-dir", tmp_path / "root", "--epochs", "1",
                              "--save", tmp_path / "out/net.pt", *cpu],
                             tmp_path / "root/p1ch6/birds_vs_airplanes.pt", "--load book"),
    }


@pytest.fixture
def place(tmp_path):
    """place(entry, kind) -> (main, argv, path, flag, words) with the bad file in place."""
    (tmp_path / "in").mkdir()
    write_image(tmp_path / "in/dog.png", 40, 60)
    write_labels(tmp_path / "in/labels.txt")
    (tmp_path / "root/p1ch3").mkdir(parents=True)
    (tmp_path / "root/p1ch3/ourpoints.hdf5").write_bytes(b"")   # read after the .t

    def put(entry, kind):
        module, argv, path, flag = entry_points(tmp_path, tmp_path / "in/bad.pt")[entry]
        content, words = bad_files(tmp_path / "marker")[kind]
        if entry == "serialize book file" and kind == "tensor":   # its file should be a tensor
            content, words = torch_bytes({"w": torch.zeros(3)}), "holds a dict, not a tensor"
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.mkdir()
        else:
            path.write_bytes(content)
        return importlib.import_module(module).main, argv, path, flag, words
    return put


ENTRIES = list(entry_points(__import__("pathlib").Path("."), None))
KINDS = list(bad_files("marker"))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("entry", ENTRIES)
def test_a_bad_torch_file_is_one_line(place, tmp_path, capsys, entry, kind):
    main, argv, path, flag, words = place(entry, kind)
    code, err = run_main(main, argv, capsys)
    assert_one_error_line(code, err, f"{flag} {path}", words)
    assert not (tmp_path / "marker").exists()                 # nothing in the file ran
    assert files_under(tmp_path / "out") == []                # checked before any output


# A state_dict of another model: (entry, model whose weights are given, words in the line).
MISMATCHES = [
    ("classify --weights", ResNetGenerator, "does not fit ResNet: none of its 626 tensors is in "
     "the file, which holds 48 others (model.1.weight, model.1.bias, model.4.weight and 45 "
     "more)"),
    ("horse2zebra --weights", MnistNet, "does not fit ResNetGenerator: none of its 48 tensors is "
     "in the file, which holds 8 others (conv1.weight, conv1.bias, conv2.weight and 5 more)"),
    ("mnist --init book", Net, "does not fit MnistNet: 8 of another shape (conv1.weight: "
     "(16, 3, 3, 3) in the file, (10, 1, 5, 5) in the model; and 7 more)"),
    ("ch08 --load", NetWidth, "does not fit Net: 5 of another shape (conv1.weight: (32, 3, 3, 3) "
     "in the file, (16, 3, 3, 3) in the model; and 4 more)"),
]


@pytest.mark.parametrize("entry, model, words", MISMATCHES, ids=[m[0] for m in MISMATCHES])
def test_another_models_weights_are_named_in_a_short_line(place, tmp_path, capsys, entry, model,
                                                          words):
    main, argv, path, flag, _ = place(entry, "tensor")
    path.write_bytes(torch_bytes(model().state_dict()))
    code, err = run_main(main, argv, capsys)
    line = assert_one_error_line(code, err, f"{flag} {path}", words)
    assert len(line) < 300 + len(str(path))


def test_weights_saved_as_a_zip_of_something_else(place, tmp_path, capsys):
    main, argv, path, flag, _ = place("ch08 --load", "tensor")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "not a torch archive")
    code, err = run_main(main, argv, capsys)
    assert_one_error_line(code, err, f"{flag} {path}", "not a readable torch file")
