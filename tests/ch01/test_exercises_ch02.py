"""Chapter 2's exercises: the dog through the generator, and hubconf.py files read, not run."""
import site
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch

from ch01_intro import exercises_ch02 as ex
from ch01_intro.cyclegan import ResNetGenerator
from ch01_intro.horse2zebra import generate, prepare
from ch01_intro.weights import HORSE2ZEBRA_PTH
from common.errors import DataError
from tests.ch01.conftest import write_image
from tests.common.cli import assert_one_error_line, run_main

HUBCONF = '''"""Small demo models."""
dependencies = ["torch", "numpy"]
from demo.models import big_net as big, _hidden
open({marker!r}, "w")


def small_net(pretrained=False):
    """A two-layer network.

    More text."""


def _helper():
    pass
'''


def test_correlation_and_edges_on_hand_made_images():
    x = torch.arange(12.0).view(3, 4)
    assert ex.correlation(x, 2 * x + 1) == pytest.approx(1.0)
    assert ex.correlation(x, -x) == pytest.approx(-1.0)
    assert ex.correlation(x, torch.ones(3, 4)) == 0.0
    step = torch.zeros(17, 33)
    step[:, 20:] = 1.0                          # one vertical edge, between columns 19 and 20
    edges = ex.edge_map(step, block=8)
    assert edges.shape == (2, 4)
    assert edges[:, 2].min() > 0 and edges[:, [0, 1, 3]].abs().max() == 0
    edges = ex.edge_map(step.T, block=8)        # one horizontal edge, between rows 19 and 20
    assert edges.shape == (4, 2)
    assert edges[2].min() > 0 and edges[[0, 1, 3]].abs().max() == 0


def small_generator():
    """The book's generator, narrow and short: the same code path, a fraction of the time."""
    return ResNetGenerator(ngf=4, n_blocks=1)


def test_exercise_1_prepares_runs_and_loads_given_weights(tmp_path, monkeypatch,
                                                          one_torch_thread):
    monkeypatch.setattr(ex, "ResNetGenerator", small_generator)
    image = write_image(tmp_path / "dog.png", 40, 62)
    answer = ex.exercise_1(image, None, size=16)
    assert answer["original"] == (40, 62) and answer["resized"] == (16, 24)
    assert answer["batch"].shape == answer["output"].shape == (1, 3, 16, 24)
    low, high = answer["output_range"]
    assert not answer["trained"] and -1 <= low < high <= 1

    torch.manual_seed(7)
    reference = small_generator()
    torch.save(reference.state_dict(), tmp_path / "g.pth")
    trained = ex.exercise_1(image, tmp_path / "g.pth", size=16)
    assert trained["trained"]
    torch.testing.assert_close(trained["output"], generate(reference, prepare(image, 16)))


def test_find_weights_prefers_the_flag_then_the_data_root(tmp_path):
    assert ex.find_weights(None, True, tmp_path) == (None, "untrained (--random-weights)")
    path, note = ex.find_weights(None, False, tmp_path)
    assert path is None and "absent" in note and "download horse2zebra" in note
    book = tmp_path / HORSE2ZEBRA_PTH
    book.parent.mkdir(parents=True)
    book.write_bytes(b"")
    assert ex.find_weights(None, False, tmp_path)[0] == book
    assert ex.find_weights(None, True, tmp_path)[0] is None
    with pytest.raises(DataError, match="--weights .*missing.pth: no such file"):
        ex.find_weights(tmp_path / "missing.pth", False, tmp_path)


def hub_tree(root, marker):
    """Two projects with a hubconf.py (one of them broken), and other files."""
    (root / "a/sub").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "a/sub/hubconf.py").write_text(HUBCONF.format(marker=str(marker)))
    (root / "b/hubconf.py").write_text("def broken(:\n")
    (root / "b/hubconf.py.txt").write_text("")
    for name in ("model.py", "README.md", "setup.py"):
        (root / "a" / name).write_text("")
    return root


def test_hubconfs_are_counted_and_read_without_running(tmp_path):
    root = hub_tree(tmp_path / "tree", tmp_path / "marker")
    found, n_files = ex.find_hubconfs([root])
    assert found == [root / "a/sub/hubconf.py", root / "b/hubconf.py"] and n_files == 6
    about = ex.describe_hubconf(found[0])
    assert not (tmp_path / "marker").exists()                 # nothing in it ran
    assert about["doc"] == "Small demo models." and about["dependencies"] == ["torch", "numpy"]
    assert about["entries"] == {"big": "imported from demo.models",
                                "small_net": "A two-layer network."}
    assert ex.describe_hubconf(found[1])["error"] == "not valid Python (line 1)"
    answer = ex.exercise_2([root])
    assert answer["found"] == [str(p) for p in found] and answer["picked"]["entries"]


def test_search_roots_keeps_existing_folders_once(tmp_path):
    roots = ex.search_roots([tmp_path, tmp_path / ".", tmp_path / "absent"])
    assert roots.count(tmp_path) == 1 and tmp_path / "absent" not in roots
    assert Path(site.getsitepackages()[0]) in roots


def test_main_answers_both_and_writes_the_pngs(tmp_path, monkeypatch, capsys, one_torch_thread):
    monkeypatch.setattr(ex, "ResNetGenerator", small_generator)
    monkeypatch.setattr(ex, "search_roots", lambda extra: [Path(e) for e in extra])
    write_image(tmp_path / "dog.png", 36, 50)
    root = hub_tree(tmp_path / "tree", tmp_path / "marker")
    answers = ex.main(["--image", str(tmp_path / "dog.png"), "--size", "16", "--random-weights",
                       "--search", str(root), "--out", str(tmp_path / "run"), "--device", "cpu"])
    out = capsys.readouterr().out
    assert sorted(answers) == [1, 2]
    for label in ("Exercise 2.1", "what must be done to it first?", "untrained (--random-weights)",
                  "what does the output look like?", "Exercise 2.2", "how many? (offline)",
                  "2 hubconf.py", "pick one:", "what is it for?"):
        assert label in out
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["dog_cyclegan.png",
                                                                    "dog_cyclegan_output.png"]
    assert iio.imread(tmp_path / "run/dog_cyclegan_output.png").shape == (16, 20, 3)


@pytest.mark.parametrize("argv, words", [
    (["--size", "2"], "--size 2: must be at least 4"),
    (["--exercise", "2", "--search", "/surely/not/here"], "--search /surely/not/here: not a"),
    (["--exercise", "0"], "invalid choice: 0"),
])
def test_a_bad_flag_is_one_line(argv, words, tmp_path, capsys):
    code, err = run_main(ex.main, [*argv, "--out", tmp_path / "run"], capsys)
    assert_one_error_line(code, err, words)
    assert not (tmp_path / "run").exists()
