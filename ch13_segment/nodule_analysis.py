"""Chapter 14: the end-to-end nodule analysis: segment, group, classify, grade, score.

    python ch13_segment/nodule_analysis.py --run-validation            # every validation CT
    python ch13_segment/nodule_analysis.py SERIES_UID --json runs/ch13/analysis.json
    python ch13_segment/nodule_analysis.py --list-series               # the series on disk
    python ch13_segment/nodule_analysis.py --run-validation --malignancy-model M.best.state
    torchrun --nproc_per_node 2 ch13_segment/nodule_analysis.py --run-validation   # shared out

Per CT, the book's steps: segment_ct (the U-Net on every slice with its context), clean_mask
(P > 0.5, one erosion), group_candidates (connected components, HU-weighted centres), classify
(a 32x48x48 crop around each centre; an optional second LunaModel grades the nodules) and
match_and_score (the book's 3x4 table). main prepares the networks once (fp32, bf16, int8:
precision.py) and runs analyze_series per CT, each torchrun process on its share (sharing.py).
The default models are the book's published checkpoints (`python -m common.data download
luna-models`); checkpoints trained here load too.
"""
import argparse
import time
from collections import namedtuple
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from ch10_luna.dsets import CROP_IRC, locate_luna, luna_parser, read_annotations
from ch10_luna.runtime import keep_freed_memory, process_group
from ch13_segment import precision as prec
from ch13_segment import sharing
from ch13_segment.analysis_outputs import check_outputs, write_series_outputs
from ch13_segment.dsets import CONTEXT_SLICES, check_context, context_indexes, split_series
from ch13_segment.dsets_cls import read_malignancy_annotations
from ch13_segment.evaluate_luna import write_submission
from ch13_segment.model import BOOK_CLS_MODEL, BOOK_SEG_MODEL, load_model
from common.ct import Ct, load_ct
from common.data import book_file, data_root
from common.device import add_device_argument, pick_device
from common.errors import DataError, run_cli
from common.files import check_writable, runs_dir, write_json

SEG_THRESHOLD = 0.5            # segmentation probability -> mask
NODULE_THRESHOLD = 0.5         # P(nodule) above it passes the classifier
MALIGNANT_THRESHOLD = 0.5      # P(malignant) above it: 'Pred. malignant'
MATCH_RATIO = 0.7              # a detection matches a nodule when distance / diameter < 0.7
EROSION_MAX_SPACING_MM = 1.0   # erode only along axes whose voxel step is at most this
COMPILE_FROM_CTS = 3           # the compiled U-Net repays its loading from 3 CTs a run
PRECISIONS = ("fp32", "bf16", "int8")
# Decisions re-taken in fp32 when the fast model's P lies this close to the threshold: bf16
# moved the book classifier's P by at most 0.025 on a real CT, int8 by up to 0.69 when
# calibrated on the synthetic sample (precision.py's table).
RECHECK_MARGIN = {"bf16": 0.1, "int8": 0.45}
HU_WEIGHT_OFFSET = 1001.0      # centre-of-mass weights HU + 1001: air (-1000 HU) weighs 1
ROWS = ("Non-nodule", "Benign", "Malignant")
COLUMNS = ("Complete miss", "Filtered out", "Pred. benign", "Pred. malignant")
MISS, FILTERED, BENIGN, MALIGNANT = range(4)       # the table's columns

# An annotated nodule (is_malignant is None when only annotations.csv is there) and a detection
# (prob_malignant is None without a malignancy model).
Annotation = namedtuple("Annotation", ["center_xyz", "diameter_mm", "is_malignant"])
Detection = namedtuple("Detection", ["center_xyz", "center_irc", "prob_nodule", "prob_malignant"])


# ----------------------------------------------------------------------------- the pipeline
def segment_ct(model, ct, batch_size=4, device="cpu", context=CONTEXT_SLICES):
    """The book's segmentCt: (I, R, C) float32 P(nodule voxel) for every slice of the CT, each
    slice fed to the U-Net with `context` slices on either side (the edge slices repeated, as
    the training dataset does). `model` is the U-Net prepared for whole slices (precision.py)."""
    check_context(ct.path.stem if ct.path else "CT", ct.shape[0], context)
    hu = torch.from_numpy(ct.hu).to(device)               # the whole CT, moved once
    n_slices = ct.shape[0]
    probs = torch.empty(ct.shape, dtype=torch.float32)
    with torch.inference_mode():
        for start in range(0, n_slices, batch_size):
            index = np.stack([context_indexes(i, n_slices, context)
                              for i in range(start, min(start + batch_size, n_slices))])
            x = hu[torch.from_numpy(index).to(device)]                    # (N, 7, R, C) HU
            probs[start:start + len(index)] = model(x)[:, 0].cpu()        # (N, R, C)
    return probs.numpy()


def erosion_structure(spacing_irc, max_spacing_mm=EROSION_MAX_SPACING_MM):
    """The erosion's 3x3x3 face-neighbour cross, keeping only axes with spacing <= max_spacing_mm.

    One erosion step deletes whatever is under 3 voxels thick along an axis: under 2.1 mm across
    LUNA16's 0.7 mm pixels, below its smallest annotated nodule (3 mm), but under 7.5 mm across
    2.5 mm slices, most of a small nodule. The book eroded along all three axes whatever the
    spacing; here an axis takes part only when its voxels are at most 1 mm, so that a 3 mm
    nodule always survives: LUNA16's rows and columns (0.46-0.98 mm) always, its slices only
    when they are that thin; on the synthetic sample (1.6-1.85 mm pixels, 2-2.5 mm slices) no
    axis, so no erosion, and the classifier alone removes the specks. `inf` gives the book's
    cross; None comes back (no erosion) when no axis qualifies.
    """
    if all(s > max_spacing_mm for s in spacing_irc):
        return None
    structure = ndimage.generate_binary_structure(3, 1)          # the book's cross
    for axis, spacing in enumerate(spacing_irc):
        if spacing > max_spacing_mm:                              # drop that axis' neighbours
            np.moveaxis(structure, axis, 0)[[0, 2]] = False       # a view: writes through
    return structure


def clean_mask(mask, spacing_irc, erosion_max_spacing=EROSION_MAX_SPACING_MM):
    """The book's last step of segmentCt: one binary erosion of the U-Net's mask, removing
    specks and thin bridges (along the axes erosion_structure keeps)."""
    structure = erosion_structure(spacing_irc, erosion_max_spacing)
    return mask if structure is None else ndimage.binary_erosion(mask, structure=structure)


def group_candidates(mask, hu):
    """The book's groupSegmentationOutput: (centres, labels). The face-connected components of
    the cleaned mask are the candidates (`labels`: 0 background, k for candidate k - 1); each
    centre (irc, fractional) is its centre of mass weighted by HU + 1001, as the book's."""
    labels, _count = ndimage.label(mask)
    centers = []            # per component, within its bounding box (the book: whole volume)
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        center = ndimage.center_of_mass(hu[box] + HU_WEIGHT_OFFSET, labels[box], k)
        centers.append(tuple(float(c + b.start) for c, b in zip(center, box)))
    return centers, labels


def classify(model, ct, centers_irc, batch_size=4, device="cpu"):
    """The book's classifyCandidates: P(class 1) of a LunaModel (prepared, or plain in eval
    mode) for the 32x48x48 crop around each centre, as (N,) float32."""
    if not len(centers_irc):
        return np.zeros(0, dtype=np.float32)
    in_memory = Ct(ct.hu, ct.origin_xyz, ct.spacing_xyz, ct.direction)   # crops from RAM
    probs = []
    with torch.inference_mode():
        for start in range(0, len(centers_irc), batch_size):
            crops = np.stack([in_memory.crop_irc(c, CROP_IRC)
                              for c in centers_irc[start:start + batch_size]])
            _logits, p = model(torch.from_numpy(crops).unsqueeze(1).to(device))  # (N, 2)
            probs.append(p[:, 1].float().cpu())
    return torch.cat(probs).numpy()


def match_detections(detections, annotations, ratio=MATCH_RATIO):
    """(A, D) bool: annotation a matches detection d when |xyz_a - xyz_d| / diameter_a < ratio."""
    if not annotations or not detections:
        return np.zeros((len(annotations), len(detections)), dtype=bool)
    truth = np.array([a.center_xyz for a in annotations], dtype=np.float64)
    found = np.array([d.center_xyz for d in detections], dtype=np.float64)
    diameters = np.array([a.diameter_mm for a in annotations], dtype=np.float64)
    distance = np.linalg.norm(truth[:, None] - found[None], axis=-1)
    return distance / diameters[:, None] < ratio


def detection_class(d, nodule_threshold=NODULE_THRESHOLD, malignant_threshold=MALIGNANT_THRESHOLD):
    """The table column a detection falls in: filtered out, pred. benign or pred. malignant."""
    if d.prob_nodule <= nodule_threshold:
        return FILTERED
    if d.prob_malignant is not None and d.prob_malignant > malignant_threshold:
        return MALIGNANT
    return BENIGN


def match_and_score(detections, annotations, nodule_threshold=NODULE_THRESHOLD,
                    malignant_threshold=MALIGNANT_THRESHOLD, ratio=MATCH_RATIO):
    """The book's (3, 4) int table: rows Non-nodule / Benign / Malignant, columns COLUMNS.

    An annotated nodule counts once, in the best column among the detections matching it
    (complete miss when none does); a detection matching no nodule counts in the Non-nodule
    row; a detection matching several nodules counts for each. Annotations without malignancy
    (is_malignant None) go to the Benign row.
    """
    table = np.zeros((3, 4), dtype=np.int64)
    matches = match_detections(detections, annotations, ratio)
    columns = [detection_class(d, nodule_threshold, malignant_threshold) for d in detections]
    for a, row in zip(annotations, matches):
        best = max((columns[j] for j in np.flatnonzero(row)), default=MISS)
        table[2 if a.is_malignant else 1, best] += 1
    for j in np.flatnonzero(~matches.any(axis=0)):
        table[0, columns[j]] += 1
    return table


# ----------------------------------------------------------------------------- data
def read_nodules(luna):
    """series_uid -> [Annotation]: annotations_with_malignancy.csv (chapter 14's reader), else
    annotations.csv (no malignancy)."""
    if luna.malignancy_csv is None:
        return {uid: [Annotation(xyz, d, None) for xyz, d in rows]
                for uid, rows in read_annotations(luna.annotations_csv).items()}
    nodules = {}
    for n in read_malignancy_annotations(luna.malignancy_csv):
        nodules.setdefault(n.series_uid, []).append(Annotation(n.center_xyz, n.diameter_mm,
                                                               n.is_malignant))
    return nodules


def pick_series(luna, series_uid=None, include_train=False, val_stride=10, fold=None):
    """The series to analyse: the one named, or the validation series (and training ones)."""
    if series_uid is not None:
        if series_uid in luna.skipped:
            raise DataError(f"series {series_uid} is unusable: {luna.skipped[series_uid]}")
        if series_uid not in luna.series:
            some = ", ".join(sorted(luna.series)[:3])
            raise DataError(f"series {series_uid} is not on disk under {luna.root} "
                            f"({len(luna.series)} series there, e.g. {some}); list them with: "
                            "python ch13_segment/nodule_analysis.py --list-series"
                            + (" --synthetic" if luna.synthetic else ""))
        return [series_uid]
    train_uids, val_uids = split_series(luna.series, val_stride, fold)
    return sorted(val_uids + train_uids) if include_train else val_uids


@contextmanager
def timed(timing, stage):
    """Adds the block's wall seconds to timing[stage]."""
    started = time.perf_counter()
    yield
    timing[stage] = timing.get(stage, 0.0) + time.perf_counter() - started


def read_ct(path):
    """The book's getCt for the analysis: the CT at `path` with every voxel read once (ct.hu,
    cached on the Ct) and enough slices for the U-Net's context; a DataError names what is
    wrong. main reads the next CT this way while the networks work on this one."""
    ct = load_ct(path)
    check_context(series_name(path), ct.shape[0])
    ct.hu                                     # noqa: B018 (the property reads the voxels)
    return ct


def analyze_series(ct, models, annotations, device="cpu", batch_size=4,
                   erosion_max_spacing=EROSION_MAX_SPACING_MM):
    """The book's main loop for one CT (read by read_ct): segment, group, classify, grade, and
    score against the annotated nodules. `models` are the prepared U-Net, classifier and
    malignancy model (or None). A dict: detections, the table, matches, timings, and the CT,
    the U-Net's (I, R, C) probabilities and the candidates' labels."""
    seg_model, cls_model, mal_model = models
    timing = {}
    with timed(timing, "segmentation"):
        probs = segment_ct(seg_model, ct, batch_size, device)
    with timed(timing, "grouping"):
        mask = probs > SEG_THRESHOLD
        clean = clean_mask(mask, ct.spacing_xyz[::-1], erosion_max_spacing)
        centers_irc, labels = group_candidates(clean, ct.hu)
    with timed(timing, "classification"):
        p_nodule = classify(cls_model, ct, centers_irc, batch_size, device)
        p_mal = ([None] * len(centers_irc) if mal_model is None else
                 classify(mal_model, ct, centers_irc, batch_size, device))
    for flag, model, p in (("--cls-model", cls_model, p_nodule),
                           ("--malignancy-model", mal_model, p_mal)):
        if model is not None and not np.isfinite(np.asarray(p, dtype=np.float64)).all():
            raise DataError(f"{flag}: the model gave a probability that is not a number on "
                            f"series {series_name(ct.path)} (a broken checkpoint?)")
    detections = [Detection(ct.irc_to_xyz(irc), irc, float(pn), None if pm is None else
                            float(pm)) for irc, pn, pm in zip(centers_irc, p_nodule, p_mal)]
    return {"series_uid": series_name(ct.path), "shape": ct.shape,
            "voxels": int(np.prod(ct.shape)), "segmented_voxels": int(mask.sum()),
            "detections": detections, "annotations": annotations,
            "table": match_and_score(detections, annotations),
            "matches": match_detections(detections, annotations), "timing": timing,
            "ct": ct, "probs": probs, "labels": labels}


def series_name(path):
    """A CT's name: a LUNA16 .mhd's series uid (its stem), a DICOM folder's name."""
    path = Path(path)
    return path.name if path.is_dir() else path.stem


def prepare_models(models, precision, seg_precision, device, calibration, batch_size,
                   cache_dir=None, compiled=(False, False), announce=print):
    """The networks as the analysis runs them (precision.prepare): the U-Net at
    `seg_precision`, the classifiers at `precision`, bf16 and int8 classifiers with their
    decisions near the thresholds re-taken in fp32 (precision.Rechecked); `compiled`: whether
    the U-Net and the classifiers (fp32 or bf16) run compiled ahead of time, kept in
    `cache_dir`. `calibration`: precision.calibration_sets' (slices, crops, where) for int8."""
    seg, cls, mal = (None if m is None else m.to(device) for m in models)
    started = time.perf_counter()
    slices, crops, where = calibration if calibration else (None, None, None)
    kept = {"batch_size": batch_size, "cache_dir": cache_dir}
    prepared = [prec.prepare(seg, seg_precision, calibration=slices, compiled=compiled[0],
                             **kept)]
    for model, threshold in ((cls, NODULE_THRESHOLD), (mal, MALIGNANT_THRESHOLD)):
        run = model and prec.prepare(model, precision, calibration=crops,
                                     compiled=compiled[1], **kept)
        if model is not None and precision != "fp32":
            run = prec.Rechecked(run, prec.prepare(model, "fp32"), threshold,
                                 RECHECK_MARGIN[precision])
        prepared.append(run)
    if "int8" in (precision, seg_precision):
        announce(f"int8 models ready in {time.perf_counter() - started:.1f} s (calibrated on "
                 f"{where})")
    return tuple(prepared)


def rechecked(models):
    """How many crops the Rechecked models re-scored in fp32 so far."""
    return sum(getattr(m, "count", 0) for m in models)


# ----------------------------------------------------------------------------- reports
def format_table(table):
    """The book's confusion table as text; the Non-nodule row has no complete misses ('-')."""
    width = max(map(len, COLUMNS)) + 2
    lines = [" " * 12 + "|" + " |".join(c.rjust(width) for c in COLUMNS)]
    for r, name in enumerate(ROWS):
        cells = ["-" if (r, c) == (0, MISS) else str(int(table[r, c])) for c in range(4)]
        lines.append(name.rjust(11) + " |" + " |".join(v.rjust(width) for v in cells))
    return "\n".join(lines)


def series_line(result):
    t, table = result["timing"], result["table"]
    passed = sum(d.prob_nodule > NODULE_THRESHOLD for d in result["detections"])
    found = int(table[1:, BENIGN:].sum())
    rechecked = (f" ({result['rechecked']} near the threshold re-scored in fp32)"
                 if result.get("rechecked") else "")
    return (f"{result['series_uid']}: {result['voxels']:,} voxels, "
            f"{result['segmented_voxels'] / result['voxels']:.2%} segmented, "
            f"{len(result['detections'])} candidates, {passed} pass the classifier{rechecked}; "
            f"{found} of {len(result['annotations'])} annotated nodules detected | "
            f"s: load {t['load']:.2f} segmentation {t['segmentation']:.2f} "
            f"grouping {t['grouping']:.2f} classification {t['classification']:.2f}")


def candidate_record(i, d, result):
    match = next((a for a, hit in zip(result["annotations"], result["matches"][:, i]) if hit),
                 None)
    return {"center_xyz": list(d.center_xyz), "center_irc": list(d.center_irc),
            "prob_nodule": d.prob_nodule, "prob_malignant": d.prob_malignant,
            "matched_annotation": None if match is None else match._asdict()}


def series_record(result, files=()):
    """One analysed CT as plain JSON-ready data: all the merge needs (a rank sends it to rank 0,
    a rerun reads it back), its floats as they are (JSON writes them to round-trip exactly);
    `files`: the outputs written for it, relative to the outputs folder."""
    return {"series_uid": result["series_uid"], "shape": list(result["shape"]),
            "voxels": result["voxels"], "segmented_voxels": result["segmented_voxels"],
            "rechecked": result["rechecked"], "timing": result["timing"],
            "annotations": annotation_rows(result["annotations"]),
            "detections": [[list(d.center_xyz), list(d.center_irc), d.prob_nodule,
                            d.prob_malignant] for d in result["detections"]],
            "table": result["table"].tolist(), "matches": result["matches"].tolist(),
            "files": list(files)}


def still_valid(record, annotations, out):
    """Whether a result kept by an earlier run holds: scored against the same annotations, its
    files all in the outputs folder `out`."""
    return annotation_rows(annotations) == record["annotations"] and all(
        (Path(out) / name).is_file() for name in record["files"])


def annotation_rows(annotations):
    return [[list(a.center_xyz), a.diameter_mm, a.is_malignant] for a in annotations]


def series_result(record):
    """series_record's result back as analyze_series gives it (without the volumes)."""
    annotations = [Annotation(tuple(xyz), d, m) for xyz, d, m in record["annotations"]]
    detections = [Detection(tuple(xyz), tuple(irc), pn, pm)
                  for xyz, irc, pn, pm in record["detections"]]
    return {**record, "shape": tuple(record["shape"]), "annotations": annotations,
            "detections": detections, "table": np.array(record["table"], dtype=np.int64),
            "matches": np.array(record["matches"], dtype=bool).reshape(len(annotations),
                                                                        len(detections))}


def analysis_document(results, table, models, erosion_max_spacing, precision="fp32",
                      seg_precision=None):
    """Every candidate of every series (centres, probabilities, matched annotation), totals and
    settings, as JSON-ready data; `models` maps seg_model / cls_model / malignancy_model to
    their paths (None when absent)."""
    return {**{k: v and str(v) for k, v in models.items()}, "precision": precision,
            "seg_precision": seg_precision or precision,
            "thresholds": {"segmentation": SEG_THRESHOLD, "nodule": NODULE_THRESHOLD,
                           "malignant": MALIGNANT_THRESHOLD, "match_ratio": MATCH_RATIO,
                           "erosion_max_spacing_mm": (erosion_max_spacing if
                                                      np.isfinite(erosion_max_spacing)
                                                      else "inf")},
            "rows": ROWS, "columns": COLUMNS, "table": table.tolist(),
            "series": [{"series_uid": r["series_uid"], "shape": list(r["shape"]),
                        "segmented_voxels": r["segmented_voxels"], "timing_s": r["timing"],
                        "annotations": [a._asdict() for a in r["annotations"]],
                        "candidates": [candidate_record(i, d, r)
                                       for i, d in enumerate(r["detections"])]}
                       for r in results]}


# ----------------------------------------------------------------------------- main
def analysis_parser():
    """Every flag of the analysis (a parent parser: check_fp_rate.py and evaluate_luna.py run
    the analysis with the same flags)."""
    p = argparse.ArgumentParser(add_help=False, parents=[luna_parser()])
    p.add_argument("series_uid", nargs="?", help="the series to analyse")
    p.add_argument("--ct", default=None, metavar="PATH",
                   help="analyse this CT instead (a DICOM folder or a .mhd, e.g. your own "
                        "scan): no annotations, so the detections are not scored")
    p.add_argument("--run-validation", action="store_true",
                   help="analyse every validation series (--val-stride or --fold)")
    p.add_argument("--include-train", action="store_true",
                   help="with --run-validation: the training series too")
    p.add_argument("--list-series", action="store_true", help="print the series on disk")
    p.add_argument("--seg-model", "--segmentation-path", default=None,
                   help=f"U-Net checkpoint (default: the book's {Path(BOOK_SEG_MODEL).name})")
    p.add_argument("--cls-model", "--classification-path", default=None,
                   help=f"nodule classifier (default: the book's {Path(BOOK_CLS_MODEL).name})")
    p.add_argument("--malignancy-model", "--malignancy-path", default=None,
                   help="optional second LunaModel grading benign / malignant")
    p.add_argument("--batch-size", type=int, default=4,
                   help="slices or crops per batch (default: %(default)s, the book's; larger "
                        "batches are no faster on a CPU)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="fp32 (default); bf16: the networks under bf16 autocast; int8: "
                        "statically quantized (CPU), calibrated on the training series. "
                        "Classifier decisions near the threshold are re-taken in fp32")
    p.add_argument("--seg-precision", choices=PRECISIONS, default=None,
                   help="the U-Net's precision, when it should differ from --precision's (on "
                        "this project's CPU the fastest path that keeps fp32's detections is "
                        "--precision int8 --seg-precision bf16: see the README)")
    p.add_argument("--amp", action="store_true", help="the same as --precision bf16")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="run the fp32 and bf16 networks compiled ahead of time by inductor "
                        "with freezing (the same outputs to 1e-7; a first run compiles each for "
                        "seconds and keeps the programs under <data root>/cache/programs). "
                        f"Default: the U-Net in fp32 on a CPU for runs of {COMPILE_FROM_CTS} CTs "
                        "or more, where it measured faster")
    p.add_argument("--erosion-max-spacing", type=float, default=EROSION_MAX_SPACING_MM,
                   metavar="MM", help="erode along the axes whose voxel step is at most this "
                   "(default: %(default)s; inf: every axis, as the book; 0: no erosion)")
    p.add_argument("--json", default=None, help="write every candidate to this file")
    p.add_argument("--submission", default=None, metavar="CSV",
                   help="write every candidate as a LUNA16 submission CSV (evaluate_luna.py "
                        "scores it)")
    p.add_argument("--outputs", default=None, metavar="DIR",
                   help="folder for each CT's picture (<uid>.png), label volumes (.mha) and 3D "
                        "Slicer markups (.mrk.json) (default: runs/ch13/analysis/<time>)")
    p.add_argument("--resume", action="store_true",
                   help="keep each CT's result in <outputs>/results as it finishes, and skip "
                        "the CTs a run with the same settings kept there: rerun the same "
                        "command after a crash or a kill (needs --outputs: the same folder "
                        "each time)")
    for name, what in (("png", "the picture"), ("volumes", "the label volumes"),
                       ("markups", "the markups")):
        p.add_argument(f"--{name}", action=argparse.BooleanOptionalAction, default=True,
                       help=f"write {what} of each CT (default: on)")
    add_device_argument(p)
    return p


def parse_args(argv=None):
    """The analysis' flags, checked: also what argparse cannot express (p.error, exit 2)."""
    p = argparse.ArgumentParser(description=__doc__, parents=[analysis_parser()],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    args = p.parse_args(argv)
    if not args.list_series and [args.series_uid is not None, args.run_validation,
                                 args.ct is not None].count(True) != 1:
        p.error("give a SERIES_UID, --run-validation or --ct (one of them)")
    if args.include_train and not args.run_validation:
        p.error("--include-train goes with --run-validation")
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    if args.resume and not args.outputs:
        p.error("--resume needs --outputs DIR: the folder a rerun finds the finished CTs in "
                "(the default folder is new each run)")
    if np.isnan(args.erosion_max_spacing) or args.erosion_max_spacing < 0:
        p.error("--erosion-max-spacing must be 0 or more (inf: every axis)")
    if args.amp and args.precision not in (None, "bf16"):
        p.error(f"--amp is --precision bf16; it does not go with --precision {args.precision}")
    args.precision = "bf16" if args.amp else args.precision or "fp32"
    args.seg_precision = args.seg_precision or args.precision
    return args


def compile_choice(flag, device, seg_precision, n_cts):
    """(compile the U-Net?, compile the classifiers?): as --compile / --no-compile say; by
    default the U-Net in fp32 on a CPU when the run analyses COMPILE_FROM_CTS CTs or more: the
    one network and precision that measured faster compiled, with the same detections, and only
    once it has repaid loading the compiler and its programs (about 2 s a run; NOTES.md,
    "Compiled inference")."""
    if flag is not None:
        return flag, flag
    return device.type == "cpu" and seg_precision == "fp32" and n_cts >= COMPILE_FROM_CTS, False


def load_models(seg_path, cls_path, mal_path=None):
    """(U-Net, classifier, malignancy model or None) from their checkpoints, in eval mode."""
    seg = load_model(seg_path, "UNetWrapper", "--seg-model")
    slices = seg.input_batchnorm.num_features
    if slices != 2 * CONTEXT_SLICES + 1:
        raise DataError(f"--seg-model {seg_path}: takes {slices} slices; the analysis feeds it "
                        f"{2 * CONTEXT_SLICES + 1} (the book's {CONTEXT_SLICES} on either side)")
    return (seg, load_model(cls_path, "LunaModel", "--cls-model"),
            mal_path and load_model(mal_path, "LunaModel", "--malignancy-model"))


def main(argv=None):
    args = parse_args(argv)
    if args.list_series:
        luna = locate_luna(args.data_dir, args.synthetic)
        val = set(split_series(luna.series, args.val_stride, args.fold)[1])
        for uid in sorted(luna.series):
            print(uid, "validation" if uid in val else "training")
        return {"series": sorted(luna.series)}
    # Everything that can be refused is checked before the sample is generated or a CT read.
    paths = {"seg_model": args.seg_model or book_file(BOOK_SEG_MODEL, args.data_dir,
                                                      "luna-models"),
             "cls_model": args.cls_model or book_file(BOOK_CLS_MODEL, args.data_dir,
                                                      "luna-models"),
             "malignancy_model": args.malignancy_model}
    models = load_models(*paths.values())
    device = pick_device(args.device)
    int8 = "int8" in (args.precision, args.seg_precision)
    if int8 and device.type != "cpu":
        raise DataError(f"--precision int8 runs on the CPU (oneDNN's int8 kernels), not "
                        f"{device.type}; use --precision bf16 there")
    for flag, path in (("--json", args.json), ("--submission", args.submission)):
        if path:
            check_writable(Path(path).parent, f"{flag} folder")
    writes = {"png": args.png, "label_volume": args.volumes, "markups": args.markups}
    out = Path(args.outputs) if args.outputs else runs_dir("ch13") / "analysis" / time.strftime(
        "%Y-%m-%d_%H.%M.%S")
    if any(writes.values()) or args.resume:
        check_outputs(out, "--outputs")
    # Under torchrun each process analyses its share of the CTs and rank 0 merges; alone, it
    # is rank 0 of 1 (sharing.py).
    with process_group(args.device, timeout=sharing.MERGE_WAIT) as proc:
        out = sharing.agreed(out)                         # the default folder: rank 0's time
        device = proc.device
        luna = (None if args.ct and not int8 else
                locate_luna(args.data_dir, args.synthetic, announce=proc.say,
                            warn_skipped=args.series_uid is None))
        if args.ct:                            # one CT of its own: no annotations to score
            if not Path(args.ct).exists():
                raise DataError(f"--ct {args.ct}: no such file or folder")
            uids, paths_of, nodules = [series_name(args.ct)], {series_name(args.ct): args.ct}, {}
        else:
            uids = pick_series(luna, args.series_uid, args.include_train, args.val_stride,
                               args.fold)
            paths_of, nodules = luna.series, read_nodules(luna)
        calibration = (prec.calibration_sets(luna, [] if args.ct else uids, args.batch_size,
                                             args.val_stride, args.fold) if int8 else None)
        compiled = compile_choice(args.compile, device, args.seg_precision, len(uids))
        prepared = prepare_models(models, args.precision, args.seg_precision, device,
                                  calibration, args.batch_size,
                                  data_root(args.data_dir) / "cache" / "programs", compiled,
                                  announce=proc.say)
        # --resume: each CT's result is kept in <outputs>/results, named by the settings.
        key = {"models": [m and prec.weights_key(m) for m in models],
               "precision": [args.precision, args.seg_precision], "compiled": list(compiled),
               "batch_size": args.batch_size, "device": device.type, "outputs": writes,
               "erosion_max_spacing": repr(args.erosion_max_spacing),
               "torch": torch.__version__}
        kept = sharing.read_kept(out / "results", uids, key, lambda r: still_valid(
            r, nodules.get(r["series_uid"], []), out)) if args.resume else {}
        if kept:
            proc.say(f"--resume: {len(kept)} of the {len(uids)} CTs were analysed before "
                     f"(their results kept in {out / 'results'}); analysing the others")
        todo = [uid for uid in uids if uid not in kept]
        mine = sharing.share([sharing.header_voxels(paths_of[u]) for u in todo], proc.world)
        records, missing = [], {}
        tag = f"[rank {proc.rank}] " if proc.world > 1 else ""
        for uid, ct, waited, error in sharing.prefetched(          # the next CT read meanwhile
                [todo[i] for i in mine[proc.rank]], lambda uid: read_ct(paths_of[uid])):
            if error is not None:                        # a CT that does not read: left out
                if len(uids) == 1:
                    raise error
                missing[uid] = sharing.skipped(error)
                continue
            before = rechecked(prepared)
            result = analyze_series(ct, prepared, nodules.get(uid, []), device,
                                    args.batch_size, args.erosion_max_spacing)
            result["timing"] = {"load": waited, **result["timing"]}   # the wait for the CT
            result["rechecked"] = rechecked(prepared) - before
            written = []
            if any(writes.values()):
                written = write_series_outputs(
                    out, result["series_uid"], result["ct"], result["probs"] > SEG_THRESHOLD,
                    result["labels"], result["detections"], None if args.ct else
                    result["annotations"], result["matches"], threshold=NODULE_THRESHOLD,
                    **writes)
            for volume in ("ct", "probs", "labels"):             # not kept from CT to CT
                del result[volume]
            records.append(series_record(result, [Path(f).name for f in written]))
            if args.resume:
                sharing.keep(out / "results", uid, key, records[-1])
            print(tag + series_line(result), flush=True)
        parts = sharing.gather_to_first((records, missing))   # rank 0: every rank's results
    if parts is None:
        return {"rank": proc.rank}                 # rank 0 reports the whole run
    merged = {**kept, **{r["series_uid"]: r for rs, _ in parts for r in rs}}
    results = [series_result(merged[uid]) for uid in uids if uid in merged]
    missing = {uid: why for _, ms in parts for uid, why in ms.items()}
    if not results:
        raise DataError(f"none of the {len(uids)} CTs could be analysed (said above)")
    table = sum(r["table"] for r in results)
    mean = {k: float(np.mean([r["timing"][k] for r in results])) for k in results[0]["timing"]}
    seg_in = (f" (U-Net {args.seg_precision})" if args.seg_precision != args.precision
              else "")
    which = " and ".join(n for n, c in zip(("U-Net", "classifiers"), compiled) if c)
    ranks = f" x {proc.world} processes" if proc.world > 1 else ""
    print(f"\n{len(results)} CT(s) on {device}{ranks} in {args.precision}{seg_in}"
          f"{f', compiled: {which}' if which else ''}; "
          f"seconds per CT: " + ", ".join(f"{k} {v:.2f}" for k, v in mean.items())
          + f" (total {sum(mean.values()):.2f})\n")
    print(format_table(table))
    if models[2] is None:
        print("(no --malignancy-model: 'Pred. benign' holds every detected nodule)")
    if luna is not None and luna.malignancy_csv is None and not args.ct:
        print("(no annotations_with_malignancy.csv: every annotated nodule is in the Benign row)")
    if missing:
        print(f"{len(missing)} CT(s) could not be read and are left out (said above): "
              + ", ".join(sorted(missing)))
    written = sum(len(r["files"]) for r in results)
    if written:
        print(f"{written} files in {out} (per CT: " + ", ".join(
            name for name, on in (("the picture", args.png), ("label volumes", args.volumes),
                                  ("markups", args.markups)) if on) + ")")
    if args.submission:
        marks = {r["series_uid"]: (np.reshape([d.center_xyz for d in r["detections"]], (-1, 3)),
                                   np.array([d.prob_nodule for d in r["detections"]]))
                 for r in results}
        print(f"submission CSV written to {write_submission(args.submission, marks)}")
    if args.json:
        doc = analysis_document(results, table, paths, args.erosion_max_spacing,
                                args.precision, args.seg_precision)
        if missing:
            doc["missing"] = [{"series_uid": uid, "error": why} for uid, why in missing.items()]
        print(f"candidates written to {write_json(args.json, doc, '--json')}")
    return {"table": table, "results": results, "timing": mean, "missing": missing}


if __name__ == "__main__":
    keep_freed_memory()                 # glibc keeps freed blocks: see runtime.py
    run_cli(main)
