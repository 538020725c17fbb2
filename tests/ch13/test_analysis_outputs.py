"""ch13_segment/analysis_outputs.py: the picture per CT, the label volumes and Slicer markups in
the CT's own frame, and refused output folders, on small CTs built here (and chapter 4's)."""
import json
import math
import re
from collections import namedtuple

import numpy as np
import pytest
import SimpleITK as sitk
from matplotlib.figure import Figure
from scipy import ndimage

from ch13_segment import analysis_outputs as ao
from common.ct import Ct
from common.data import REPO_ROOT
from common.errors import DataError
from common.figures import MISSED_COLOR, TP_COLOR
from tests.common.cli import assert_one_error_line, files_under, run_in_subprocess

# The shapes nodule_analysis passes (its Detection and Annotation namedtuples).
Detection = namedtuple("Detection", ["center_xyz", "center_irc", "prob_nodule", "prob_malignant"])
Annotation = namedtuple("Annotation", ["center_xyz", "diameter_mm", "is_malignant"])
SCHEMA = REPO_ROOT.parent / "shared" / "schemas" / "markups-schema-v1.0.3.json"
SPACING_XYZ = (0.7, 0.8, 2.0)
# Three balls: (centre irc, radius mm); P(nodule) 0.95, 0.7, 0.2 (the last filtered out).
BALLS = (((10, 20, 22), 5.0), ((20, 44, 40), 4.0), ((14, 16, 50), 3.0))
PROBS = (0.95, 0.7, 0.2)


def rotated():
    """An orthonormal, non-identity direction: 30 degrees about z, rows and slices flipped."""
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.diag([1.0, -1.0, -1.0])


def ball_mask(shape, center_irc, radius_mm, spacing_xyz=SPACING_XYZ):
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    spacing_irc = spacing_xyz[::-1]
    return sum(((g - c) * s) ** 2 for g, c, s in zip(grids, center_irc, spacing_irc)) \
        <= radius_mm ** 2


def make_case(direction=None, shape=(30, 64, 64), malignancy=False):
    """(ct, mask, labels, detections, annotations, matches): lung at -850 HU with the BALLS as
    the U-Net's mask; detections at the components' HU-weighted centres, as the analysis
    groups them; annotation 0 on ball 0 (a TP), annotation 1 where nothing is (missed)."""
    direction = np.eye(3) if direction is None else direction
    hu = np.full(shape, -850.0, dtype=np.float32)
    mask = np.zeros(shape, dtype=bool)
    for n, (center, radius) in enumerate(BALLS):
        ball = ball_mask(shape, center, radius)
        mask |= ball
        hu[ball] = 20.0 + 15 * n + np.indices(shape)[2][ball]    # a gradient: off-centre mass
    ct = Ct(hu, (-120.0, 35.5, 210.0), SPACING_XYZ, direction)
    labels, count = ndimage.label(mask)
    centers = ndimage.center_of_mass(hu + 1001.0, labels, range(1, count + 1))
    grades = (0.8, 0.3, 0.1) if malignancy else (None,) * 3
    detections = [Detection(ct.irc_to_xyz(c), tuple(map(float, c)), p, g)
                  for c, p, g in zip(centers, PROBS, grades)]
    annotations = [Annotation(ct.irc_to_xyz(BALLS[0][0]), 10.0, True),
                   Annotation(ct.irc_to_xyz((25, 50, 12)), 6.0, None)]
    truth = np.array([a.center_xyz for a in annotations])
    found = np.array([d.center_xyz for d in detections])
    matches = (np.linalg.norm(truth[:, None] - found[None], axis=-1)
               / np.array([a.diameter_mm for a in annotations])[:, None] < 0.7)
    return ct, mask, labels.astype(np.int32), detections, annotations, matches


def canvas_texts(fig):
    return {t.get_text(): t for t in fig.axes[0].texts}


# ----------------------------------------------------------------------------- findings
def test_statuses_misses_and_rows():
    ct, mask, labels, detections, annotations, matches = make_case()
    assert matches.tolist() == [[True, False, False], [False, False, False]]
    assert ao.detection_status(detections, matches) == ["TP", "FP", "filtered"]
    assert ao.detection_status(detections, matches, threshold=0.1) == ["TP", "FP", "FP"]
    assert ao.detection_status(detections, matches, scored=False) == \
        ["detected", "detected", "filtered"]
    assert ao.missed_annotations(annotations, detections, matches) == [1]
    # Matched only by a filtered-out detection: still missed.
    assert ao.missed_annotations(annotations, detections, [[False, False, True],
                                                           [False, False, False]]) == [0, 1]
    many = [Detection((0, 0, 0), (0, 0, 0), p, None) for p in (0.6, 0.9, 0.1, 0.8)] * 3
    statuses = ao.detection_status(many, np.zeros((0, 12), dtype=bool))
    rows, more, more_missed = ao.pick_rows(many, statuses, missed=[0, 1, 2, 3, 4], max_rows=6)
    assert rows[:3] == [("detection", 1), ("detection", 5), ("detection", 9)]   # P 0.9 first
    assert rows[3:] == [("annotation", 0), ("annotation", 1), ("annotation", 2)]
    assert (more, more_missed) == (9 - 3, 2)
    rows, more, more_missed = ao.pick_rows(many, statuses, missed=[7], max_rows=6)
    assert len(rows) == 6 and rows[-1] == ("annotation", 7) and (more, more_missed) == (4, 0)


def test_diameter_is_the_equivalent_sphere_of_the_component_and_its_eroded_layer():
    shape = (30, 64, 64)
    mask = ball_mask(shape, (15, 32, 32), 6.0)
    eroded = ndimage.binary_erosion(mask, ndimage.generate_binary_structure(3, 1))
    labels = np.zeros(shape, dtype=np.int32)
    labels[eroded] = 2                                      # detection 1's component
    volume = mask.sum() * np.prod(SPACING_XYZ)
    expected = (6 * volume / math.pi) ** (1 / 3)
    diameters = ao.component_diameters_mm(mask, labels, SPACING_XYZ, [1])
    assert diameters[1] == pytest.approx(expected, rel=0.02)     # the layer erosion took off
    assert diameters[1] == pytest.approx(12.0, rel=0.06)         # a 12 mm ball, voxelised
    eroded_only = (6 * eroded.sum() * np.prod(SPACING_XYZ) / math.pi) ** (1 / 3)
    assert eroded_only < 0.9 * diameters[1]
    assert ao.component_diameters_mm(mask, labels, SPACING_XYZ, []) == {}


# ----------------------------------------------------------------------------- the viewers' files
@pytest.mark.parametrize("direction", [None, rotated()], ids=["identity", "rotated"])
def test_label_volumes_keep_the_frame_and_the_components(direction, tmp_path):
    ct, mask, labels, detections, annotations, matches = make_case(direction)
    paths = ao.write_series_outputs(tmp_path, "1.2.840.1", ct, mask, labels, detections,
                                    annotations, matches, png=False, markups=False)
    assert [p.name for p in paths] == ["1.2.840.1_candidates.mha", "1.2.840.1_mask.mha"]
    candidates, unet = (sitk.ReadImage(str(p)) for p in paths)
    for image in (candidates, unet):
        assert image.GetSize() == ct.shape[::-1]
        np.testing.assert_allclose(image.GetSpacing(), ct.spacing_xyz, atol=1e-9)
        np.testing.assert_allclose(image.GetOrigin(), ct.origin_xyz, atol=1e-9)
        np.testing.assert_allclose(image.GetDirection(), ct.direction.ravel(), atol=1e-9)
    read = sitk.GetArrayFromImage(candidates)
    assert read.dtype == np.uint16 and np.array_equal(read, labels)
    assert np.array_equal(sitk.GetArrayFromImage(unet), mask.astype(np.uint8))
    # The voxels came back exactly, so the analysis' centres (HU-weighted centres of mass of
    # the components) come back to the last bit, and ITK maps them where our xyz says.
    centers = ndimage.center_of_mass(ct.hu + 1001.0, read, range(1, len(detections) + 1))
    for d, center in zip(detections, centers):
        np.testing.assert_allclose(center, d.center_irc, rtol=0, atol=1e-9)
        point = candidates.TransformContinuousIndexToPhysicalPoint(center[::-1])
        np.testing.assert_allclose(point, d.center_xyz, atol=1e-6)


def test_more_than_65535_candidates_get_32_bits():
    labels = np.array([[[0, 70_000]]], dtype=np.int32)
    assert ao.candidates_volume(labels).dtype == np.uint32
    assert ao.candidates_volume(labels[..., :1]).dtype == np.uint16


@pytest.mark.parametrize("direction", [None, rotated()], ids=["identity", "rotated"])
def test_markups_points_land_in_their_components(direction, tmp_path):
    ct, mask, labels, detections, annotations, matches = make_case(direction, malignancy=True)
    paths = ao.write_series_outputs(tmp_path, "1.2.840.1", ct, mask, labels, detections,
                                    annotations, matches, png=False, label_volume=False)
    assert [p.name for p in paths] == ["1.2.840.1_detections.mrk.json",
                                       "1.2.840.1_annotations.mrk.json"]
    doc = json.loads(paths[0].read_text())
    [markup] = doc["markups"]
    assert (markup["type"], markup["coordinateSystem"], markup["coordinateUnits"]) == \
        ("Fiducial", "LPS", "mm")
    points = markup["controlPoints"]
    assert [p["label"] for p in points] == ["1 TP P=0.95 M=0.80", "2 FP P=0.70 M=0.30",
                                            "3 filtered P=0.20 M=0.10"]
    assert [p["visibility"] for p in points] == [True, True, False]
    for k, p in enumerate(points):
        irc = ct.xyz_to_irc(p["position"])                  # to the nearest voxel
        assert labels[irc] == k + 1 == int(p["id"])
    annotated = json.loads(paths[1].read_text())["markups"][0]["controlPoints"]
    assert [p["label"] for p in annotated] == ["a1 found 10.0 mm", "a2 missed 6.0 mm"]
    np.testing.assert_allclose(annotated[1]["position"], annotations[1].center_xyz)


def test_markups_are_valid_against_slicers_schema(tmp_path):
    if not SCHEMA.is_file():
        pytest.skip(f"Slicer's markups schema not found at {SCHEMA}")
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema validates the markups")
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    ct, mask, labels, detections, annotations, matches = make_case(malignancy=True)
    paths = ao.write_series_outputs(tmp_path, "uid", ct, mask, labels, detections, annotations,
                                    matches, png=False, label_volume=False)
    for path in paths:
        doc = json.loads(path.read_text())
        assert list(validator.iter_errors(doc)) == []
        # Slicer's reader accepts files whose @schema matches its version pattern.
        assert re.fullmatch(r".*markups-schema-v1\.[0-9]+\.[0-9]+\.json#*", doc["@schema"])
    broken = json.loads(paths[0].read_text())
    broken["markups"][0]["controlPoints"][0]["position"] = [1.0, 2.0]
    assert list(validator.iter_errors(broken))              # the schema does check positions


@pytest.mark.realdata
def test_chapter_4_dicom_ct_keeps_its_frame(book_file, tmp_path):
    from common.ct import load_ct

    ct = load_ct(book_file("p1ch4/volumetric-dicom/2-LUNG 3.0  B70f-04083"))
    mask = ball_mask(ct.shape, (40, 300, 120), 6.0, ct.spacing_xyz)
    labels = mask.astype(np.int32)
    center = ndimage.center_of_mass(ct.hu + 1001.0, labels, 1)
    detections = [Detection(ct.irc_to_xyz(center), center, 0.9, None)]
    paths = ao.write_series_outputs(tmp_path, "ch4", ct, mask, labels, detections, None,
                                    np.zeros((0, 1), dtype=bool), png=False)
    image = sitk.ReadImage(str(paths[0]))
    assert image.GetSize() == (512, 512, 99)
    np.testing.assert_allclose(image.GetSpacing(), ct.spacing_xyz, atol=1e-9)
    np.testing.assert_allclose(image.GetOrigin(), ct.origin_xyz, atol=1e-9)
    np.testing.assert_allclose(image.GetDirection(), ct.direction.ravel(), atol=1e-9)
    [point] = json.loads(paths[2].read_text())["markups"][0]["controlPoints"]
    assert point["label"] == "1 detected P=0.90"            # nobody annotated this CT
    assert labels[ct.xyz_to_irc(point["position"])] == 1


# ----------------------------------------------------------------------------- the picture
def test_picture_labels_each_row_with_its_finding(tmp_path):
    ct, mask, labels, detections, annotations, matches = make_case(malignancy=True)
    fig = ao.analysis_figure(ct, mask, labels, detections, annotations, matches, "1.2.3")
    assert isinstance(fig, Figure)
    texts = canvas_texts(fig)
    [tp] = [t for t in texts if t.startswith("#1 ")]
    [fp] = [t for t in texts if t.startswith("#2 ")]
    [missed] = [t for t in texts if t.startswith("#3 ")]
    assert not any(t.startswith("#4 ") for t in texts)      # the filtered one has no row
    assert "TP   P(nodule) 0.950   P(malignant) 0.80" in tp and "detection 1" in tp
    diameter = float(re.search(r"diameter ([\d.]+) mm", tp)[1])
    assert diameter == pytest.approx(10.0, rel=0.1)         # ball 0: radius 5 mm
    assert "FP   P(nodule) 0.700" in fp
    assert "missed nodule   annotated diameter 6.0 mm" in missed and "did not mark it" in missed
    assert texts[tp].get_color() == TP_COLOR and texts[missed].get_color() == MISSED_COLOR
    assert any("3 candidates, 2 pass P(nodule) > 0.5 (1 TP, 1 FP)" in t for t in texts)
    assert any("1 of 2 annotated nodules found" in t for t in texts)
    [path] = ao.write_series_outputs(tmp_path, "1.2.3", ct, mask, labels, detections,
                                     annotations, matches, label_volume=False, markups=False)
    assert path.name == "1.2.3.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert files_under(tmp_path) == ["1.2.3.png"]


def test_a_ct_without_detections_says_so():
    ct, mask, labels, detections, annotations, matches = make_case()
    empty = np.zeros(ct.shape, dtype=bool)
    fig = ao.analysis_figure(ct, empty, empty.astype(np.int32), [], [], np.zeros((0, 0)))
    assert "no detections: the U-Net marked no candidate" in canvas_texts(fig)
    fig = ao.analysis_figure(ct, mask, labels, detections[2:], None, np.zeros((0, 1)))
    texts = canvas_texts(fig)
    assert "no detections: none of the 1 candidates passes P(nodule) > 0.5" in texts
    assert any("no annotations to score the detections" in t for t in texts)


def test_rows_are_capped_and_a_long_ct_is_subsampled():
    ct, mask, labels, detections, annotations, matches = make_case()
    many = [d._replace(prob_nodule=0.6 + 0.01 * k) for k in range(10) for d in detections[:1]]
    fig = ao.analysis_figure(ct, mask, labels, many, [], np.zeros((0, 10)), max_rows=4)
    texts = canvas_texts(fig)
    assert sum(t.startswith("#") for t in texts) == 4
    assert "P(nodule) 0.690" in next(t for t in texts if t.startswith("#1 "))   # most probable
    assert any("not shown: 6 detections, 0 missed" in t for t in texts)
    small = fig.get_size_inches()
    long_hu = np.full((600, 48, 300), -850.0, dtype=np.float32)     # 600 slices
    long_ct = Ct(long_hu, ct.origin_xyz, ct.spacing_xyz, ct.direction)
    empty = np.zeros(long_hu.shape, dtype=bool)
    fig = ao.analysis_figure(long_ct, empty, empty.astype(np.int32), [], [], np.zeros((0, 0)))
    coronal, axial = (image.get_array().shape for image in fig.axes[0].images[:2])
    assert coronal == (600 // 3, 300 // 2) and axial == (48 // 2, 300 // 2)
    assert max(coronal + axial) <= ao.OVERVIEW_PIXELS
    assert fig.get_size_inches()[0] == small[0]


def test_a_ct_at_the_spacing_bounds_gets_a_picture_no_larger_than_itself(tmp_path):
    """Voxel steps 5,000 times apart (common.ct's bounds, 0.01 and 50 mm): the views at the same
    mm on every axis would need 240,000 voxels along the fine axes; they stop at the CT's."""
    ct, mask, labels, detections, annotations, matches = make_case()
    odd = Ct(ct.voxels, ct.origin_xyz, (0.01, 50.0, 0.01), ct.direction)
    [path] = ao.write_series_outputs(tmp_path, "1.2.3", odd, mask, labels, detections,
                                     annotations, matches, label_volume=False, markups=False)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = ao.analysis_figure(odd, mask, labels, detections, annotations, matches, "1.2.3")
    assert all(max(image.get_array().shape) <= max(ct.shape) for image in fig.axes[0].images)


# ----------------------------------------------------------------------------- bad outputs
def main(argv):
    """For run_in_subprocess: check the folder, as the analysis does first, then write a case."""
    ao.check_outputs(argv[0], "--png")
    ct, mask, labels, detections, annotations, matches = make_case()
    ao.write_series_outputs(argv[0], "1.2.3", ct, mask, labels, detections, annotations, matches)


def test_an_output_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="--png folder .*/f: a file is in the way"):
        ao.check_outputs(tmp_path / "f", "--png")
    with pytest.raises(DataError, match="part of the path is a file"):
        ao.check_outputs(tmp_path / "f" / "pictures", "--png")
    assert ao.check_outputs(tmp_path / "new" / "folder", "--png") == tmp_path / "new" / "folder"
    assert files_under(tmp_path) == ["f"]                   # checking creates nothing


def test_a_read_only_folder_is_refused_in_one_line(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    [(code, err)] = run_in_subprocess([("tests.ch13.test_analysis_outputs", [folder / "out"])],
                                      read_only=folder)
    assert_one_error_line(code, err, "--png folder", "not writable")
    assert files_under(folder) == []


def test_a_full_disk_leaves_no_half_file(tmp_path):
    [(code, err)] = run_in_subprocess([("tests.ch13.test_analysis_outputs", [tmp_path])],
                                      fsize=20_000)
    assert_one_error_line(code, err, "1.2.3.png", "cannot write")
    assert files_under(tmp_path) == []


def test_a_failed_image_write_leaves_nothing(tmp_path, monkeypatch):
    ct, mask, labels, detections, annotations, matches = make_case()

    def fail(image, path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half")
        raise RuntimeError("ITK ERROR: MetaImageIO: cannot write")
    monkeypatch.setattr(sitk, "WriteImage", fail)
    with pytest.raises(DataError, match=r"candidates label volume .*_candidates\.mha: cannot"):
        ao.write_series_outputs(tmp_path, "1.2.3", ct, mask, labels, detections, annotations,
                                matches, png=False)
    assert files_under(tmp_path) == []


def test_series_uids_become_safe_file_names():
    assert ao.file_stem("1.3.6.1.4.1.14519.5.2.1.6279") == "1.3.6.1.4.1.14519.5.2.1.6279"
    assert ao.file_stem("../a b/c") == "_a_b_c"
    assert ao.file_stem("") == "series"
