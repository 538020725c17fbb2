"""The built-in synthetic LUNA sample: CTs and CSVs in LUNA16's own formats.

    python ch10_luna/synthetic.py --out data/synthetic/luna     # train_cls.py does this by itself

Deterministic for a seed. Each CT is an int16 HU MetaImage (.mhd + uncompressed .raw) with
anisotropic spacing and a non-zero origin: a body of soft tissue and fat, a spine, two lungs with
parenchyma texture and branching vessels, and 3-6 nodules of 3-30 mm. Malignancy (for chapter 14)
rises with size, and malignant nodules are lobulated and spiculated while benign ones are smooth
(some calcified). `candidates.csv` holds a few candidates per nodule and several hundred
negatives per CT (on vessels, in the parenchyma, at the chest wall, on sub-3 mm specks), so the
imbalance is LUNA's: hundreds of negatives per nodule. The files are written into a temporary
folder that is renamed into place, so an interrupted run never leaves a half sample.
"""
import argparse
import csv
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from common.ct import irc_to_xyz, write_mhd
from common.errors import run_cli

UID_ROOT = "1.3.6.1.4.1.55555.9.1"      # not a LUNA16 root: synthetic series are easy to tell apart
MARKER = "SYNTHETIC.json"
LUNG_HU, TISSUE_HU, FAT_HU, BONE_HU = -850.0, 40.0, -90.0, 650.0


def series_uid(seed, i):
    return f"{UID_ROOT}.{seed}.{i + 1:04d}"


def _ellipse(rows_mm, cols_mm, center, axes):
    return ((rows_mm - center[0]) / axes[0]) ** 2 + ((cols_mm - center[1]) / axes[1]) ** 2 <= 1.0


def _stamp_ball(field, center_vox, radius_vox, spacing_irc):
    """field = max(field, soft ball coverage); radius and centre in voxels of the middle axis."""
    reach = [int(np.ceil(radius_vox * spacing_irc[1] / s)) + 1 for s in spacing_irc]
    lo = [max(0, int(c) - r) for c, r in zip(center_vox, reach)]
    hi = [min(n, int(c) + r + 2) for c, n, r in zip(center_vox, field.shape, reach)]
    if any(a >= b for a, b in zip(lo, hi)):
        return
    grids = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    dist2 = sum(((g - c) * s / spacing_irc[1]) ** 2
                for g, c, s in zip(grids, center_vox, spacing_irc))
    cover = np.clip(radius_vox + 0.5 - np.sqrt(dist2), 0.0, 1.0)
    region = field[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    np.maximum(region, cover, out=region)


def _draw_tube(field, points_mm, radii_mm, spacing_irc, step_mm=0.7):
    """Stamp balls along a polyline (mm, irc order) with radii interpolated along it."""
    segments = zip(points_mm[:-1], points_mm[1:], radii_mm[:-1], radii_mm[1:])
    for a, b, ra, rb in segments:
        n = max(2, int(np.linalg.norm(b - a) / step_mm))
        for t in np.linspace(0.0, 1.0, n):
            p = a + t * (b - a)
            radius_vox = ((1 - t) * ra + t * rb) / spacing_irc[1]
            _stamp_ball(field, p / spacing_irc, radius_vox, spacing_irc)


def _vessel_tree(rng, lung_mask, spacing_irc, start_mm, n_branches):
    """Random branching walks from the hilum outward: (points, radii) per branch, in mm."""
    branches, shape_mm = [], np.array(lung_mask.shape) * spacing_irc
    for _ in range(n_branches):
        p, radius = start_mm + rng.normal(0, 6, 3), rng.uniform(1.6, 2.8)
        direction = rng.normal(0, 1, 3)
        direction[0] *= 0.6
        direction /= np.linalg.norm(direction)
        points, radii = [p.copy()], [radius]
        for _ in range(rng.integers(8, 16)):
            direction += rng.normal(0, 0.35, 3)
            direction /= np.linalg.norm(direction)
            p = p + direction * rng.uniform(5, 9)
            radius = max(0.5, radius * rng.uniform(0.8, 0.95))
            if np.any(p < 0) or np.any(p >= shape_mm):
                break
            if not lung_mask[tuple((p / spacing_irc).astype(int))]:
                break
            points.append(p.copy())
            radii.append(radius)
        if len(points) > 2:
            branches.append((np.array(points), np.array(radii)))
    return branches


def _nodule_coverage(rng, shape, spacing_irc, center_vox, diameter_mm, malignant):
    """Soft 0..1 coverage of one nodule; malignant ones lobulated with spicules."""
    radius_mm = diameter_mm / 2
    reach_mm = radius_mm * (2.2 if malignant else 1.3) + 2
    lo = [max(0, int(c - reach_mm / s)) for c, s in zip(center_vox, spacing_irc)]
    hi = [min(n, int(c + reach_mm / s) + 2) for c, s, n in zip(center_vox, spacing_irc, shape)]
    grids = np.ogrid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    d = [(g - c) * s for g, c, s in zip(grids, center_vox, spacing_irc)]       # mm offsets
    dist = np.sqrt(d[0] ** 2 + d[1] ** 2 + d[2] ** 2) + 1e-6
    bumps = np.zeros(1)
    amplitude = rng.uniform(0.12, 0.28) if malignant else rng.uniform(0.0, 0.05)
    for _ in range(4):                                     # lobulation: bumps along random axes
        axis = rng.normal(0, 1, 3)
        axis /= np.linalg.norm(axis)
        cosang = (d[0] * axis[0] + d[1] * axis[1] + d[2] * axis[2]) / dist
        bumps = bumps + np.cos(rng.integers(2, 5) * np.arccos(np.clip(cosang, -1, 1))
                               + rng.uniform(0, 2 * np.pi))
    surface = radius_mm * (1 + amplitude * bumps / 2)
    cover = np.clip((surface - dist) / spacing_irc[1] + 0.5, 0.0, 1.0)
    field = np.zeros([b - a for a, b in zip(lo, hi)], dtype=np.float32)
    field[...] = cover
    if malignant:                                          # spicules: thin spokes outward
        for _ in range(rng.integers(4, 9)):
            axis = rng.normal(0, 1, 3)
            axis /= np.linalg.norm(axis)
            length = radius_mm * rng.uniform(1.4, 2.1)
            center_local = (np.array(center_vox) - lo) * spacing_irc
            ends = np.stack([center_local, center_local + axis * length])
            _draw_tube(field, ends, np.array([0.9, 0.4]), spacing_irc)
    return tuple(slice(a, b) for a, b in zip(lo, hi)), field


def synthesize_ct(rng, negatives=(550, 800)):
    """One CT: (int16 HU volume, origin_xyz, spacing_xyz, nodules, negative centres in irc)."""
    n_slices, n_rows = int(rng.integers(56, 73)), 160
    spacing_xyz = (float(rng.uniform(1.55, 1.85)),) * 2 + (float(rng.choice([2.0, 2.25, 2.5])),)
    spacing_irc = np.array(spacing_xyz[::-1])
    shape = (n_slices, n_rows, n_rows)
    origin_xyz = (-n_rows * spacing_xyz[0] / 2 + rng.uniform(-15, 15),
                  -n_rows * spacing_xyz[1] / 2 + rng.uniform(-15, 15),
                  float(rng.uniform(-350, -80)))
    rows_mm = ((np.arange(n_rows) - n_rows / 2) * spacing_xyz[1])[:, None]
    cols_mm = ((np.arange(n_rows) - n_rows / 2) * spacing_xyz[0])[None, :]
    fov = n_rows * spacing_xyz[0]

    body2d = _ellipse(rows_mm, cols_mm, (0, 0), (0.36 * fov, 0.46 * fov))
    inner2d = _ellipse(rows_mm, cols_mm, (0, 0), (0.32 * fov, 0.42 * fov))
    spine2d = _ellipse(rows_mm, cols_mm, (0.24 * fov, 0), (0.05 * fov, 0.05 * fov))
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[:, body2d] = FAT_HU
    hu[:, inner2d] = TISSUE_HU
    hu[:, spine2d] = BONE_HU

    lung = np.zeros(shape, dtype=bool)
    z = (np.arange(n_slices) + 0.5) / n_slices
    for side in (-1, 1):
        c_col, c_row = side * 0.21 * fov * rng.uniform(0.95, 1.05), -0.02 * fov
        for i, zi in enumerate(z):
            taper = np.sqrt(max(0.0, 1 - ((zi - 0.55) / 0.62) ** 2))
            if taper > 0.2:
                lung[i] |= _ellipse(rows_mm, cols_mm, (c_row, c_col),
                                    (0.25 * fov * taper, 0.15 * fov * taper)) & inner2d
    texture = ndimage.gaussian_filter(rng.normal(0, 1, shape).astype(np.float32), 1.5)
    hu[lung] = LUNG_HU + 60 * texture[lung]

    vessels = np.zeros(shape, dtype=np.float32)
    for side in (-1, 1):
        hilum_irc = np.array([n_slices * 0.5, n_rows / 2, n_rows / 2 + side * 0.12 * fov
                              / spacing_xyz[0]])
        for points, radii in _vessel_tree(rng, lung, spacing_irc, hilum_irc * spacing_irc,
                                          int(rng.integers(14, 22))):
            _draw_tube(vessels, points, radii, spacing_irc)
    vessels *= lung

    # Nodules: centres well inside a lung, not overlapping each other.
    nodules, lung_idx = [], np.argwhere(ndimage.binary_erosion(lung, iterations=4))
    for _ in range(int(rng.integers(3, 7))):
        diameter = float(np.clip(rng.lognormal(np.log(9.0), 0.5), 3.2, 30.0))
        malignant = bool(rng.random() < 1 / (1 + np.exp(-(diameter - 11.0) / 2.5)))
        for _ in range(50):
            center = lung_idx[rng.integers(len(lung_idx))].astype(float) + rng.uniform(-.5, .5, 3)
            center_mm = center * spacing_irc
            if all(np.linalg.norm(center_mm - n["center_irc"] * spacing_irc)
                   > (diameter + n["diameter_mm"]) / 2 * 2.2 + 4 for n in nodules):
                break
        window, cover = _nodule_coverage(rng, shape, spacing_irc, center, diameter, malignant)
        calcified = not malignant and rng.random() < 0.25
        nodules.append({"center_irc": center, "diameter_mm": diameter, "malignant": malignant,
                        "calcified": calcified, "window": window, "cover": cover})

    # Sub-3 mm specks: nodule-like but below LUNA's annotation size, so negatives.
    specks = [lung_idx[rng.integers(len(lung_idx))].astype(float)
              for _ in range(rng.integers(3, 8))]
    for c in specks:
        _stamp_ball(vessels, c, rng.uniform(0.55, 0.8), spacing_irc)

    density = np.where(lung, vessels, 0.0)
    solid = np.full(shape, TISSUE_HU, dtype=np.float32)
    for n in nodules:
        region = density[n["window"]]
        np.maximum(region, n["cover"], out=region)
        if n["calcified"]:
            solid[n["window"]][n["cover"] > 0.5] = 350.0
    hu = np.where(density > 0, hu * (1 - density) + solid * density, hu)
    hu = ndimage.gaussian_filter(hu, (0.4, 0.6, 0.6)) + rng.normal(0, 18, shape)

    negatives = _negative_centres(rng, lung, vessels, nodules, specks, spacing_irc, negatives)
    volume = np.clip(np.round(hu), -1024, 3071).astype(np.int16)
    return volume, origin_xyz, spacing_xyz, nodules, negatives


def _negative_centres(rng, lung, vessels, nodules, specks, spacing_irc, count_range):
    """Several hundred non-nodule candidate centres (irc), none within reach of a nodule."""
    n_total = int(rng.integers(*count_range))
    vessel_idx = np.argwhere(vessels > 0.8)
    lung_idx = np.argwhere(lung)
    edge_idx = np.argwhere(lung & ~ndimage.binary_erosion(lung, iterations=2))
    pools = [(vessel_idx, 0.35), (lung_idx, 0.45), (edge_idx, 0.15)]
    centres = [np.array(s) for s in specks]
    for pool, share in pools:
        if len(pool):
            picks = pool[rng.integers(len(pool), size=int(n_total * share))]
            centres.extend(picks.astype(float) + rng.uniform(-.5, .5, picks.shape))
    keep = []
    for c in centres:
        if all(np.linalg.norm((c - n["center_irc"]) * spacing_irc) > n["diameter_mm"] / 2 + 3
               for n in nodules):
            keep.append(c)
    return keep


def _mal_details(rng, malignant):
    """Radiologist ratings 1-5 consistent with the book's rule (>= 2 ratings of 4 or more)."""
    n = int(rng.integers(1, 5))
    if malignant:
        n = max(n, 2)
        ratings = [int(rng.integers(4, 6)) for _ in range(2)] + \
                  [int(rng.integers(2, 6)) for _ in range(n - 2)]
    else:
        ratings = [int(rng.integers(1, 4)) for _ in range(n)]
        if n > 1:
            ratings[0] = int(rng.integers(1, 6))
    return ratings


def generate_sample(out_dir, n_series=30, seed=0, n_subsets=10, negatives=(550, 800),
                    progress=True):
    """Write the sample under `out_dir` (skipped when a complete one is there); returns out_dir."""
    out_dir = Path(out_dir)
    if (out_dir / MARKER).exists():
        return out_dir
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    cand_rows, ann_rows, mal_rows = [], [], []
    started = time.perf_counter()
    for i in range(n_series):
        uid = series_uid(seed, i)
        volume, origin, spacing, nodules, negative_irc = synthesize_ct(rng, negatives)
        subset = tmp / f"subset{i % n_subsets}"
        subset.mkdir(exist_ok=True)
        write_mhd(subset / f"{uid}.mhd", volume, origin, spacing)
        def to_xyz(irc, origin=origin, spacing=spacing):
            return irc_to_xyz(irc, origin, spacing, np.eye(3))

        for n in nodules:
            xyz, d = to_xyz(n["center_irc"]), n["diameter_mm"]
            ann_rows.append([uid, *xyz, d])
            ratings = _mal_details(rng, n["malignant"])
            mal_rows.append([uid, *xyz, d, n["malignant"], str(ratings),
                             *(v - d / 2 for v in xyz), *(v + d / 2 for v in xyz), len(ratings)])
            for _ in range(int(rng.integers(1, 4))):        # CAD systems find a nodule repeatedly
                jitter = rng.uniform(-d / 8, d / 8, 3)
                cand_rows.append([uid, *(v + j for v, j in zip(xyz, jitter)), 1])
        cand_rows.extend([uid, *to_xyz(c), 0] for c in negative_irc)
        if progress:
            print(f"\r  synthetic LUNA: {i + 1}/{n_series} CTs", end="", flush=True)
    if progress:
        print(f"  ({time.perf_counter() - started:.1f} s)")
    _write_csv(tmp / "annotations.csv", ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"],
               ann_rows)
    _write_csv(tmp / "candidates.csv", ["seriesuid", "coordX", "coordY", "coordZ", "class"],
               cand_rows)
    _write_csv(tmp / "annotations_with_malignancy.csv",
               ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "mal_bool", "mal_details",
                "bboxLowX", "bboxLowY", "bboxLowZ", "bboxHighX", "bboxHighY", "bboxHighZ",
                "len_mal_details"], mal_rows)
    info = {"generator": "ch10_luna/synthetic.py", "seed": seed, "series": n_series,
            "nodules": len(ann_rows), "candidates": len(cand_rows),
            "positive_candidates": sum(r[-1] for r in cand_rows)}
    (tmp / MARKER).write_text(json.dumps(info, indent=1) + "\n")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists():                                   # an incomplete earlier attempt
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for row in rows:
            w.writerow([f"{v:.6f}" if isinstance(v, float) else v for v in row])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="data/synthetic/luna", help="folder to write (LUNA16 layout)")
    p.add_argument("--series", type=int, default=30, help="number of CTs (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    out = generate_sample(args.out, n_series=args.series, seed=args.seed)
    print(json.loads((out / MARKER).read_text()))
    return out


if __name__ == "__main__":
    run_cli(main)
