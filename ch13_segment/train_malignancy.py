"""Chapter 14: train the malignancy classifier, from scratch or fine-tuned from the nodule one.

    python ch13_segment/train_malignancy.py                  # the built-in sample if no LUNA16
    python ch13_segment/train_malignancy.py --epochs 40 --finetune CLS.best.state finetune-depth1
    python ch13_segment/train_malignancy.py --resume runs/ch14/<run>/mal_dlwpt.last.state --epochs 5
    torchrun --nproc_per_node=2 ch13_segment/train_malignancy.py --epochs 1

The book's p2ch14 doTraining and doValidation are train_one_epoch and evaluate. Training draws
the book's balanced epoch (malignant, benign, malignant, non-nodule, ...); validation scores the
benign and malignant nodules of the validation series by AUC, which picks the best model.
--finetune starts from a LunaModel checkpoint (a train_cls.py run's or the book's),
re-initialises head_linear and freezes all but the last --finetune-depth parameterised
children. The run directory gets metrics.jsonl, TensorBoard events, mal_<comment>.best.state /
.last.state and roc_val.png. Optimizers, resume, torchrun: NOTES.md ("Malignancy").
"""
import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from ch10_luna.augment import (
    BOOK_AUGMENTATION,
    AugmentSpec,
    augment_parser,
    augment_spec,
    batch_augmenter,
)
from ch10_luna.checkpoints import (
    close_run,
    load_resumable,
    open_run,
    parse_run_args,
    resume_training,
    run_parser,
    save_checkpoint,
    say_where_to_resume,
)
from ch10_luna.dsets import (
    epoch_order,
    locate_luna,
    luna_parser,
    make_loader,
    rank_loader,
    split_by_series,
    validation_uids,
)
from ch10_luna.metrics import LABEL, PRED, format_summary, log_metrics, summarize
from ch10_luna.model import LunaModel, read_checkpoint
from ch10_luna.runtime import (
    barrier,
    describe,
    distribute,
    gather_metrics,
    keep_freed_memory,
    memory_format,
    mixed_precision,
    process_group,
    progress,
    runtime_parser,
    unwrap,
    use_memory_format,
)
from ch13_segment.dsets_cls import (
    BOOK_MAL_EPOCH,
    MalignantLunaDataset,
    read_candidates_ch14,
)
from ch13_segment.roc import diameter_roc, log_roc, roc_curve, trapezoid_auc
from common.device import seed_everything
from common.errors import DataError, run_cli

# The book's chapter 14 augmentation (flip, offset, rotate; its offset never reached the matrix).
BOOK_CH14_AUGMENTATION = AugmentSpec(flip=True, offset=0.1, rotate=True)
SYNTHETIC_EPOCH = 2_400         # 75 batches of 32
VALIDATION_CADENCE = 5          # the book's; every epoch when fine-tuning
RESUME_KEEPS = ("epochs", "num_workers", "device", "data_dir", "resume", "compile")


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[run_parser("ch14"), luna_parser(), runtime_parser(batch_size=32),
                 augment_parser(BOOK_AUGMENTATION, "about the head-foot axis")])
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
    p.add_argument("--epoch-size", type=int, default=None,
                   help=f"training samples per epoch (default: the book's {BOOK_MAL_EPOCH:,} "
                        f"balanced on LUNA16, every nodule when not; {SYNTHETIC_EPOCH:,} on "
                        "the synthetic sample)")
    p.add_argument("--balanced", action=argparse.BooleanOptionalAction, default=True,
                   help="the book's malignant, benign, malignant, non-nodule order (default: on)")
    p.add_argument("--no-augment", action="store_true",
                   help="no augmentation (default: the book's chapter 14 flip, offset, rotate; "
                        "any --augment-* flag replaces that set)")
    return p.parse_args(argv)


def load_resume_state(path):
    """A train_malignancy.py checkpoint for --resume; DataError for any other kind.

    A nodule classifier's checkpoint (train_cls.py) holds a LunaModel too: it lacks this
    script's settings and best AUC, and is a --finetune source instead.
    """
    state = load_resumable(path, "LunaModel")
    if "best_auc" not in state or "finetune_depth" not in state["args"]:
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


def load_model(device, finetune_state=None, depth=1, source=None, announce=print):
    """A LunaModel on `device`; with `finetune_state` (a state_dict from `source`), prepared for
    fine-tuning its last `depth` blocks."""
    model = LunaModel()
    if finetune_state is not None:
        try:
            blocks = prepare_finetune(model, finetune_state, depth, source)
        except RuntimeError as e:                     # a shape mismatch
            raise DataError(f"--finetune {source}: does not fit LunaModel "
                            f"({str(e).splitlines()[-1].strip()[:160]})") from None
        announce(f"fine-tuning from {source}, training {' '.join(blocks)}")
    return model.to(device)


def make_optimizer(model, name, lr):
    """The book's chapter 14 SGD (weight decay 1e-4, no momentum), or Adam; trainable only."""
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.SGD(params, lr=lr, weight_decay=1e-4)


# ----------------------------------------------------------------------------- the loops
def train_one_epoch(model, loader, optimizer, amp, augment=None):
    """The book's chapter 14 doTraining: one pass; the (3, N) metrics rows (label: malignant,
    P(malignant), loss) of every sample. `amp`: runtime.mixed_precision's; `augment(x)`: the
    chapter 14 augmentation (augment.batch_augmenter)."""
    model.train()
    device = next(model.parameters()).device
    rows = []
    for x, label, *_ in loader:
        x, y = x.to(device, non_blocking=True), label[:, 1].to(device, non_blocking=True)
        if augment is not None:
            x = augment(x)
        optimizer.zero_grad()
        with amp.context:                             # autocast, or nothing in fp32
            logits, probs = model(x)
            loss = F.cross_entropy(logits.float(), y, reduction="none")
        amp.scaler.scale(loss.mean()).backward()      # loss.mean().backward() unless fp16
        amp.scaler.step(optimizer)                    # optimizer.step()
        amp.scaler.update()
        rows.append(torch.stack([y.float(), probs[:, 1].float(), loss]).detach())
    return torch.cat(rows, dim=1).cpu()


def evaluate(model, loader, amp):
    """The book's chapter 14 doValidation: the same pass without gradients or augmentation."""
    model.eval()
    device = next(model.parameters()).device
    rows = []
    with torch.inference_mode():
        for x, label, *_ in loader:
            x, y = x.to(device, non_blocking=True), label[:, 1].to(device, non_blocking=True)
            with amp.context:
                logits, probs = model(x)
                loss = F.cross_entropy(logits.float(), y, reduction="none")
            rows.append(torch.stack([y.float(), probs[:, 1].float(), loss]))
    return torch.cat(rows, dim=1).cpu()


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
    args, saved, run_dir = parse_run_args(parse_args, argv, "LunaModel", RESUME_KEEPS, "mal",
                                          load=load_resume_state)
    # Resuming a fine-tuning run freezes the same blocks; the weights come from the checkpoint.
    finetune_state = (saved["model_state"] if saved else
                      load_finetune_state(args.finetune) if args.finetune else None)
    with process_group(args.device) as proc:
        seed_everything(args.seed)
        luna = locate_luna(args.data_dir, args.synthetic, announce=proc.say)
        train_ds, val_ds = make_datasets(luna, args.val_stride, args.fold, args.balanced,
                                         args.epoch_size, args.seed)
        args.optimizer = args.optimizer or ("adam" if luna.synthetic and not args.finetune
                                            else "sgd")
        args.lr = args.lr or (0.003 if args.finetune else 0.001)
        spec = (AugmentSpec() if args.no_augment else
                augment_spec(BOOK_AUGMENTATION, args.augment) if args.augment
                else BOOK_CH14_AUGMENTATION)
        amp = mixed_precision(proc.device, args.amp)
        proc.say(f"{describe_data(train_ds, val_ds)}; {describe(proc, amp)}; {args.optimizer} "
                 f"lr {args.lr:g}")
        model = load_model(proc.device, finetune_state, args.finetune_depth, args.finetune,
                           announce=proc.say)
        model = use_memory_format(model, memory_format(proc.device, amp))  # channels-last on CPU
        optimizer = make_optimizer(model, args.optimizer, args.lr)
        start = resume_training(model, optimizer, saved, args.resume, proc, "best_auc")
        if start.epoch > args.epochs:
            proc.say(f"nothing to train: the run finished epoch {start.epoch - 1}; give a "
                     "larger --epochs to continue")
        # Frozen parameters (--finetune) get no gradient hooks and every trainable one is used
        # in each forward pass: no find_unused_parameters needed.
        if args.compile:
            model.compile()                                 # torch.compile, names kept
        model = distribute(model, proc)
        run = open_run(run_dir, "mal", args.comment, proc)
        args.run_dir = str(run.dir)
        baseline = diameter_auc(val_ds.ben + val_ds.mal)
        proc.say(f"diameter baseline on the validation nodules: AUC {baseline[0]:.3f}")
        val_loader = make_loader(val_ds, range(proc.rank, len(val_ds), proc.world),
                                 args.batch_size, args.num_workers, proc.device)
        best, samples, history = start.best, start.samples, []
        with say_where_to_resume(run):                      # Ctrl-C, SIGTERM: says where
            for epoch in range(start.epoch, args.epochs + 1):
                order = epoch_indexes(train_ds, epoch, args.balanced, args.seed, proc.world)
                loader = progress(rank_loader(train_ds, order, proc, args.batch_size,
                                              args.num_workers), f"E{epoch} trn", proc)
                started = time.perf_counter()
                augment = batch_augmenter(spec, args.seed, epoch, proc.rank)   # seeds itself
                trn_metrics = gather_metrics(train_one_epoch(model, loader, optimizer, amp,
                                                             augment))
                trn_s = time.perf_counter() - started
                samples += len(order)
                trn = {**summarize(trn_metrics), "auc": auc_of(trn_metrics)}
                row = {"epoch": epoch, "trn": trn, "trn_samples_per_s": len(order) / trn_s}
                proc.say(format_summary(epoch, "trn", trn) + f"  auc {trn['auc']:.3f}")
                if proc.rank == 0:
                    log_metrics(run, epoch, "trn", trn_metrics, trn, samples)
                if args.finetune or epoch in (1, args.epochs) or epoch % VALIDATION_CADENCE == 0:
                    row["val"] = validate(unwrap(model), val_loader, run, epoch, samples, proc, amp,
                                          baseline)
                    if row["val"]["auc"] > best:
                        best = row["val"]["auc"]
                        if proc.rank == 0:
                            save_checkpoint(run.best, model, optimizer, vars(args), epoch, samples,
                                            best_auc=best)
                if proc.rank == 0:
                    save_checkpoint(run.last, model, optimizer, vars(args), epoch, samples,
                                    best_auc=best)
                history.append(row)
                barrier()
        close_run(run)
        return unwrap(model), history


def make_datasets(luna, val_stride, fold, balanced, epoch_size, seed):
    """(training, validation) MalignantLunaDatasets; the validation needs both classes."""
    train_c, val_c = split_by_series(read_candidates_ch14(luna),
                                     val_uids=validation_uids(luna.series, val_stride, fold))
    epoch_size = epoch_size or (SYNTHETIC_EPOCH if luna.synthetic else
                                BOOK_MAL_EPOCH if balanced else None)
    train_ds = MalignantLunaDataset(train_c, luna.series, balanced=balanced,
                                    epoch_size=epoch_size or 0, seed=seed)
    val_ds = MalignantLunaDataset(val_c, luna.series)
    if not val_ds.mal or not val_ds.ben:
        raise DataError(f"the validation series hold {len(val_ds.mal)} malignant and "
                        f"{len(val_ds.ben)} benign nodules: an AUC needs both (try another "
                        "--val-stride or --fold)")
    return train_ds, val_ds


def epoch_indexes(train_ds, epoch, balanced, seed, world):
    """One epoch's dataset indexes: the balanced dataset's own order (reshuffled per epoch),
    or a permutation of the nodules; cut to a multiple of the process count (equal batches)."""
    if balanced:
        train_ds.set_epoch(epoch)
        order = np.arange(len(train_ds))
    else:
        order = epoch_order(train_ds.labels(), train_ds.epoch_size or None, False, seed, epoch)
    return order[:len(order) // world * world]


def describe_data(train_ds, val_ds):
    return (f"training: {len(train_ds.mal)} malignant, {len(train_ds.ben)} benign, "
            f"{len(train_ds.neg):,} non-nodules; {len(train_ds):,} samples per epoch "
            f"{'balanced' if train_ds.balanced else 'unbalanced (benign + malignant)'}; "
            f"validation: {len(val_ds.mal)} malignant, {len(val_ds.ben)} benign")


def validate(model, val_loader, run, epoch, samples, proc, amp, baseline):
    """AUC on every validation nodule (each rank its share, gathered), logged with the ROC
    beside the diameter baseline on rank 0; the summary."""
    base_auc, base_fpr, base_tpr = baseline
    metrics = gather_metrics(evaluate(model, progress(val_loader, f"E{epoch} val", proc), amp))
    val = {**summarize(metrics), "auc": auc_of(metrics), "auc/diameter_baseline": base_auc}
    proc.say(format_summary(epoch, "val", val) + f"  auc {val['auc']:.3f} "
             f"(diameter baseline {base_auc:.3f})")
    if proc.rank == 0:
        log_metrics(run, epoch, "val", metrics, val, samples)
        log_roc(run.writers["val"], "malignancy", metrics[PRED], metrics[LABEL] > 0.5, samples,
                png=run.dir / "roc_val.png", baseline=(base_fpr, base_tpr, "diameter baseline"),
                class_names=("benign", "malignant"), title=f"LunaModel, epoch {epoch}")
    return val


if __name__ == "__main__":
    keep_freed_memory()                 # glibc keeps freed blocks: see runtime.py
    run_cli(main)
