"""Chapter 8's exercises (book section 8.7): other kernel sizes; images edited to fool the Net.

    python ch08_convnets/exercises_ch08.py                    # 8.1 and 8.2 (Adam, 10 epochs)
    python ch08_convnets/exercises_ch08.py --exercise 2 --eps 4
    python ch08_convnets/exercises_ch08.py --exercise 1 --optimizer sgd --lr 1e-2 --epochs 100

8.1: NetKernel, the chapter's Net with any kernel_size and padding (3x3, 5x5, 1x3): parameter
counts, the Conv2d output-size rule, what each conv sees (footprint), train/val accuracy after
the same training. 8.2: fool(), signed-gradient steps on the input pixels within an L-inf
budget, turns images of other classes into airplanes and airplanes into birds, for the book's
trained Net (p1ch6/birds_vs_airplanes.pt under the data root, when there) and for NetWidth nets
of 8, 16 and 32 channels trained here. Models, loop and validation are chapter 8's; CIFAR-10 when
present, else the synthetic sample. PNGs go to runs/ch08/exercises_ch08/<time>/ (--out).
"""
import argparse
import contextlib
import io
import statistics
import time
from collections import namedtuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ch01_intro.resnet import count_parameters
from ch07_cifar.cifar import BOOK_MEAN, BOOK_STD, load_cifar10, normalize
from ch07_cifar.cifar_files import CLASS_NAMES
from ch07_cifar.train_fc import add_cifar_arguments, check_cifar_flags, prepare
from ch08_convnets.models import BOOK_NET_FILE, NetWidth, load_book_net
from ch08_convnets.train import training_loop, validate
from common.data import data_root
from common.device import seed_everything
from common.errors import DataError, require_at_least, run_cli
from common.figures import new_figure, save_figure
from common.files import check_writable, runs_dir

EXERCISES = (1, 2)
KERNELS = {"3x3": (3, 1), "5x5": (5, 2), "1x3": ((1, 3), (0, 1))}   # name: (kernel_size, padding)
AIRPLANE, BIRD = 0, 1                       # CIFAR-2 labels
CONFIDENCE = 0.95                           # 8.2: the book's "more than 95% confidence"
STEP = 0.25 / 255                           # 8.2: how far one edit step moves a pixel
REAL_DATA = "python -m common.data download cifar10"


class Run(namedtuple("Run", "epochs device optimizer lr seed")):
    """How every model of an exercise trains: the same epochs, device, optimizer, lr and seed."""

    def __str__(self):
        return f"{self.optimizer} lr {self.lr}, {self.epochs} epochs, seed {self.seed}"


def pair(value):
    """An int or an (h, w) pair as an (h, w) pair, as Conv2d reads kernel_size and padding."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def conv_output_size(size, kernel_size, padding, stride=1, dilation=1):
    """The Conv2d docs' rule for one side: floor((size + 2 padding - dilation (kernel - 1) - 1)
    / stride) + 1."""
    return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


class NetKernel(nn.Module):
    """The chapter's Net with `kernel_size` and `padding` in both convs (Net: 3 and 1); the
    parameter names are Net's, so Net's weights load into NetKernel(3, 1)."""

    def __init__(self, kernel_size=3, padding=1):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, kernel_size=kernel_size, padding=padding)
        self.conv2 = nn.Conv2d(16, 8, kernel_size=kernel_size, padding=padding)
        side = []                                  # rows, columns after conv, pool, conv, pool
        for n, k, p in zip((32, 32), pair(kernel_size), pair(padding), strict=True):
            n = conv_output_size(n, k, p) // 2
            side.append(conv_output_size(n, k, p) // 2)
        self.n_flat = 8 * side[0] * side[1]        # 8 * 8 * 8 = 512 when the convs keep sizes
        self.fc1 = nn.Linear(self.n_flat, 32)
        self.fc2 = nn.Linear(32, 2)

    def forward(self, x):
        out = F.max_pool2d(torch.tanh(self.conv1(x)), 2)      # (N, 16, 16, 16) for Net
        out = F.max_pool2d(torch.tanh(self.conv2(out)), 2)    # (N, 8, 8, 8)
        out = out.view(-1, self.n_flat)
        out = torch.tanh(self.fc1(out))
        return self.fc2(out)


def footprint(model, layer="conv2", size=32):
    """(rows, columns) of the input pixels that one output pixel of `layer` (conv1, or conv2
    after conv1, tanh and pooling) can depend on, from the gradient of that pixel, plus the
    (size, size) map of |gradient| summed over channels. The pooling here averages: max
    pooling passes the gradient to one pixel of each 2x2, the one that won for this input."""
    x = torch.zeros(1, 3, size, size, requires_grad=True)
    out = model.conv1(x)
    if layer == "conv2":
        out = model.conv2(F.avg_pool2d(torch.tanh(out), 2))
    out[0, :, out.shape[2] // 2, out.shape[3] // 2].sum().backward()
    seen = x.grad[0].abs().sum(dim=0)
    rows, cols = torch.nonzero(seen, as_tuple=True)
    return (int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)), seen


def quietly(fn, *args):
    """fn(*args) with its printing swallowed (the chapter's loop and validate print as they
    go; the exercises print one line per model instead)."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def train_model(model, train_loader, val_loader, run):
    """Chapter 8's training_loop and validate, quietly, with run's optimizer: (losses,
    {'train': ..., 'val': ...})."""
    model.to(run.device)
    optimizer = (torch.optim.Adam(model.parameters(), lr=run.lr) if run.optimizer == "adam"
                 else torch.optim.SGD(model.parameters(), lr=run.lr))
    losses = quietly(training_loop, run.epochs, optimizer, model, nn.CrossEntropyLoss(),
                     train_loader, run.device)
    return losses, quietly(validate, model, train_loader, val_loader, run.device)


def kernel_comparison(train_loader, val_loader, run, kernels=KERNELS):
    """8.1b and e: NetKernel for each (kernel_size, padding), trained the same way: rows of name,
    params, conv1 output shape, train, val, gap and seconds."""
    rows = []
    for name, (kernel_size, padding) in kernels.items():
        seed_everything(run.seed)
        model = NetKernel(kernel_size, padding)
        shape = tuple(model.conv1(torch.zeros(1, 3, 32, 32)).shape)
        start = time.perf_counter()
        _, acc = train_model(model, train_loader, val_loader, run)
        rows.append({"name": name, "params": count_parameters(model), "conv1_shape": shape,
                     "train": acc["train"], "val": acc["val"], "gap": acc["train"] - acc["val"],
                     "seconds": time.perf_counter() - start})
    return rows


def fool(model, images, target, mean, std, eps=8 / 255, step=STEP, max_steps=200):
    """Edit (N, 3, 32, 32) images in [0, 1] until the model gives class `target` more than
    CONFIDENCE: signed-gradient ascent on log p(target), each pixel kept in [0, 1] and within
    `eps` of the original. Returns (edited images, steps each needed (0: already there; -1: not
    within max_steps), final p(target))."""
    model.eval()
    original = images.detach()
    x = original.clone()
    with torch.no_grad():
        prob = F.softmax(model(normalize(x, mean, std)), dim=1)[:, target]
    steps = torch.where(prob > CONFIDENCE, 0, -1)
    for i in range(1, max_steps + 1):
        active = steps < 0
        if not active.any():
            break
        x.requires_grad_(True)
        log_p = F.log_softmax(model(normalize(x, mean, std)), dim=1)[:, target]
        (grad,) = torch.autograd.grad(log_p.sum(), x)      # each image's own gradient
        with torch.no_grad():
            x = x + step * grad.sign() * active.view(-1, 1, 1, 1)
            x = torch.min(torch.max(x, original - eps), original + eps).clamp(0, 1)
            prob = F.softmax(model(normalize(x, mean, std)), dim=1)[:, target]
        steps[active & (prob > CONFIDENCE)] = i
    return x.detach(), steps, prob


def perturbation(edited, original):
    """Per image: the largest pixel change (L-inf) and the L2 norm of the change, in [0, 1]
    units."""
    delta = (edited - original).flatten(1)
    return delta.abs().amax(dim=1), delta.norm(dim=1)


def summarize_fooling(steps, edited, original):
    """Success rate, median steps and mean L2 of the successful edits (None when none)."""
    _, l2 = perturbation(edited, original)
    ok = steps >= 0
    return {"success": float(ok.float().mean()),
            "median_steps": statistics.median(steps[ok].tolist()) if ok.any() else None,
            "mean_l2": float(l2[ok].mean()) if ok.any() else None}


def class_images(cifar_dir, labels, count):
    """The first `count` test images whose CIFAR-10 label (an index in CLASS_NAMES) is in
    `labels`, as an (N, 3, 32, 32) float tensor in [0, 1]."""
    dataset = load_cifar10(cifar_dir, train=False)
    chosen = np.flatnonzero(np.isin(dataset.labels, labels))[:count]
    if not len(chosen):
        names = ", ".join(CLASS_NAMES[label] for label in labels)
        raise DataError(f"{cifar_dir}: no image of {names} in the test batch")
    return torch.from_numpy(dataset.images[chosen]).float().div(255)


def probabilities(model, images, mean, std):
    """(N, 2) softmax of the model for (N, 3, 32, 32) images in [0, 1]."""
    model.eval()
    with torch.no_grad():
        return F.softmax(model(normalize(images, mean, std)), dim=1)


def plot_fooling(original, edited, model, mean, std, target_name, path, eps, shown=4,
                 title=""):
    """Originals over their edits with p(target) in the titles, and the change, amplified."""
    target = AIRPLANE if target_name == "airplane" else BIRD
    p0 = probabilities(model, original, mean, std)[:, target]
    p1 = probabilities(model, edited, mean, std)[:, target]
    n = min(shown, len(original))
    fig = new_figure(figsize=(2.0 * n, 6.4))
    axes = np.asarray(fig.subplots(3, n)).reshape(3, n)
    for j in range(n):
        delta = 0.5 + (edited[j] - original[j]) * (0.5 / eps)        # grey = unchanged
        for row, (img, label) in enumerate((
                (original[j], f"original\np({target_name}) {p0[j]:.3f}"),
                (edited[j], f"edited\np({target_name}) {p1[j]:.3f}"),
                (delta.clamp(0, 1), f"change x{0.5 / eps:.0f}"))):
            axes[row, j].imshow(img.permute(1, 2, 0).numpy(), interpolation="nearest")
            axes[row, j].set_title(label, fontsize=8)
            axes[row, j].axis("off")
    fig.suptitle(f"{title}: every pixel changed by at most {eps * 255:g}/255", fontsize=10)
    return save_figure(fig, path, dpi=110)


def plot_footprints(maps, path):
    """8.1d: the input pixels one conv2 output pixel depends on, per kernel."""
    fig = new_figure(figsize=(3.0 * len(maps), 3.2))
    axes = np.atleast_1d(fig.subplots(1, len(maps)))
    for ax, (name, (shape, seen)) in zip(axes, maps.items(), strict=True):
        ax.imshow(seen.numpy() > 0, cmap="gray", interpolation="nearest")
        ax.set_title(f"{name}: sees {shape[0]}x{shape[1]} input pixels", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("the input pixels (white) that one pixel of conv2's output depends on",
                 fontsize=10)
    return save_figure(fig, path)


def exercise_1(loaders, data, run, out):
    """kernel_size=5, and (1, 3), in the chapter's Net."""
    models = {name: NetKernel(*kp) for name, kp in KERNELS.items()}
    counts = {name: count_parameters(m) for name, m in models.items()}
    print("8.1a Parameters of the chapter's Net by kernel size:")
    for name, (k, p) in KERNELS.items():
        print(f"  {name} (kernel_size={k}, padding={p}): {counts[name]:,}")
    print(f"  5x5 adds {counts['5x5'] - counts['3x3']:,} parameters, all in the convs: each "
          f"weight grows from 9 to 25 per input-output channel pair; the linear layers, "
          f"{count_parameters(models['3x3'].fc1) + count_parameters(models['3x3'].fc2):,} "
          f"parameters, do not change.")
    print("8.1c The Conv2d docs: out = floor((in + 2 padding - (kernel - 1) - 1) / stride) + 1;"
          " a 32-pixel side:")
    sizes, agree = {}, True
    for k in (3, 4, 5, 7):
        sizes[k] = {p: conv_output_size(32, k, p) for p in sorted({0, 1, 2, (k - 1) // 2})}
        for p, n in sizes[k].items():
            agree &= nn.Conv2d(1, 1, k, padding=p)(torch.zeros(1, 1, 32, 32)).shape[-1] == n
        print(f"  kernel {k}: " + ", ".join(f"padding {p} -> {n}" for p, n in sizes[k].items()))
    print(f"  (nn.Conv2d's outputs agree: {agree}.) Padding (kernel - 1) / 2 keeps the size for "
          "odd kernels (5x5: padding 2); an even kernel cannot keep it with the same padding on "
          "both sides.")
    maps = {name: footprint(m) for name, m in models.items()}
    first = {name: footprint(m, "conv1")[0] for name, m in models.items()}
    shape_13 = tuple(models["1x3"].conv1(torch.zeros(1, 3, 32, 32)).shape)
    print(f"8.1d kernel_size=(1, 3), padding=(0, 1): conv1 output {shape_13} for a (1, 3, 32, 32)"
          f" input, the size kept. One output pixel sees:")
    for name in KERNELS:
        print(f"  {name}: conv1 {first[name][0]}x{first[name][1]} input pixels, conv2 (after "
              f"pooling) {maps[name][0][0]}x{maps[name][0][1]}")
    print("  A (1, 3) kernel mixes only horizontal neighbours; vertically, only the 2x2 pooling "
          "reaches past one row.")
    png = plot_footprints(maps, out / "footprints.png")
    print(f"  wrote {png}")
    rows = kernel_comparison(*loaders, run)
    print(f"8.1b/e Train and validation accuracy ({run}):")
    print("  kernel | params | train | val | gap | seconds")
    for r in rows:
        print(f"  {r['name']:>6} | {r['params']:,} | {r['train']:.3f} | {r['val']:.3f} | "
              f"{r['gap']:+.3f} | {r['seconds']:.0f}")
    by = {r["name"]: r for r in rows}
    print(f"  b: 5x5's gap is {compare(by['5x5']['gap'], by['3x3']['gap'], 'smaller')} than "
          f"3x3's ({by['5x5']['gap']:+.3f} against {by['3x3']['gap']:+.3f}), its val "
          f"{compare(by['5x5']['val'], by['3x3']['val'])} ({by['5x5']['val']:.3f} against "
          f"{by['3x3']['val']:.3f}).")
    print(f"  e: 1x3 has {by['1x3']['params']:,} parameters; its val is "
          f"{compare(by['1x3']['val'], by['3x3']['val'])} than 3x3's ({by['1x3']['val']:.3f} "
          f"against {by['3x3']['val']:.3f}).")
    if data["synthetic"]:
        print("  On the synthetic sample the convnets read class textures and hardly overfit; "
              f"on CIFAR-2 the book's Net reaches train 0.93 / val 0.89. The real run: "
              f"{REAL_DATA}, then  python ch08_convnets/exercises_ch08.py --exercise 1 "
              "--optimizer sgd --lr 1e-2 --epochs 100")
    return {"params": counts, "sizes": sizes, "sizes_agree": agree, "conv1_shape_1x3": shape_13,
            "footprints": {name: maps[name][0] for name in maps}, "conv1_footprints": first,
            "rows": rows, "png": png}


def compare(a, b, words="higher"):
    """'higher', 'lower' or 'the same' for a against b, to three decimals ('larger' and
    'smaller' with words='smaller')."""
    more, less = ("higher", "lower") if words == "higher" else ("larger", "smaller")
    return "the same" if round(a - b, 3) == 0 else more if a > b else less


def fool_both_ways(model, neutral, planes, mean, std, budget, count=8):
    """Up to `count` neutral images the model does not call airplane, edited toward airplane,
    and up to `count` airplanes it calls airplane, edited toward bird: {'a': (originals,
    edited, steps), 'b': ...}."""
    eps, max_steps = budget
    neutral = neutral[probabilities(model, neutral, mean, std)[:, AIRPLANE] <= 0.5][:count]
    planes = planes[probabilities(model, planes, mean, std)[:, AIRPLANE] > 0.5][:count]
    result = {}
    for key, images, target in (("a", neutral, AIRPLANE), ("b", planes, BIRD)):
        edited, steps, _ = fool(model, images, target, mean, std, eps, max_steps=max_steps)
        result[key] = (images, edited, steps)
    return result


def print_fooling(label, result, target_name):
    """One line: how many images reached p(target) > CONFIDENCE, in how many steps, how far."""
    original, edited, steps = result
    if not len(original):
        print(f"  {label}: no image to start from")
        return None
    s = summarize_fooling(steps, edited, original)
    l_inf, _ = perturbation(edited, original)
    detail = (f", median {s['median_steps']:g} steps, mean L2 {s['mean_l2']:.3f}, largest "
              f"change {float(l_inf.max()) * 255:.1f}/255" if s["median_steps"] is not None
              else "")
    print(f"  {label}: {int((steps >= 0).sum())} of {len(steps)} reach p({target_name}) > "
          f"{CONFIDENCE}{detail}")
    return s


def exercise_2(loaders, data, run, out, n_chans=(8, 16, 32), budget=(8 / 255, 200), count=8,
               book_root=None):
    """Edit images until the model is more than 95% sure of the wrong class; the book's Net
    from data root `book_root` when given, else the 16-channel net trained here."""
    others = [c for c, name in enumerate(CLASS_NAMES) if name not in ("airplane", "bird")]
    neutral = class_images(data["cifar_dir"], others, 4 * count)      # neither bird nor plane
    planes = class_images(data["cifar_dir"], [CLASS_NAMES.index("airplane")], 4 * count)
    eps, max_steps = budget
    trained = {}
    for n in n_chans:
        seed_everything(run.seed)
        model = NetWidth(n_chans1=n)
        acc = train_model(model, *loaders, run)[1]
        trained[n] = (model.cpu(), acc)              # the edits run on the CPU
    if book_root is not None:
        model, mean, std = load_book_net(book_root), BOOK_MEAN, BOOK_STD
        short = "the book's trained Net"
        which = (f"{short} ({book_root / BOOK_NET_FILE}; trained on the real CIFAR-2, inputs "
                 f"normalized with the book's CIFAR-10 statistics)")
    else:
        n = 16 if 16 in trained else n_chans[0]
        model, mean, std = trained[n][0], data["mean"], data["std"]
        short = f"NetWidth({n}) trained here"
        which = (f"NetWidth({n}) trained here ({run}; val {trained[n][1]['val']:.3f})"
                 + (", Net's twin" if n == 16 else ""))
    probs = probabilities(model, neutral, mean, std)
    sure = {name: int((probs[:, c] > CONFIDENCE).sum()) for name, c in
            (("airplane", AIRPLANE), ("bird", BIRD))}
    print(f"8.2 The model: {which}. Of {len(neutral)} test images of the eight other classes, "
          f"unedited, it calls {sure['airplane']} airplane and {sure['bird']} bird with more "
          f"than {CONFIDENCE:.0%} confidence: a two-class model has no 'neither'.")
    print(f"  Edits: signed-gradient steps of {STEP * 255:g}/255 on the pixels up log p(target),"
          f" each pixel within {eps * 255:g}/255 of the original and in [0, 1], at most "
          f"{max_steps} steps.")
    result = fool_both_ways(model, neutral, planes, mean, std, budget, count)
    answer = {"model": which, "unedited_sure": sure}
    for key, question, label, target, name in (
            ("a", "Images of neither class that the model does not call airplane, edited until "
             "it says airplane", "others -> airplane", "airplane", "neutral_to_airplane.png"),
            ("b", "Airplanes the model calls airplane, edited until it says bird",
             "airplanes -> bird", "bird", "airplane_to_bird.png")):
        print(f"8.2{key} {question}:")
        answer[key] = print_fooling(label, result[key], target)
        if len(result[key][0]):
            answer[f"png_{key}"] = plot_fooling(result[key][0], result[key][1], model, mean, std,
                                                target, out / name, eps, title=short)
            print(f"  wrote {answer[f'png_{key}']}")
    print(f"8.2c Lower or higher capacity: NetWidth nets trained the same way ({run}); up to "
          f"{count} images of other classes and {count} airplanes each, chosen as above:")
    rows = []
    for n, (model_n, acc) in trained.items():
        got = fool_both_ways(model_n, neutral, planes, data["mean"], data["std"], budget, count)
        print(f"  NetWidth({n}): {count_parameters(model_n):,} parameters, val {acc['val']:.3f}")
        row = {"n_chans1": n, "params": count_parameters(model_n), "val": acc["val"]}
        for key, label, target in (("a", "  others -> airplane", "airplane"),
                                   ("b", "  airplanes -> bird", "bird")):
            row[key] = print_fooling(label, got[key], target)
        rows.append(row)
    answer["rows"] = rows
    answer["verdict"] = capacity_verdict(rows)
    print(f"  {answer['verdict']}")
    if data["synthetic"]:
        print("  These nets learned the synthetic sample's textures; with the real CIFAR-10: "
              f"{REAL_DATA}, then the same command (add --epochs 30 or more).")
    return answer


def capacity_verdict(rows):
    """Which net needed the fewest steps, over both edits (to airplane and to bird)."""
    def cost(row):
        parts = [row[k] for k in ("a", "b") if row[k]]
        steps = [p["median_steps"] for p in parts if p["median_steps"] is not None]
        success = statistics.mean(p["success"] for p in parts) if parts else 0.0
        return (-success, statistics.mean(steps) if steps else float("inf"))
    ranked = sorted(rows, key=cost)
    easiest, hardest = ranked[0], ranked[-1]
    if cost(easiest) == cost(hardest):
        return "No difference: every net took the same number of steps."
    bigger = easiest["params"] > hardest["params"]
    vals = [r["val"] for r in rows]
    spread = (f" Their val accuracies differ too ({min(vals):.3f} to {max(vals):.3f}), which is "
              "part of what this measures." if max(vals) - min(vals) > 0.05 else "")
    return (f"Easiest to fool: NetWidth({easiest['n_chans1']}) ({easiest['params']:,} "
            f"parameters); hardest: NetWidth({hardest['n_chans1']}) ({hardest['params']:,}): "
            f"here the {'higher' if bigger else 'lower'}-capacity net is the easier one to "
            f"fool (success rate first, then median steps).{spread}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--exercise", type=int, action="append", choices=EXERCISES,
                   help="8.M to run, repeatable (default: both)")
    p.add_argument("--optimizer", choices=("adam", "sgd"), default="adam",
                   help="adam (default: a short run) or sgd (the chapter's, with --lr 1e-2); "
                        "--lr is the learning rate of the one chosen")
    p.add_argument("--n-chans", type=int, nargs="+", default=[8, 16, 32],
                   help="8.2c: NetWidth's first-conv channels (default: 8 16 32; 16 is Net)")
    p.add_argument("--eps", type=float, default=8.0,
                   help="8.2: largest change of a pixel, in grey levels of 255 (default: 8)")
    p.add_argument("--max-steps", type=int, default=200,
                   help=f"8.2: edit steps of {STEP * 255:g}/255 at most (default: %(default)s)")
    p.add_argument("--images", type=int, default=8,
                   help="8.2: images of other classes, and airplanes, to edit per "
                        "model (default: 8)")
    p.add_argument("--no-book-net", action="store_true",
                   help="8.2a-b: train the Net here even when the book's weights are there")
    p.add_argument("--out", default=None,
                   help="folder for the PNGs (default: runs/ch08/exercises_ch08/<time>)")
    add_cifar_arguments(p, epochs=10, lr=1e-3)
    args = p.parse_args(argv)
    check_cifar_flags(args.epochs, args.lr, args.batch_size, args.epoch_size, args.num_workers)
    for flag, value in (("--max-steps", args.max_steps), ("--images", args.images)):
        require_at_least(flag, value, 1)
    for n in args.n_chans:                        # NetWidth's second conv has n // 2 channels
        require_at_least("--n-chans", n, 2)
    if not 0 < args.eps <= 255:
        raise DataError(f"--eps {args.eps}: must be above 0 and at most 255 (grey levels)")
    out = check_writable(args.out or runs_dir("ch08") / "exercises_ch08" / time.strftime(
        "%Y-%m-%d_%H.%M.%S"), "--out")
    device, train_loader, val_loader, data = prepare(
        args.device, args.seed, args.data_dir, args.synthetic, args.batch_size,
        args.num_workers, args.epoch_size)
    book_root = data_root(args.data_dir)
    if args.no_book_net or not (book_root / BOOK_NET_FILE).exists():
        book_root = None
    loaders = (train_loader, val_loader)
    run = Run(args.epochs, device, args.optimizer, args.lr, args.seed)
    exercises = {1: lambda: exercise_1(loaders, data, run, out),
                 2: lambda: exercise_2(loaders, data, run, out, tuple(args.n_chans),
                                       (args.eps / 255, args.max_steps), args.images,
                                       book_root)}
    answers = {}
    for number in sorted(set(args.exercise or EXERCISES)):
        start = time.perf_counter()
        answers[number] = exercises[number]()
        print(f"(exercise 8.{number}: {time.perf_counter() - start:.0f} s)\n")
    if data["synthetic"]:
        print(f"These answers come from the synthetic sample. For CIFAR-10: {REAL_DATA}, then "
              "the same command.")
    return answers


if __name__ == "__main__":
    run_cli(main)
