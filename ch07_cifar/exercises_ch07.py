"""Chapter 7's exercises (book section 7.4): random crops, an MSE loss, less capacity.

    python ch07_cifar/exercises_ch07.py                    # 7.1, 7.2 and 7.3, 20 epochs a run
    python ch07_cifar/exercises_ch07.py --exercise 2 --epochs 40
    python ch07_cifar/exercises_ch07.py --exercise 3 --epochs 100 --device cuda   # book length

7.1: random_crop (pad 4, cut 32x32 at a random offset) written in torch, RandomCropped reads a
dataset through it, and the fc model of train_fc.py trains with and without it. 7.2: mse_on_softmax
(softmax outputs against one-hot targets) trained beside NLL. 7.3: fc_model(width), a sweep of the
hidden width. The fc model, the loop and the loaders are train_fc.py's. CIFAR-10 under the data
root when present, else the synthetic sample (the banner says so). PNGs go to
runs/ch07/exercises_ch07/<time>/ (--out).
"""
import argparse
import contextlib
import io
import time
from collections import namedtuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ch01_intro.resnet import count_parameters
from ch07_cifar.train_fc import (
    N_INPUTS,
    accuracy,
    add_cifar_arguments,
    check_cifar_flags,
    make_model,
    prepare,
    training_loop,
)
from common.device import seed_everything
from common.errors import require_at_least, run_cli
from common.figures import new_figure, save_figure
from common.files import check_writable, runs_dir

EXERCISES = (1, 2, 3)
GAP_CLOSED = 0.05          # 7.3: a train - val accuracy gap this small counts as closed
REAL_DATA = "python -m common.data download cifar10"


class Run(namedtuple("Run", "epochs device lr seed")):
    """How every model of an exercise trains: the same epochs, device, SGD lr and seed."""

    def __str__(self):
        return f"SGD lr {self.lr}, {self.epochs} epochs, seed {self.seed}"


def pad_and_crop(img, top, left, padding=4, fill=0.0):
    """(C, H, W) image padded with `padding` pixels of `fill` on every side, cut back to (C, H, W)
    at row `top`, column `left` of the padded image: the picture moves down padding - top and
    right padding - left pixels."""
    _, h, w = img.shape
    padded = F.pad(img, (padding, padding, padding, padding), value=fill)   # (C, H + 2p, W + 2p)
    return padded[:, top:top + h, left:left + w]


def random_crop(img, padding=4, generator=None, fill=0.0):
    """pad_and_crop at a random offset, top and left each uniform in 0..2 * padding; returns
    (crop, (top, left)). torchvision's RandomCrop(32, padding=4), written in torch."""
    top, left = torch.randint(0, 2 * padding + 1, (2,), generator=generator).tolist()
    return pad_and_crop(img, top, left, padding, fill), (top, left)


class RandomCropped(Dataset):
    """A list of (normalized image, label) read through random_crop: a new crop at every read.

    The fill is 0, the dataset's mean colour after normalization. The offsets come from torch's
    global generator, which a DataLoader seeds afresh in each worker process."""

    def __init__(self, items, padding=4):
        self.items, self.padding = items, padding

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        img, label = self.items[i]
        return random_crop(img, self.padding)[0], label


def quietly(fn, *args):
    """fn(*args) with its printing swallowed: the chapter's loop prints its epochs, the
    exercises print one summary line per run instead."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def crop_differences(image, padding=4, n_reads=5, seed=0):
    """7.1a-b: n_reads crops of one image from one seeded generator: each one's shift, how many
    pixels the fill covers, whether the rest is the original moved, and a reseeded repeat."""
    g = torch.Generator().manual_seed(seed)
    crops, shifts, filled, moved = [], [], [], []
    _, h, w = image.shape
    for _ in range(n_reads):
        crop, (top, left) = random_crop(image, padding, g)
        dy, dx = padding - top, padding - left          # down and right, pixels
        inside = pad_and_crop(torch.ones(1, h, w), top, left, padding, fill=0.0)[0].bool()
        src = image[:, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
        dst = crop[:, max(dy, 0):h - max(-dy, 0), max(dx, 0):w - max(-dx, 0)]
        crops.append(crop)
        shifts.append((dy, dx))
        filled.append(int((~inside).sum()))
        moved.append(torch.equal(src, dst))
    repeat, _ = random_crop(image, padding, torch.Generator().manual_seed(seed))
    return {"crops": crops, "shifts": shifts, "filled": filled, "content_moved": all(moved),
            "mean_abs_change": [float((c - image).abs().mean()) for c in crops],
            "distinct_offsets": len(set(shifts)), "reseeded_same": torch.equal(repeat, crops[0])}


def fit(model, loss_fn, train_loader, epochs, device, lr):
    """The chapter's loop with SGD, quietly; returns each epoch's mean loss."""
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    return quietly(training_loop, epochs, optimizer, model, loss_fn, train_loader, device)


def fit_tracked(model, loss_fn, train_loader, val_loader, epochs, device, lr):
    """fit one epoch at a time, with the chapter's accuracy after each: per-epoch loss, train
    and val accuracy, as lists."""
    model.to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    history = {"loss": [], "train": [], "val": []}
    for _ in range(epochs):
        history["loss"] += quietly(training_loop, 1, optimizer, model, loss_fn, train_loader,
                                   device)
        history["train"].append(accuracy(model, train_loader, device))
        history["val"].append(accuracy(model, val_loader, device))
    return history


def loader_like(loader, dataset):
    """A DataLoader over `dataset` with `loader`'s batch size, sampler and workers."""
    return DataLoader(dataset, batch_size=loader.batch_size, sampler=loader.sampler,
                      num_workers=loader.num_workers, pin_memory=loader.pin_memory)


def crops_training(train_loader, val_loader, epochs, device, lr=1e-2, seed=0, padding=4):
    """7.1c: the fc model trained the same way on the plain images and on random crops of them
    (the chapter's loop over a loader whose dataset crops); train accuracy is measured on the
    uncropped training images."""
    cropped_loader = loader_like(train_loader, RandomCropped(train_loader.dataset, padding))
    rows = {}
    for name, loader in (("plain", train_loader), ("crops", cropped_loader)):
        seed_everything(seed)                   # the same initial weights and batch order
        model, loss_fn = make_model("fc")
        losses = fit(model, loss_fn, loader, epochs, device, lr)
        rows[name] = {"loss": losses[-1], "train": accuracy(model, train_loader, device),
                      "val": accuracy(model, val_loader, device)}
    return rows


def mse_on_softmax(log_probs, target):
    """Mean over the batch of sum over classes (softmax - one_hot(target))**2; log_probs are the
    fc model's LogSoftmax outputs."""
    one_hot = F.one_hot(target, log_probs.shape[1]).to(log_probs.dtype)
    return ((log_probs.exp() - one_hot) ** 2).sum(dim=1).mean()


def logit_gradients(p_right=(0.5, 0.1, 0.01, 0.001)):
    """7.2: |d loss / d logits| of one two-class sample whose right class gets probability p,
    for NLL and for MSE on the softmax: rows (p, nll, mse)."""
    rows = []
    for p in p_right:
        for loss_name in ("nll", "mse"):
            logits = torch.tensor([[float(torch.tensor(p).log()),
                                    float(torch.tensor(1 - p).log())]], requires_grad=True)
            log_probs = F.log_softmax(logits, dim=1)
            target = torch.tensor([0])
            loss = (F.nll_loss(log_probs, target) if loss_name == "nll"
                    else mse_on_softmax(log_probs, target))
            (grad,) = torch.autograd.grad(loss, logits)
            if loss_name == "nll":
                row = [p, float(grad.norm())]
            else:
                row.append(float(grad.norm()))
        rows.append(tuple(row))
    return rows


def compare_losses(train_loader, val_loader, epochs, device, lr=1e-2, seed=0):
    """7.2: the fc model trained with NLL and with MSE on its softmax, same seed and epochs;
    their per-epoch histories."""
    runs = {}
    for name, loss_fn in (("nll", nn.NLLLoss()), ("mse", mse_on_softmax)):
        seed_everything(seed)
        model, _ = make_model("fc")              # LogSoftmax out: NLL takes it, MSE exps it
        runs[name] = fit_tracked(model, loss_fn, train_loader, val_loader, epochs, device, lr)
    return runs


def fc_model(width):
    """The chapter's fc model with `width` hidden units (the book's: 512): 3075 * width + 2
    parameters."""
    return nn.Sequential(nn.Linear(N_INPUTS, width), nn.Tanh(),
                         nn.Linear(width, 2), nn.LogSoftmax(dim=1))


def capacity_sweep(train_loader, val_loader, widths, epochs, device, lr=1e-2, seed=0):
    """7.3: train fc_model(width) for each width, same seed and epochs: rows of width, params,
    train, val and gap (train - val)."""
    rows = []
    for width in widths:
        seed_everything(seed)
        model = fc_model(width)
        fit(model, nn.NLLLoss(), train_loader, epochs, device, lr)
        train, val = accuracy(model, train_loader, device), accuracy(model, val_loader, device)
        rows.append({"width": width, "params": count_parameters(model), "train": train,
                     "val": val, "gap": train - val})
    return rows


def first_epoch_reaching(accuracies, level):
    """The first epoch (1-based) whose accuracy is at least `level`, or None."""
    return next((i + 1 for i, a in enumerate(accuracies) if a >= level), None)


def denormalize(img, mean, std):
    """A normalized (3, H, W) tensor back to an (H, W, 3) array in [0, 1], for imshow."""
    mean = torch.as_tensor(mean).view(3, 1, 1)
    std = torch.as_tensor(std).view(3, 1, 1)
    return (img * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()


def plot_crops(image, answer, mean, std, path):
    """The image and its crops side by side, each titled with its shift."""
    fig = new_figure(figsize=(1.6 * (1 + len(answer["crops"])), 2.0))
    axes = fig.subplots(1, 1 + len(answer["crops"]))
    axes[0].imshow(denormalize(image, mean, std), interpolation="nearest")
    axes[0].set_title("original", fontsize=8)
    for ax, crop, (dy, dx) in zip(axes[1:], answer["crops"], answer["shifts"], strict=True):
        ax.imshow(denormalize(crop, mean, std), interpolation="nearest")
        ax.set_title(f"shift ({dy:+d}, {dx:+d})", fontsize=8)
    for ax in axes:
        ax.axis("off")
    return save_figure(fig, path, dpi=120)


def plot_losses(runs, path):
    """7.2: each loss over its first epoch's value, and validation accuracy, per epoch."""
    fig = new_figure(figsize=(9, 3.4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for color, (name, history) in zip(("C0", "C1"), runs.items(), strict=False):
        epochs = range(1, len(history["loss"]) + 1)
        ax_loss.plot(epochs, [x / history["loss"][0] for x in history["loss"]], color=color,
                     label=name)
        ax_acc.plot(epochs, history["train"], color=color, label=f"{name} train")
        ax_acc.plot(epochs, history["val"], "--", color=color, label=f"{name} val")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss / epoch 1's")
    ax_loss.legend()
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.legend(fontsize=8)
    fig.suptitle("fc model on CIFAR-2: NLL against MSE on the softmax")
    return save_figure(fig, path)


def plot_capacity(rows, path):
    """7.3: train and val accuracy against the parameter count."""
    fig = new_figure(figsize=(5.5, 3.6))
    ax = fig.subplots()
    params = [r["params"] for r in rows]
    ax.plot(params, [r["train"] for r in rows], "o-", label="train")
    ax.plot(params, [r["val"] for r in rows], "o-", label="val")
    for r in rows:
        ax.annotate(f"{r['width']}", (r["params"], r["val"]), textcoords="offset points",
                    xytext=(0, -12), ha="center", fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("parameters (hidden width under the val points)")
    ax.set_ylabel("accuracy")
    ax.legend()
    return save_figure(fig, path)


def exercise_1(loaders, data, run, out, padding=4):
    """Random crops: how they differ, a second read, training with them."""
    image = loaders[0].dataset[0][0]
    answer = crop_differences(image, padding)
    n_pixels = image.shape[1] * image.shape[2]
    print(f"7.1a How do crops differ from the original? (pad {padding}, crop "
          f"{image.shape[1]}x{image.shape[2]})")
    for (dy, dx), filled, change in zip(answer["shifts"], answer["filled"],
                                        answer["mean_abs_change"], strict=True):
        print(f"  shifted (down, right) ({dy:+d}, {dx:+d}) px: {filled} of {n_pixels} pixels "
              f"({filled / n_pixels:.0%}) are fill (the mean colour), mean |change| "
              f"{change:.3f} (normalized units)")
    print(f"  the rest of each crop is the original moved, pixel for pixel: "
          f"{answer['content_moved']}. Nothing is scaled or turned: a crop is the picture "
          f"shifted by up to {padding} px, with a band of fill where it moved away.")
    print(f"7.1b The same image read {len(answer['shifts'])} times from one generator gave "
          f"{answer['distinct_offsets']} distinct offsets; with the generator seeded the same "
          f"again, the first crop repeats exactly: {answer['reseeded_same']}.")
    answer["png"] = plot_crops(image, answer, data["mean"], data["std"], out / "crops.png")
    print(f"  wrote {answer['png']}")
    rows = crops_training(*loaders, run.epochs, run.device, run.lr, run.seed, padding)
    print(f"7.1c Training with crops (fc model, {run}):")
    for name, r in rows.items():
        print(f"  {name:>5}: final loss {r['loss']:.4f}, train {r['train']:.3f}, val "
              f"{r['val']:.3f}, gap {r['train'] - r['val']:+.3f}")
    gap_plain = rows["plain"]["train"] - rows["plain"]["val"]
    gap_crops = rows["crops"]["train"] - rows["crops"]["val"]
    why = ("the training images now vary from epoch to epoch, so they are harder to memorize"
           if gap_crops < gap_plain else "here the crops did not make memorizing harder")
    print(f"  With crops the train - val gap is {compare(gap_crops, gap_plain, 'smaller')} "
          f"({gap_crops:+.3f} against {gap_plain:+.3f}) and val is "
          f"{compare(rows['crops']['val'], rows['plain']['val'])}: {why}.")
    answer["training"] = rows
    return answer


def compare(a, b, words="higher"):
    """'higher', 'lower' or 'the same' for a against b, to three decimals ('larger' and
    'smaller' with words='smaller')."""
    more, less = ("higher", "lower") if words == "higher" else ("larger", "smaller")
    return "the same" if round(a - b, 3) == 0 else more if a > b else less


def exercise_2(loaders, data, run, out):
    """MSE on the softmax instead of NLL: does training behave differently?"""
    runs = compare_losses(*loaders, run.epochs, run.device, run.lr, run.seed)
    print(f"7.2 NLL against MSE on the softmax (fc model, {run}):")
    print("  loss | epoch 1 loss | last loss | last / first | train | val | first epoch with "
          "train >= 0.95")
    for name, h in runs.items():
        reached = first_epoch_reaching(h["train"], 0.95)
        print(f"  {name:>4} | {h['loss'][0]:.4f} | {h['loss'][-1]:.4f} | "
              f"{h['loss'][-1] / h['loss'][0]:.3f} | {h['train'][-1]:.3f} | {h['val'][-1]:.3f} |"
              f" {reached if reached else 'not reached'}")
    nll, mse = runs["nll"], runs["mse"]
    close = all(abs(mse[k][-1] - nll[k][-1]) < 0.02 for k in ("train", "val"))
    print(f"  After {run.epochs} epochs MSE's train accuracy is "
          f"{compare(mse['train'][-1], nll['train'][-1])} than NLL's ({mse['train'][-1]:.3f} "
          f"against {nll['train'][-1]:.3f}) and its val accuracy "
          f"{compare(mse['val'][-1], nll['val'][-1])} ({mse['val'][-1]:.3f} against "
          f"{nll['val'][-1]:.3f}): " + (
              "within 0.02 of each other, so here the two train much alike; the gradients "
              "below show where they part." if close else "the two train differently here."))
    print("  Gradient of one sample's loss with respect to the logits (its size):")
    print("  p(right class) | NLL | MSE | NLL / MSE")
    grads = logit_gradients()
    for p, g_nll, g_mse in grads:
        print(f"  {p:>14} | {g_nll:.4f} | {g_mse:.5f} | {g_nll / g_mse:,.1f}")
    p, g_nll, g_mse = grads[-1]
    print(f"  A confidently wrong sample (p = {p}) gets a {g_nll / g_mse:,.0f} times smaller "
          f"push from MSE than from NLL: MSE's gradient fades as the softmax saturates, so the "
          f"worst mistakes are corrected slowest; NLL's grows toward its maximum instead.")
    png = plot_losses(runs, out / "mse_vs_nll.png")
    print(f"  wrote {png}")
    return {"runs": runs, "gradients": grads, "png": png}


def exercise_3(loaders, data, run, out, widths=(512, 256, 64, 16, 4, 1)):
    """Less capacity until the train/val gap closes."""
    rows = capacity_sweep(*loaders, widths, run.epochs, run.device, run.lr, run.seed)
    print(f"7.3 Less capacity (fc model of each hidden width; {run}):")
    print("  width | params | train | val | gap")
    for r in rows:
        print(f"  {r['width']:>5} | {r['params']:>9,} | {r['train']:.3f} | {r['val']:.3f} | "
              f"{r['gap']:+.3f}")
    closed = next((r for r in rows if abs(r["gap"]) <= GAP_CLOSED), None)
    widest = rows[0]
    if closed:
        print(f"  The gap is within {GAP_CLOSED} first at width {closed['width']} "
              f"({closed['params']:,} parameters): val {closed['val']:.3f}, "
              f"{compare(closed['val'], widest['val'])} than width {widest['width']}'s "
              f"{widest['val']:.3f}.")
    else:
        smallest = min(rows, key=lambda r: abs(r["gap"]))
        print(f"  No width closed the gap to {GAP_CLOSED}; the smallest is {smallest['gap']:+.3f}"
              f" at width {smallest['width']} (val {smallest['val']:.3f}).")
    n_train = len(loaders[0].dataset)
    if n_train < N_INPUTS:
        print(f"  This training set has {n_train} images of {N_INPUTS} inputs each: fewer "
              f"images than inputs, so even one hidden unit (a linear boundary) can separate "
              f"them all, and less width alone cannot stop the memorizing.")
    if data["synthetic"]:
        print("  On the synthetic sample the overfitting picture is not CIFAR-10's (what the "
              "fc nets can learn there is a faint background tint). The real run: "
              f"{REAL_DATA}, then  python ch07_cifar/exercises_ch07.py --exercise 3 "
              "--epochs 100")
    png = plot_capacity(rows, out / "capacity.png")
    print(f"  wrote {png}")
    return {"rows": rows, "closed_at": closed["width"] if closed else None, "png": png}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--exercise", type=int, action="append", choices=EXERCISES,
                   help="7.M to run, repeatable (default: all)")
    p.add_argument("--padding", type=int, default=4, help="7.1: crop padding, px (default: 4)")
    p.add_argument("--widths", type=int, nargs="+", default=[512, 256, 64, 16, 4, 1],
                   help="7.3: hidden widths (default: 512 256 64 16 4 1)")
    p.add_argument("--out", default=None,
                   help="folder for the PNGs (default: runs/ch07/exercises_ch07/<time>)")
    add_cifar_arguments(p, epochs=20)
    args = p.parse_args(argv)
    check_cifar_flags(args.epochs, args.lr, args.batch_size, args.epoch_size, args.num_workers)
    require_at_least("--padding", args.padding, 1)
    for width in args.widths:
        require_at_least("--widths", width, 1)
    out = check_writable(args.out or runs_dir("ch07") / "exercises_ch07" / time.strftime(
        "%Y-%m-%d_%H.%M.%S"), "--out")
    device, train_loader, val_loader, data = prepare(
        args.device, args.seed, args.data_dir, args.synthetic, args.batch_size,
        args.num_workers, args.epoch_size)
    loaders, run = (train_loader, val_loader), Run(args.epochs, device, args.lr, args.seed)
    exercises = {1: lambda: exercise_1(loaders, data, run, out, args.padding),
                 2: lambda: exercise_2(loaders, data, run, out),
                 3: lambda: exercise_3(loaders, data, run, out, args.widths)}
    answers = {}
    for number in sorted(set(args.exercise or EXERCISES)):
        start = time.perf_counter()
        answers[number] = exercises[number]()
        print(f"(exercise 7.{number}: {time.perf_counter() - start:.0f} s)\n")
    if data["synthetic"]:
        print(f"These answers come from the synthetic sample. For CIFAR-10: {REAL_DATA}, then "
              "the same command.")
    return answers


if __name__ == "__main__":
    run_cli(main)
