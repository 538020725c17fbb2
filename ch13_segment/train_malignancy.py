"""Chapter 14: train the malignancy classifier, from scratch or fine-tuned from the nodule one.

    python ch13_segment/train_malignancy.py                  # the built-in sample if no LUNA16
    python ch13_segment/train_malignancy.py --epochs 40 --finetune \\
        data/part2/models/cls_2020-02-06_14.16.55_final-nodule-nonnodule.best.state finetune-depth1
    python ch13_segment/train_malignancy.py --finetune-depth 2 --finetune PATH ...  # block4 too
    torchrun --nproc_per_node=2 ch13_segment/train_malignancy.py --epochs 1

Training draws the book's balanced epoch (malignant, benign, malignant, non-nodule, ...);
validation scores the benign and malignant nodules of every 10th series by AUC, which picks the
best model. `--finetune` starts from a LunaModel checkpoint (a ch10_luna/train_cls.py run's or
the book's), re-initialises `head_linear` and freezes all but the last `--finetune-depth`
parameterised children; it switches to the book's fine-tuning SGD (lr 0.003, weight decay
1e-4, no momentum) and validates every epoch (else every 5th, the first and the last). The run
directory gets metrics.jsonl, TensorBoard events, `mal_<comment>.best.state` /
`.last.state` (the book's checkpoint dict) and `roc_val.png` (the last validation's ROC next to
the diameter baseline on the same nodules).

    python ch13_segment/train_malignancy.py --resume runs/ch14/<run>/mal_dlwpt.last.state --epochs 5

continues a run after its last finished epoch with the run's own settings (--epochs,
--num-workers, --device and --data-dir may be given again), appending to its metrics.jsonl and
keeping its best AUC; a fine-tuning run resumes with the same blocks frozen, without the file it
was fine-tuned from. There is no mid-epoch checkpoint (train_cls.py's --checkpoint-every does
nothing here).

Under torchrun (gloo on CPU, nccl on CUDA) each process trains its share of the epoch's order,
whole consecutive batches that keep the balanced mix (rank_share; --batch-size is per process);
validation is split across the processes and gathered, so the AUC covers every validation
nodule, and rank 0 alone prints and writes the run directory. With --finetune only the
trainable blocks take part in DistributedDataParallel's gradient averaging.

Also takes train_cls.py's flags (--epochs --batch-size --num-workers --device --seed --data-dir
--synthetic --epoch-size --val-stride --balanced --augment-* --amp --run-dir and the comment).
"""
import argparse
import sys
import time
from functools import partial

import numpy as np
import torch

from ch10_luna.augment import AugmentSpec
from ch10_luna.dsets import epoch_order, split_by_series
from ch10_luna.model import LunaModel, read_checkpoint
from ch10_luna.train_cls import (
    LABEL,
    PRED,
    augment_spec,
    barrier,
    channels_last,
    evaluate,
    format_summary,
    gather_metrics,
    load_checkpoint,
    locate_luna,
    log_epoch,
    make_loader,
    process_roles,
    rank_share,
    restore_args,
    restore_state,
    run_distributed,
    save_checkpoint,
    start_run,
    summarize,
    train_one_epoch,
)
from ch10_luna.train_cls import parse_args as cls_parse_args
from ch13_segment.dsets_cls import (
    BOOK_MAL_EPOCH,
    MalignantLunaDataset,
    class_lists,
    read_candidates_ch14,
)
from ch13_segment.roc import diameter_roc, log_roc, roc_curve, trapezoid_auc
from ch13_segment.train_seg import RESUME_KEEPS
from common.device import seed_everything
from common.errors import DataError, run_cli

# The book's chapter 14 augmentation (flip, offset, rotate; its offset never reached the matrix).
BOOK_CH14_AUGMENTATION = AugmentSpec(flip=True, offset=0.1, rotate=True)
SYNTHETIC_EPOCH = 2_400         # 75 batches of 32: about 2 minutes on 2 CPU cores with validation
VALIDATION_CADENCE = 5          # the book's; every epoch when fine-tuning


def extra_parser():
    """The flags train_cls.py lacks, or whose defaults differ here."""
    p = argparse.ArgumentParser(add_help=False, prog="train_malignancy.py")
    p.add_argument("--finetune", default=None, metavar="PATH",
                   help="LunaModel checkpoint to start from (head re-initialised)")
    p.add_argument("--finetune-depth", type=int, choices=(1, 2), default=1,
                   help="trainable parameterised children from the end: 1 head_linear, "
                        "2 block4 + head_linear (default: %(default)s)")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default=None,
                   help="default: the book's SGD (weight decay 1e-4) on LUNA16 or when "
                        "fine-tuning; Adam when training from scratch on the synthetic sample")
    p.add_argument("--lr", type=float, default=None,
                   help="default: 0.003 fine-tuning, 0.001 otherwise (the book's)")
    p.add_argument("--tb-prefix", default="ch14", help="the book's TensorBoard folder name")
    p.add_argument("--no-augment", action="store_true",
                   help="no augmentation (default: the book's chapter 14 flip, offset, rotate; "
                        "any --augment-* flag replaces that set)")
    return p


def parse_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = extra_parser()
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        extra.print_help()
        print("\nshared with ch10_luna/train_cls.py (its --help):")
        cls_parse_args(["--help"])                  # prints and exits
    ours, rest = extra.parse_known_args(argv)
    args = cls_parse_args(rest)
    vars(args).update(vars(ours))
    return args


def load_resume_state(path):
    """A train_malignancy.py checkpoint for --resume; DataError for any other kind.

    A nodule classifier's checkpoint (train_cls.py) holds a LunaModel too: it lacks this
    script's settings and best AUC, and is a --finetune source instead.
    """
    state = load_checkpoint(path, model_name="LunaModel")
    if "best_auc" not in state or not isinstance(state["args"], dict) \
            or "finetune_depth" not in state["args"]:
        raise DataError(f"--resume {path}: not a train_malignancy.py checkpoint (a nodule "
                        "classifier's? start from it with --finetune instead)")
    return state


# ----------------------------------------------------------------------------- fine-tuning
def load_finetune_state(path):
    """The model_state of a LunaModel checkpoint; DataError for anything else."""
    state = read_checkpoint(path, "--finetune")
    if state.get("model_name", "LunaModel") != "LunaModel":
        raise DataError(f"--finetune {path}: holds a {state['model_name']!r}, not a LunaModel")
    return state["model_state"]


def parameterised_children(model):
    """Names of the direct children that own parameters, in order (the book's model_blocks)."""
    return [name for name, child in model.named_children() if any(True for _ in
                                                                  child.parameters())]


def prepare_finetune(model, model_state, depth=1, source="checkpoint"):
    """Load all but the last block (the head), freeze all but the last `depth` blocks.

    Returns the names of the trainable blocks. The head keeps the fresh model's random init.
    """
    blocks = parameterised_children(model)
    head, trainable = blocks[-1], blocks[-depth:]
    body = {k: v for k, v in model_state.items() if k.split(".")[0] != head}
    missing, unexpected = model.load_state_dict(body, strict=False)
    wrong = [k for k in missing if k.split(".")[0] != head] + list(unexpected)
    if wrong:
        raise DataError(f"--finetune {source}: does not fit LunaModel (e.g. "
                        f"{', '.join(wrong[:3])})")
    for name, p in model.named_parameters():
        p.requires_grad_(name.split(".")[0] in trainable)
    return trainable


def load_model(args, device, state=None, announce=print):
    """A LunaModel on `device`; with --finetune, prepared from `state` (or the file)."""
    model = LunaModel()
    if args.finetune:
        state = state if state is not None else load_finetune_state(args.finetune)
        try:
            blocks = prepare_finetune(model, state, args.finetune_depth, args.finetune)
        except RuntimeError as e:                     # a shape mismatch
            raise DataError(f"--finetune {args.finetune}: does not fit LunaModel "
                            f"({str(e).splitlines()[-1].strip()[:160]})") from None
        announce(f"fine-tuning from {args.finetune}, training {' '.join(blocks)}")
    model = model.to(device)
    if channels_last(device, args.amp):
        model = model.to(memory_format=torch.channels_last_3d)
    return model


def make_optimizer(model, name, lr):
    """The book's chapter 14 SGD (weight decay 1e-4, no momentum), or Adam; trainable only."""
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.SGD(params, lr=lr, weight_decay=1e-4)


# ----------------------------------------------------------------------------- distributed
# ----------------------------------------------------------------------------- scores
def auc_of(metrics):
    """Trapezoid AUC of (3, N) metrics over the book's 100 thresholds."""
    fpr, tpr, _ = roc_curve(metrics[PRED], metrics[LABEL] > 0.5)
    return trapezoid_auc(fpr, tpr)


def diameter_auc(candidates):
    """The diameter baseline on the same nodules: (auc, fpr, tpr)."""
    fpr, tpr, _ = diameter_roc([c.diameter_mm for c in candidates],
                               [c.is_malignant for c in candidates])
    return trapezoid_auc(fpr, tpr), fpr, tpr


# ----------------------------------------------------------------------------- main
def main(argv=None):
    args = parse_args(argv)
    resumed = None
    if args.resume:
        resumed = load_resume_state(args.resume)
        args = restore_args(args, resumed, defaults=vars(parse_args([])), keeps=RESUME_KEEPS)
    # Resuming a fine-tuning run freezes the same blocks; the weights come from the checkpoint.
    finetune_state = (resumed["model_state"] if resumed else
                      load_finetune_state(args.finetune) if args.finetune else None)
    return run_distributed(partial(train, finetune_state=finetune_state), args, resumed)


def train(args, device, resumed=None, finetune_state=None):
    rank, world, say = process_roles()
    main_proc = rank == 0
    seed_everything(args.seed)
    luna = locate_luna(args, announce=say)
    train_c, val_c = split_by_series(read_candidates_ch14(luna), args.val_stride)
    epoch_size = args.epoch_size or (SYNTHETIC_EPOCH if luna.synthetic else
                                     BOOK_MAL_EPOCH if args.balanced else None)
    train_ds = MalignantLunaDataset(train_c, luna.series, balanced=args.balanced,
                                    epoch_size=epoch_size or 0, seed=args.seed)
    val_ds = MalignantLunaDataset(val_c, luna.series)
    if not val_ds.mal or not val_ds.ben:
        raise DataError(f"the validation series hold {len(val_ds.mal)} malignant and "
                        f"{len(val_ds.ben)} benign nodules: an AUC needs both (try another "
                        "--val-stride)")
    args.optimizer = args.optimizer or ("adam" if luna.synthetic and not args.finetune
                                        else "sgd")
    args.lr = args.lr or (0.003 if args.finetune else 0.001)
    spec = (AugmentSpec() if args.no_augment else augment_spec(args) if augment_spec(args).active
            else BOOK_CH14_AUGMENTATION)
    lists = class_lists(train_c)
    say(f"training: {len(lists['mal'])} malignant, {len(lists['ben'])} benign, "
        f"{len(lists['neg']):,} non-nodules; {len(train_ds):,} samples per epoch "
        f"{'balanced' if args.balanced else 'unbalanced (benign + malignant)'}; validation: "
        f"{len(val_ds.mal)} malignant, {len(val_ds.ben)} benign; device {device}"
        f"{f' x {world} processes' if world > 1 else ''}; {args.optimizer} lr {args.lr:g}")
    model = load_model(args, device, finetune_state, announce=say)
    optimizer = make_optimizer(model, args.optimizer, args.lr)
    start_epoch, best_auc, samples_seen = 1, -1.0, 0
    if resumed is not None:
        restore_state(model, optimizer, resumed, args.resume, f"LunaModel/{args.optimizer}")
        start_epoch = resumed["epoch"] + 1
        samples_seen = resumed["totalTrainingSamples_count"]
        best_auc = resumed["best_auc"]
        say(f"resuming {args.resume}: epoch {start_epoch}, {samples_seen:,} samples seen, "
            f"best validation AUC {best_auc:.3f}")
        if start_epoch > args.epochs:
            say(f"nothing to train: the run finished epoch {start_epoch - 1}; give a larger "
                "--epochs to continue")
    module = model
    if world > 1:
        # Frozen parameters (--finetune) get no gradient hooks and every trainable one is used
        # in each forward pass: no find_unused_parameters needed.
        model = torch.nn.parallel.DistributedDataParallel(model)

    run_dir, writers, last_path, best_path = start_run(args, main_proc, say, "mal")
    base_auc, base_fpr, base_tpr = diameter_auc(val_ds.ben + val_ds.mal)
    say(f"diameter baseline on the validation nodules: AUC {base_auc:.3f}")

    val_loader = make_loader(val_ds, np.arange(len(val_ds))[rank::world], args.batch_size,
                             args.num_workers, device)
    history = []
    for epoch in range(start_epoch, args.epochs + 1):
        if args.balanced:
            train_ds.set_epoch(epoch)
            order = np.arange(len(train_ds))
        else:
            order = epoch_order(train_ds.labels(), epoch_size, False, args.seed, epoch)
        order = order[:len(order) // world * world]   # equal batch counts on every rank (DDP)
        loader = make_loader(train_ds, rank_share(order, rank, world, args.batch_size),
                             args.batch_size, args.num_workers, device)
        started = time.perf_counter()
        trn_metrics = gather_metrics(train_one_epoch(
            model, loader, optimizer, device, spec=spec, amp=args.amp,
            generator_seed=(args.seed * 10_007 + epoch) * world + rank,
            desc=f"E{epoch} trn", quiet=not main_proc))
        samples_seen += len(order)
        trn = {**summarize(trn_metrics), "auc": auc_of(trn_metrics)}
        row = {"epoch": epoch, "trn": trn, "trn_samples_per_s": len(order) /
               (time.perf_counter() - started)}
        say(format_summary(epoch, "trn", trn) + f"  auc {trn['auc']:.3f}")
        if main_proc:
            log_epoch(run_dir, writers, epoch, "trn", trn_metrics, trn, samples_seen)
        if args.finetune or epoch == 1 or epoch % VALIDATION_CADENCE == 0 \
                or epoch == args.epochs:
            val_metrics = gather_metrics(evaluate(   # the bare module: no DDP collectives
                module, val_loader, device, amp=args.amp, desc=f"E{epoch} val",
                quiet=not main_proc))
            val = {**summarize(val_metrics), "auc": auc_of(val_metrics),
                   "auc/diameter_baseline": base_auc}
            row["val"] = val
            say(format_summary(epoch, "val", val) + f"  auc {val['auc']:.3f} "
                f"(diameter baseline {base_auc:.3f})")
            if main_proc:
                log_epoch(run_dir, writers, epoch, "val", val_metrics, val, samples_seen)
                log_roc(writers["val"], "malignancy", val_metrics[PRED],
                        val_metrics[LABEL] > 0.5, samples_seen, png=run_dir / "roc_val.png",
                        baseline=(base_fpr, base_tpr, "diameter baseline"),
                        class_names=("benign", "malignant"), title=f"LunaModel, epoch {epoch}")
            if val["auc"] > best_auc:
                best_auc = val["auc"]
                if main_proc:
                    save_checkpoint(best_path, model, optimizer, args, epoch, samples_seen,
                                    best_auc=best_auc)
        if main_proc:
            save_checkpoint(last_path, model, optimizer, args, epoch, samples_seen,
                            best_auc=best_auc)
        history.append(row)
        barrier()
    for writer in writers.values():
        writer.close()
    return module, history


if __name__ == "__main__":
    run_cli(main)
