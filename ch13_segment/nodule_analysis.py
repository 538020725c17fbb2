"""Chapter 14: the end-to-end nodule analysis: segment, group, classify, grade, score.

    python ch13_segment/nodule_analysis.py --run-validation            # every validation CT
    python ch13_segment/nodule_analysis.py SERIES_UID --json runs/ch13/analysis.json
    python ch13_segment/nodule_analysis.py --list-series               # the series on disk
    python ch13_segment/nodule_analysis.py --run-validation --malignancy-model M.best.state

For each CT: the U-Net marks every slice (7-slice context, batched, inference mode), the
probabilities are cut at 0.5, one binary erosion removes specks (along the axes whose voxel step
is at most 1 mm, see erosion_structure), 3-D connected components become
candidates whose centre is the HU-weighted centre of mass (HU + 1001, as the book), the
classifier scores a 32x48x48 crop around each centre, and an optional second LunaModel grades
the nodules. Detections are matched to the annotated nodules (distance / diameter < 0.7) and
counted in the book's 3x4 table. Without --malignancy-model, 'Pred. benign' holds every
detected nodule. The default models are the book's published checkpoints
(`python -m common.data download luna-models`); checkpoints trained here load as well.
"""
import argparse
import hashlib
import io
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from ch01_intro.weights import load_state
from ch10_luna.dsets import CROP_IRC, locate_luna, luna_parser, read_annotations
from ch10_luna.model import LunaModel, read_checkpoint
from ch10_luna.runtime import keep_freed_memory, memory_format, mixed_precision
from ch13_segment.dsets import check_context, context_indexes, split_series
from ch13_segment.dsets_cls import read_malignancy_annotations
from ch13_segment.model import UNetWrapper
from common.ct import HU_MIN, Ct, load_ct
from common.data import book_file, data_root
from common.device import add_device_argument, pick_device
from common.errors import DataError, one_line, run_cli
from common.files import check_writable, write_bytes, write_json

BOOK_SEG_MODEL = ("part2/models/seg_2020-01-26_19.45.12_w4d3c1-bal_1_nodupe-label_pos-d1_"
                  "fn8-adam.best.state")
BOOK_CLS_MODEL = "part2/models/cls_2020-02-06_14.16.55_final-nodule-nonnodule.best.state"
SEG_THRESHOLD = 0.5            # segmentation probability -> mask
NODULE_THRESHOLD = 0.5         # P(nodule) above it passes the classifier
MALIGNANT_THRESHOLD = 0.5      # P(malignant) above it: 'Pred. malignant'
MATCH_RATIO = 0.7              # a detection matches a nodule when distance / diameter < 0.7
EROSION_MAX_SPACING_MM = 1.0   # erode only along axes whose voxel step is at most this
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


# ----------------------------------------------------------------------------- models
def unet_kwargs(state):
    """UNetWrapper arguments read off a state_dict (padding and the 'upconv' mode assumed)."""
    down = {k.split(".")[2] for k in state if k.startswith("unet.down_path.")}
    return {"in_channels": state["input_batchnorm.weight"].shape[0],
            "n_classes": state["unet.last.weight"].shape[0], "depth": len(down),
            "wf": int(np.log2(state["unet.down_path.0.block.0.weight"].shape[0])),
            "padding": True,                      # block.2 is a BatchNorm (1-D) or a conv
            "batch_norm": state["unet.down_path.0.block.2.weight"].dim() == 1,
            "up_mode": "upconv" if "unet.up_path.0.up.weight" in state else "upsample"}


def luna_kwargs(state):
    """LunaModel arguments read off a state_dict (the 32x48x48 crop assumed)."""
    return {"in_channels": state["tail_batchnorm.weight"].shape[0],
            "conv_channels": state["block1.conv1.weight"].shape[0],
            "n_classes": state["head_linear.weight"].shape[0]}


MODEL_KINDS = {"UNetWrapper": (UNetWrapper, unet_kwargs), "LunaModel": (LunaModel, luna_kwargs)}


def load_model(path, model_name, flag):
    """A `model_name` model from a checkpoint dict (the book's or one trained here), in eval mode.

    The architecture is read from the state_dict, so smaller models trained here load too.
    Anything else (a missing file, another kind of model, a mismatched state) is a DataError.
    """
    state = read_checkpoint(path, flag)
    if state.get("model_name") != model_name:
        raise DataError(f"{flag} {path}: holds a {state.get('model_name')!r} model, "
                        f"{flag} needs a {model_name}")
    cls, kwargs_of = MODEL_KINDS[model_name]
    try:
        model = cls(**kwargs_of(state["model_state"]))
    except (KeyError, RuntimeError, ValueError, IndexError) as e:
        raise DataError(one_line(f"{flag} {path}: its state does not describe a {model_name} "
                                 f"({type(e).__name__}: {e})")) from None
    load_state(model, state["model_state"], f"{flag} {path}")
    return model.eval()


# ----------------------------------------------------------------------------- the pipeline
def segment_ct(model, ct, batch_size=16, device="cpu", amp=False, run=None, fmt=None):
    """(I, R, C) float32 nodule probabilities: every slice with its context slices.

    The whole CT is read once and moved to the device once; each batch gathers its
    (N, 7, R, C) inputs there, with the edge slices repeated as the dataset does. Rows and
    columns are padded with air up to the U-Net's multiple and cropped off the output.
    `run` replaces the model's forward (precision.prepare_model's int8 callable: fp32 in and
    out); the model still gives the context and the padding multiple. `fmt`: the memory
    format (default: runtime.memory_format's, channels-last on CPU; the book's is NCHW).
    """
    device = torch.device(device)
    context = (model.input_batchnorm.num_features - 1) // 2
    check_context(ct.path.stem if ct.path else "CT", ct.shape[0], context)
    multiple = 2 ** (model.unet.depth - 1)
    n_slices, rows, cols = ct.shape
    pad_r, pad_c = -rows % multiple, -cols % multiple
    hu = torch.from_numpy(ct.hu).to(device)
    if pad_r or pad_c:
        hu = torch.nn.functional.pad(hu, (0, pad_c, 0, pad_r), value=HU_MIN)
    amp = mixed_precision(device, amp)
    fmt = fmt or memory_format(device, amp, 2)            # as for ch10's 3-D convs, 2-D here
    model = model.to(device, memory_format=fmt)
    probs = torch.empty((n_slices, rows, cols), dtype=torch.float32)
    with torch.inference_mode():
        for start in range(0, n_slices, batch_size):
            index = np.stack([context_indexes(i, n_slices, context)
                              for i in range(start, min(start + batch_size, n_slices))])
            x = hu[torch.from_numpy(index).to(device)]                    # (N, 7, R', C')
            if run is not None:
                out = run(x)
            else:
                with amp.context:
                    out = model(x.contiguous(memory_format=fmt))          # (N, 1, R', C')
            probs[start:start + len(index)] = out[:, 0, :rows, :cols].float().cpu()
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


def group_candidates(mask, hu, erosion_iterations=1, structure=None, per_box=True):
    """Centres (irc, fractional) of the 3-D connected components of the eroded mask.

    Book chapter 14: binary erosion removes specks and thin bridges (`structure`: the face
    neighbours of `erosion_structure`; None is the book's full cross), `ndimage.label` finds
    face-connected components, and each centre is the centre of mass weighted by HU + 1001.
    `per_box=False` computes the centres as the book did, over the whole volume at once.
    """
    if erosion_iterations:
        mask = ndimage.binary_erosion(mask, structure=structure, iterations=erosion_iterations)
    labels, count = ndimage.label(mask)
    if not per_box:
        return [tuple(map(float, c)) for c in ndimage.center_of_mass(
            hu + HU_WEIGHT_OFFSET, labels, np.arange(1, count + 1))]
    centers = []            # per component, within its bounding box: 30x faster on a LUNA CT
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        center = ndimage.center_of_mass(hu[box] + HU_WEIGHT_OFFSET, labels[box], k)
        centers.append(tuple(float(c + b.start) for c, b in zip(center, box)))
    return centers


def classify(model, ct, centers_irc, batch_size=16, device="cpu", amp=False,
             crop_irc=CROP_IRC, run=None, fmt=None):
    """P(class 1) of a LunaModel for the crop around each centre: (N,) float32 numpy.

    Crops come from the CT's HU volume already in memory (`ct.hu`), not from the file again.
    `run` replaces the model's forward (a prepared int8 callable returning (logits, probs));
    `fmt` the memory format (default: runtime.memory_format's).
    """
    device = torch.device(device)
    if not len(centers_irc):
        return np.zeros(0, dtype=np.float32)
    in_memory = Ct(ct.hu, ct.origin_xyz, ct.spacing_xyz, ct.direction, ct.path)
    amp = mixed_precision(device, amp)
    fmt = fmt or memory_format(device, amp)
    model = model.to(device, memory_format=fmt)
    probs = []
    with torch.inference_mode():
        for start in range(0, len(centers_irc), batch_size):
            crops = np.stack([in_memory.crop_irc(c, crop_irc)
                              for c in centers_irc[start:start + batch_size]])
            x = torch.from_numpy(crops).unsqueeze(1).to(device).contiguous(memory_format=fmt)
            if run is not None:
                _logits, p = run(x)
            else:
                with amp.context:
                    _logits, p = model(x)
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


def decide(model, ct, centers_irc, threshold, batch_size, device, precision="fp32", run=None,
           fmt=None):
    """(P(class 1) per centre, how many were re-scored): the classifier at `precision`, then,
    for bf16 and int8, the candidates whose P lies within RECHECK_MARGIN of `threshold`
    scored again by the fp32 model, so that every decision is the fp32 model's as long as the
    fast model errs by less than the margin (measured: bf16 0.025, int8 up to 0.69 with the
    synthetic sample's calibration; precision.py)."""
    p = classify(model, ct, centers_irc, batch_size, device, amp=precision == "bf16", run=run,
                 fmt=fmt)
    if precision == "fp32":
        return p, 0
    near = np.flatnonzero(np.abs(p - threshold) < RECHECK_MARGIN[precision])
    if len(near):
        p[near] = classify(model, ct, [centers_irc[i] for i in near], batch_size, device)
    return p, len(near)


def analyze_series(uid, mhd_path, models, annotations, device, *, batch_size=16,
                   precision="fp32", seg_precision=None, runners=(None, None, None),
                   erosion_max_spacing=EROSION_MAX_SPACING_MM, keep_probs=False,
                   book_way=False):
    """Load one CT, run the pipeline, score it: a dict with detections, table and timings.

    `models` is (U-Net, classifier, malignancy model or None), `runners` their prepared
    replacements for int8 (prepare_runners; None: the model itself). `precision`: fp32; bf16
    (the networks under bf16 autocast); int8 (the int8 runners); `seg_precision` overrides it
    for the U-Net (default: the same). The
    classifiers' decisions near their thresholds are re-taken in fp32 (decide). With
    `keep_probs` the dict holds the (I, R, C) segmentation probabilities too ("probs").
    `book_way` runs the book's choices on this code, for benchmark.py's baseline: the default
    NCHW / NCDHW layouts and the centres over the whole volume (the erosion and batch size
    are the caller's).
    """
    fmt = torch.contiguous_format if book_way else None
    seg_model, cls_model, mal_model = models
    seg_run, cls_run, mal_run = runners
    timing = {}
    started = time.perf_counter()
    ct = load_ct(mhd_path)
    hu = ct.hu                         # every voxel read once (cached on the Ct), timed here
    timing["load"] = time.perf_counter() - started

    started = time.perf_counter()
    seg_precision = seg_precision or precision
    probs = segment_ct(seg_model, ct, batch_size, device, seg_precision == "bf16",
                       seg_run if seg_precision == "int8" else None, fmt)
    timing["segmentation"] = time.perf_counter() - started

    started = time.perf_counter()
    mask = probs > SEG_THRESHOLD
    structure = erosion_structure(ct.spacing_xyz[::-1], erosion_max_spacing)
    centers_irc = group_candidates(mask, hu, erosion_iterations=int(structure is not None),
                                   structure=structure, per_box=not book_way)
    timing["grouping"] = time.perf_counter() - started

    started = time.perf_counter()
    p_nodule, rechecked = decide(cls_model, ct, centers_irc, NODULE_THRESHOLD, batch_size,
                                 device, precision, cls_run, fmt)
    p_mal = [None] * len(centers_irc)
    if mal_model is not None:
        p_mal, more = decide(mal_model, ct, centers_irc, MALIGNANT_THRESHOLD, batch_size,
                             device, precision, mal_run, fmt)
        rechecked += more
    timing["classification"] = time.perf_counter() - started
    for flag, model, p in (("--cls-model", cls_model, p_nodule),
                           ("--malignancy-model", mal_model, p_mal)):
        if model is not None and not np.isfinite(np.asarray(p, dtype=np.float64)).all():
            raise DataError(f"{flag}: the model gave a probability that is not a number on "
                            f"series {uid} (a broken checkpoint?)")

    detections = [Detection(ct.irc_to_xyz(irc), irc, float(pn),
                            None if pm is None else float(pm))
                  for irc, pn, pm in zip(centers_irc, p_nodule, p_mal)]
    return {"series_uid": uid, "shape": ct.shape, "voxels": int(np.prod(ct.shape)),
            "segmented_voxels": int(mask.sum()), "detections": detections,
            "annotations": annotations, "table": match_and_score(detections, annotations),
            "matches": match_detections(detections, annotations), "timing": timing,
            "rechecked": rechecked, **({"probs": probs} if keep_probs else {})}


def prepare_runners(models, precision, luna, batch_size, cache_dir=None, announce=print,
                    seg_precision=None):
    """(U-Net, classifier, malignancy) callables: None for a network in fp32 or bf16 (the model
    runs itself); for one in int8 (the classifiers at `precision`, the U-Net at
    `seg_precision`, default the same) the model quantized by precision.py (PyTorch 2's
    export-based static quantization, calibrated on slices and crops of `luna`'s training
    series), kept in `cache_dir` (by checkpoint, calibration data and batch size) so a later
    run skips the quantization."""
    wanted = ((seg_precision or precision) == "int8", precision == "int8", precision == "int8")
    if not any(wanted):
        return (None, None, None)
    from ch13_segment import precision as quant

    why = quant.int8_unavailable()
    if why:
        raise DataError(f"--precision int8: {why}")
    started = time.perf_counter()
    slices = quant.calibration_slices(luna, batch_size=batch_size) if wanted[0] else []
    crops = quant.calibration_crops(luna, batch_size=batch_size)
    runners = []
    for model, batches, want in zip(models, (slices, crops, crops), wanted):
        if model is None or not want:
            runners.append(None)
            continue
        example = (batches[0][:1].expand(batch_size, *batches[0].shape[1:]).contiguous(),)
        path = None
        if cache_dir is not None:
            key = hashlib.sha1(repr((str(luna.root), batch_size)).encode())
            for name, tensor in model.state_dict().items():
                key.update(name.encode())
                key.update(tensor.detach().cpu().numpy().tobytes())
            path = Path(cache_dir) / f"{type(model).__name__}-{key.hexdigest()[:16]}.pt2"
        if path is not None and path.is_file():
            program = quant.load_int8(path)
        else:
            program = quant.quantize_int8(model, example, batches)
            if path is not None:
                buffer = io.BytesIO()
                quant.save_int8(program, example, buffer)
                write_bytes(path, buffer.getvalue(), "int8 model cache")
        runners.append(quant.int8_runner(program, example))
    announce(f"int8 models ready in {time.perf_counter() - started:.1f} s (calibrated on "
             + (f"{sum(len(b) for b in slices)} slices and " if slices else "")
             + f"{sum(len(b) for b in crops)} crops of the training series)")
    return tuple(runners)


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
    p.add_argument("--erosion-max-spacing", type=float, default=EROSION_MAX_SPACING_MM,
                   metavar="MM", help="erode along the axes whose voxel step is at most this "
                   "(default: %(default)s; inf: every axis, as the book; 0: no erosion)")
    p.add_argument("--json", default=None, help="write every candidate to this file")
    add_device_argument(p)
    return p


def check_analysis_args(p, args):
    """The combinations argparse cannot express; p.error (exit 2) for a bad one."""
    if not args.list_series and (args.series_uid is None) == (not args.run_validation):
        p.error("give a SERIES_UID or --run-validation (one of them)")
    if args.include_train and not args.run_validation:
        p.error("--include-train goes with --run-validation")
    if args.batch_size < 1:
        p.error("--batch-size must be at least 1")
    if np.isnan(args.erosion_max_spacing) or args.erosion_max_spacing < 0:
        p.error("--erosion-max-spacing must be 0 or more (inf: every axis)")
    if args.amp and args.precision not in (None, "bf16"):
        p.error(f"--amp is --precision bf16; it does not go with --precision {args.precision}")
    args.precision = "bf16" if args.amp else args.precision or "fp32"
    return args


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, parents=[analysis_parser()],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    return check_analysis_args(p, p.parse_args(argv))


def load_models(seg_path, cls_path, mal_path=None):
    """(U-Net, classifier, malignancy model or None) from their checkpoints, in eval mode."""
    return (load_model(seg_path, "UNetWrapper", "--seg-model"),
            load_model(cls_path, "LunaModel", "--cls-model"),
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
    if "int8" in (args.precision, args.seg_precision) and device.type != "cpu":
        raise DataError(f"--precision int8 runs on the CPU (oneDNN's int8 kernels), not "
                        f"{device.type}; use --precision bf16 there")
    if args.json:
        check_writable(Path(args.json).parent, "--json folder")
    luna = locate_luna(args.data_dir, args.synthetic, warn_skipped=args.series_uid is None)
    uids = pick_series(luna, args.series_uid, args.include_train, args.val_stride, args.fold)
    nodules = read_nodules(luna)
    runners = prepare_runners(models, args.precision, luna, args.batch_size,
                              data_root(args.data_dir) / "cache" / "int8",
                              seg_precision=args.seg_precision)
    results = []
    for uid in uids:
        results.append(analyze_series(uid, luna.series[uid], models, nodules.get(uid, []),
                                      device, batch_size=args.batch_size,
                                      precision=args.precision,
                                      seg_precision=args.seg_precision, runners=runners,
                                      erosion_max_spacing=args.erosion_max_spacing))
        print(series_line(results[-1]), flush=True)
    table = sum(r["table"] for r in results)
    mean = {k: float(np.mean([r["timing"][k] for r in results])) for k in results[0]["timing"]}
    seg_in = f" (U-Net {args.seg_precision})" if args.seg_precision not in (None,
                                                                           args.precision) else ""
    print(f"\n{len(results)} CT(s) on {device} in {args.precision}{seg_in}; "
          f"seconds per CT: " + ", ".join(f"{k} {v:.2f}" for k, v in mean.items())
          + f" (total {sum(mean.values()):.2f})\n")
    print(format_table(table))
    if models[2] is None:
        print("(no --malignancy-model: 'Pred. benign' holds every detected nodule)")
    if luna.malignancy_csv is None:
        print("(no annotations_with_malignancy.csv: every annotated nodule is in the Benign row)")
    if args.json:
        doc = analysis_document(results, table, paths, args.erosion_max_spacing,
                                args.precision, args.seg_precision)
        print(f"candidates written to {write_json(args.json, doc, '--json')}")
    return {"table": table, "results": results, "timing": mean}


if __name__ == "__main__":
    keep_freed_memory()                 # glibc keeps freed blocks: see runtime.py
    run_cli(main)
