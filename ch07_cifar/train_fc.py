"""Chapter 7: fully connected classifiers for CIFAR-2 (airplane vs bird), trained by minibatch.

    python ch07_cifar/train_fc.py                  # 3072-512-2, LogSoftmax + NLLLoss, 100 epochs
    python ch07_cifar/train_fc.py --model deep     # 3072-1024-512-128-2, CrossEntropyLoss
    python ch07_cifar/train_fc.py --synthetic --epochs 20
    python ch07_cifar/train_fc.py --epochs 3 --epoch-size 2000   # a quick look at the real data

SGD lr 1e-2, shuffled minibatches of 64, through training_loop (the book's loop, written out
here). On the real CIFAR-2 the book reaches train 0.998 / val 0.821 (fc) and 0.9997 / 0.801
(deep): a big gap, because a fully connected net must learn every object at every position.
"""
import argparse

import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from ch01_intro.resnet import count_parameters
from ch07_cifar.cifar import load_cifar2
from ch07_cifar.synthetic import choose_cifar_dir
from common.data import add_data_dir_argument
from common.device import add_device_argument, pick_device, seed_everything
from common.errors import DataError, require_at_least, run_cli

N_INPUTS = 3 * 32 * 32


def make_model(name="fc"):
    """(model, loss_fn): the book's two fully connected CIFAR-2 models."""
    if name == "fc":             # log-probabilities out, so the loss is NLL
        model = nn.Sequential(nn.Linear(N_INPUTS, 512), nn.Tanh(),
                              nn.Linear(512, 2), nn.LogSoftmax(dim=1))
        return model, nn.NLLLoss()
    if name == "deep":           # logits out: CrossEntropyLoss = LogSoftmax + NLLLoss in one
        model = nn.Sequential(nn.Linear(N_INPUTS, 1024), nn.Tanh(),
                              nn.Linear(1024, 512), nn.Tanh(),
                              nn.Linear(512, 128), nn.Tanh(),
                              nn.Linear(128, 2))
        return model, nn.CrossEntropyLoss()
    raise ValueError(f"unknown model {name!r}: fc or deep")


def make_loaders(train, val, batch_size=64, num_workers=0, device="cpu", epoch_size=None):
    """Training loader (shuffled) and validation loader over lists of (tensor, label).

    epoch_size: train on that many samples per epoch, a fresh random draw each epoch (the
    --epoch-size cap of the LUNA trainers: a 1-minute run on a laptop); None: all of them."""
    pin = torch.device(device).type == "cuda"
    sampler = None
    if epoch_size is not None and epoch_size < len(train):
        sampler = RandomSampler(train, num_samples=epoch_size)
    return (DataLoader(train, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                       num_workers=num_workers, pin_memory=pin),
            DataLoader(val, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                       pin_memory=pin))


def training_loop(n_epochs, optimizer, model, loss_fn, train_loader, device):
    """The book's minibatch loop over shuffled batches of 64; returns each epoch's mean loss,
    printed at epoch 1, every 10th and the last."""
    model.train()
    losses = []
    for epoch in range(1, n_epochs + 1):
        loss_sum, count = torch.zeros((), device=device), 0
        for imgs, labels in train_loader:
            imgs = imgs.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            outputs = model(imgs.view(imgs.shape[0], -1))      # (N, 3, 32, 32) -> (N, 3072) rows
            loss = loss_fn(outputs, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(labels)            # stays on the device: no sync
            count += len(labels)
        losses.append((loss_sum / max(count, 1)).item())
        if epoch == 1 or epoch % 10 == 0 or epoch == n_epochs:
            print(f"Epoch: {epoch}, Loss: {losses[-1]:.6f}")
    return losses


def accuracy(model, loader, device):
    """Fraction of correctly classified samples, in eval mode under no_grad."""
    model.eval()
    correct, total = 0, 0
    with torch.no_grad():
        for imgs, labels in loader:
            imgs, labels = imgs.to(device), labels.to(device)
            predicted = model(imgs.view(imgs.shape[0], -1)).argmax(dim=1)
            correct += int((predicted == labels).sum())
            total += len(labels)
    return correct / max(total, 1)


def add_cifar_arguments(p, epochs=100, lr=1e-2):
    """The flags the CIFAR-2 training scripts of chapters 7 and 8 share."""
    add_data_dir_argument(p)
    add_device_argument(p)
    p.add_argument("--synthetic", action="store_true", help="use the built-in synthetic sample")
    p.add_argument("--epochs", type=int, default=epochs, help="default: %(default)s")
    p.add_argument("--lr", type=float, default=lr, help="SGD learning rate (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="default: %(default)s")
    p.add_argument("--epoch-size", type=int, default=None,
                   help="training samples per epoch, drawn at random each epoch (default: all "
                        "10,000 of CIFAR-2; 2000 with --epochs 3 is a 1-minute CPU run)")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers (default: 0)")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")


def check_cifar_flags(epochs, lr, batch_size, epoch_size, num_workers, least_epochs=1):
    """One line naming the first shared flag with a value training cannot use."""
    for flag, value, least in (("--epochs", epochs, least_epochs), ("--batch-size", batch_size, 1),
                               ("--epoch-size", epoch_size, 1), ("--num-workers", num_workers, 0)):
        require_at_least(flag, value, least)             # epoch_size None: the whole set
    if not lr > 0:
        raise DataError(f"--lr {lr}: must be a positive number")


def prepare(device_name, seed, data_dir=None, synthetic=False, batch_size=64, num_workers=0,
            epoch_size=None):
    """Device, seed, CIFAR-2 loaders and data description from the shared flags' values."""
    device = pick_device(device_name)
    seed_everything(seed)
    cifar_dir, synthetic = choose_cifar_dir(data_dir, synthetic)
    train, val, stats = load_cifar2(cifar_dir)
    train_loader, val_loader = make_loaders(train, val, batch_size, num_workers, device,
                                            epoch_size)
    per_epoch = f" ({epoch_size} per epoch)" if epoch_size and epoch_size < len(train) else ""
    print(f"CIFAR-2 from {cifar_dir}: {len(train)} train{per_epoch}, {len(val)} val; "
          f"device {device}")
    return device, train_loader, val_loader, {"cifar_dir": cifar_dir, "synthetic": synthetic,
                                              **stats}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", choices=("fc", "deep"), default="fc")
    add_cifar_arguments(p)
    args = p.parse_args(argv)
    check_cifar_flags(args.epochs, args.lr, args.batch_size, args.epoch_size, args.num_workers)
    device, train_loader, val_loader, data = prepare(
        args.device, args.seed, args.data_dir, args.synthetic, args.batch_size,
        args.num_workers, args.epoch_size)

    model, loss_fn = make_model(args.model)
    model.to(device)
    print(f"model {args.model}: {count_parameters(model):,} parameters")
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)
    losses = training_loop(args.epochs, optimizer, model, loss_fn, train_loader, device)
    result = {"model": args.model, "params": count_parameters(model), "losses": losses,
              "train": accuracy(model, train_loader, device),
              "val": accuracy(model, val_loader, device), "synthetic": data["synthetic"]}
    print(f"Accuracy: train {result['train']:.4f}, val {result['val']:.4f}")
    return result


if __name__ == "__main__":
    run_cli(main)
