"""Chapter 4's exercises: channel means of drawn colour images; a Python file as text."""
import imageio.v3 as iio
import numpy as np
import pytest
import torch

from ch04_data import exercises_ch04 as ex
from ch04_data.text import AUSTEN_TXT
from tests.common.cli import assert_one_error_line, run_main

SOURCE = '''"""A module docstring with prose words."""
import os

# top
RATE = 0.25


class Action:
    def action(self, x):
        # a comment about zebras
        if x >= 1:
            return x * RATE
        return os.sep
'''


def test_channel_means_of_a_hand_made_image():
    img = torch.zeros(4, 5, 3, dtype=torch.uint8)
    img[..., 0], img[..., 2] = 255, 51
    brightness, means = ex.channel_means(img)
    torch.testing.assert_close(means, torch.tensor([1.0, 0.0, 0.2]))
    assert brightness == pytest.approx(0.4)


def test_drawn_objects_cover_their_fraction_and_repeat_for_a_seed():
    for fraction in (0.6, 0.08):
        image = ex.draw_object("blue", 64, fraction, np.random.default_rng(3))
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    images = ex.colour_images(seed=5, per_colour=2, side=32)
    assert len(images) == 12
    assert sorted({(label, kind) for label, kind, _ in images.values()}) == sorted(
        (c, k) for c in ex.COLOURS for k in ("large", "small"))
    again = ex.colour_images(seed=5, per_colour=2, side=32)
    assert all(np.array_equal(images[k][2], again[k][2]) for k in images)
    # a large object: most of its pixels are the object's colour (the background is grey)
    red = ex.draw_object("red", 64, 0.6, np.random.default_rng(0)).astype(int)
    assert 0.5 < ((red[..., 0] - red[..., 1]) > 80).mean() < 0.7


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_frame_filling_object_is_named_by_its_largest_channel(seed):
    rows = ex.measure({name: (label, kind, torch.from_numpy(image))
                       for name, (label, kind, image) in ex.colour_images(seed, 2).items()})
    assert ex.tally(rows)["large"] == (6, 6)


def test_a_small_object_is_outvoted_by_its_background():
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    image[..., 1] = 180                              # a green background
    image[15:25, 15:25] = (220, 0, 0)                # a red square, 1/16 of the frame
    (row,) = ex.measure({"square": ("red", "small", torch.from_numpy(image))})
    assert row["guess"] == "green" and row["right"] is False
    assert ex.tally([row, {**row, "right": True}, {**row, "right": None}]) == {"small": (1, 2)}


@pytest.mark.parametrize("name, label", [
    ("my_red_car.jpg", "red"), ("Blue-Sky.PNG", "blue"), ("green.png", "green"),
    ("bluebird.jpg", None), ("tree.jpg", None),
])
def test_label_from_name(name, label):
    assert ex.label_from_name(name) == label


def test_exercise_1_writes_reads_back_and_scores_your_photos(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    iio.imwrite(mine / "red_apple.png", ex.draw_object("red", 32, 0.7, np.random.default_rng(1)))
    iio.imwrite(mine / "sky.png", ex.draw_object("blue", 32, 0.7, np.random.default_rng(2)))
    (mine / "notes.txt").write_text("not an image")
    answer = ex.exercise_1(tmp_path / "run", seed=0, data_dir=tmp_path / "empty",
                           images_dir=mine)
    drawn = ex.colour_images(0)
    assert answer["written"] == len(drawn) == 18
    for name, (_label, _kind, image) in drawn.items():         # PNG is lossless
        assert np.array_equal(iio.imread(tmp_path / "run/generated" / f"{name}.png"), image)
        assert torch.equal(answer["images"][name][2], torch.from_numpy(image))
    yours = {r["name"]: r for r in answer["rows"] if r["kind"] == "yours"}
    assert sorted(yours) == ["red_apple.png", "sky.png"]
    assert yours["red_apple.png"]["right"] is True and yours["sky.png"]["right"] is None
    assert answer["tally"]["yours"] == (1, 1)


def test_exercise_2_index_one_hot_and_what_is_lost(tmp_path):
    path = tmp_path / "m.py"
    path.write_text(SOURCE)
    novel = tmp_path / "root" / AUSTEN_TXT
    novel.parent.mkdir(parents=True)
    novel.write_text("It is a truth, universally acknowledged.\nA truth!\n")
    a = ex.exercise_2(path, data_dir=tmp_path / "root")
    words = ["A", "module", "docstring", "with", "prose", "words", "import", "os", "top", "RATE",
             "0", "25", "class", "Action", "def", "action", "self", "x", "a", "comment", "about",
             "zebras", "if", "x", "1", "return", "x", "RATE", "return", "os", "sep"]
    assert a["words"] == len(words) and a["vocabulary"] == len({w.lower() for w in words})
    assert a["onehot_shape"] == (len(words), a["vocabulary"]) and a["onehot_rows_sum_to_one"]
    assert a["novel_measured"] and a["novel_vocabulary"] == 6    # a, acknowledged, is, it, ...
    lost = a["lost"]
    assert lost["case_groups"] == {"a": ["A", "a"], "action": ["Action", "action"]}
    assert lost["indents"] == 3 and lost["indented_lines"] == 5
    assert lost["decimal_numbers"] == 1
    # docstring and comment words that are no name in the code
    assert lost["prose_only_words"] == len({"a", "module", "docstring", "with", "prose", "words",
                                            "top", "comment", "about", "zebras"})
    assert lost["keywords"] == ["class", "def", "if", "import", "return", "with"]
    assert lost["symbols"]["="] == 2 and lost["symbols"][">"] == 1
    assert lost["symbol_chars"] == sum(ch in '"().,:#=*>' for ch in SOURCE)
    missing = ex.exercise_2(path, data_dir=tmp_path / "none")
    assert not missing["novel_measured"] and missing["novel_vocabulary"] == 7261


def test_not_python_is_indexed_without_the_tokenizer_counts(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("def (:\n  broken ((( text")
    a = ex.exercise_2(path)
    assert a["words"] == 3 and not a["lost"]["python"] and a["lost"]["indents"] == 0


@pytest.mark.realdata
def test_the_novels_vocabulary_from_the_books_file(book_root, tmp_path):
    root = book_root(AUSTEN_TXT, "jane-austen")
    path = tmp_path / "m.py"
    path.write_text(SOURCE)
    answer = ex.exercise_2(path, data_dir=root)
    assert answer["novel_measured"] and answer["novel_vocabulary"] == 7261


def test_main_answers_both(tmp_path, capsys):
    path = tmp_path / "m.py"
    path.write_text(SOURCE)
    answers = ex.main(["--out", str(tmp_path / "run"), "--source", str(path),
                       "--data-dir", str(tmp_path / "empty")])
    out = capsys.readouterr().out
    assert sorted(answers) == [1, 2]
    for label in ("Exercise 4.1", "b. brightness", "c. told apart by the largest channel mean?",
                  "verdict:", "Exercise 4.2", "a. index:", "b. against Pride and Prejudice's "
                  "7,261 (the book's figure", "c. one-hot:", "d. what the encoding loses"):
        assert label in out
    assert (tmp_path / "run/colour_means.png").is_file()


@pytest.mark.parametrize("argv, words", [
    (["--images", "/surely/absent"], "--images /surely/absent: not a folder"),
    (["--exercise", "2", "--source", "/surely/absent.py"], "--source /surely/absent.py: no such"),
    (["--exercise", "3"], "invalid choice: 3"),
])
def test_a_bad_flag_is_one_line(argv, words, tmp_path, capsys):
    code, err = run_main(ex.main, [*argv, "--out", tmp_path / "run"], capsys)
    assert_one_error_line(code, err, words)
    assert not (tmp_path / "run").exists()


def test_a_grey_photo_is_one_line(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    iio.imwrite(tmp_path / "mine/grey.png", np.zeros((8, 8), dtype=np.uint8))
    code, err = run_main(ex.main, ["--exercise", "1", "--images", tmp_path / "mine",
                                   "--out", tmp_path / "run"], capsys)
    assert_one_error_line(code, err, "grey.png", "expected an 8-bit RGB(A) image")
