"""Chapter 3: which dimension is which? Grayscale by indexing, einsum and dimension names.

    python ch03_tensors/named_tensors.py

The book turns an RGB image (channels, rows, columns) into gray with the weights
(0.2126, 0.7152, 0.0722), first by counting dimensions from the right, then with einsum, then
with named tensors. Named tensors were a prototype and later PyTorch releases dropped them
(torch 2.13 has no `refine_names`). This script uses them when the installed torch has them and
otherwise says so; einsum is the supported way, and `*_by_name` below keeps the names next to
the tensor by hand to show what the named API checked (alignment by name, the mismatch error).
"""
import argparse
import contextlib
import warnings

import torch

from common.errors import run_cli

GRAY_WEIGHTS = (0.2126, 0.7152, 0.0722)             # luminance weights for R, G, B (book ch3)
CHW_NAMES = ("channels", "rows", "columns")


def has_named_tensors():
    """True when the installed torch still has the named-tensor prototype."""
    return hasattr(torch.Tensor, "refine_names")


@contextlib.contextmanager
def quiet_named_tensors():
    """Silence only the named-tensor prototype warning, only inside the block."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Named tensors and all their associated APIs",
                                category=UserWarning)
        yield


def book_images(seed=0):
    """An image (3, 5, 5), a batch (2, 3, 5, 5) and the RGB weights (3,), as in the book."""
    g = torch.Generator().manual_seed(seed)
    img_t = torch.randn(3, 5, 5, generator=g)         # (channels, rows, columns)
    batch_t = torch.randn(2, 3, 5, 5, generator=g)    # (batch, channels, rows, columns)
    return img_t, batch_t, torch.tensor(GRAY_WEIGHTS)


def gray_mean(t):
    """Unweighted gray: average over the channel dim, counted from the right so batches work."""
    return t.mean(-3)


def gray_weighted(t, weights):
    """Weighted gray by broadcasting: weights (3,) -> (3, 1, 1) lines up with (..., 3, H, W)."""
    unsqueezed_weights = weights.unsqueeze(-1).unsqueeze_(-1)
    return (t * unsqueezed_weights).sum(-3)


def gray_einsum(t, weights):
    """The same with einsum: letters name the dims, `...` stands for any leading ones."""
    return torch.einsum("...chw,c->...hw", t, weights)


# --- dimension names kept by hand: what the named-tensor API did, on plain tensors ---

def refine_names(ndim, *names):
    """Names for an `ndim`-dim tensor; a leading `...` fills the leading dims with None."""
    if names and names[0] is Ellipsis:
        names = (None,) * (ndim - len(names) + 1) + names[1:]
    if len(names) != ndim:
        raise ValueError(f"{len(names)} names for a tensor with {ndim} dims")
    return tuple(names)


def align_by_name(t, names, target):
    """View `t` (dims called `names`) with its dims in `target` order, size 1 where it has none."""
    missing = [n for n in names if n not in target]
    if missing:
        raise RuntimeError(f"dims {missing} are not in {list(target)}")
    t = t.permute([names.index(n) for n in target if n in names])
    for i, n in enumerate(target):
        if n not in names:
            t = t.unsqueeze(i)
    return t, tuple(target)


def broadcast_names(names_a, names_b):
    """Names of `a * b`: dims line up from the right and two named dims there must agree."""
    out = []
    for i in range(1, max(len(names_a), len(names_b)) + 1):
        a = names_a[-i] if i <= len(names_a) else None
        b = names_b[-i] if i <= len(names_b) else None
        if a is not None and b is not None and a != b:
            raise RuntimeError(f"Error when attempting to broadcast dims {list(names_a)} and dims "
                               f"{list(names_b)}: dim {a!r} and dim {b!r} are at the same "
                               "position from the right but do not match.")
        out.append(a if a is not None else b)
    return tuple(reversed(out))


def mul_by_name(a, names_a, b, names_b):
    """`a * b` that first checks the names, as named tensors did."""
    names = broadcast_names(names_a, names_b)
    return a * b, names


def sum_by_name(t, names, name):
    """`t.sum(name)`: reduce the dim called `name`; its name goes too."""
    i = names.index(name)
    return t.sum(i), names[:i] + names[i + 1:]


def gray_by_name(t, names, weights):
    """Weighted gray with hand-kept names: align the weights by name, multiply, sum 'channels'."""
    w, w_names = align_by_name(weights, ("channels",), names[-3:])
    product, product_names = mul_by_name(t, names, w, w_names)
    return sum_by_name(product, product_names, "channels")


def named_walkthrough(img_t, batch_t, weights):
    """The book's named-tensor steps with torch's own API; needs a torch that still has it."""
    if not has_named_tensors():
        raise RuntimeError(f"torch {torch.__version__} has no named tensors (a removed prototype)")
    with quiet_named_tensors():
        weights_named = weights.refine_names("channels")
        img_named = img_t.refine_names(..., *CHW_NAMES)
        batch_named = batch_t.refine_names(..., *CHW_NAMES)
        weights_aligned = weights_named.align_as(img_named)
        gray_named = (img_named * weights_aligned).sum("channels")
        # align_as needs every target dim named, so the batch broadcasts with the aligned weights
        batch_gray_named = (batch_named * weights_aligned).sum("channels")
        try:
            (img_named[..., :3] * weights_named).sum("channels")
            mismatch = None
        except RuntimeError as e:
            mismatch = str(e)
        gray_plain = gray_named.rename(None)
        return {"img_names": img_named.names, "batch_names": batch_named.names,
                "aligned_shape": tuple(weights_aligned.shape),
                "aligned_names": weights_aligned.names, "gray_names": gray_named.names,
                "gray": gray_plain, "batch_gray": batch_gray_named.rename(None),
                "plain_names": gray_plain.names, "mismatch": mismatch}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    img_t, batch_t, weights = book_images(args.seed)
    print(f"img_t {tuple(img_t.shape)}, batch_t {tuple(batch_t.shape)}, weights {GRAY_WEIGHTS}")
    print(f"mean over dim -3:      img -> {tuple(gray_mean(img_t).shape)}, "
          f"batch -> {tuple(gray_mean(batch_t).shape)}")
    gray_w, batch_gray_w = gray_weighted(img_t, weights), gray_weighted(batch_t, weights)
    gray_e, batch_gray_e = gray_einsum(img_t, weights), gray_einsum(batch_t, weights)
    unsqueezed = weights.unsqueeze(-1).unsqueeze_(-1)
    print(f"weights.unsqueeze(-1).unsqueeze_(-1) -> {tuple(unsqueezed.shape)}; weighted sum: "
          f"img -> {tuple(gray_w.shape)}, batch -> {tuple(batch_gray_w.shape)}")
    print(f"einsum('...chw,c->...hw'): img -> {tuple(gray_e.shape)}, batch -> "
          f"{tuple(batch_gray_e.shape)}; equal to the weighted sum: "
          f"{torch.allclose(gray_e, gray_w) and torch.allclose(batch_gray_e, batch_gray_w)}")

    result = {"einsum": gray_e, "weighted": gray_w, "named": None}
    if has_named_tensors():
        named = named_walkthrough(img_t, batch_t, weights)
        print(f"named tensors: img {named['img_names']}, batch {named['batch_names']}")
        print(f"  weights.align_as(img) {named['aligned_shape']} {named['aligned_names']}; "
              f"sum('channels') -> {named['gray_names']}; rename(None) -> {named['plain_names']}")
        print(f"  img[..., :3] * weights -> RuntimeError: {named['mismatch']}")
        result["named"] = named
    else:
        print(f"named tensors: not in torch {torch.__version__} (a prototype, since removed);"
              " einsum above is the supported way.")
        print("The book's named-tensor checks with the names kept by hand:")
    img_names = refine_names(img_t.dim(), ..., *CHW_NAMES)
    batch_names = refine_names(batch_t.dim(), ..., *CHW_NAMES)
    aligned, aligned_names = align_by_name(weights, ("channels",), img_names)
    gray_n, gray_names = gray_by_name(img_t, img_names, weights)
    batch_gray_n, _ = gray_by_name(batch_t, batch_names, weights)
    print(f"  img {img_names}, batch {batch_names}")
    print(f"  weights aligned to img: {tuple(aligned.shape)} {aligned_names}")
    print(f"  sum over 'channels' -> {tuple(gray_n.shape)} {gray_names}; equal to einsum: "
          f"{torch.allclose(gray_n, gray_e) and torch.allclose(batch_gray_n, batch_gray_e)}")
    try:
        mul_by_name(img_t[..., :3], img_names, weights, ("channels",))
    except RuntimeError as e:
        print(f"  img[..., :3] * weights -> RuntimeError: {e}")
    result["by_name"] = gray_n
    return result


if __name__ == "__main__":
    run_cli(main)
