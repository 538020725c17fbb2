"""Malformed tables and small files at every chapter-4 entry point (and the ch01/ch07 scripts
that read a label file, an image or a CIFAR folder): one line naming the file and what is
wrong, exit 2, no output written, not even the --out folder (issue 10, class 3)."""
import importlib
import io
import shutil

import numpy as np
import pytest
import scipy.io.wavfile

from ch04_data.bikes import HOUR_CSV, N_COLUMNS
from ch04_data.wine import BOOK_THRESHOLD, WINE_CSV
from ch07_cifar.cifar_files import CIFAR_DIR
from ch07_cifar.synthetic import write_synthetic_cifar
from tests.ch01.conftest import write_image, write_labels
from tests.common.cli import assert_one_error_line, run_main
from tests.conftest import find_book_file

WINE_HEADER = ('"fixed acidity";"volatile acidity";"citric acid";"residual sugar";"chlorides";'
               '"free sulfur dioxide";"total sulfur dioxide";"density";"pH";"sulphates";'
               '"alcohol";"quality"\n')
WINE_ROW = "7;0.27;0.36;20.7;0.045;45;170;1.001;3;0.45;8.8;6\n"
BIKE_HEADER = ("instant,dteday,season,yr,mnth,hr,holiday,weekday,workingday,weathersit,temp,"
               "atemp,hum,windspeed,casual,registered,cnt\n")
TEXT = "p1ch4/jane-austen/1342-0.txt"
WAV = "p1ch4/audio-chirp/1-100038-A-14.wav"
DOG, CATS = "p1ch4/image-dog/bobby.jpg", "p1ch4/image-cats"
VIDEO = "p1ch4/video-cockatoo/cockatoo.mp4"
DICOM = "p1ch4/volumetric-dicom/2-LUNG 3.0  B70f-04083"


def bike_rows(n=24, weathersit=1, date="2011-01-01", temp=lambda i: 0.2 + 0.01 * i):
    return "".join(f"{i + 1},{date},1,0,1,{i % 24},0,6,0,{weathersit},{temp(i):.2f},0.28,0.81,0,"
                   f"3,13,{16 + i}\n" for i in range(n))


def wav_bytes(samples, rate=8000):
    buffer = io.BytesIO()
    scipy.io.wavfile.write(buffer, rate, np.asarray(samples, dtype=np.int16))
    return buffer.getvalue()


NOVEL = "".join(f"line {i} of the novel\n" for i in range(300))
GOOD_WAV = wav_bytes(np.arange(2000) % 100)

# (script, relpath, content: bytes | str | None for a folder, words the one line must hold)
CASES = {
    "wine empty": ("wine", WINE_CSV, b"", "empty file"),
    "wine folder": ("wine", WINE_CSV, None, "a folder, not a CSV file"),
    "wine latin-1": ("wine", WINE_CSV, WINE_HEADER.encode() + b"7;0,27\xe9;0.36\n",
                     "not UTF-8 text (byte"),
    "wine no sulfur column": ("wine", WINE_CSV, WINE_HEADER.replace("total sulfur", "sulfur")
                              + WINE_ROW, "no column 'total sulfur dioxide'"),
    "wine short row": ("wine", WINE_CSV, WINE_HEADER + WINE_ROW + "7;0.27;0.36\n",
                       "line 3 has 3 fields, the header 12"),
    "wine text cell": ("wine", WINE_CSV, WINE_HEADER + WINE_ROW.replace(";3;", ";abc;"),
                       "line 2, column 'pH': 'abc' is not a finite number"),
    "wine nan cell": ("wine", WINE_CSV, WINE_HEADER + WINE_ROW.replace(";3;", ";nan;"),
                      "column 'pH': 'nan' is not a finite number"),
    "wine quality 11": ("wine", WINE_CSV, WINE_HEADER + WINE_ROW[:-2] + "11\n",
                        "quality 11 on data row 1 (line 2): must be a whole number 0..9"),
    "wine header only": ("wine", WINE_CSV, WINE_HEADER, "a header and no data rows"),
    "bikes weathersit 5": ("bikes", HOUR_CSV, BIKE_HEADER + bike_rows(weathersit=5),
                           "weathersit 5 on data row 1 (line 2): must be a whole number 1..4 "
                           "(23 more such rows)"),
    "bikes weathersit 0": ("bikes", HOUR_CSV, BIKE_HEADER + bike_rows(weathersit=0),
                           "weathersit 0"),
    "bikes 23 hours": ("bikes", HOUR_CSV, BIKE_HEADER + bike_rows(23), "whole days of 24 hours"),
    "bikes bad date": ("bikes", HOUR_CSV, BIKE_HEADER + bike_rows(date="2011-13-01"),
                       "column 'dteday': '2011-13-01' is not a finite number"),
    "bikes constant temp": ("bikes", HOUR_CSV, BIKE_HEADER + bike_rows(temp=lambda i: 0.5),
                            "temp is 0.5 in every row"),
    "bikes missing column": ("bikes", HOUR_CSV, BIKE_HEADER.replace("weathersit", "weather")
                             + bike_rows(), "no column 'weathersit'"),
    "bikes non-UTF-8": ("bikes", HOUR_CSV, b"\xff\xfe" + BIKE_HEADER.encode("utf-16-le"),
                        "not UTF-8 text"),
    "text without the word": ("text", TEXT, NOVEL, "the word 'impossible' the book looks up"),
    "text too short": ("text", TEXT, "impossible\n" * 10, "only 11 lines, the book shows line 200"),
    "text blank line 200": ("text", TEXT, NOVEL.replace("line 200 of the novel", "  "),
                            "line 200 holds no words"),
    "text latin-1": ("text", TEXT, "impossible é\n".encode("latin-1") * 300, "not UTF-8 text"),
    "text folder": ("text", TEXT, None, "a folder, not a file"),
    "audio empty": ("audio", WAV, b"", "not a WAV file"),
    "audio truncated": ("audio", WAV, GOOD_WAV[:1000], "truncated or damaged WAV file"),
    "audio header only": ("audio", WAV, GOOD_WAV[:40], "not a WAV file"),
    "audio text": ("audio", WAV, "not a sound", "not a WAV file"),
    "audio folder": ("audio", WAV, None, "a folder, not a WAV file"),
    "audio stereo": ("audio", WAV, wav_bytes(np.zeros((2000, 2))), "expected a mono clip"),
    "audio too short": ("audio", WAV, wav_bytes(np.zeros(100)),
                        "100 samples at 8000 Hz, a spectrogram needs at least 256"),
    "images dog is text": ("images", DOG, "<html>not a dog</html>", "not a readable image"),
    "images dog is grey": ("images", DOG, "grey", "expected an 8-bit RGB(A) image"),
    "images cats is a file": ("images", CATS, "cats", "a file, not the folder of cat images"),
    "images cat of another size": ("images", CATS, "small cat", "expected a 256x256 RGB(A)"),
    "video not a video": ("video", VIDEO, "not a video", "cannot decode the video"),
    "video folder": ("video", VIDEO, None, "a folder, not a video file"),
    "volumetric no DICOM": ("volumetric", DICOM, "text only", "no DICOM series found"),
    "volumetric a file": ("volumetric", DICOM, "a file", "a file, not the folder of the DICOM"),
}


def make(root, relpath, content):
    """The broken input at root/relpath, plus what else the script reads first."""
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    if relpath == CATS:                                     # images.py reads the dog first
        (root / DOG).parent.mkdir(parents=True)
        write_image(root / DOG, 72, 128)
    if relpath == DOG:
        (root / CATS).mkdir(parents=True)
    if content is None:
        path.mkdir()
    elif content == "grey":
        import imageio.v3 as iio
        iio.imwrite(path.with_suffix(".png"), np.zeros((20, 30), np.uint8))
        path.with_suffix(".png").rename(path)
    elif content == "cats":
        path.write_text("a file")
    elif content == "small cat":
        path.mkdir()
        write_image(path / "cat1.png", 100, 100)
    elif content in ("text only",):
        path.mkdir()
        (path / "000000.dcm").write_text("not DICOM")
    else:
        path.write_bytes(content.encode() if isinstance(content, str) else content)


@pytest.mark.parametrize("case", list(CASES))
def test_a_malformed_input_is_one_line(case, tmp_path, capsys):
    script, relpath, content, words = CASES[case]
    root, out = tmp_path / "root", tmp_path / "out"
    make(root, relpath, content)
    if script == "video" and content is not None and not importlib.util.find_spec(
            "imageio_ffmpeg") and not importlib.util.find_spec("av"):
        pytest.skip("no video plugin for imageio")
    main = importlib.import_module(f"ch04_data.{script}").main
    argv = ["--data-dir", root] + (["--out", out] if script != "text" else [])
    code, err = run_main(main, argv, capsys)
    assert_one_error_line(code, err, words)
    assert str(root) in err                                 # names the file (or its folder)
    assert not out.exists()                 # no figure of a bad input, not even its folder


def test_no_wine_passing_the_threshold_says_so_instead_of_dividing_by_zero(tmp_path, capsys):
    root = tmp_path / "root"
    make(root, WINE_CSV, WINE_HEADER + WINE_ROW * 3)         # sulfur 170 > 141.83 everywhere
    from ch04_data import wine

    result = wine.main(["--data-dir", str(root), "--out", str(tmp_path / "out")])
    assert result["rule"]["predicted"] == 0 and result["rule"]["precision"] is None
    assert result["rule"]["recall"] == 0.0
    out = capsys.readouterr().out
    assert f"sulfur < {BOOK_THRESHOLD}: 0 predicted good" in out
    assert "precision n/a (nothing to divide by), recall 0.000" in out
    assert result["png"].is_file()


@pytest.mark.realdata
def adjacent_slices(folder, count):
    """The names of `count` files of a DICOM series that are neighbours in it (by instance
    number; the files' own names are in no such order)."""
    import SimpleITK as sitk

    reader, numbered = sitk.ImageFileReader(), []
    for path in sorted(folder.glob("*.dcm")):
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        numbered.append((int(reader.GetMetaData("0020|0013")), path.name))
    return [name for _, name in sorted(numbered)[:count]]


def test_a_dicom_series_shorter_than_the_slice_the_book_shows(tmp_path, capsys):
    source = find_book_file(DICOM)
    if source is None:
        pytest.skip("the book's DICOM CT is absent: python -m common.data download dicom-ct")
    folder = tmp_path / "root" / DICOM
    folder.mkdir(parents=True)
    for name in adjacent_slices(source, 3):         # a 3 mm step: only the length is wrong
        shutil.copyfile(source / name, folder / name)
    from ch04_data import volumetric

    code, err = run_main(volumetric.main, ["--data-dir", tmp_path / "root", "--out",
                                           tmp_path / "out"], capsys)
    # common.errors.one_line keeps runs of spaces: the folder's two are named as they are
    assert_one_error_line(code, err, folder,
                          "a series of 3 slices, the book shows slice 50")
    assert not (tmp_path / "out").exists()


@pytest.fixture
def ch01_inputs(tmp_path):
    write_image(tmp_path / "dog.png", 40, 60)
    write_labels(tmp_path / "labels.txt")
    return tmp_path


@pytest.mark.parametrize("flag, content, words", [
    ("--labels", "golden retriever\n".encode("utf-16"), "not UTF-8 text"),
    ("--labels", "a\nb\nc\n", "3 labels, the model has 1000 classes"),
    ("--labels", None, "a folder, not a file"),
    ("--image", "<html>no image</html>", "not a readable image"),
    ("--image", b"", "not a readable image"),
    ("--image", None, "a folder, not a file"),
])
def test_ch01_labels_and_images(ch01_inputs, capsys, flag, content, words):
    from ch01_intro import classify_resnet

    bad = ch01_inputs / "bad"
    if content is None:
        bad.mkdir()
    else:
        bad.write_bytes(content.encode() if isinstance(content, str) else content)
    argv = {"--image": ch01_inputs / "dog.png", "--labels": ch01_inputs / "labels.txt"}
    argv[flag] = bad
    code, err = run_main(classify_resnet.main, ["--random-weights", "--device", "cpu",
                                                *[x for kv in argv.items() for x in kv]], capsys)
    assert_one_error_line(code, err, f"{flag} {bad}", words)


def test_a_cifar_folder_smaller_than_the_item_the_book_shows(tmp_path, capsys):
    from ch07_cifar import cifar

    write_synthetic_cifar(tmp_path / CIFAR_DIR, train_per_class=5, test_per_class=1)
    code, err = run_main(cifar.main, ["--data-dir", tmp_path, "--out", tmp_path / "out"], capsys)
    assert_one_error_line(code, err, tmp_path / CIFAR_DIR,
                          "50 training images; the book shows item 99")
    assert not (tmp_path / "out").exists()


def test_bike_table_of_the_right_shape_is_accepted(tmp_path):
    from ch04_data.bikes import load_hours

    path = tmp_path / "hours.csv"
    path.write_text(BIKE_HEADER + bike_rows(48, weathersit=3))
    hours = load_hours(path)
    assert tuple(hours.shape) == (48, N_COLUMNS) and float(hours[0, 1]) == 1.0   # day 1
