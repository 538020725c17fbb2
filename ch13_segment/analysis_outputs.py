"""Chapter 14: what the nodule analysis leaves per CT, for a reader and for the field's viewers.

nodule_analysis.py calls `check_outputs(folder, flag)` before the analysis and, per CT,
`write_series_outputs(folder, series_uid, ct, mask, labels, detections, annotations, matches)`,
which writes, each file whole or not at all, in the CT's own origin, spacing and direction:
    <uid>.png                   the picture: an overview of the CT with every finding, then a row
                                per detection that passes the classifier and per missed nodule
    <uid>_candidates.mha        uint16 label volume: voxel value k = detection k-1's component
    <uid>_mask.mha              uint8: 1 where the U-Net's P(nodule voxel) > 0.5
    <uid>_detections.mrk.json   3D Slicer markups: a point per detection (LPS mm), filtered hidden
    <uid>_annotations.mrk.json  the annotated nodules, when the series has any
Load the .mha files over the CT as label maps (3D Slicer, ITK-SNAP) and the .mrk.json into
Slicer. Colours and the lung window are common/figures.py's, shared with vis.py and train_seg.
"""
import functools
import math
import re
from collections import namedtuple
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ch10_luna.dsets import CROP_IRC
from common.ct import HU_MIN, crop_bounds
from common.figures import (
    DETECTED_COLOR,
    FILTERED_COLOR,
    FP_COLOR,
    LABEL_COLOR,
    LUNG_WINDOW_HU,
    MASK_COLOR,
    MISSED_COLOR,
    TP_COLOR,
    add_legend,
    new_figure,
    save_figure,
)
from common.files import atomic_path, check_writable, write_json

NODULE_THRESHOLD = 0.5         # P(nodule) above it passes the classifier (nodule_analysis's)
MAX_ROWS = 6                   # nodule rows in the picture; the rest are counted, not drawn
OVERVIEW_PIXELS = 256          # the overview's projections keep at most this many pixels a side
DPI = 80
PNG_OPTIONS = {"compress_level": 3}    # zlib 3: faster than Pillow's 6, and smaller on these CTs
# Slicer reads any ".../markups-schema-v1.x.y.json#" id; this is the one Slicer itself writes.
MARKUPS_SCHEMA = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/"
                  "Markups/Resources/Schema/markups-schema-v1.0.3.json#")
STATUS_COLOR = {"TP": TP_COLOR, "FP": FP_COLOR, "missed": MISSED_COLOR,
                "filtered": FILTERED_COLOR, "detected": DETECTED_COLOR}
BACKGROUND = (0.08, 0.08, 0.08)                    # dark, as a CT viewer: the colours stand out


# ----------------------------------------------------------------------------- findings
def detection_status(detections, matches, threshold=NODULE_THRESHOLD, scored=True):
    """Per detection: "TP" (passes, matches an annotation), "FP" (passes, matches none) or
    "filtered" (P(nodule) <= threshold); `matches` is the (A, D) bool annotation-detection
    matrix. Not `scored` (a CT without annotations): "detected" for every passing one."""
    matches = np.asarray(matches, dtype=bool)
    matched = matches.any(axis=0) if matches.size else np.zeros(len(detections), dtype=bool)
    return ["filtered" if d.prob_nodule <= threshold else "detected" if not scored else
            "TP" if matched[k] else "FP" for k, d in enumerate(detections)]


def missed_annotations(annotations, detections, matches, threshold=NODULE_THRESHOLD):
    """Indexes of the annotations no passing detection matches (found by the U-Net and
    filtered out by the classifier, or not found at all)."""
    matches = np.asarray(matches, dtype=bool).reshape(len(annotations), len(detections))
    passed = np.array([d.prob_nodule > threshold for d in detections], dtype=bool)
    return [a for a in range(len(annotations)) if not (matches[a] & passed).any()]


def component_diameters_mm(mask, labels, spacing_xyz, which):
    """{detection index: equivalent-sphere diameter in mm} for the detections in `which`.

    The volume is the component's voxels plus the mask voxels one face step around it (what
    the erosion before the grouping took off), times the voxel volume; the diameter is that
    of a sphere of the same volume, (6 V / pi) ** (1/3).
    """
    which = sorted(set(which))
    if not which:
        return {}
    voxel_mm3 = float(np.prod(spacing_xyz))
    cross = ndimage.generate_binary_structure(3, 1)
    boxes = ndimage.find_objects(labels, max_label=max(which) + 1)
    diameters = {}
    for k in which:
        box = boxes[k]
        if box is None:                             # a detection without voxels
            diameters[k] = 0.0
            continue
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
        grown = ndimage.binary_dilation(labels[box] == k + 1, cross) & mask[box]
        volume = float(np.count_nonzero(grown | (labels[box] == k + 1))) * voxel_mm3
        diameters[k] = (6 * volume / math.pi) ** (1 / 3)
    return diameters


def pick_rows(detections, statuses, missed, max_rows=MAX_ROWS):
    """The picture's rows: ("detection", k) for passing detections by P(nodule), highest first,
    then ("annotation", a) for missed nodules; at most `max_rows`, of which up to half are
    missed nodules when both are too many. Returns (rows, detections left out, misses left
    out)."""
    passed = sorted((k for k, s in enumerate(statuses) if s != "filtered"),
                    key=lambda k: -detections[k].prob_nodule)
    n_missed = min(len(missed), max(max_rows - len(passed), max_rows // 2))
    n_passed = min(len(passed), max_rows - n_missed)
    rows = [("detection", k) for k in passed[:n_passed]]
    rows += [("annotation", a) for a in missed[:n_missed]]
    return rows, len(passed) - n_passed, len(missed) - n_missed


# ----------------------------------------------------------------------------- picture
# The picture is drawn on one Axes spanning the figure, in inches (x right, y up): each view is
# an image placed at its true aspect. One Axes per panel would cost most of the drawing time
# (each builds its ticks and spines), and the analysis runs this once per CT.
Panel = namedtuple("Panel", "extent origin to_xy inch_per_mm")


def crop_volume(volume, center_irc, width_irc=CROP_IRC, fill=0):
    """(crop, start_irc): the `width_irc` box around `center_irc` the classifier sees
    (crop_bounds: shifted inside the volume), padded with `fill` where the volume is smaller."""
    bounds = crop_bounds(center_irc, width_irc, volume.shape)
    crop = np.asarray(volume[tuple(slice(a, b) for a, b in bounds)])
    if crop.shape != tuple(width_irc):
        crop = np.pad(crop, [(0, w - s) for w, s in zip(width_irc, crop.shape)],
                      constant_values=fill)
    return crop, tuple(a for a, _ in bounds)


def _place(canvas, image, box, pixel_mm, origin="upper"):
    """Draw (H, W) HU `image` in the lung window centred in `box` (x, y, w, h inches) at its true
    aspect (`pixel_mm`: a pixel's height and width); a Panel maps (row, col) to inches."""
    h, w = image.shape
    scale = min(box[2] / (w * pixel_mm[1]), box[3] / (h * pixel_mm[0]))     # inches per mm
    width, height = w * pixel_mm[1] * scale, h * pixel_mm[0] * scale
    x0, y0 = box[0] + (box[2] - width) / 2, box[1] + (box[3] - height) / 2
    extent = (x0, x0 + width, y0, y0 + height)
    canvas.imshow(image, cmap="gray", clim=LUNG_WINDOW_HU, extent=extent, origin=origin,
                  interpolation="nearest", aspect="auto")
    up = origin == "lower"

    def to_xy(row, col):                       # pixel centres sit at whole (row, col)
        y = (row + 0.5) * height / h
        return x0 + (col + 0.5) * width / w, y0 + y if up else y0 + height - y
    return Panel(extent, origin, to_xy, scale)


def _count(n, noun):
    return f"{n} {noun}" + ("" if n == 1 or noun == "missed" else "s")


def _text(canvas, x, y, text, **kwargs):
    kwargs.setdefault("color", "white")
    kwargs.setdefault("fontsize", 9)
    canvas.text(x, y, text, **kwargs)


def _view(canvas, box, ct, mask, voxel, view, width_irc, title, color, annotations, matched,
          outline=True):
    """One view through voxel `voxel`: `view` 0 axial, 1 coronal, 2 sagittal (head up), the
    `width_irc` box of the CT around it, with the U-Net mask's outline, the classifier's crop
    box, the centre (+) and the annotated nodules `matched` (dashed circles)."""
    from matplotlib.patches import Circle, Rectangle

    width = list(width_irc)
    width[view] = 1
    sub, start = crop_volume(ct.hu, voxel, width, fill=HU_MIN)
    vertical, horizontal = [axis for axis in range(3) if axis != view]
    spacing = ct.spacing_xyz[::-1]                                      # (index, row, col) mm
    panel = _place(canvas, sub.squeeze(view), box, (spacing[vertical], spacing[horizontal]),
                   "upper" if view == 0 else "lower")
    x0, x1, y0, y1 = panel.extent
    _text(canvas, (x0 + x1) / 2, y1 + 0.04, title, ha="center", va="bottom", fontsize=8)
    if outline:
        local_mask = crop_volume(mask, voxel, width)[0].squeeze(view)
        if local_mask.any():
            canvas.contour(local_mask.astype(np.float32), levels=[0.5], colors=[MASK_COLOR],
                           linewidths=1.2, extent=panel.extent, origin=panel.origin)
    bounds = crop_bounds(voxel, CROP_IRC, ct.shape)
    (r0, r1), (c0, c1) = bounds[vertical], bounds[horizontal]
    if (r1 - r0, c1 - c0) != sub.squeeze(view).shape:                # not the crop itself
        corners = [panel.to_xy(r - start[vertical] - 0.5, c - start[horizontal] - 0.5)
                   for r, c in ((r0, c0), (r1, c1))]
        (xa, ya), (xb, yb) = corners
        canvas.add_patch(Rectangle((min(xa, xb), min(ya, yb)), abs(xb - xa), abs(yb - ya),
                                   fill=False, edgecolor=color, linewidth=1.5))
    if outline:                                    # a view zoomed in enough to show the centre
        x, y = panel.to_xy(voxel[vertical] - start[vertical],
                           voxel[horizontal] - start[horizontal])
        canvas.plot([x], [y], marker="+", color=color, markersize=12, markeredgewidth=1.5)
    for a in matched:                                    # the nodule as a sphere of its diameter
        irc = ct.xyz_to_irc(annotations[a].center_xyz, round_to_voxel=False)
        radius = annotations[a].diameter_mm / 2
        off = (irc[view] - voxel[view]) * spacing[view]              # mm off the view's plane
        if abs(off) < radius:
            xy = panel.to_xy(irc[vertical] - start[vertical], irc[horizontal] - start[horizontal])
            canvas.add_patch(Circle(xy, math.sqrt(radius ** 2 - off ** 2) * panel.inch_per_mm,
                                    fill=False, edgecolor=LABEL_COLOR, linewidth=1.5,
                                    linestyle="--"))


def _projected(panel, steps, vertical, horizontal, irc):
    """Canvas inches of voxel `irc` on a projection of the CT subsampled by `steps`."""
    return panel.to_xy(irc[vertical] / steps[vertical], irc[horizontal] / steps[horizontal])


def _overview(canvas, boxes, ct, detections, statuses, annotations, missed, row_of):
    """Mean projections of the CT (a subsampled copy), coronal (head up) and axial, with every
    finding marked and the rows' numbers."""
    steps = [max(1, math.ceil(n / OVERVIEW_PIXELS)) for n in ct.shape]
    small = ct.hu[::steps[0], ::max(steps[1], 2), ::steps[2]]
    steps[1] = max(steps[1], 2)
    spacing = ct.spacing_xyz[::-1]
    views = ((1, "coronal (mean over rows)", "lower"), (0, "axial (mean over slices)", "upper"))
    for box, (axis, title, origin) in zip(boxes, views):
        vertical, horizontal = [a for a in range(3) if a != axis]
        panel = _place(canvas, small.mean(axis=axis), box,
                       (spacing[vertical] * steps[vertical],
                        spacing[horizontal] * steps[horizontal]), origin)
        x0, x1, _, y1 = panel.extent
        _text(canvas, (x0 + x1) / 2, y1 + 0.05, title, ha="center", va="bottom")
        to_xy = functools.partial(_projected, panel, steps, vertical, horizontal)
        filtered = [to_xy(d.center_irc) for d, s in zip(detections, statuses) if s == "filtered"]
        if filtered:
            canvas.scatter(*np.asarray(filtered).T, s=4, color=FILTERED_COLOR, alpha=0.6,
                           linewidths=0)
        marks = [(to_xy(detections[k].center_irc), STATUS_COLOR[s], row_of.get(("detection", k)))
                 for k, s in enumerate(statuses) if s != "filtered"]
        marks += [(to_xy(ct.xyz_to_irc(annotations[a].center_xyz, round_to_voxel=False)),
                   MISSED_COLOR, row_of.get(("annotation", a))) for a in missed]
        if marks:
            xy = np.asarray([m[0] for m in marks])
            canvas.scatter(xy[:, 0], xy[:, 1], s=80, facecolors="none",
                           edgecolors=[m[1] for m in marks], linewidths=1.8)
        for (x, y), color, row in marks:
            if row is not None:
                canvas.annotate(str(row), (x, y), xytext=(7, 3), textcoords="offset points",
                                color=color, fontsize=13, fontweight="bold")


def _row_caption(number, row, ct, detections, statuses, annotations, matches, diameters):
    """(caption, status, centre irc) of one row of the picture."""
    kind, index = row
    if kind == "detection":
        d = detections[index]
        grade = "" if d.prob_malignant is None else f"   P(malignant) {d.prob_malignant:.2f}"
        caption = (f"#{number}  {statuses[index]}   P(nodule) {d.prob_nodule:.3f}{grade}   "
                   f"diameter {diameters.get(index, 0.0):.1f} mm   detection {index + 1}")
        return caption, statuses[index], d.center_irc, d.center_xyz
    a = annotations[index]
    near = np.flatnonzero(matches[index])
    why = (f"the U-Net found it, the classifier gave P(nodule) "
           f"{max(detections[k].prob_nodule for k in near):.3f}" if len(near) else
           "the U-Net did not mark it")
    caption = f"#{number}  missed nodule   annotated diameter {a.diameter_mm:.1f} mm   ({why})"
    return caption, "missed", ct.xyz_to_irc(a.center_xyz, round_to_voxel=False), a.center_xyz


def analysis_figure(ct, mask, labels, detections, annotations, matches, series_uid="", *,
                    threshold=NODULE_THRESHOLD, max_rows=MAX_ROWS, diameters=None):
    """The picture of one analysed CT as a matplotlib Figure (inputs as write_series_outputs):
    a header, an overview with every finding, then a row per shown nodule. `diameters`:
    component_diameters_mm's answer for the shown detections, when the caller has it."""
    scored, annotations = annotations is not None, list(annotations or [])
    matches = np.asarray(matches, dtype=bool).reshape(len(annotations), len(detections))
    statuses = detection_status(detections, matches, threshold, scored)
    missed = missed_annotations(annotations, detections, matches, threshold)
    rows, more_detections, more_missed = pick_rows(detections, statuses, missed, max_rows)
    row_of = {row: n for n, row in enumerate(rows, start=1)}
    if diameters is None:
        diameters = component_diameters_mm(mask, labels, ct.spacing_xyz,
                                           [k for kind, k in rows if kind == "detection"])
    width, header, overview, row_height = 12.0, 0.8, 3.9, 2.75
    height = header + overview + (row_height * len(rows) if rows else 0.9)
    fig = new_figure(figsize=(width, height), facecolor=BACKGROUND)
    canvas = fig.add_axes((0, 0, 1, 1))
    canvas.set_axis_off()

    n_i, n_r, n_c = ct.shape
    sx, sy, sz = ct.spacing_xyz
    passed = len(statuses) - statuses.count("filtered")
    found = (f"{len(annotations) - len(missed)} of {len(annotations)} annotated nodules found"
             if annotations else "no annotated nodule" if scored else
             "no annotations to score the detections")
    score = (f" ({statuses.count('TP')} TP, {statuses.count('FP')} FP)" if scored else "")
    _text(canvas, 0.15, height - 0.12, f"series {series_uid}" if series_uid else "CT",
          fontsize=12, fontweight="bold", va="top")
    _text(canvas, 0.15, height - 0.45,
          f"{n_i} x {n_r} x {n_c} voxels of {sz:.2f} x {sy:.2f} x {sx:.2f} mm (slice x row x "
          f"col).  {len(detections)} candidates, {passed} pass P(nodule) > {threshold:g}"
          f"{score}.  {found}.",
          fontsize=10, va="top")
    top = height - header
    _overview(canvas, [(0.15, top - overview + 0.1, 3.9, overview - 0.45),
                       (4.25, top - overview + 0.1, 3.9, overview - 0.45)],
              ct, detections, statuses, annotations, missed, row_of)
    keys = ("tp", "fp", "missed", "filtered", "label", "mask") if scored else (
        "detected", "filtered", "mask")
    add_legend(canvas, keys, loc="upper left", bbox_to_anchor=(8.45, top - 0.25),
               bbox_transform=canvas.transData, fontsize=10,
               texts={"label": "annotated nodule (dashed)"})
    shown = sum(kind == "detection" for kind, _ in rows)
    notes = []
    if shown:
        notes.append(f"rows: the {_count(shown, 'most probable detection')}"
                     + ("," if len(rows) > shown else ""))
    if len(rows) > shown:
        notes.append(f"{'then ' if shown else 'rows: '}{_count(len(rows) - shown, 'missed')}")
    if more_detections or more_missed:
        notes.append(f"not shown: {_count(more_detections, 'detection')}, {more_missed} missed")
    notes += ["+: the centre", f"box: the classifier's {'x'.join(map(str, CROP_IRC))} crop"]
    _text(canvas, 8.5, top - overview + 0.15, "\n".join(notes), va="bottom")
    if not rows:
        _text(canvas, width / 2, 0.45, "no detections: " + (
            f"none of the {len(detections)} candidates passes P(nodule) > {threshold:g}"
            if detections else "the U-Net marked no candidate"), fontsize=14, ha="center",
            va="center")
    field_mm = max(w * s for w, s in zip(CROP_IRC, ct.spacing_xyz[::-1]))
    # the same mm on every axis, never more voxels than the CT has: an axis whose step is
    # thousands of times finer than another's would otherwise ask for a view of gigabytes
    field = [min(n, max(1, math.ceil(field_mm / s))) for s, n in zip(ct.spacing_xyz[::-1],
                                                                       ct.shape)]
    for n, row in enumerate(rows, start=1):
        top = height - header - overview - (n - 1) * row_height
        caption, status, center, xyz = _row_caption(n, row, ct, detections, statuses,
                                                    annotations, matches, diameters)
        color = STATUS_COLOR[status]
        _text(canvas, 0.15, top - 0.08, caption + "   xyz (" + ", ".join(
            f"{v:.1f}" for v in xyz) + ") mm", color=color, fontsize=10, fontweight="bold",
            va="top")
        voxel = [int(round(min(max(c, 0), s - 1))) for c, s in zip(center, ct.shape)]
        matched = (list(np.flatnonzero(matches[:, row[1]])) if row[0] == "detection"
                   else [row[1]])
        box_y, box_h = top - row_height + 0.1, row_height - 0.75
        views = ((0, (1, n_r, n_c), f"axial slice {voxel[0]}", False),
                 (0, CROP_IRC, "the classifier's crop: axial", True),
                 (1, field, f"coronal, {field_mm:.0f} mm", True),
                 (2, field, f"sagittal, {field_mm:.0f} mm", True))
        for p, (view, width_irc, title, outline) in enumerate(views):
            _view(canvas, (0.15 + 2.95 * p, box_y, 2.8, box_h), ct, mask, voxel, view,
                  width_irc, title, color, annotations, matched, outline)
    canvas.set_xlim(0, width)
    canvas.set_ylim(0, height)
    return fig


# ----------------------------------------------------------------------------- viewers' files
def label_image(volume, ct):
    """A SimpleITK image of an (I, R, C) array in the CT's origin, spacing and direction."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume))
    image.SetOrigin(tuple(map(float, ct.origin_xyz)))
    image.SetSpacing(tuple(map(float, ct.spacing_xyz)))
    image.SetDirection(tuple(float(v) for v in np.asarray(ct.direction).ravel()))
    return image


def write_image(path, image, what):
    """A SimpleITK image to `path` (compressed; the format from the suffix) through the
    atomic writer."""
    with atomic_path(path, what, write_errors=(RuntimeError,)) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return Path(path)


def candidates_volume(labels):
    """The components as the label volume's voxels: uint16 (uint32 past 65,535 candidates)."""
    dtype = np.uint16 if int(labels.max(initial=0)) <= np.iinfo(np.uint16).max else np.uint32
    return np.asarray(labels).astype(dtype, copy=False)


def _point(number, label, description, xyz, visible=True):
    return {"id": str(number), "label": label, "description": description,
            "position": [float(v) for v in xyz], "visibility": bool(visible), "locked": True,
            "positionStatus": "defined"}


def markups_document(name, points):
    """A 3D Slicer markups file's JSON: one point list ("Fiducial") named `name` in LPS mm."""
    return {"@schema": MARKUPS_SCHEMA,
            "markups": [{"type": "Fiducial", "name": name, "coordinateSystem": "LPS",
                         "coordinateUnits": "mm", "locked": True, "labelFormat": "%N-%d",
                         "controlPoints": points}]}


def detection_points(detections, statuses, diameters):
    """One markups point per detection, in detection order (id k+1 = the label volume's k+1):
    label "<k+1> <status> P=<P(nodule)>[ M=<P(malignant)>]"; the filtered-out ones hidden."""
    points = []
    for k, (d, status) in enumerate(zip(detections, statuses)):
        grade = "" if d.prob_malignant is None else f" M={d.prob_malignant:.2f}"
        size = f", diameter {diameters[k]:.1f} mm" if k in diameters else ""
        points.append(_point(
            k + 1, f"{k + 1} {status} P={d.prob_nodule:.2f}{grade}",
            f"detection {k + 1}: {status}, P(nodule) {d.prob_nodule:.4f}"
            + ("" if d.prob_malignant is None else f", P(malignant) {d.prob_malignant:.4f}")
            + f"{size}; voxels of value {k + 1} in the candidates volume",
            d.center_xyz, visible=status != "filtered"))
    return points


def annotation_points(annotations, missed):
    points = []
    for a, n in enumerate(annotations):
        found = "missed" if a in missed else "found"
        grade = {None: "", True: ", malignant", False: ", benign"}[n.is_malignant]
        points.append(_point(a + 1, f"a{a + 1} {found} {n.diameter_mm:.1f} mm",
                             f"annotated nodule {a + 1}: {found}, diameter "
                             f"{n.diameter_mm:.1f} mm{grade}", n.center_xyz))
    return points


# ----------------------------------------------------------------------------- entry points
def check_outputs(out_dir, flag="--outputs"):
    """Refuse, before the analysis runs, an output folder that cannot be written (a file in
    the way, a read-only folder): a DataError naming `flag`. Creates nothing."""
    return check_writable(out_dir, f"{flag} folder")


def file_stem(series_uid):
    """`series_uid` as a file name: characters other than letters, digits, '.', '-', '_' -> '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(series_uid)).lstrip(".") or "series"


def write_series_outputs(out_dir, series_uid, ct, mask, labels, detections, annotations,
                         matches, *, png=True, label_volume=True, markups=True,
                         threshold=NODULE_THRESHOLD, max_rows=MAX_ROWS):
    """Write one analysed CT's picture, label volumes and markups into `out_dir` (the module
    docstring lists the files); returns their paths.

    `ct`: the common.ct.Ct analysed; `mask`: (I, R, C) bool, the U-Net's P > 0.5; `labels`:
    (I, R, C) int, the connected components of the eroded mask (0 background, k = detection
    k-1); `detections`: objects with center_xyz, center_irc, prob_nodule, prob_malignant (None
    without a malignancy model); `annotations`: objects with center_xyz, diameter_mm,
    is_malignant (None: a CT nobody annotated, its detections are not scored, where [] says
    it has no nodule); `matches`: (A, D) bool, annotation a matches detection d; `threshold`:
    P(nodule) above it passes the classifier; `max_rows`: nodule rows drawn at most.
    """
    shape = tuple(ct.shape)
    if np.shape(mask) != shape or np.shape(labels) != shape:
        raise ValueError(f"mask {np.shape(mask)} and labels {np.shape(labels)} must have the "
                         f"CT's shape {shape}")
    scored = annotations is not None
    matches = np.asarray(matches, dtype=bool).reshape(len(annotations or []), len(detections))
    mask = np.asarray(mask, dtype=bool)
    out_dir, stem = Path(out_dir), file_stem(series_uid)
    statuses = detection_status(detections, matches, threshold, scored)
    diameters = component_diameters_mm(mask, labels, ct.spacing_xyz,   # one pass over labels
                                       [k for k, s in enumerate(statuses) if s != "filtered"])
    written = []
    if png:
        fig = analysis_figure(ct, mask, labels, detections, annotations, matches, series_uid,
                              threshold=threshold, max_rows=max_rows, diameters=diameters)
        written.append(save_figure(fig, out_dir / f"{stem}.png", dpi=DPI, tight_layout=False,
                                   facecolor=fig.get_facecolor(), pil_kwargs=PNG_OPTIONS))
    if label_volume:
        written.append(write_image(out_dir / f"{stem}_candidates.mha",
                                   label_image(candidates_volume(labels), ct),
                                   "candidates label volume"))
        written.append(write_image(out_dir / f"{stem}_mask.mha",
                                   label_image(mask.view(np.uint8), ct), "mask label volume"))
    if markups:
        written.append(write_json(out_dir / f"{stem}_detections.mrk.json", markups_document(
            "detections", detection_points(detections, statuses, diameters)), "markups",
            indent=None))
        if annotations:
            missed = missed_annotations(annotations, detections, matches, threshold)
            written.append(write_json(out_dir / f"{stem}_annotations.mrk.json", markups_document(
                "annotations", annotation_points(annotations, missed)), "markups", indent=None))
    return written
