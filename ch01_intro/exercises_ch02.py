"""Chapter 2 exercises (book section 2.6): the dog through CycleGAN, and hubconf.py files.

    python ch01_intro/exercises_ch02.py                  # 2.1 and 2.2
    python ch01_intro/exercises_ch02.py --exercise 1 --image my_dog.jpg
    python ch01_intro/exercises_ch02.py --exercise 2 --search ~/src

2.1: bobby.jpg prepared for the horse-to-zebra generator as horse2zebra.py prepares a horse,
run through it (the book's horse2zebra_0.4.0.pth when it is in the data root, else an untrained
generator, and the output says which), the input and the output side by side in a PNG in the
run folder. 2.2: the hubconf.py files installed here (site-packages, the torch hub cache,
--search folders), counted, and one read without running it: its dependencies and entry points.
"""
import argparse
import ast
import datetime
import os
import site
from pathlib import Path

import imageio.v3 as iio
import torch
import torch.nn.functional as F

from ch01_intro.cyclegan import ResNetGenerator
from ch01_intro.horse2zebra import generate, prepare, to_image
from ch01_intro.preprocess import BOBBY_JPG, read_image, read_text, resize_shorter, to_chw
from ch01_intro.weights import HORSE2ZEBRA_PTH, load_weights
from common.data import add_data_dir_argument, book_file, data_root
from common.device import add_device_argument, pick_device, seed_everything
from common.errors import DataError, require_at_least, run_cli
from common.figures import new_figure, save_figure
from common.files import atomic_path, check_writable, runs_dir

EXERCISES = (1, 2)
HUBCONF = "hubconf.py"                       # the file name torch.hub looks for (hub.py)
GITHUB_SEARCH = "https://github.com/search?q=path%3Ahubconf.py&type=code"


def luminance(rgb01):
    """(1, 3, H, W) in [0, 1] -> (H, W) brightness, Rec. 601 weights."""
    weights = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)
    return (rgb01[0] * weights).sum(dim=0)


def correlation(a, b):
    """Pearson correlation of two same-shape tensors (0 when either is constant)."""
    a, b = a.flatten() - a.mean(), b.flatten() - b.mean()
    denominator = a.norm() * b.norm()
    return float((a @ b) / denominator) if denominator > 0 else 0.0


def edge_map(lum, block=8):
    """(H, W) brightness -> mean |horizontal| + |vertical| difference per block x block tile:
    where the outlines are, whatever their colour or sign."""
    dx = (lum[:, 1:] - lum[:, :-1]).abs()[:-1]
    dy = (lum[1:] - lum[:-1]).abs()[:, :-1]
    return F.avg_pool2d((dx + dy)[None, None], block)[0, 0]


def find_weights(weights, random_weights, data_dir=None):
    """(path or None, what it is): --weights, else the book's file in the data root when it is
    there, else None (an untrained generator); --random-weights forces None."""
    if random_weights:
        return None, "untrained (--random-weights)"
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise DataError(f"--weights {path}: no such file")
        return path, f"--weights {path}"
    path = data_root(data_dir) / HORSE2ZEBRA_PTH
    if path.is_file():
        return path, f"the book's {path.name}"
    return None, (f"untrained: {path} is absent (python -m common.data download horse2zebra "
                  "gets the book's weights)")


def exercise_1(image, weights_path=None, size=256, device="cpu", seed=0):
    """2.1: the preparation steps' shapes, the generator's output, and what it looks like."""
    h, w = image.shape[:2]
    resized = tuple(resize_shorter(to_chw(image), size).shape[-2:])  # the shorter side to `size`
    batch = prepare(image, size)              # ... cropped to multiples of 4, in [0, 1], (1, 3, ..)
    seed_everything(seed)
    model = ResNetGenerator()
    if weights_path is not None:
        load_weights(model, weights_path, "CycleGAN weights")
    out = generate(model.to(device), batch, device)          # (1, 3, H, W) in [-1, 1]
    out01 = (out + 1) / 2
    return {"original": (h, w), "resized": resized, "batch": batch, "output": out,
            "trained": weights_path is not None,
            "output_range": (float(out.min()), float(out.max())),
            "mean_rgb_in": batch[0].mean(dim=(1, 2)).tolist(),
            "mean_rgb_out": out01[0].mean(dim=(1, 2)).tolist(),
            "luminance_correlation": correlation(luminance(batch), luminance(out01)),
            "edge_correlation": correlation(edge_map(luminance(batch)),
                                            edge_map(luminance(out01)))}


def plot_side_by_side(batch, out, title_out, path):
    """The prepared input and the generator's (out + 1) / 2 next to each other."""
    fig = new_figure(figsize=(11, 3.6))
    for ax, image, title in zip(fig.subplots(1, 2), (batch, (out + 1) / 2),
                                (f"input {tuple(batch.shape)} in [0, 1]", title_out)):
        ax.imshow(image[0].clamp(0, 1).permute(1, 2, 0).numpy())
        ax.set_title(title)
        ax.axis("off")
    return save_figure(fig, path)


def search_roots(extra=()):
    """Where installed code lives: this environment's site-packages, the user's, the torch hub
    cache, and any extra folders (those that exist, each once)."""
    roots = [*site.getsitepackages(), site.getusersitepackages(), torch.hub.get_dir(), *extra]
    seen = []
    for root in map(Path, roots):
        if root.is_dir() and root.resolve() not in [r.resolve() for r in seen]:
            seen.append(root)
    return seen


def find_hubconfs(roots):
    """(sorted hubconf.py paths, files looked at) under `roots`; links to folders not followed."""
    found, n_files = [], 0
    for root in roots:
        for folder, _subfolders, files in os.walk(root):
            n_files += len(files)
            found += [Path(folder) / HUBCONF for name in files if name == HUBCONF]
    return sorted(set(found)), n_files


def describe_hubconf(path):
    """What a hubconf.py offers, read with `ast` (nothing in it runs): its `dependencies` and
    entry points (public functions defined or imported at the top, as torch.hub.list names
    them), with each defined function's first docstring line."""
    try:
        tree = ast.parse(read_text(path, HUBCONF), filename=str(path))
    except SyntaxError as e:
        return {"path": str(path), "error": f"not valid Python (line {e.lineno})"}
    dependencies, entries = [], {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "dependencies" for t in node.targets):
            try:
                dependencies = list(ast.literal_eval(node.value))
            except ValueError:                # not a literal list: named as unreadable
                dependencies = ["(not a literal list)"]
        elif isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            entries[node.name] = (ast.get_docstring(node) or "").strip().split("\n")[0]
        elif isinstance(node, ast.ImportFrom):
            for alias in node.names:
                name = alias.asname or alias.name
                if not name.startswith("_") and name != "*":
                    entries[name] = f"imported from {node.module}"
    doc = (ast.get_docstring(tree) or "").strip().split("\n")[0]
    return {"path": str(path), "error": None, "doc": doc, "dependencies": dependencies,
            "entries": entries}


def exercise_2(roots):
    """2.2: how many hubconf.py files are installed, and the first one described."""
    found, n_files = find_hubconfs(roots)
    return {"roots": [str(r) for r in roots], "files_seen": n_files,
            "found": [str(p) for p in found],
            "picked": describe_hubconf(found[0]) if found else None}


def say(question, answer):
    """One sub-question and its measured answer, aligned."""
    print(f"  {question:<34}{answer}")


def print_exercise_1(a, weights_note, pngs):
    print("Exercise 2.1: bobby.jpg through the horse-to-zebra generator")
    (h, w), (rh, rw), batch = a["original"], a["resized"], a["batch"]
    say("what must be done to it first?",
        f"{h}x{w} RGB uint8 -> shorter side to {rh} ({rh}x{rw}) -> crop to multiples of 4 "
        f"({batch.shape[-2]}x{batch.shape[-1]}: the generator halves the size twice, then "
        f"doubles it twice) -> CHW float in [0, 1] -> a batch of one {tuple(batch.shape)}; "
        "no ImageNet normalization (unlike ResNet's input)")
    say("weights:", weights_note)
    low, high = a["output_range"]
    rgb_in = ", ".join(f"{v:.2f}" for v in a["mean_rgb_in"])
    rgb_out = ", ".join(f"{v:.2f}" for v in a["mean_rgb_out"])
    r, r_edge = a["luminance_correlation"], a["edge_correlation"]
    say("what does the output look like?",
        f"the same size {tuple(a['output'].shape)}, in [{low:.3f}, {high:.3f}], shown as "
        f"(out + 1) / 2; mean RGB {rgb_in} in, {rgb_out} out; correlation with the input: "
        f"brightness {r:+.2f}, outlines (edge strength per 8x8 tile) {r_edge:+.2f}")
    outline = "keeps the dog's outlines" if r_edge >= 0.3 else "loses the dog's outlines"
    if a["trained"]:
        say("verdict:", f"a generator trained on horses only, fed a dog: it {outline} "
            f"(r {r_edge:+.2f}); look at the PNG for what it made of the fur")
    else:
        brightness = "and its brightness" if abs(r) >= 0.3 else "but not its brightness"
        say("verdict:", f"untrained, it {outline} {brightness} (r {r_edge:+.2f} and "
            f"{r:+.2f}), drawn in the "
            "colours and checkerboard texture its random filters make: noise, not zebra "
            "stripes; the book's weights give the real answer")
    for png in pngs:
        say("wrote", png)


def print_exercise_2(a):
    print("Exercise 2.2: projects that provide a hubconf.py")
    say("how many? (offline)", f"{len(a['found'])} hubconf.py among {a['files_seen']:,} files "
        f"under {len(a['roots'])} folder(s): {', '.join(a['roots'])}")
    say("what the book means:", f"a GitHub search for files named hubconf.py ({GITHUB_SEARCH}):"
        " the repositories that publish models for torch.hub; offline, what is installed is "
        "searched instead (--search DIR adds folders)")
    picked = a["picked"]
    if picked is None:
        say("pick one:", "none is installed here. A hubconf.py lists `dependencies` (packages "
            "torch.hub checks for) and each public function in it is an entry point "
            "(torch.hub.list names them). pytorch/vision's, the one the book loads, depends on "
            "['torch'] and imports torchvision's model builders (alexnet, resnet18, ..., "
            "vit_h_14): one pretrained model per entry, plain from the names. Online: "
            "python ch01_intro/hub_note.py --run")
        return
    say("pick one:", picked["path"])
    if picked["error"]:
        say("can its purpose be understood?", f"no: {picked['error']}")
        return
    entries = picked["entries"]
    shown = ", ".join(list(entries)[:8]) + (f" and {len(entries) - 8} more"
                                            if len(entries) > 8 else "")
    say("what is it for?", f"{picked['doc'].rstrip('.') or '(no module docstring)'}; dependencies "
        f"{picked['dependencies']}; {len(entries)} entry point(s): {shown}")
    for name, doc in list(entries.items())[:5]:
        say(f"  {name}:", doc or "(no docstring)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--exercise", type=int, action="append", choices=EXERCISES,
                   help="exercise number, repeatable (default: all)")
    p.add_argument("--image", default=None, help=f"2.1's picture (default: {BOBBY_JPG})")
    p.add_argument("--size", type=int, default=256, help="2.1: shorter side (default: 256)")
    p.add_argument("--weights", default=None,
                   help=f"2.1: generator state_dict (default: {HORSE2ZEBRA_PTH} in the data "
                        "root when present, else untrained)")
    p.add_argument("--random-weights", action="store_true", help="2.1: the untrained generator")
    p.add_argument("--seed", type=int, default=0, help="2.1: seed of the untrained generator")
    p.add_argument("--search", action="append", default=[], metavar="DIR",
                   help="2.2: another folder to search for hubconf.py files (repeatable)")
    p.add_argument("--out", default=None, help="run folder (default: runs/ch01/exercises_ch02/"
                                               "<time> in the repository)")
    add_data_dir_argument(p)
    add_device_argument(p)
    args = p.parse_args(argv)
    exercises = sorted(set(args.exercise or EXERCISES))
    require_at_least("--size", args.size, 4)
    for folder in args.search:
        if not Path(folder).is_dir():
            raise DataError(f"--search {folder}: not a folder")

    answers = {}
    if 1 in exercises:
        out = Path(args.out or runs_dir("ch01") / "exercises_ch02"
                   / f"{datetime.datetime.now():%Y-%m-%d_%H.%M.%S}")
        check_writable(out, "--out")                         # before the generator runs
        weights, weights_note = find_weights(args.weights, args.random_weights, args.data_dir)
        image_path = args.image or book_file(BOBBY_JPG, args.data_dir, name="p1ch2")
        image = read_image(image_path, "--image" if args.image else "image")
        answer = exercise_1(image, weights, args.size, pick_device(args.device), args.seed)
        stem = Path(image_path).stem
        with atomic_path(out / f"{stem}_cyclegan_output.png", "--out") as tmp:
            iio.imwrite(tmp, to_image(answer["output"]))
        side = plot_side_by_side(answer["batch"], answer["output"],
                                 f"generator output, {weights_note.split(':')[0]}",
                                 out / f"{stem}_cyclegan.png")
        answer["pngs"] = [side, out / f"{stem}_cyclegan_output.png"]
        answer["weights"] = weights_note
        print_exercise_1(answer, weights_note, answer["pngs"])
        answers[1] = answer
    if 2 in exercises:
        answers[2] = exercise_2(search_roots(args.search))
        print_exercise_2(answers[2])
    return answers


if __name__ == "__main__":
    run_cli(main)
