"""Every chapter 1-8 script that writes a file, against an output path that cannot be written:
a file in the way, a read-only folder, a full disk. One line naming the path, exit 2, and
nothing half-written or temporary left (issue 10, class 4)."""
import importlib

import pytest

from common.files import RUNS_ROOT, runs_dir
from tests.ch01.conftest import write_image
from tests.ch07.conftest import tiny_dir, tiny_root  # noqa: F401  (fixtures)
from tests.common.cli import assert_one_error_line, files_under, run_in_subprocess, run_main
from tests.conftest import find_book_file

BOOK_ROOT = find_book_file("p1ch4")
realdata = pytest.mark.skipif(BOOK_ROOT is None, reason="the book's p1ch4 files are absent")
DATA = str(BOOK_ROOT.parent) if BOOK_ROOT else ""


def writers(out, inputs):
    """(module, argv) of every script that writes files, writing into the folder `out`."""
    tiny = ["--data-dir", inputs["tiny_root"], "--synthetic"]
    cpu = ["--device", "cpu"]
    cases = [
        ("ch01_intro.mnist_net", ["--steps", "1", "--batch-size", "4", "--n-test", "8",
                                  "--out", out, *cpu]),
        ("ch01_intro.horse2zebra", ["--random-weights", "--image", inputs["image"], "--size", "64",
                                    "--out", out / "zebra.png", *cpu]),
        ("ch03_tensors.serialize", ["--out", out, "--data-dir", inputs["empty"]]),
        ("ch05_learning.thermometer", ["--out", out]),
        ("ch05_learning.activations", ["--out", out]),
        ("ch05_learning.grad_descent", ["--epochs", "2", "--out", out]),
        ("ch05_learning.nn_fit", ["--epochs", "2", "--out", out]),
        ("ch05_learning.subclassing", ["--epochs", "2", "--out", out]),
        ("ch07_cifar.cifar", [*tiny, "--out", out]),
        ("ch07_cifar.softmax_nll", ["--out", out]),
        ("ch08_convnets.conv_demo", [*tiny, "--out", out]),
        ("ch08_convnets.train", [*tiny, *cpu, "--epochs", "1", "--save", out / "net.pt"]),
        ("ch08_convnets.compare", [*tiny, *cpu, "--epochs", "1", "--only", "baseline",
                                   "--out", out]),
    ]
    if BOOK_ROOT is not None:
        cases += [(f"ch04_data.{name}", ["--data-dir", DATA, "--out", out, *extra])
                  for name, extra in (("wine", []), ("bikes", []), ("images", []), ("audio", []),
                                      ("volumetric", []), ("video", ["--max-frames", "2"]))]
    return cases


@pytest.fixture
def inputs(tmp_path, tiny_root):  # noqa: F811  (the fixture)
    (tmp_path / "in").mkdir()
    write_image(tmp_path / "in/horse.png", 64, 96)
    (tmp_path / "in/empty").mkdir()
    return {"tiny_root": tiny_root, "image": tmp_path / "in/horse.png",
            "empty": tmp_path / "in/empty"}


NAMES = [module for module, _ in writers(RUNS_ROOT, {"tiny_root": "", "image": "", "empty": ""})]


@pytest.mark.parametrize("module", NAMES)
def test_a_file_in_the_way_of_the_output_folder(module, inputs, tmp_path, capsys):
    (tmp_path / "blocker").write_text("a file, not a folder")
    out = tmp_path / "blocker" / "sub"
    argv = dict(writers(out, inputs))[module]
    code, err = run_main(importlib.import_module(module).main, argv, capsys)
    assert_one_error_line(code, err, tmp_path / "blocker", "part of the path is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "in"]
    assert (tmp_path / "blocker").read_text() == "a file, not a folder"


# One writer of each kind for the subprocess cases (each run pays for a Python start): a figure,
# an image through imageio, torch.save and h5py, a checkpoint, a Markdown table.
KINDS = ["ch05_learning.thermometer", "ch01_intro.horse2zebra", "ch03_tensors.serialize",
         "ch08_convnets.train", "ch08_convnets.compare"]


def test_a_read_only_output_folder(inputs, tmp_path):
    out = tmp_path / "ro"
    out.mkdir()
    cases = [(module, argv) for module, argv in writers(out, inputs) if module in KINDS]
    results = run_in_subprocess(cases, read_only=out)
    assert len(results) == len(KINDS)
    for code, err in results:
        assert_one_error_line(code, err, out, "not writable")
    assert files_under(out) == []


def test_a_full_disk_leaves_nothing_half_written(inputs, tmp_path):
    """RLIMIT_FSIZE: writes past 4 KiB fail (EFBIG) as on a full disk (ENOSPC)."""
    results = {}
    for module, argv in writers(tmp_path / "out", inputs):
        if module in KINDS:
            out = tmp_path / module.split(".")[1]
            argv = [out / "zebra.png" if a == tmp_path / "out" / "zebra.png" else
                    out / "net.pt" if a == tmp_path / "out" / "net.pt" else
                    out if a == tmp_path / "out" else a for a in argv]
            results[module] = (out, argv)
    runs = run_in_subprocess([(m, argv) for m, (_, argv) in results.items()], fsize=4096)
    for (module, (out, _)), (code, err) in zip(results.items(), runs, strict=True):
        line = assert_one_error_line(code, err, out, "cannot write")
        left = files_under(out)
        assert not [name for name in left if ".tmp-" in name], (module, left)
        assert all((out / name).stat().st_size <= 4096 for name in left if (out / name).is_file())
        failed = line.split(": cannot write")[0].split()[-1]          # the file it names
        assert failed.startswith(str(out)) and not (tmp_path / failed).exists(), line


@pytest.mark.parametrize("module, chapter", [
    ("ch01_intro.mnist_net", "ch01"), ("ch03_tensors.serialize", "ch03"),
    ("ch04_data.wine", "ch04"), ("ch04_data.volumetric", "ch04"),
    ("ch05_learning.thermometer", "ch05"), ("ch05_learning.grad_descent", "ch05"),
    ("ch07_cifar.cifar", "ch07"), ("ch07_cifar.softmax_nll", "ch07"),
    ("ch08_convnets.conv_demo", "ch08"), ("ch08_convnets.compare", "ch08")])
def test_default_output_is_the_repositorys_runs_folder(module, chapter, tmp_path, monkeypatch,
                                                       capsys):
    """Whatever the current folder, a script's default --out is <repository>/runs/<chapter>."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        importlib.import_module(module).main(["--help"])
    help_text = "".join(capsys.readouterr().out.split())      # argparse wraps long lines
    assert f"(default:{runs_dir(chapter)})" in help_text
    assert runs_dir(chapter).parent == RUNS_ROOT and RUNS_ROOT.parent / "common" / "files.py" \
        in (RUNS_ROOT.parent / "common").iterdir()


def test_the_image_is_written_whole(inputs, tmp_path):
    """The imageio writer goes through the temporary file: the result is a whole image."""
    import imageio.v3 as iio

    from ch01_intro import horse2zebra

    horse2zebra.main(["--random-weights", "--image", str(inputs["image"]), "--size", "16",
                      "--out", str(tmp_path / "z.png"), "--device", "cpu"])
    assert iio.imread(tmp_path / "z.png").shape == (16, 24, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "z.png"]
