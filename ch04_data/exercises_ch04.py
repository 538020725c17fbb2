"""Chapter 4 exercises (book section 4.7): colour photos by channel means; Python source as text.

    python ch04_data/exercises_ch04.py                   # 4.1 and 4.2
    python ch04_data/exercises_ch04.py --exercise 1 --images ~/Pictures/rgb
    python ch04_data/exercises_ch04.py --exercise 2 --source some_module.py

4.1: red, green and blue images (drawn here: a large object filling the frame, and a small one
on a background of a random colour), written as PNGs into the run folder and read back with
images.py's reader, the book's dog and cats, and `--images DIR` (a file whose name holds red,
green or blue is scored against it): brightness (`.mean()`), per-channel means, and whether the
largest channel mean names the colour. Writes colour_means.png. 4.2: a Python file (default:
the standard library's argparse.py) indexed as the book suggests (`[^a-zA-Z0-9_]+` -> spaces,
lower case), against Pride and Prejudice's vocabulary (text.py), its one-hot encoding, and
what that encoding loses, counted with Python's own tokenizer.
"""
import argparse
import datetime
import io
import keyword
import re
import tokenize
from collections import Counter, defaultdict
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from ch01_intro.preprocess import read_text as read_utf8
from ch04_data.images import CATS_DIR, DOG_JPG, read_image
from ch04_data.text import AUSTEN_TXT, build_vocabulary, clean_words, word_one_hot
from common.data import add_data_dir_argument, data_root
from common.device import seed_everything
from common.errors import DataError, run_cli
from common.figures import new_figure, save_figure
from common.files import atomic_path, check_writable, runs_dir

EXERCISES = (1, 2)
COLOURS = ("red", "green", "blue")            # channel order of an RGB image
BASE_RGB = {"red": (200, 35, 35), "green": (40, 170, 50), "blue": (35, 60, 200)}
BOOK_VOCABULARY = 7261                        # Pride and Prejudice's cleaned words (book ch4.5)
NOT_A_WORD = r"[^a-zA-Z0-9_]+"                # the book's suggestion for code
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def draw_object(colour, side, fraction, rng):
    """(side, side, 3) uint8: a disc or a box of `colour` (jittered) covering about `fraction`
    of the frame, on a light grey background (fraction >= 0.5) or one of a random colour."""
    y, x = np.mgrid[0:side, 0:side] + 0.5
    cy, cx = rng.uniform(0.35, 0.65, size=2) * side
    if rng.random() < 0.5:                                   # a disc of area fraction * side^2
        r = side * np.sqrt(fraction / np.pi)
        mask = (y - cy) ** 2 + (x - cx) ** 2 <= r ** 2
    else:                                                    # a box of the same area
        half = side * np.sqrt(fraction) / 2
        mask = (abs(y - cy) <= half) & (abs(x - cx) <= half)
    background = (np.full(3, 200.0) if fraction >= 0.5 else rng.uniform(30, 230, size=3))
    image = np.broadcast_to(background, (side, side, 3)).copy()
    image[mask] = np.clip(np.array(BASE_RGB[colour]) + rng.uniform(-30, 30, size=3), 0, 255)
    image += rng.normal(0, 12, image.shape)                  # sensor-like noise
    return np.clip(image, 0, 255).round().astype(np.uint8)


def colour_images(seed=0, per_colour=3, side=64):
    """{name: (label, kind, image)}: per colour, `per_colour` large objects (60% of the frame)
    and as many small ones (8%) on random backgrounds; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    images = {}
    for kind, fraction in (("large", 0.6), ("small", 0.08)):
        for colour in COLOURS:
            for i in range(per_colour):
                images[f"{colour}_{kind}_{i}"] = (colour, kind,
                                                  draw_object(colour, side, fraction, rng))
    return images


def channel_means(img):
    """(H, W, 3) uint8 tensor -> (brightness, (3,) channel means), both in [0, 1]."""
    chw = img.permute(2, 0, 1)[:3].float() / 255          # (3, H, W), as the chapter lays it out
    return float(chw.mean()), chw.mean(dim=(1, 2))


def label_from_name(path):
    """red, green or blue when the file's name holds one of those words (first found), else None."""
    words = re.split(r"[^a-z]+", Path(path).stem.lower())
    return next((w for w in words if w in COLOURS), None)


def measure(named_images):
    """Rows {name, label, kind, brightness, means, guess, right} for (label, kind, (H, W, 3))."""
    rows = []
    for name, (label, kind, img) in named_images.items():
        brightness, means = channel_means(img)
        guess = COLOURS[int(means.argmax())]
        rows.append({"name": name, "label": label, "kind": kind, "brightness": brightness,
                     "means": means.tolist(), "guess": guess,
                     "right": None if label is None else guess == label})
    return rows


def tally(rows):
    """{kind: (right, scored)} over the rows that have a label."""
    counts = defaultdict(lambda: [0, 0])
    for row in rows:
        if row["right"] is not None:
            counts[row["kind"]][0] += row["right"]
            counts[row["kind"]][1] += 1
    return {kind: tuple(c) for kind, c in counts.items()}


def write_generated(images, folder):
    """Write each drawn image as <folder>/<name>.png; returns the paths."""
    paths = []
    for name, (_label, _kind, image) in images.items():
        with atomic_path(folder / f"{name}.png", "--out") as tmp:
            iio.imwrite(tmp, image)
        paths.append(folder / f"{name}.png")
    return paths


def book_photos(data_dir=None):
    """{name: path} of the book's dog and cats under the data root (empty when absent)."""
    root = data_root(data_dir)
    found = {}
    if (root / DOG_JPG).is_file():
        found["bobby (dog)"] = root / DOG_JPG
    if (root / CATS_DIR).is_dir():
        found.update({f"{p.stem} (cat)": p for p in sorted((root / CATS_DIR).glob("*.png"))})
    return found


def user_photos(folder):
    """The .png/.jpg files in `folder`, sorted; a DataError when there is none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"--images {folder}: not a folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DataError(f"--images {folder}: no .png or .jpg files in it")
    return paths


def exercise_1(out_dir, seed=0, data_dir=None, images_dir=None):
    """4.1: the drawn images (written, then read back), the book's photos and the user's."""
    photos = {name: (None, "book", read_image(path))               # the chapter's reader
              for name, path in book_photos(data_dir).items()}
    if images_dir is not None:                                     # read before writing
        for path in user_photos(images_dir):
            photos[path.name] = (label_from_name(path), "yours", read_image(path))
    drawn = colour_images(seed)
    paths = write_generated(drawn, out_dir / "generated")
    loaded = {path.stem: (label, kind, read_image(path))
              for path, (label, kind, _image) in zip(paths, drawn.values())}
    loaded.update(photos)
    rows = measure(loaded)
    return {"rows": rows, "tally": tally(rows), "images": loaded, "written": len(paths)}


def plot_colour_means(answer, path, per_row=6):
    """Thumbnails titled with their channel means and the colour the largest one names."""
    rows, images = answer["rows"], answer["images"]
    n_rows = -(-len(rows) // per_row)
    fig = new_figure(figsize=(2.4 * per_row, 2.4 * n_rows))
    axes = np.atleast_1d(fig.subplots(n_rows, per_row)).flatten()
    for ax in axes:
        ax.axis("off")
    for ax, row in zip(axes, rows):
        ax.imshow(images[row["name"]][2].numpy())
        mark = {True: " ok", False: " WRONG", None: ""}[row["right"]]
        r, g, b = row["means"]
        ax.set_title(f"{row['name']}\nR{r:.2f} G{g:.2f} B{b:.2f} -> {row['guess']}{mark}",
                     fontsize=8, color="tab:red" if row["right"] is False else "black")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.93, wspace=0.05, hspace=0.4)
    return save_figure(fig, path, dpi=80, tight_layout=False)   # tight_layout: slow for 20 axes


def python_tokens(text):
    """Python's own tokens of `text` ([] when it is not valid Python source)."""
    try:
        return list(tokenize.generate_tokens(io.StringIO(text).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return []


def what_is_lost(text, words):
    """Counts of what the word index drops: case, operators and punctuation, indentation,
    prose from strings and comments mixed with names, numbers cut at the decimal point."""
    counts = Counter(words)
    by_lower = defaultdict(set)
    for w in words:
        by_lower[w.lower()].add(w)
    groups = [k for k, v in by_lower.items() if len(v) > 1]          # most frequent first
    groups.sort(key=lambda k: -sum(counts[w] for w in by_lower[k]))
    case_groups = {k: sorted(by_lower[k]) for k in groups}
    symbols = Counter(ch for ch in text if not (ch.isalnum() or ch == "_" or ch.isspace()))
    tokens = python_tokens(text)
    kinds = Counter(tokenize.tok_name[t.type] for t in tokens)
    names = {t.string.lower() for t in tokens if t.type == tokenize.NAME}
    prose = set()
    for t in tokens:
        if t.type in (tokenize.STRING, tokenize.COMMENT):
            prose.update(w.lower() for w in re.sub(NOT_A_WORD, " ", t.string).split())
    non_space = sum(not ch.isspace() for ch in text)
    return {"case_groups": case_groups, "symbols": symbols, "symbol_chars": sum(symbols.values()),
            "non_space_chars": non_space, "python": bool(tokens),
            "indents": kinds["INDENT"], "dedents": kinds["DEDENT"],
            "indented_lines": sum(1 for line in text.splitlines() if line[:1] in (" ", "\t")),
            "prose_only_words": len(prose - names),
            "keywords": sorted(set(keyword.kwlist) & {w.lower() for w in words}),
            "decimal_numbers": sum(1 for t in tokens if t.type == tokenize.NUMBER
                                   and "." in t.string)}


def novel_counts(text):
    """The same two counts for the novel: punctuation share and words starting upper case."""
    symbols = sum(1 for ch in text if not (ch.isalnum() or ch == "_" or ch.isspace()))
    words = re.sub(NOT_A_WORD, " ", text).split()
    return {"symbol_chars": symbols, "non_space_chars": sum(not ch.isspace() for ch in text),
            "capitalised": sum(w[0].isupper() for w in words), "words": len(words)}


def exercise_2(source_path, data_dir=None, what="--source"):
    """4.2: the index of a Python file, its size against the novel's, its one-hot encoding and
    what the encoding loses (measured)."""
    text = read_utf8(source_path, what)
    words = re.sub(NOT_A_WORD, " ", text).split()            # the book's suggestion
    if not words:
        raise DataError(f"{what} {source_path}: no words in it")
    lowered = [w.lower() for w in words]
    word2index = {w: i for i, w in enumerate(sorted(set(lowered)))}   # as build_vocabulary
    onehot = word_one_hot(lowered, word2index)                 # (words, vocabulary), float32
    novel = data_root(data_dir) / AUSTEN_TXT
    if novel.is_file():
        novel_text = read_utf8(novel, "text")
        novel_vocabulary = len(build_vocabulary(novel_text))
        novel_words = len(clean_words(novel_text))
        novel_lost = novel_counts(novel_text)
    else:
        novel_vocabulary, novel_words, novel_lost = BOOK_VOCABULARY, None, None
    return {"path": str(source_path), "chars": len(text), "lines": len(text.splitlines()),
            "words": len(words), "vocabulary": len(word2index),
            "case_sensitive_vocabulary": len(set(words)), "word2index": word2index,
            "onehot_shape": tuple(onehot.shape), "onehot_bytes": onehot.numel() * 4,
            "onehot_rows_sum_to_one": bool((onehot.sum(dim=1) == 1).all()),
            "novel_vocabulary": novel_vocabulary, "novel_words": novel_words,
            "novel_measured": novel_lost is not None, "novel_lost": novel_lost,
            "lost": what_is_lost(text, words)}


def print_exercise_1(a, png):
    print("Exercise 4.1: red, green and blue things, by brightness and channel means")
    print(f"  a. loaded as tensors: {a['written']} drawn PNGs and {len(a['rows']) - a['written']} "
          "other photos, each (H, W, 3) uint8 through images.read_image, permuted to (3, H, W)")
    print(f"  {'image':22}{'b. brightness':>14}{'c. R':>7}{'G':>6}{'B':>6}  largest  right?")
    for row in a["rows"]:
        right = {True: "yes", False: "NO", None: "-"}[row["right"]]
        r, g, b = row["means"]
        print(f"  {row['name'][:22]:22}{row['brightness']:14.3f}{r:7.3f}{g:6.3f}{b:6.3f}  "
              f"{row['guess']:7}  {right}")
    parts = []
    for kind, (right, scored) in a["tally"].items():
        parts.append(f"{kind}: {right} of {scored}")
    print(f"  c. told apart by the largest channel mean? {'; '.join(parts)}")
    large, small = a["tally"].get("large", (0, 0)), a["tally"].get("small", (0, 0))
    if large[0] == large[1] and small[0] < small[1]:
        verdict = ("yes when the thing fills the frame; a small one is outvoted by its "
                   "background, which the mean counts pixel by pixel")
    elif large[0] == large[1]:
        verdict = "yes for these images, even the small objects"
    else:
        verdict = "not reliably, even for large objects"
    print(f"     verdict: {verdict}. The book's photos have no colour label: their largest "
          "channel is shown for reference.")
    print(f"  wrote {png}")


def print_exercise_2(a):
    lost, novel = a["lost"], a["novel_lost"]
    print(f"Exercise 4.2: a Python file as text: {a['path']}")
    print(f"  a. index: {a['chars']:,} characters, {a['lines']:,} lines -> {a['words']:,} words "
          f"after `{NOT_A_WORD}` -> spaces -> {a['vocabulary']:,} distinct (lower case)")
    source = ("computed from the book's file" if a["novel_measured"]
              else "the book's figure: jane-austen is not in the data root")
    ratio = a["vocabulary"] / a["novel_vocabulary"]
    per_entry = f"{a['words'] / a['vocabulary']:.1f} words per entry"
    if a["novel_words"]:
        per_entry += f" against the novel's {a['novel_words'] / a['novel_vocabulary']:.1f}"
    print(f"  b. against Pride and Prejudice's {a['novel_vocabulary']:,} ({source}): "
          f"{'smaller' if ratio < 1 else 'larger'}, {ratio:.2f}x; {per_entry}")
    rows, columns = a["onehot_shape"]
    print(f"  c. one-hot: ({rows:,}, {columns:,}) float32, {a['onehot_bytes'] / 2**20:.1f} MiB, "
          f"every row a single 1: {a['onehot_rows_sum_to_one']}")
    print("  d. what the encoding loses, against the novel's:")
    examples = ", ".join("/".join(v) for v in list(lost["case_groups"].values())[:4])
    print(f"     case: {a['case_sensitive_vocabulary']:,} distinct words with case kept, "
          f"{len(lost['case_groups'])} groups differ only by case ({examples}, ...); in code "
          "`Action` (a class) and `action` (a variable) are different names")
    top = " ".join(f"{ch!r}:{n}" for ch, n in lost["symbols"].most_common(8))
    share = lost["symbol_chars"] / lost["non_space_chars"]
    novel_share = ""
    if novel:
        novel_share = (f"; the novel's punctuation is "
                       f"{novel['symbol_chars'] / novel['non_space_chars']:.1%} of its characters")
    print(f"     operators and punctuation: {lost['symbol_chars']:,} characters, {share:.1%} of "
          f"the non-space ones ({top}){novel_share}: in code they are the syntax (calls, "
          "attribute access, assignments, comparisons), in prose mostly pauses")
    if lost["python"]:
        print(f"     indentation: {lost['indented_lines']:,} indented lines and {lost['indents']} "
              "INDENT tokens (the block structure) gone; the novel loses only its paragraph breaks")
        print(f"     prose and names mixed: {lost['prose_only_words']} words occur only in "
              f"docstrings, strings and comments, yet share the index with names; "
              f"{len(lost['keywords'])} Python keywords are ordinary entries; "
              f"{lost['decimal_numbers']} decimal number(s) split in two at the point")
    else:
        print("     (not valid Python: the tokenizer's counts are skipped)")
    print("     order: kept, one row per word, as for the novel; the index itself is sorted")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--exercise", type=int, action="append", choices=EXERCISES,
                   help="exercise number, repeatable (default: all)")
    p.add_argument("--images", default=None, metavar="DIR",
                   help="4.1: a folder of your own photos (names holding red/green/blue are "
                        "scored)")
    p.add_argument("--source", default=None, metavar="PATH",
                   help=f"4.2: a Python file (default: {argparse.__file__})")
    p.add_argument("--seed", type=int, default=0, help="4.1: the drawn images (default: 0)")
    p.add_argument("--out", default=None, help="run folder (default: runs/ch04/exercises_ch04/"
                                               "<time> in the repository)")
    add_data_dir_argument(p)
    args = p.parse_args(argv)
    exercises = sorted(set(args.exercise or EXERCISES))
    if args.images is not None and 1 in exercises:
        user_photos(args.images)                                # checked before any work
    source = Path(args.source) if args.source else Path(argparse.__file__)

    answers = {}
    if 1 in exercises:
        out = Path(args.out or runs_dir("ch04") / "exercises_ch04"
                   / f"{datetime.datetime.now():%Y-%m-%d_%H.%M.%S}")
        check_writable(out, "--out")
        seed_everything(args.seed)
        answers[1] = exercise_1(out, args.seed, args.data_dir, args.images)
        answers[1]["png"] = plot_colour_means(answers[1], out / "colour_means.png")
        print_exercise_1(answers[1], answers[1]["png"])
    if 2 in exercises:
        answers[2] = exercise_2(source, args.data_dir, "--source" if args.source else "source")
        print_exercise_2(answers[2])
    return answers


if __name__ == "__main__":
    run_cli(main)
