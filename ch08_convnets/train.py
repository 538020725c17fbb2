"""Chapter 8: train one CIFAR-2 convnet, report train/val accuracy, save its state_dict.

    python ch08_convnets/train.py                          # Net, SGD lr 1e-2, 100 epochs, batch 64
    python ch08_convnets/train.py --model width --l2 0.001 --device cuda
    python ch08_convnets/train.py --model resdeep --n-blocks 100 --lr 3e-3
    python ch08_convnets/train.py --load book --epochs 0   # the book's trained Net, evaluated only

Models: net, width, dropout, batchnorm, depth, res, resdeep (ch08_convnets/models.py). Writes the
trained weights to the repository's runs/ch08/<model>.pt (the book: birds_vs_airplanes.pt);
--epoch-size N trains on N random samples per epoch (a quick run); --load starts from a
saved state_dict, `--load book` from the book's data/p1ch6/birds_vs_airplanes.pt (Net only).
"""
import argparse
import datetime
from pathlib import Path

import torch
from torch import nn

from ch01_intro.resnet import count_parameters
from ch01_intro.weights import load_state
from ch07_cifar.train_fc import add_cifar_arguments, check_cifar_flags, prepare
from ch08_convnets.models import BOOK_NET_FILE, MODELS, load_book_net, make_model
from common.device import map_location
from common.errors import DataError, require_at_least, run_cli
from common.files import check_writable, read_torch, runs_dir, save_torch


def training_loop(n_epochs, optimizer, model, loss_fn, train_loader, device):
    """The book's chapter 8 loop; returns each epoch's mean batch loss, printed with a timestamp
    at epoch 1, every 10th and the last."""
    model.train()                  # dropout and batch norm in training mode (validate leaves eval)
    losses = []
    for epoch in range(1, n_epochs + 1):
        loss_train = torch.zeros((), device=device)            # summed on the device: no sync
        for imgs, labels in train_loader:
            imgs = imgs.to(device, non_blocking=True)          # (N, 3, 32, 32)
            labels = labels.to(device, non_blocking=True)
            outputs = model(imgs)                              # (N, 2) logits
            loss = loss_fn(outputs, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_train += loss.detach()
        losses.append(loss_train.item() / len(train_loader))
        if epoch == 1 or epoch % 10 == 0 or epoch == n_epochs:
            print(f"{datetime.datetime.now()} Epoch {epoch}, Training loss {losses[-1]:.6f}")
    return losses


def training_loop_l2reg(n_epochs, optimizer, model, loss_fn, train_loader, device,
                        l2_lambda=0.001):
    """training_loop with the L2 penalty l2_lambda * sum(p**2) added to every batch's loss
    (the book's lambda 0.001; SGD(weight_decay=2 * l2_lambda) takes the same steps)."""
    model.train()
    losses = []
    for epoch in range(1, n_epochs + 1):
        loss_train = torch.zeros((), device=device)
        for imgs, labels in train_loader:
            imgs = imgs.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            outputs = model(imgs)
            loss = loss_fn(outputs, labels)
            l2_norm = sum(p.pow(2.0).sum() for p in model.parameters())   # abs() for L1
            loss = loss + l2_lambda * l2_norm
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_train += loss.detach()
        losses.append(loss_train.item() / len(train_loader))
        if epoch == 1 or epoch % 10 == 0 or epoch == n_epochs:
            print(f"{datetime.datetime.now()} Epoch {epoch}, Training loss {losses[-1]:.6f}")
    return losses


def validate(model, train_loader, val_loader, device):
    """Accuracy on both sets under no_grad, printed like the book; {'train': ..., 'val': ...}."""
    model.eval()
    accdict = {}
    for name, loader in (("train", train_loader), ("val", val_loader)):
        correct, total = 0, 0
        with torch.no_grad():
            for imgs, labels in loader:
                imgs, labels = imgs.to(device), labels.to(device)
                outputs = model(imgs)
                _, predicted = torch.max(outputs, dim=1)       # the class of the larger logit
                total += labels.shape[0]
                correct += int((predicted == labels).sum())
        accdict[name] = correct / max(total, 1)
        print(f"Accuracy {name}: {accdict[name]:.2f}")
    return accdict


def save_model(model, path):
    """Write the state_dict atomically (a temporary file renamed): never half a file."""
    return save_torch(model.state_dict(), path, "--save")


def load_model(model, path, device="cpu"):
    """Load a state_dict saved on any device into `model` (strict: names and shapes must match),
    read without running code; a DataError names --load, the file and the first wrong keys."""
    state = read_torch(path, "--load", map_location(device))
    return load_state(model, state, f"--load {path}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", choices=tuple(MODELS), default="net")
    p.add_argument("--n-chans1", type=int, default=32, help="first conv's channels (not for net)")
    p.add_argument("--n-blocks", type=int, default=10, help="ResBlocks of resdeep (book: 100)")
    p.add_argument("--l2", type=float, default=0.0, help="L2 penalty lambda (book: 0.001)")
    p.add_argument("--load", default=None, help="start from a state_dict file, or `book`")
    p.add_argument("--save", default=None,
                   help="where to write the trained state_dict (default: runs/ch08/<model>.pt "
                        "in the repository)")
    add_cifar_arguments(p)
    args = p.parse_args(argv)
    check_cifar_flags(args.epochs, args.lr, args.batch_size, args.epoch_size, args.num_workers,
                      least_epochs=0)                   # --epochs 0: evaluate a --load only
    for flag, value in (("--n-chans1", args.n_chans1), ("--n-blocks", args.n_blocks)):
        require_at_least(flag, value, 1)
    if not args.l2 >= 0:
        raise DataError(f"--l2 {args.l2}: must be 0 or more")
    if args.load == "book" and args.model != "net":
        raise DataError("--load book holds the book's Net: use it with --model net")
    save = Path(args.save) if args.save else runs_dir("ch08") / f"{args.model}.pt"
    if args.epochs > 0:
        check_writable(save.parent, "--save folder")      # checked before the training

    model = None                 # a --load is read and fitted first, before data and training
    if args.load:
        with torch.random.fork_rng(devices=[]):         # the seed's numbers stay for the run
            if args.load == "book":
                model = load_book_net(args.data_dir)
                print(f"loaded the book's {BOOK_NET_FILE}")
            else:
                model = load_model(make_model(args.model, n_chans1=args.n_chans1,
                                              n_blocks=args.n_blocks), args.load)
                print(f"loaded {args.load}")
    device, train_loader, val_loader, data = prepare(
        args.device, args.seed, args.data_dir, args.synthetic, args.batch_size,
        args.num_workers, args.epoch_size)
    if model is None:
        model = make_model(args.model, n_chans1=args.n_chans1, n_blocks=args.n_blocks)
    model.to(device)
    print(f"model {args.model} ({type(model).__name__}): {count_parameters(model):,} parameters")
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    if args.l2:
        losses = training_loop_l2reg(args.epochs, optimizer, model, loss_fn, train_loader, device,
                                     l2_lambda=args.l2)
    else:
        losses = training_loop(args.epochs, optimizer, model, loss_fn, train_loader, device)
    result = validate(model, train_loader, val_loader, device)
    saved = None
    if args.epochs > 0:
        saved = save_model(model, save)
        print(f"saved {saved}")
    return {"model": model, "losses": losses, **result, "saved": saved,
            "synthetic": data["synthetic"]}


if __name__ == "__main__":
    run_cli(main)
