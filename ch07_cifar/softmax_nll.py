"""Chapter 7: softmax and the negative log-likelihood loss from scratch, against torch's versions.

    python ch07_cifar/softmax_nll.py

Prints softmax of (1, 2, 3), checks it against nn.Softmax(dim=1), shows why the stable form
subtracts the maximum, checks CrossEntropyLoss(logits) == NLLLoss(log_softmax(logits)), and writes
runs/ch07/nll_vs_mse.png in the repository: both losses as the predicted probability of the right
class goes from 1 to 0. NLL keeps climbing for confident wrong answers; MSE flattens out and
barely pushes back.
"""
import argparse

import torch
from torch import nn

from common.errors import run_cli
from common.figures import new_figure, save_figure
from common.files import check_writable, runs_dir


def softmax_naive(x, dim=-1):
    """exp(x) / sum(exp(x)), the textbook form: overflows to nan for inputs around 100 and up."""
    exp = torch.exp(x)
    return exp / exp.sum(dim=dim, keepdim=True)


def softmax(x, dim=-1):
    """The same probabilities, computed after subtracting the maximum, which cancels out."""
    exp = torch.exp(x - x.amax(dim=dim, keepdim=True))
    return exp / exp.sum(dim=dim, keepdim=True)


def log_softmax(x, dim=-1):
    """log(softmax(x)) without taking the log of a rounded-to-zero probability."""
    shifted = x - x.amax(dim=dim, keepdim=True)
    return shifted - shifted.exp().sum(dim=dim, keepdim=True).log()


def nll(log_probs, target):
    """Mean of -log p(right class) over the batch (nn.NLLLoss's default)."""
    return -log_probs[torch.arange(len(target)), target].mean()


def loss_curves(n=101):
    """p(right class) from 1 to 0 and the NLL and MSE (one-hot target, two classes) it costs."""
    p = torch.linspace(1, 0, n)
    probs = torch.stack([p, 1 - p], dim=1)                  # class 0 is the right one
    target_one_hot = torch.tensor([1.0, 0.0])
    mse = ((probs - target_one_hot) ** 2).sum(dim=1)        # = 2 (1 - p)^2
    nll_loss = -torch.log(p.clamp_min(1e-4))                # clamp: -log 0 is infinite
    return p, nll_loss, mse


def plot_losses(path):
    """NLL vs MSE against p(right class), as a PNG."""
    p, nll_loss, mse = loss_curves()
    fig = new_figure(figsize=(5, 3.5))
    ax = fig.subplots()
    ax.plot(p, nll_loss, label="NLL  -log p")
    ax.plot(p, mse, label="MSE on one-hot (2 classes)")
    ax.set_xlabel("predicted probability of the right class")
    ax.set_ylabel("loss")
    ax.set_ylim(0, 5)
    ax.invert_xaxis()
    ax.legend()
    ax.set_title("Confident wrong answers: NLL keeps growing")
    return save_figure(fig, path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default=str(runs_dir("ch07")),
                   help="folder for the PNG (default: %(default)s)")
    args = p.parse_args(argv)
    out = check_writable(args.out, "--out")      # made by the first write, not before

    x = torch.tensor([1.0, 2.0, 3.0])
    probs = softmax(x)
    print("softmax(1, 2, 3) =", [round(v, 4) for v in probs.tolist()], " sum", float(probs.sum()))
    batch = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    print("nn.Softmax(dim=1) agrees:", torch.allclose(nn.Softmax(dim=1)(batch), softmax(batch, 1)))
    big = torch.tensor([1000.0, 1001.0])
    print("large inputs: naive", softmax_naive(big).tolist(), " stable", softmax(big).tolist())

    torch.manual_seed(0)
    logits, target = torch.randn(8, 2), torch.randint(0, 2, (8,))
    ce = nn.CrossEntropyLoss()(logits, target)
    nll_of_log_softmax = nn.NLLLoss()(nn.LogSoftmax(dim=1)(logits), target)
    ours = nll(log_softmax(logits, dim=1), target)
    print(f"CrossEntropyLoss {ce:.6f} = NLLLoss(LogSoftmax) {nll_of_log_softmax:.6f}"
          f" = ours {ours:.6f}")

    for right in (0.9, 0.1, 0.01):
        print(f"p(right class) {right:>4}: NLL {-torch.log(torch.tensor(right)):.3f}, "
              f"MSE {2 * (1 - right) ** 2:.3f}")
    png = plot_losses(out / "nll_vs_mse.png")
    print(f"wrote {png}")
    return {"softmax": probs, "ce": float(ce), "nll": float(nll_of_log_softmax),
            "ours": float(ours), "png": png}


if __name__ == "__main__":
    run_cli(main)
