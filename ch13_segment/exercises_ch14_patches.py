"""Chapter 14's exercises 14.4 and 14.5: the U-Net's loss at the slice's edges, and the whole CT
classified in overlapping patches against the segmentation. Run them through exercises_ch14.py:

    python ch13_segment/exercises_ch14.py --exercise 4 --edge-width 8
    python ch13_segment/exercises_ch14.py --exercise 5 --stride 16,24,24 --patch-cts 3

14.4 compares, per validation slice, the per-pixel loss (|P - label|, the U-Net's soft error,
pixel by pixel the numerator of the Dice loss) within --edge-width pixels of the border with the
rest, and then the same pixels predicted from 64x64 crops (the training size, where the crop's
border is close) and from the whole slice (where they are inside). 14.5 classifies every
32x48x48 patch of a grid with a step below the patch size, groups the patches above the
threshold into detections and scores both approaches with the analysis' own matching
(match_and_score). PNGs in --out.
"""
import time

import numpy as np
import torch
from scipy import ndimage
from tqdm import tqdm

from ch10_luna.dsets import CROP_IRC, validation_uids
from ch13_segment import precision as prec
from ch13_segment.dsets import (
    Luna2dSegmentationDataset,
    annotation_centers,
    load_masks,
)
from ch13_segment.nodule_analysis import (
    BENIGN,
    NODULE_THRESHOLD,
    SEG_THRESHOLD,
    Detection,
    analyze_series,
    classify,
    match_and_score,
    match_detections,
    read_ct,
    read_nodules,
)
from common.figures import (
    FP_COLOR,
    LABEL_COLOR,
    MASK_COLOR,
    TP_COLOR,
    add_legend,
    new_figure,
    save_figure,
    show_ct,
)

EDGE_WIDTH = 8                 # px: 14.4's edge band (the book's U-Net sees ~25 px each way)
TRAIN_CROP = 64                # px: chapter 13's training crops
CROP_STEP = 32                 # px between 14.4's crops of a slice
BOOTSTRAP = 1000               # resamples of the slices for the intervals
PATCH_IRC = CROP_IRC           # 14.5's patches: the classifier's 32x48x48 crop
DEFAULT_STRIDES = ((16, 24, 24), (8, 12, 12))      # half and a quarter of the patch


def bar(iterable, desc, total=None):
    """A progress bar with its ETA on stderr, gone when done."""
    return tqdm(iterable, desc=desc, total=total, leave=False, mininterval=2.0,
                dynamic_ncols=True)


def table_scores(table, n_cts):
    """Found nodules, recall, false positives (per CT) and F1 of an analysis' 3x4 table."""
    found, nodules = int(table[1:, BENIGN:].sum()), int(table[1:].sum())
    fp = int(table[0, BENIGN:].sum())
    return {"found": found, "nodules": nodules, "recall": found / nodules if nodules else 0.0,
            "fp": fp, "fp_per_ct": fp / n_cts if n_cts else 0.0,
            "f1": 2 * found / (found + fp + nodules) if found + fp + nodules else 0.0}


# ----------------------------------------------------------------------------- 14.4
def border_distance(shape):
    """(H, W) int: each pixel's distance in pixels to the nearest border (0 on the border)."""
    rows, cols = np.indices(shape)
    return np.minimum.reduce([rows, cols, shape[0] - 1 - rows, shape[1] - 1 - cols])


def edge_band(shape, width):
    """(H, W) bool: True for the pixels less than `width` pixels from the border."""
    return border_distance(shape) < width


def region_means(values, band):
    """(mean over the band, mean over the rest); NaN for an empty region."""
    values, band = np.asarray(values), np.asarray(band, dtype=bool)
    mean = lambda v: float(v.mean()) if v.size else float("nan")  # noqa: E731
    return mean(values[band]), mean(values[~band])


def pixel_loss(pred, label):
    """Per-pixel loss |P - label|, same shape: for a 0/1 label, P + label - 2 P label, the
    pixel's share of the Dice loss's numerator (1 - Dice = sum |P - label| / (sum P + sum
    label)): its soft false positive or false negative, in [0, 1]."""
    return (pred.float() - label.float()).abs()


def crop_starts(size, crop=TRAIN_CROP, step=CROP_STEP):
    """Crop origins along an axis: every `step`, the last one flush with the end."""
    last = max(size - crop, 0)
    starts = list(range(0, last + 1, step))
    return starts + ([last] if starts[-1] != last else [])


def bootstrap_interval(values_by_slice, seed=0, n=BOOTSTRAP):
    """95% interval of the mean of the pooled values, resampling whole slices."""
    rng = np.random.default_rng(seed)
    sums = np.array([np.sum(v) for v in values_by_slice])
    counts = np.array([len(v) for v in values_by_slice])
    picks = rng.integers(0, len(sums), size=(n, len(sums)))
    means = sums[picks].sum(axis=1) / np.maximum(counts[picks].sum(axis=1), 1)
    return tuple(float(v) for v in np.percentile(means, [2.5, 97.5]))


def edge_losses(seg_run, dataset, width, device="cpu"):
    """Per validation slice: the whole slice's loss map, and per 64x64 crop the loss map from
    the crop alone and its difference from the whole slice's at the same pixels."""
    slices = []
    for i in bar(range(len(dataset)), "slices"):
        x, label, *_ = dataset[i]                          # (7, H, W) HU, (1, H, W) bool
        x, label = x.to(device), label.to(device)
        full = pixel_loss(seg_run(x[None])[0, 0], label[0]).cpu()       # (H, W)
        boxes = [(r, c) for r in crop_starts(x.shape[1]) for c in crop_starts(x.shape[2])]
        crops = torch.stack([x[:, r:r + TRAIN_CROP, c:c + TRAIN_CROP] for r, c in boxes])
        labels = torch.stack([label[0, r:r + TRAIN_CROP, c:c + TRAIN_CROP] for r, c in boxes])
        crop_loss = pixel_loss(seg_run(crops)[:, 0], labels).cpu()      # (K, 64, 64)
        inside = torch.stack([full[r:r + TRAIN_CROP, c:c + TRAIN_CROP] for r, c in boxes])
        hu = region_means(x[dataset.context].cpu().numpy(), edge_band(x.shape[1:], width))
        slices.append({"full": full.numpy(), "crop": crop_loss.numpy(),
                       "delta": (crop_loss - inside).numpy(), "hu": hu})
    return slices


def exercise_4(luna, seg, cache_dir, width=EDGE_WIDTH, device="cpu", seed=0, out=None,
               val_stride=10, fold=None):
    """14.4: the segmentation loss within `width` pixels of the border against the interior,
    on whole validation slices and on 64x64 crops of them (the same pixels from the whole
    slice), with bootstrap intervals over slices; the loss maps as a PNG."""
    val_uids = validation_uids(luna.series, val_stride, fold)
    val_paths = {uid: luna.series[uid] for uid in val_uids}
    masks = load_masks(val_paths, annotation_centers(luna), cache_dir, progress=False)
    dataset = Luna2dSegmentationDataset(val_uids, luna.series, masks)
    slices = edge_losses(prec.prepare(seg, "fp32"), dataset, width, device)
    # whole slices: per slice, edge mean - interior mean (paired)
    whole = np.array([region_means(s["full"], edge_band(s["full"].shape, width))
                      for s in slices])
    paired = whole[:, 0] - whole[:, 1]
    band = edge_band((TRAIN_CROP, TRAIN_CROP), width)
    crop_edge = [s["crop"][:, band].ravel() for s in slices]
    crop_inner = [s["crop"][:, ~band].ravel() for s in slices]
    delta_edge = [s["delta"][:, band].ravel() for s in slices]
    delta_inner = [s["delta"][:, ~band].ravel() for s in slices]
    edge_minus_inner = [np.array([s["crop"][:, band].mean() - s["crop"][:, ~band].mean()])
                        for s in slices]                # per slice, over its crops
    distance = border_distance((TRAIN_CROP, TRAIN_CROP))
    profile = {name: [float(np.mean([s[name][:, distance == d].mean() for s in slices]))
                      for d in range(TRAIN_CROP // 2)] for name in ("crop", "delta")}
    answer = {
        "slices": len(slices), "crops": sum(len(s["crop"]) for s in slices), "width": width,
        "whole": {"edge": float(whole[:, 0].mean()), "interior": float(whole[:, 1].mean()),
                  "diff": float(paired.mean()), "sd": float(paired.std(ddof=1))
                  if len(paired) > 1 else 0.0,
                  "ci": bootstrap_interval([[d] for d in paired], seed),
                  "edge_higher": int((paired > 0).sum()),
                  "hu": tuple(float(np.mean([s["hu"][k] for s in slices])) for k in (0, 1))},
        "crops_loss": {"edge": float(np.concatenate(crop_edge).mean()),
                       "interior": float(np.concatenate(crop_inner).mean()),
                       "ci": bootstrap_interval(edge_minus_inner, seed)},
        "context": {"edge": float(np.concatenate(delta_edge).mean()),
                    "interior": float(np.concatenate(delta_inner).mean()),
                    "ci_edge": bootstrap_interval(delta_edge, seed),
                    "ci_interior": bootstrap_interval(delta_inner, seed)},
        "profile": profile, "png": None}
    if out is not None:
        answer["png"] = save_figure(edge_figure(slices, width, profile), out /
                                    "ex14_4_edge_loss.png")
    return answer


def edge_figure(slices, width, profile):
    """Mean loss maps (whole slices, crops), the crops' loss added by the missing context, and
    the profiles against the distance to the border."""
    shapes = [s["full"].shape for s in slices]
    common = max(set(shapes), key=shapes.count)             # slices of the usual size
    maps = [("mean loss, whole slices", np.mean([s["full"] for s in slices
                                                 if s["full"].shape == common], axis=0)),
            ("mean loss, 64x64 crops", np.concatenate([s["crop"] for s in slices]).mean(0)),
            ("crop - whole slice, same pixels",
             np.concatenate([s["delta"] for s in slices]).mean(0))]
    fig = new_figure(figsize=(16, 4.2))
    axes = fig.subplots(1, 4)
    for ax, (title, image) in zip(axes, maps):
        diverging = title.startswith("crop -")
        limit = float(np.abs(image).max()) or 1.0
        shown = ax.imshow(image, cmap="RdBu_r" if diverging else "magma",
                          vmin=-limit if diverging else 0, vmax=limit, interpolation="nearest")
        h, w = image.shape
        ax.add_patch(_rectangle(width, h, w))
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(shown, ax=ax, fraction=0.046, label="|P - label| per pixel")
    ax = axes[3]
    d = np.arange(len(profile["crop"]))
    ax.plot(d, profile["crop"], label="crop loss")
    ax.plot(d, profile["delta"], label="crop - whole slice")
    ax.axvline(width - 0.5, color="gray", linestyle=":", label=f"edge band ({width} px)")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xlabel("distance to the crop's border (px)")
    ax.set_ylabel("mean |P - label| per pixel")
    ax.set_title("64x64 crops, by distance to the border", fontsize=10)
    ax.legend(fontsize=8)
    return fig


def _rectangle(width, h, w):
    from matplotlib.patches import Rectangle

    return Rectangle((width - 0.5, width - 0.5), w - 2 * width, h - 2 * width, fill=False,
                     edgecolor="white", linestyle="--", linewidth=1)


def report_4(a):
    w, c, k, ctx = a["whole"], a["crops_loss"], a["width"], a["context"]
    print(f"  {a['slices']} validation slices holding nodule voxels, {a['crops']} 64x64 crops of "
          f"them (every {CROP_STEP} px); edge: within {k} px of the border; loss: per pixel, "
          "|P - label| (the Dice loss's numerator, pixel by pixel)")
    print(f"  whole slices: edge {w['edge']:.5f}, interior {w['interior']:.5f}; paired per "
          f"slice: edge - interior {w['diff']:+.5f} (sd {w['sd']:.5f}, 95% interval "
          f"{w['ci'][0]:+.5f} .. {w['ci'][1]:+.5f}); edge higher on {w['edge_higher']} of "
          f"{a['slices']} slices")
    print(f"  64x64 crops:  edge {c['edge']:.5f}, interior {c['interior']:.5f} (edge - interior "
          f"per slice, 95% interval {c['ci'][0]:+.5f} .. {c['ci'][1]:+.5f})")
    print(f"  the same pixels, crop alone - whole slice: at the crop's edge {ctx['edge']:+.5f} "
          f"(95% {ctx['ci_edge'][0]:+.5f} .. {ctx['ci_edge'][1]:+.5f}), inside "
          f"{ctx['interior']:+.5f} (95% {ctx['ci_interior'][0]:+.5f} .. "
          f"{ctx['ci_interior'][1]:+.5f})")
    whole_says = ("lower" if w["ci"][1] < 0 else "higher" if w["ci"][0] > 0 else
                  "not measurably different")
    lost = ("raises" if ctx["ci_edge"][0] > 0 else "lowers" if ctx["ci_edge"][1] < 0 else
            "does not measurably change")
    print(f"  -> on whole slices the edge loss is {whole_says} than the interior's, but the "
          f"regions differ: the edge band's mean is {w['hu'][0]:.0f} HU against "
          f"{w['hu'][1]:.0f} HU inside (the border of a CT slice is mostly air outside the "
          f"body). Like for like, cutting the same pixels out as a crop {lost} their loss at "
          "the crop's edge: that is what the padding does (the profile: how far inward)")
    if a["png"]:
        print(f"  loss maps: {a['png']}")


# ----------------------------------------------------------------------------- 14.5
def patch_starts(size, patch, stride):
    """Patch origins along an axis: 0, stride, ... and the last one flush with the end, so
    that every voxel is covered; a single one at 0 when the axis is shorter than the patch."""
    last = max(size - patch, 0)
    starts = list(range(0, last + 1, stride))
    return starts + ([last] if starts[-1] != last else [])


def patch_grid(shape, stride, patch=PATCH_IRC):
    """(nI, nR, nC, 3) int: the irc origin of every patch of the grid."""
    axes = [patch_starts(n, p, s) for n, p, s in zip(shape, patch, stride)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


def patch_detections(ct, starts, probs, threshold=NODULE_THRESHOLD, patch=PATCH_IRC):
    """Patches with P(nodule) above `threshold`, grouped where they touch in the grid (26
    neighbours: overlapping patches), each group a Detection at its P-weighted mean centre."""
    grid = np.asarray(probs, dtype=np.float64).reshape(starts.shape[:3])
    centres = starts + np.asarray(patch) // 2                      # (nI, nR, nC, 3) irc
    groups, count = ndimage.label(grid > threshold, structure=np.ones((3, 3, 3)))
    detections = []
    for k in range(1, count + 1):
        member = groups == k
        weights = grid[member]
        centre = tuple(float(v) for v in (centres[member] * weights[:, None]).sum(0)
                       / weights.sum())
        detections.append(Detection(ct.irc_to_xyz(centre), centre, float(weights.max()), None))
    return detections


def classify_patches(cls_run, ct, stride, device="cpu", batch_size=32):
    """(grid of origins, (N,) P(nodule) per patch): chapter 14's classify on every patch."""
    starts = patch_grid(ct.shape, stride)
    centres = [tuple(int(v) for v in s) for s in (starts + np.asarray(PATCH_IRC) // 2)
               .reshape(-1, 3)]
    probs = np.concatenate([classify(cls_run, ct, centres[i:i + 256], batch_size, device)
                            for i in bar(range(0, len(centres), 256), "patches")])
    return starts, probs


def exercise_5(luna, seg, cls, strides=DEFAULT_STRIDES, n_cts=3, device="cpu", out=None,
               val_stride=10, fold=None):
    """14.5: per validation CT, the analysis (segmentation, candidates, classifier) against
    the patch grid at each stride, both scored by match_and_score; the cost and a PNG."""
    uids = validation_uids(luna.series, val_stride, fold)[:n_cts]
    nodules = read_nodules(luna)
    seg_run, cls_run = prec.prepare(seg, "fp32"), prec.prepare(cls, "fp32")
    rows = {"segmentation": {"table": np.zeros((3, 4), dtype=np.int64), "classified": 0,
                             "seconds": 0.0}}
    rows.update({f"patches {','.join(map(str, s))}": {"table": np.zeros((3, 4), dtype=np.int64),
                                                       "classified": 0, "seconds": 0.0}
                 for s in strides})
    png = None
    for uid in uids:
        annotations = nodules.get(uid, [])
        result = analyze_series(read_ct(luna.series[uid]), (seg_run, cls_run, None), annotations,
                                device)
        seg_row = rows["segmentation"]
        seg_row["table"] += result["table"]
        seg_row["classified"] += len(result["detections"])
        seg_row["seconds"] += sum(result["timing"].values())
        drawn = None
        for stride in strides:
            started = time.perf_counter()
            starts, probs = classify_patches(cls_run, result["ct"], stride, device)
            detections = patch_detections(result["ct"], starts, probs)
            row = rows[f"patches {','.join(map(str, stride))}"]
            row["seconds"] += time.perf_counter() - started
            row["table"] += match_and_score(detections, annotations)
            row["classified"] += len(probs)
            if drawn is None or np.prod(stride) < np.prod(drawn[0]):   # the finest grid
                drawn = (stride, starts, probs, detections)
        if out is not None and png is None:
            png = save_figure(patch_figure(result, drawn), out / "ex14_5_patches.png")
    for row in rows.values():
        row.update(table_scores(row["table"], len(uids)))
    return {"cts": len(uids), "rows": rows, "png": png}


def patch_figure(result, drawn):
    """One CT projected along the head-foot axis: left the segmentation's mask and detections,
    right the patches' max P(nodule) and their detections; annotations on both."""
    ct, annotations = result["ct"], result["annotations"]
    stride, starts, probs, patch_dets = drawn
    hu = ct.hu
    index = (int(round(ct.xyz_to_irc(max(annotations, key=lambda a: a.diameter_mm).center_xyz)[0]))
             if annotations else hu.shape[0] // 2)
    heat = np.zeros(hu.shape[1:], dtype=np.float32)               # max P over patches (R, C)
    for s, p in zip(starts.reshape(-1, 3), probs):
        box = heat[s[1]:s[1] + PATCH_IRC[1], s[2]:s[2] + PATCH_IRC[2]]
        np.maximum(box, p, out=box)
    fig = new_figure(figsize=(11, 5.6))
    axes = fig.subplots(1, 2)
    passing = [d for d in result["detections"] if d.prob_nodule > NODULE_THRESHOLD]
    for ax, title, detections in ((axes[0], "segmentation + classifier", passing),
                                  (axes[1], f"patches, stride {','.join(map(str, stride))}",
                                   patch_dets)):
        show_ct(ax, hu[index])
        if ax is axes[0]:
            ax.contour(result["probs"].max(axis=0) > SEG_THRESHOLD, levels=[0.5],
                       colors=[MASK_COLOR], linewidths=0.7)
        else:
            ax.imshow(np.ma.masked_less(heat, 0.05), cmap="magma", vmin=0, vmax=1, alpha=0.55)
        hits = match_detections(detections, annotations).any(axis=0)
        for d, hit in zip(detections, hits):
            ax.plot(d.center_irc[2], d.center_irc[1], "o", markersize=10, markerfacecolor="none",
                    markeredgewidth=2, markeredgecolor=TP_COLOR if hit else FP_COLOR)
        for a in annotations:
            irc = ct.xyz_to_irc(a.center_xyz, round_to_voxel=False)
            ax.plot(irc[2], irc[1], "+", markersize=12, markeredgewidth=2, color=LABEL_COLOR)
        ax.set_title(f"{title}: {len(detections)} detections", fontsize=10)
    add_legend(fig, ("tp", "fp", "label", "mask"), loc="lower center", ncol=4,
               texts={"label": "annotated nodule (+)"})
    fig.suptitle(f"{result['series_uid']}: slice {index}, every finding projected along the "
                 "head-foot axis", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 0.96))
    return fig


def report_5(a):
    print(f"  {a['cts']} validation CT(s); both scored by match_and_score (distance / diameter "
          "< 0.7); the same classifier")
    print(f"  {'approach':>22} | crops classified per CT | found/nodules  recall  FP/CT  F1 | "
          "s per CT")
    for name, r in a["rows"].items():
        print(f"  {name:>22} | {r['classified'] / a['cts']:23.0f} | {r['found']:6d}/"
              f"{r['nodules']:<6d} {r['recall']:6.3f} {r['fp_per_ct']:6.2f} {r['f1']:.3f} | "
              f"{r['seconds'] / a['cts']:8.2f}")
    seg = a["rows"]["segmentation"]
    best = max((n for n in a["rows"] if n != "segmentation"), key=lambda n: a["rows"][n]["f1"])
    p = a["rows"][best]
    cost = p["classified"] / max(seg["classified"], 1)
    verdict = ("better than" if p["f1"] > seg["f1"] else "as good as" if p["f1"] == seg["f1"]
               else "worse than")
    print(f"  -> the best patch grid ({best}) is {verdict} the segmentation by F1 ({p['f1']:.3f} "
          f"vs {seg['f1']:.3f}), classifying {cost:.1f}x as many crops; a patch's centre is at "
          "best half a step from a nodule's, and small nodules must be matched within 0.7 of "
          "their diameter")
    if a["png"]:
        print(f"  the two on one CT: {a['png']}")
