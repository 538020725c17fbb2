"""Chapter 8: train every convnet variant on CIFAR-2 and chart their train/val accuracy.

    python ch08_convnets/compare.py --device cuda          # the book's runs: 100 epochs each
    python ch08_convnets/compare.py --device cuda --check  # ... and fail unless every val accuracy
                                                           #     is within 0.02 of the book's
    python ch08_convnets/compare.py --synthetic --epochs 20 --n-blocks 10   # a quick CPU run

Variants as in the book: baseline Net, width (NetWidth 32), l2 reg (Net, lambda 0.001), dropout,
batch_norm, depth, res (all n_chans1=32), res deep (NetResDeep, --n-blocks, book 100, lr 3e-3).
Writes the repository's runs/ch08/accuracy_comparison.png (the book's bar chart) and
accuracy_comparison.md (the table, with the book's numbers), and prints the table.
--epoch-size N trains each variant on N random samples per epoch (a quick run).
"""
import argparse
import time

import torch
from torch import nn

from ch01_intro.resnet import count_parameters
from ch07_cifar.train_fc import add_cifar_arguments, check_cifar_flags, prepare
from ch08_convnets.models import make_model
from ch08_convnets.train import training_loop, training_loop_l2reg, validate
from common.device import seed_everything
from common.errors import DataError, require_at_least, run_cli
from common.figures import new_figure, save_figure
from common.files import check_writable, runs_dir, write_text

# name: (model, l2 lambda, learning rate or None for --lr, book (train, val) accuracy)
VARIANTS = {
    "baseline": ("net", 0.0, None, (0.93, 0.89)),
    "width": ("width", 0.0, None, (0.96, 0.90)),
    "l2 reg": ("net", 0.001, None, (0.90, 0.87)),
    "dropout": ("dropout", 0.0, None, (0.89, 0.88)),
    "batch_norm": ("batchnorm", 0.0, None, (1.00, 0.89)),
    "depth": ("depth", 0.0, None, (0.95, 0.90)),
    "res": ("res", 0.0, None, (0.97, 0.90)),
    "res deep": ("resdeep", 0.0, 3e-3, (0.97, 0.86)),
}
TOLERANCE = 0.02          # the book's val accuracies are given to two decimals


def run_variant(name, loaders, device, epochs, lr=1e-2, n_blocks=100):
    """Train one variant on (train_loader, val_loader); returns its row of the table. `lr` is
    the --lr the variant uses unless it has its own (res deep: the book's 3e-3)."""
    model_name, l2_lambda, own_lr, book = VARIANTS[name]
    lr = own_lr or lr
    model = make_model(model_name, n_blocks=n_blocks).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    print(f"--- {name}: {type(model).__name__}, {count_parameters(model):,} parameters, "
          f"lr {lr}" + (f", L2 {l2_lambda}" if l2_lambda else ""))
    start = time.perf_counter()
    if l2_lambda:
        losses = training_loop_l2reg(epochs, optimizer, model, nn.CrossEntropyLoss(),
                                     loaders[0], device, l2_lambda=l2_lambda)
    else:
        losses = training_loop(epochs, optimizer, model, nn.CrossEntropyLoss(), loaders[0],
                               device)
    seconds = time.perf_counter() - start
    accuracies = validate(model, *loaders, device)
    return {"name": name, "model": type(model).__name__, "params": count_parameters(model),
            **accuracies, "book_train": book[0], "book_val": book[1], "seconds": seconds,
            "losses": losses}


def table(rows):
    """The rows as a markdown table, with each val accuracy's difference from the book's."""
    lines = ["| variant | model | params | train | val | book train | book val | val - book |"
             " seconds |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['model']} | {r['params']:,} | {r['train']:.3f} |"
                     f" {r['val']:.3f} | {r['book_train']:.2f} | {r['book_val']:.2f} |"
                     f" {r['val'] - r['book_val']:+.3f} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def plot_comparison(rows, path, title):
    """Grouped bars of train and val accuracy per variant, the book's val as a marker."""
    x = torch.arange(len(rows)).float()
    width = 0.38
    fig = new_figure(figsize=(9, 4.2))
    ax = fig.subplots()
    ax.bar(x - width / 2, [r["train"] for r in rows], width, label="train")
    ax.bar(x + width / 2, [r["val"] for r in rows], width, label="val")
    ax.scatter(x + width / 2, [r["book_val"] for r in rows], marker="_", s=400, color="black",
               zorder=3, label="book val")
    ax.set_xticks(x.tolist(), [r["name"] for r in rows])
    ax.set_ylim(min(0.5, min(min(r["train"], r["val"]) for r in rows) - 0.05), 1.08)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="upper center", ncol=3, frameon=False)
    return save_figure(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", nargs="+", choices=tuple(VARIANTS), metavar="VARIANT",
                   help=f"train only these ({', '.join(VARIANTS)})")
    p.add_argument("--n-blocks", type=int, default=100, help="res deep blocks (default: 100)")
    p.add_argument("--check", action="store_true",
                   help=f"exit 1 unless every val accuracy is within {TOLERANCE} of the book's")
    p.add_argument("--out", default=str(runs_dir("ch08")),
                   help="folder for the PNG and the table (default: %(default)s)")
    add_cifar_arguments(p)
    args = p.parse_args(argv)
    check_cifar_flags(args.epochs, args.lr, args.batch_size, args.epoch_size, args.num_workers,
                      least_epochs=0)
    require_at_least("--n-blocks", args.n_blocks, 1)
    out = check_writable(args.out, "--out")             # before hours of training
    device, train_loader, val_loader, data = prepare(
        args.device, args.seed, args.data_dir, args.synthetic, args.batch_size,
        args.num_workers, args.epoch_size)
    if args.check and data["synthetic"]:
        raise DataError("--check compares with the book's CIFAR-10 numbers: it needs the real "
                        "data (python -m common.data download cifar10), not the synthetic sample")

    rows = []
    for name in args.only or VARIANTS:
        seed_everything(args.seed)             # every variant from the same seed and batches
        rows.append(run_variant(name, (train_loader, val_loader), device, args.epochs, args.lr,
                                args.n_blocks))
    text = table(rows)
    source = "SYNTHETIC sample" if data["synthetic"] else "CIFAR-2"
    per_epoch = f", {args.epoch_size} samples per epoch" if args.epoch_size else ""
    title = f"{source}, {args.epochs} epochs{per_epoch}"
    md = write_text(out / "accuracy_comparison.md", f"{title} ({data['cifar_dir']})\n\n{text}\n",
                    "--out")
    png = plot_comparison(rows, out / "accuracy_comparison.png", title)
    print(f"\n{title}\n{text}\nwrote {png} and {md}")
    if args.check:
        off = [r["name"] for r in rows if abs(r["val"] - r["book_val"]) > TOLERANCE]
        if off:
            print(f"CHECK FAILED: val accuracy more than {TOLERANCE} from the book for "
                  f"{', '.join(off)}")
            raise SystemExit(1)
        print(f"CHECK PASSED: every val accuracy within {TOLERANCE} of the book's")
    return rows


if __name__ == "__main__":
    run_cli(main)
