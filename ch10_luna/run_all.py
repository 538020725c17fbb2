"""Chapters 11-12: every training run of the two chapters, one after the other, then a table.

    python ch10_luna/run_all.py --dry-run                 # only print the commands
    python ch10_luna/run_all.py                           # the book's recipe (hours on a GPU)
    python ch10_luna/run_all.py --synthetic --epochs 1    # a quick pass on the built-in sample

The book repository's p2_run_everything notebook, as a driver: chapter 11's one unbalanced
epoch, then chapter 12's balanced run, one run per single augmentation (flip, offset, scale,
rotate, noise) and the fully augmented run. Epoch counts are the notebook's: 20 for the
balanced and fully augmented runs, 10 for each augmentation experiment (`--epochs` sets them
all). Chapter 12's own unbalanced 1-epoch run is left out: here it is the same command as
chapter 11's. Each run goes through train_cls.main in this process and writes its own run
directory under runs/p2ch11/ or runs/p2ch12/; the table at the end shows the last epoch's
validation numbers.
"""
import argparse
import shlex

from ch10_luna import train_cls
from common.data import add_data_dir_argument
from common.device import add_device_argument
from common.errors import run_cli

TRAINING_EPOCHS, EXPERIMENT_EPOCHS = 20, 10            # the notebook's training/experiment_epochs
# (name, TensorBoard prefix, epochs: an int or which of the two counts, train_cls flags)
RUNS = (
    ("unbalanced", "p2ch11", 1, ("--no-balanced",)),
    ("balanced", "p2ch12", "training", ("--balanced",)),
    ("flip", "p2ch12", "experiment", ("--balanced", "--augment-flip")),
    ("offset", "p2ch12", "experiment", ("--balanced", "--augment-offset")),
    ("scale", "p2ch12", "experiment", ("--balanced", "--augment-scale")),
    ("rotate", "p2ch12", "experiment", ("--balanced", "--augment-rotate")),
    ("noise", "p2ch12", "experiment", ("--balanced", "--augment-noise")),
    ("fully-augmented", "p2ch12", "training", ("--balanced", "--augmented")),
)


def run_commands(epoch_counts, passthrough):
    """[(name, train_cls argv)] for every run: `epoch_counts` maps "training" and
    "experiment" to epochs, `passthrough` holds the flags every run gets."""
    commands = []
    for name, prefix, epochs, flags in RUNS:
        epochs = epochs if isinstance(epochs, int) else epoch_counts[epochs]
        commands.append((name, ["--tb-prefix", prefix, "--epochs", str(epochs), *flags,
                                *passthrough, name]))
    return commands


def shell_line(argv):
    return "python ch10_luna/train_cls.py " + shlex.join(argv)


def result_row(name, argv, history):
    """The last epoch's validation numbers of one run."""
    last = history[-1]
    val = last["val"]
    return {"run": name, "epochs": last["epoch"], "loss": val["loss/all"],
            "correct_neg": val["correct/neg"], "correct_pos": val["correct/pos"],
            "precision": val["pr/precision"], "recall": val["pr/recall"],
            "f1": val["pr/f1_score"], "command": shell_line(argv)}


def format_table(rows):
    lines = [f"{'run':16s} {'epochs':>6s} {'val loss':>8s} {'neg ok':>7s} {'pos ok':>7s} "
             f"{'precision':>9s} {'recall':>7s} {'F1':>6s}"]
    for r in rows:
        lines.append(f"{r['run']:16s} {r['epochs']:6d} {r['loss']:8.4f} {r['correct_neg']:6.1f}% "
                     f"{r['correct_pos']:6.1f}% {r['precision']:9.4f} {r['recall']:7.4f} "
                     f"{r['f1']:6.4f}")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs of every multi-epoch run (default: the notebook's counts)")
    p.add_argument("--training-epochs", type=int, default=TRAINING_EPOCHS,
                   help="balanced and fully augmented runs (default: %(default)s)")
    p.add_argument("--experiment-epochs", type=int, default=EXPERIMENT_EPOCHS,
                   help="each single-augmentation run (default: %(default)s)")
    add_data_dir_argument(p)
    p.add_argument("--synthetic", action="store_true", help="train on the built-in sample")
    p.add_argument("--epoch-size", type=int, default=None, help="training samples per epoch")
    add_device_argument(p)
    p.add_argument("--amp", action="store_true", help="mixed precision (see train_cls.py)")
    args = p.parse_args(argv)

    passthrough = (["--data-dir", args.data_dir] if args.data_dir else []) + (
        ["--synthetic"] if args.synthetic else []) + (
        ["--epoch-size", str(args.epoch_size)] if args.epoch_size is not None else []) + (
        ["--device", args.device] if args.device != "auto" else []) + (
        ["--amp"] if args.amp else [])
    commands = run_commands({"training": args.epochs or args.training_epochs,
                             "experiment": args.epochs or args.experiment_epochs}, passthrough)
    for n, (_name, run_argv) in enumerate(commands, start=1):
        print(f"[{n}/{len(commands)}] {shell_line(run_argv)}")
    if args.dry_run:
        return commands
    rows = []
    try:
        for n, (name, run_argv) in enumerate(commands, start=1):
            print(f"\n{'=' * 30} run {n}/{len(commands)}: {name} {'=' * 30}\n"
                  f"{shell_line(run_argv)}", flush=True)
            _model, history = train_cls.main(run_argv)
            rows.append(result_row(name, run_argv, history))
    finally:                                   # the finished runs, even after an interruption
        if rows:
            print(f"\nvalidation, last epoch of each run ({len(rows)} of {len(commands)}):")
            print("\n".join(format_table(rows)))
    return rows


if __name__ == "__main__":
    run_cli(main)
