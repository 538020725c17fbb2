"""Chapter 2: Torch Hub, loading a published model by name.  python ch01_intro/hub_note.py

A GitHub repository with a `hubconf.py` at its root publishes entry points; `torch.hub.list`
names them and `torch.hub.load(repo, entry, **kwargs)` downloads the repository (and, when
asked, the weights) into ~/.cache/torch/hub and returns the model. This needs the network, so
the script only explains unless given `--run` (tests never run it):

    python ch01_intro/hub_note.py --run                       # pytorch/vision's resnet18
    python ch01_intro/hub_note.py --run --repo pytorch/vision --entry resnet101

The downloaded torchvision code then runs from the hub cache, which is why this repository
writes its own ResNet-101 (resnet.py) and loads the weights file directly instead.
"""
import argparse

import torch

from common.errors import DataError, one_line, run_cli

EXPLANATION = """\
Torch Hub needs the network: torch.hub.load('{repo}', '{entry}', weights='DEFAULT') fetches
github.com/{repo} (hubconf.py) and the weights into {cache}, then builds the model.
Offline, use the repository's own ResNet-101 instead:
    python -m common.data download resnet101 && python ch01_intro/classify_resnet.py
Run the hub example with: python ch01_intro/hub_note.py --run"""


def hub_load(repo="pytorch/vision", entry="resnet18", weights="DEFAULT"):
    """The hub's entry points and the loaded model, in eval mode (downloads: network needed)."""
    entries = torch.hub.list(repo, trust_repo=True)
    model = torch.hub.load(repo, entry, weights=weights, trust_repo=True)
    return entries, model.eval()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--run", action="store_true", help="really call torch.hub (needs the network)")
    p.add_argument("--repo", default="pytorch/vision", help="GitHub owner/name with a hubconf.py")
    p.add_argument("--entry", default="resnet18", help="entry point in that hubconf.py")
    args = p.parse_args(argv)
    if not args.run:
        text = EXPLANATION.format(repo=args.repo, entry=args.entry, cache=torch.hub.get_dir())
        print(text)
        return text
    try:
        entries, model = hub_load(args.repo, args.entry)
    except Exception as e:      # no network, an unknown repository or entry: one line
        raise DataError(f"torch.hub {args.repo}:{args.entry}: {type(e).__name__}: "
                        f"{one_line(e, 150)}") from None
    n = sum(q.numel() for q in model.parameters())
    print(f"{args.repo}: {len(entries)} entry points; {args.entry}: {n:,} parameters")
    return model


if __name__ == "__main__":
    run_cli(main)
