"""The book's p1ch2 files end to end: bobby.jpg through ResNet-101, horse.jpg through CycleGAN."""
import pytest

from ch01_intro import classify_resnet, horse2zebra
from ch01_intro.weights import HORSE2ZEBRA_PTH, RESNET101_PTH

pytestmark = pytest.mark.realdata


def test_imagenet_labels_file(book_data):
    labels = classify_resnet.load_labels(book_data / classify_resnet.LABELS_TXT)
    assert labels[207] == "golden retriever" and labels[208].startswith("Labrador retriever")


def test_random_weights_on_bobby(book_data, capsys):
    result = classify_resnet.main(["--random-weights", "--data-dir", str(book_data),
                                   "--device", "cpu"])
    assert result["logits"].shape == (1, 1000)
    assert "bobby.jpg (random weights)" in capsys.readouterr().out


def test_books_resnet101_result(book_data):
    if not (book_data / RESNET101_PTH).exists():
        pytest.skip(f"{RESNET101_PTH} absent: python -m common.data download resnet101")
    top = classify_resnet.main(["--data-dir", str(book_data), "--device", "cpu"])["top"]
    assert top[0][0] == "golden retriever" and top[0][1] == pytest.approx(96.29, abs=0.3)
    assert top[1][0].startswith("Labrador retriever")
    assert top[1][1] == pytest.approx(2.81, abs=0.3)


def test_horse_random_weights(book_data, tmp_path):
    result = horse2zebra.main(["--random-weights", "--data-dir", str(book_data), "--size", "64",
                               "--out", str(tmp_path / "z.jpg"), "--device", "cpu"])
    assert result["input"].shape == (1, 3, 64, 76)            # 1220 x 1500 -> 64 x 78 -> 76
    assert result["output"].shape == result["input"].shape
    assert (tmp_path / "z.jpg").stat().st_size > 0


def test_books_horse2zebra_weights_load(book_data, tmp_path):
    if not (book_data / HORSE2ZEBRA_PTH).exists():
        pytest.skip(f"{HORSE2ZEBRA_PTH} absent: python -m common.data download horse2zebra")
    result = horse2zebra.main(["--data-dir", str(book_data), "--out", str(tmp_path / "z.jpg"),
                               "--device", "cpu"])                # strict load of the book's file
    assert result["output"].shape == (1, 3, 256, 312)
