"""Chapter 12: data augmentation of whole batches on the training device.

One random affine transform per sample (flip, offset, scale, rotation about the head-foot axis),
applied with `affine_grid`/`grid_sample`, then Gaussian noise. Works on 3-D crops (N, C, I, R, C)
and 2-D slices (N, C, R, C); a label batch can be resampled alongside (chapter 13).

Coordinates are grid_sample's normalized ones: -1..1 across each axis, x = column, y = row,
z = index. An output voxel at p samples the input at A @ p + t, so `offset` t = +0.1 moves the
image content by -0.1 (5% of the width) along that axis. The translation goes in the last column
of the (d, d+1) matrix; the book's chapter 13/14 code put it in a row, so there it did nothing.
"""
import argparse
import itertools
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentSpec:
    """Magnitudes; the book's values are what `--augmented` turns on."""
    flip: bool = False
    offset: float = 0.0         # fraction of the half-width (normalized units), uniform +-offset
    scale: float = 0.0          # uniform factor 1 +- scale per axis
    rotate: bool = False        # uniform angle about the head-foot axis (in the row/col plane)
    noise: float = 0.0          # std of Gaussian noise added after resampling, in HU

    @property
    def active(self):
        return self.flip or self.offset or self.scale or self.rotate or self.noise


BOOK_AUGMENTATION = AugmentSpec(flip=True, offset=0.1, scale=0.2, rotate=True, noise=25.0)
AUGMENTATIONS = ("flip", "offset", "scale", "rotate", "noise")


def augment_parser(magnitudes=BOOK_AUGMENTATION, rotate_help="about the head-foot axis"):
    """--augmented and --augment-{flip,offset,scale,rotate,noise}, collected in `augment` (a
    parent parser); `magnitudes` are what each flag turns on (and what the help says)."""
    m = magnitudes
    helps = {"flip": "mirror each axis at random", "offset": f"+-{m.offset:g} of the half-width",
             "scale": f"+-{m.scale:.0%}%", "rotate": rotate_help,
             "noise": f"Gaussian, std {m.noise:g} HU"}
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--augmented", dest="augment", action="append_const", const="all",
                   help="every augmentation below")
    for name in AUGMENTATIONS:
        p.add_argument(f"--augment-{name}", dest="augment", action="append_const", const=name,
                       help=helps[name])
    return p


def augment_spec(magnitudes, names):
    """The AugmentSpec with the augmentations in `names` at `magnitudes` ('all': every one)."""
    names = set(AUGMENTATIONS) if "all" in set(names or ()) else set(names or ())
    off = AugmentSpec()
    return replace(magnitudes, **{n: getattr(off, n) for n in AUGMENTATIONS if n not in names})


def random_affine(n, spatial_dims, spec, generator=None, device="cpu"):
    """(n, d, d+1) matrices for affine_grid; axes in grid order (x=col, y=row[, z=index])."""
    d = spatial_dims
    if generator is not None and generator.device.type != "cpu":
        # The matrices are drawn on the CPU: drawing them on the GPU and reading them back
        # would wait for the device up to four times per batch. initial_seed() is host-side.
        generator = torch.Generator().manual_seed(generator.initial_seed())
    u = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    linear = torch.eye(d).repeat(n, 1, 1)
    if spec.flip:
        signs = torch.where(u(n, d) > 0.5, -1.0, 1.0)
        linear = linear * signs[:, None, :]
    if spec.scale:
        linear = linear * (1 + spec.scale * (2 * u(n, d) - 1))[:, None, :]
    if spec.rotate:
        angle = u(n) * 2 * math.pi
        rot = torch.eye(d).repeat(n, 1, 1)
        c, s = torch.cos(angle), torch.sin(angle)
        rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1] = c, -s, s, c   # x-y plane
        linear = rot @ linear
    translation = spec.offset * (2 * u(n, d) - 1) if spec.offset else torch.zeros(n, d)
    theta = torch.cat([linear, translation[:, :, None]], dim=2)
    if torch.device(device).type == "cuda":
        theta = theta.pin_memory()                  # so the copy below does not wait either
    return theta.to(device, non_blocking=True)


def apply_affine(x, theta, mode="bilinear"):
    """Resample a batch through per-sample matrices; edge values fill what comes from outside."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)


def augment_batch(x, spec, generator=None, label=None):
    """Augment a batch on its own device; returns x (and the resampled label, thresholded)."""
    if not spec.active:
        return x if label is None else (x, label)
    n, spatial_dims = x.shape[0], x.dim() - 2
    theta = random_affine(n, spatial_dims, spec, generator, x.device)
    x = apply_affine(x, theta)
    if spec.noise:
        # On the batch's device: the generator must live there too (torch.Generator(device)).
        x = x + torch.randn(x.shape, generator=generator, device=x.device) * spec.noise
    if label is None:
        return x
    label = apply_affine(label.to(x.dtype), theta) > 0.5
    return x, label


def batch_augmenter(spec, seed, epoch, rank=0, first_batch=0):
    """What a training loop calls on each batch, `augment(x)` or `augment(x, label)`: the
    transforms of `spec` drawn from a generator seeded by (seed, epoch, rank, batch number), so
    that a run resumed at `first_batch`, or split over processes, draws what an uninterrupted
    one would. None when `spec` turns nothing on."""
    if not spec.active:
        return None
    base, batch = (seed * 10_007 + epoch) * 64 + rank, itertools.count(first_batch)

    def augment(x, label=None):
        generator = torch.Generator(device=x.device).manual_seed(base * 1_000_003 + next(batch))
        return augment_batch(x, spec, generator, label)
    return augment
