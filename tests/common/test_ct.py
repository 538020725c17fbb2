"""common/ct.py: xyz <-> irc for any direction matrix, crops (memmap == full load), bad input,
and files that shrink under a reader."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import SimpleITK as sitk

from common.ct import (
    HU_MAX,
    HU_MIN,
    IrcTuple,
    _memmap_raw,
    check_geometry,
    check_mhd,
    crop_bounds,
    irc_to_xyz,
    load_ct,
    write_mhd,
    xyz_to_irc,
)
from common.data import REPO_ROOT
from common.errors import DataError, run_cli


def rotation(axis, degrees):
    a = np.deg2rad(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    m = np.eye(3)
    m[i, i], m[i, j], m[j, i], m[j, j] = c, -s, s, c
    return m


# A rotation composed with an axis swap: orthonormal and NOT symmetric.
SKEW = rotation(2, 25) @ rotation(0, 40) @ np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]])
SPACING = (0.7, 0.8, 2.5)
ORIGIN = (-120.0, 33.5, -310.0)


def test_direction_matrix_is_really_not_symmetric():
    assert not np.allclose(SKEW, SKEW.T)


@pytest.mark.parametrize("direction", [np.eye(3), np.diag([-1.0, -1.0, 1.0]), SKEW])
def test_irc_xyz_round_trip(direction):
    rng = np.random.default_rng(0)
    for irc in rng.integers(0, 200, size=(50, 3)):
        xyz = irc_to_xyz(irc, ORIGIN, SPACING, direction)
        assert xyz_to_irc(xyz, ORIGIN, SPACING, direction) == IrcTuple(*irc)


def test_round_trip_within_half_a_voxel_for_points_between_voxels():
    rng = np.random.default_rng(1)
    for xyz in rng.uniform(-100, 100, size=(50, 3)):
        irc = xyz_to_irc(xyz, ORIGIN, SPACING, SKEW)
        back = np.array(irc_to_xyz(irc, ORIGIN, SPACING, SKEW))
        # The error, expressed in voxel units along each array axis, is at most half a voxel.
        err_cri = np.linalg.solve(SKEW, back - xyz) / SPACING
        assert np.all(np.abs(err_cri) <= 0.5 + 1e-9)


def test_the_books_row_vector_formula_is_wrong_for_a_non_symmetric_matrix():
    irc = (10, 20, 30)
    xyz = np.array(irc_to_xyz(irc, ORIGIN, SPACING, SKEW))
    book = ((xyz - ORIGIN) @ np.linalg.inv(SKEW)) / SPACING    # the book's xyz2irc
    assert not np.allclose(book[::-1], irc)
    assert xyz_to_irc(xyz, ORIGIN, SPACING, SKEW) == irc


def test_hand_example_identity_direction():
    # Voxel (index 2, row 3, col 4) sits 4*0.7 mm along x, 3*0.8 along y, 2*2.5 along z.
    xyz = irc_to_xyz((2, 3, 4), ORIGIN, SPACING, np.eye(3))
    assert xyz == pytest.approx((-120 + 2.8, 33.5 + 2.4, -310 + 5.0))


def test_our_geometry_agrees_with_simpleitk(tmp_path):
    volume = np.zeros((20, 30, 40), dtype=np.int16)
    path = write_mhd(tmp_path / "ct.mhd", volume, ORIGIN, SPACING, SKEW)
    image = sitk.ReadImage(str(path))
    for irc in [(0, 0, 0), (5, 7, 9), (19, 29, 39)]:
        expected = image.TransformIndexToPhysicalPoint(tuple(int(v) for v in irc[::-1]))
        assert irc_to_xyz(irc, ORIGIN, SPACING, SKEW) == pytest.approx(expected)


@pytest.fixture
def ct_file(tmp_path):
    rng = np.random.default_rng(2)
    volume = rng.integers(-1500, 2500, size=(24, 40, 36)).astype(np.int16)
    return write_mhd(tmp_path / "vol.mhd", volume, ORIGIN, SPACING, SKEW), volume


def test_mhd_loads_as_memmap_with_geometry(ct_file):
    path, volume = ct_file
    ct = load_ct(path)
    assert isinstance(ct.voxels, np.memmap)
    np.testing.assert_array_equal(ct.voxels, volume)
    assert ct.origin_xyz == pytest.approx(ORIGIN)
    assert ct.spacing_xyz == pytest.approx(SPACING)
    np.testing.assert_allclose(ct.direction, SKEW, atol=1e-12)
    assert ct.hu.dtype == np.float32
    assert ct.hu.min() == HU_MIN and ct.hu.max() == HU_MAX


@pytest.mark.parametrize("center", [(12, 20, 18), (0, 0, 0), (23, 39, 35), (1, 38, 2), (12, 5, 34)])
def test_memmap_crop_equals_full_load_crop_edges_included(ct_file, center):
    path, _ = ct_file
    ct = load_ct(path)
    full = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    full = np.clip(full, HU_MIN, HU_MAX)
    width = (8, 12, 10)
    crop = ct.crop_irc(center, width)
    assert crop.shape == width and crop.dtype == np.float32
    (a0, b0), (a1, b1), (a2, b2) = crop_bounds(center, width, ct.shape)
    np.testing.assert_array_equal(crop, full[a0:b0, a1:b1, a2:b2])


def test_crop_is_shifted_inward_and_keeps_the_centre_voxel_when_it_can(ct_file):
    path, _ = ct_file
    ct = load_ct(path)
    assert crop_bounds((0, 0, 0), (8, 12, 10), ct.shape) == [(0, 8), (0, 12), (0, 10)]
    assert crop_bounds((23, 39, 35), (8, 12, 10), ct.shape) == [(16, 24), (28, 40), (26, 36)]
    crop = ct.crop_irc((12, 20, 18), (8, 12, 10))
    assert crop[4, 6, 5] == ct.hu[12, 20, 18]


def test_raw_candidate_centres_on_the_xyz_point(ct_file):
    path, _ = ct_file
    ct = load_ct(path)
    xyz = ct.irc_to_xyz((12, 20, 18))
    crop, center_irc = ct.raw_candidate(xyz, (8, 12, 10))
    assert center_irc == (12, 20, 18)
    assert crop[4, 6, 5] == ct.hu[12, 20, 18]


def test_crop_larger_than_the_volume_is_padded_with_air(tmp_path):
    path = write_mhd(tmp_path / "small.mhd", np.zeros((4, 6, 6), np.int16), (0, 0, 0), (1, 1, 1))
    crop = load_ct(path).crop_irc((2, 3, 3), (8, 6, 6))
    assert crop.shape == (8, 6, 6)
    assert (crop[:4] == 0).all() and (crop[4:] == HU_MIN).all()


def test_compressed_metaimage_is_read_whole(tmp_path):
    volume = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    image = sitk.GetImageFromArray(volume)
    sitk.WriteImage(image, str(tmp_path / "z.mhd"), useCompression=True)
    ct = load_ct(tmp_path / "z.mhd")
    assert not isinstance(ct.voxels, np.memmap)
    np.testing.assert_array_equal(ct.voxels, volume)


def test_compressed_metaimage_is_cached_once_as_npy_and_memory_mapped(tmp_path):
    volume = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(tmp_path / "z.mhd"), useCompression=True)
    first = load_ct(tmp_path / "z.mhd", npy_cache=tmp_path / "cache")
    assert isinstance(first.voxels, np.memmap)
    np.testing.assert_array_equal(first.voxels, volume)
    (cached,) = (tmp_path / "cache").glob("z-*.npy")
    before = cached.stat().st_mtime_ns
    second = load_ct(tmp_path / "z.mhd", npy_cache=tmp_path / "cache")
    np.testing.assert_array_equal(second.crop_irc((2, 2, 3), (2, 2, 2)),
                                  first.crop_irc((2, 2, 3), (2, 2, 2)))
    assert cached.stat().st_mtime_ns == before                       # not written again
    assert not [p for p in (tmp_path / "cache").iterdir() if ".tmp-" in p.name]


# ---------------------------------------------------------------- bad input: one clear DataError
def test_missing_mhd(tmp_path):
    with pytest.raises(DataError, match="nope.mhd not found"):
        load_ct(tmp_path / "nope.mhd")


def test_missing_raw(ct_file):
    path, _ = ct_file
    path.with_suffix(".raw").unlink()
    with pytest.raises(DataError, match=r"vol\.raw is missing"):
        load_ct(path)


def test_truncated_raw(ct_file):
    path, _ = ct_file
    raw = path.with_suffix(".raw")
    raw.write_bytes(raw.read_bytes()[:1000])
    with pytest.raises(DataError, match=r"vol\.raw: truncated \(1,000 bytes"):
        load_ct(path)


def test_unreadable_header(tmp_path):
    path = tmp_path / "bad.mhd"
    path.write_bytes(b"\x00\x01garbage without the keys\n")
    with pytest.raises(DataError, match="bad.mhd: not a MetaImage header"):
        load_ct(path)


def test_empty_dicom_folder(tmp_path):
    with pytest.raises(DataError, match="no DICOM series found"):
        load_ct(tmp_path)


def test_other_file_type(tmp_path):
    path = tmp_path / "scan.nii"
    path.write_bytes(b"x")
    with pytest.raises(DataError, match="expected an .mhd file or a DICOM series folder"):
        load_ct(path)


@pytest.mark.realdata
def test_the_books_dicom_ct_loads_in_hu(book_file):
    ct = load_ct(book_file("p1ch4/volumetric-dicom/2-LUNG 3.0  B70f-04083"))
    assert ct.shape == (99, 512, 512)
    assert ct.hu.dtype == np.float32
    assert ct.hu.min() == HU_MIN and ct.hu.max() == HU_MAX
    assert -1000 < float(ct.hu.mean()) < 0          # mostly air and lung


# ------------------------------------------- check_mhd: every header field validated, by name
def edit_header(path, field, value):
    """Rewrite one `field = value` line of an .mhd (None removes it; a new field goes first)."""
    lines = path.read_text().splitlines()
    found = [i for i, line in enumerate(lines) if line.split("=")[0].strip() == field]
    if value is None:
        lines = [line for i, line in enumerate(lines) if i not in found]
    elif found:
        lines[found[0]] = f"{field} = {value}"
    else:
        lines.insert(0, f"{field} = {value}")
    path.write_text("\n".join(lines) + "\n")


BAD_HEADERS = [                                  # (field, value, words the message must hold)
    ("NDims", "2", "NDims '2': a CT volume must be 3-D"),
    ("DimSize", "36 40", "DimSize '36 40': a CT volume must be 3-D"),
    ("DimSize", "36 40 24 1", "a CT volume must be 3-D (found 4 sizes)"),
    ("DimSize", "36 0 24", "every size must be positive"),
    ("DimSize", "36 forty 24", "malformed DimSize"),
    ("ElementSpacing", "nan 0.8 2.5", "ElementSpacing 'nan 0.8 2.5': spacings must be finite"),
    ("ElementSpacing", "0.7 0 2.5", "ElementSpacing '0.7 0 2.5': spacings must be finite and > 0"),
    ("ElementSpacing", "-0.7 0.8 2.5", "spacings must be finite and > 0"),
    ("ElementSpacing", "thin 0.8 2.5", "ElementSpacing 'thin 0.8 2.5': expected 3 numbers"),
    ("ElementSpacing", "0.7 0.8", "expected 3 numbers"),
    ("Offset", "inf 0 0", "Offset 'inf 0 0': the origin must be finite"),
    ("TransformMatrix", "0 0 0 0 0 0 0 0 0", "must be finite and invertible"),
    ("TransformMatrix", "1 0 0 0 1 0 1 0 0", "must be finite and invertible"),     # rank 2
    ("TransformMatrix", "1 0 0 0 nan 0 0 0 1", "must be finite and invertible"),
    ("TransformMatrix", "1 0 0 0 1 0 0 0", "TransformMatrix '1 0 0 0 1 0 0 0': expected 9"),
    ("ElementType", "MET_STRING", "ElementType 'MET_STRING' is not supported"),
    ("ElementNumberOfChannels", "3", "ElementNumberOfChannels '3': a CT has one value per voxel"),
    ("HeaderSize", "big", "HeaderSize 'big'"),
    # beyond what a CT can be (common.ct's SPACING_MM, MAX_ORIGIN_MM, DIRECTION_TOLERANCE,
    # MAX_SIZE): the fuzzed header first, then just past each bound
    ("ElementSpacing", "700000.0 0.7 2.5", "ElementSpacing '700000.0 0.7 2.5': a voxel step of "
                                           "700000 mm is no CT's (each must lie between 0.01 "
                                           "and 50 mm)"),
    ("ElementSpacing", "0.7 0.0099 2.5", "a voxel step of 0.0099 mm is no CT's"),
    ("ElementSpacing", "0.7 0.8 50.001", "a voxel step of 50.001 mm is no CT's"),
    ("Offset", "-120 10000.001 -310", "Offset '-120 10000.001 -310': 10000 mm from the scanner's "
                                      "origin is no CT's (each coordinate must lie within "
                                      "10,000 mm)"),
    ("Offset", "0 0 -1e300", "-1e+300 mm from the scanner's origin is no CT's"),
    ("TransformMatrix", "1 0 0 0 1 0 0 0 1.0006", "the direction matrix is not orthonormal "
                                                 "(axes of length 1 at right angles: |D^T D - I| "
                                                 "is 0.0012, at most 0.001)"),
    ("TransformMatrix", "1 0 0 0.1 1 0 0 0 1", "the direction matrix is not orthonormal"),
    ("DimSize", "36 16385 24", "DimSize '36 16385 24': each size must lie between 1 and 16,384 "
                               "voxels"),
]


@pytest.mark.parametrize("field, value, message", BAD_HEADERS,
                         ids=[f"{f}={v}" for f, v, _ in BAD_HEADERS])
def test_every_bad_header_field_is_one_line_naming_it(ct_file, capsys, field, value, message):
    path, _ = ct_file
    edit_header(path, field, value)
    with pytest.raises(DataError) as caught:
        check_mhd(path)
    assert str(caught.value).startswith(f"{path}: ") and message in str(caught.value)
    with pytest.raises(SystemExit) as exit_info:              # the same through the CLI wrapper
        run_cli(lambda argv: load_ct(path))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and message in err


@pytest.mark.parametrize("field, value", [
    ("ElementSpacing", "0.01 50 0.01"),                 # SPACING_MM's ends, both kept
    ("Offset", "-10000 10000 0"),                       # MAX_ORIGIN_MM on either side
    ("TransformMatrix", "1 0 0 0 1 0 0 0 1.0004"),      # |D^T D - I| 0.0008 <= 0.001
    ("TransformMatrix", " ".join(map(repr, SKEW.T.ravel().tolist()))),  # a rotation, in full
])
def test_headers_at_the_bounds_still_load(ct_file, field, value):
    path, volume = ct_file
    edit_header(path, field, value)
    ct = load_ct(path)
    np.testing.assert_array_equal(ct.voxels, volume)
    numbers = [float(v) for v in value.split()]
    got = {"ElementSpacing": ct.spacing_xyz, "Offset": ct.origin_xyz,
           "TransformMatrix": ct.direction.T.ravel()}[field]
    np.testing.assert_allclose(got, numbers, rtol=1e-12)


def test_the_largest_size_still_loads(tmp_path):
    volume = np.arange(16_384, dtype=np.int16).reshape(1, 1, 16_384)        # MAX_SIZE voxels
    ct = load_ct(write_mhd(tmp_path / "long.mhd", volume, (0, 0, 0), (1, 1, 1)))
    assert ct.shape == (1, 1, 16_384) and ct.crop_irc((0, 0, 16_383), (1, 1, 1))[0, 0, 0] == 1000


def test_a_raw_longer_than_the_header_says_is_refused(ct_file):
    path, _ = ct_file
    with open(path.with_suffix(".raw"), "ab") as f:
        f.write(b"\0" * 2)
    with pytest.raises(DataError, match=r"vol\.raw: 69,122 bytes, the header says 69,120 "
                                        r"\(DimSize 36 40 24 of MET_SHORT\)"):
        load_ct(path)


def test_header_size_minus_one_reads_the_last_bytes(ct_file):
    path, volume = ct_file
    raw = path.with_suffix(".raw")
    raw.write_bytes(b"junk header" + raw.read_bytes())
    edit_header(path, "HeaderSize", "-1")
    np.testing.assert_array_equal(load_ct(path).voxels, volume)


def test_check_mhd_geometry_is_simpleitks(ct_file):
    path, volume = ct_file
    header = check_mhd(path)
    image = sitk.ReadImage(str(path))
    assert header.dims_xyz == image.GetSize() and header.dtype == np.dtype("<i2")
    assert header.spacing_xyz == pytest.approx(image.GetSpacing())
    assert header.origin_xyz == pytest.approx(image.GetOrigin())
    np.testing.assert_allclose(header.direction.ravel(), image.GetDirection(), atol=1e-12)
    assert header.raw_path == path.with_suffix(".raw") and header.data_offset == 0


def test_missing_fields_take_metaimage_defaults(tmp_path):
    path = write_mhd(tmp_path / "d.mhd", np.zeros((2, 3, 4), np.int16), (0, 0, 0), (1, 1, 1))
    for field in ("TransformMatrix", "Offset", "ElementSpacing", "NDims"):
        edit_header(path, field, None)
    header = check_mhd(path)
    assert header.spacing_xyz == (1, 1, 1) and header.origin_xyz == (0, 0, 0)
    np.testing.assert_array_equal(header.direction, np.eye(3))


def test_mhd_path_that_is_a_folder(tmp_path):
    (tmp_path / "x.mhd").mkdir()
    with pytest.raises(DataError, match="a folder, not a MetaImage"):
        check_mhd(tmp_path / "x.mhd")


def test_a_2d_compressed_image_is_refused_after_reading(tmp_path):
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((5, 6), np.int16)), str(tmp_path / "f.mhd"),
                    useCompression=True)
    with pytest.raises(DataError, match="NDims '2': a CT volume must be 3-D"):
        load_ct(tmp_path / "f.mhd")


def test_write_mhd_leaves_no_staging_folder(tmp_path):
    write_mhd(tmp_path / "w.mhd", np.zeros((2, 2, 2), np.int16), (0, 0, 0), (1, 1, 1))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.mhd", "w.raw"]


def test_geometry_checks_for_any_reader():
    check_geometry("ct", (0, 0, 0), (1, 1, 1), np.eye(3))
    check_geometry("ct", (-1e4, 1e4, 0), (0.01, 50, 1), SKEW, (16_384, 1, 1))    # the bounds
    for origin, spacing, direction, size, message in (
            ((0, 0, 0), (1, 0, 1), np.eye(3), None, "spacing"),
            ((0, 0, 0), (1, 50.01, 1), np.eye(3), None, r"spacing .*: a voxel step of 50.01 mm"),
            ((0, 0, 0), (0.009, 1, 1), np.eye(3), None, r"spacing .*: a voxel step of 0.009 mm"),
            ((0, np.nan, 0), (1, 1, 1), np.eye(3), None, "origin"),
            ((0, 10_001, 0), (1, 1, 1), np.eye(3), None, r"origin .*: 10001 mm from the"),
            ((0, 0, 0), (1, 1, 1), np.zeros((3, 3)), None, "direction matrix .* is singular"),
            ((0, 0, 0), (1, 1, 1), np.diag([1, 1, 1.01]), None,
             r"direction matrix .*: not orthonormal"),
            ((0, 0, 0), (1, 1, 1), np.eye(3), (1, 16_385, 1),
             r"size \(1, 16385, 1\) voxels: each size must lie between 1 and 16,384")):
        with pytest.raises(DataError, match=f"^ct: {message}"):
            check_geometry("ct", origin, spacing, direction, size)


# ---------------------------------------------------------------- DICOM series: header bounds
def write_dicom_series(folder, spacing_xyz=(0.7, 0.8, 2.5), origin_xyz=(-100.0, 20.0, -300.0),
                       shape_irc=(4, 8, 6)):
    """A small CT as a DICOM series (one file per slice), its geometry written by SimpleITK
    (PixelSpacing, ImagePositionPatient per slice): the folder, and the voxels."""
    folder.mkdir()
    volume = (np.arange(np.prod(shape_irc)).reshape(shape_irc) % 50).astype(np.int16)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.1.12345"
    for k in range(shape_irc[0]):
        image = sitk.GetImageFromArray(volume[k:k + 1])
        image.SetSpacing(spacing_xyz)
        image.SetOrigin((*origin_xyz[:2], origin_xyz[2] + k * spacing_xyz[2]))
        for tag, value in (("0008|0060", "CT"), ("0020|000d", uid + ".1"), ("0020|000e", uid),
                           ("0008|0018", f"{uid}.{k + 2}"), ("0020|0013", str(k + 1))):
            image.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(image)
    return folder, volume


def test_a_dicom_series_at_the_bounds_loads(tmp_path):
    folder, volume = write_dicom_series(tmp_path / "s", (0.01, 50.0, 50.0), (1e4, -1e4, 0.0))
    ct = load_ct(folder)
    np.testing.assert_array_equal(ct.voxels, volume)
    assert ct.spacing_xyz == pytest.approx((0.01, 50, 50)) and ct.origin_xyz[:2] == (1e4, -1e4)


@pytest.mark.parametrize("spacing, origin, message", [
    ((700000.0, 0.7, 2.5), (0, 0, 0), r"spacing \(700000.0, 0.7\) \(PixelSpacing\): a voxel "
                                      r"step of 700000 mm is no CT's"),
    ((0.7, 0.8, 2.5), (-100.0, 2e4, 0), r"origin \(-100.0, 20000.0, 0.0\) "
                                        r"\(ImagePositionPatient\): 20000 mm from"),
])
def test_a_dicom_header_beyond_the_bounds_is_refused_before_any_pixel_is_read(
        tmp_path, monkeypatch, spacing, origin, message):
    folder, _ = write_dicom_series(tmp_path / "s", spacing, origin)

    def no_read(self):
        raise AssertionError("the series was read")

    monkeypatch.setattr(sitk.ImageSeriesReader, "Execute", no_read)
    with pytest.raises(DataError, match=rf"^{folder} \(DICOM series of 4 files\): {message}"):
        load_ct(folder)


def test_slices_too_close_for_a_ct_are_refused_from_their_positions(tmp_path):
    folder, _ = write_dicom_series(tmp_path / "s", (0.7, 0.8, 0.005))
    with pytest.raises(DataError, match=r"\(DICOM series of 4 files\): spacing \(0.7, 0.8, "
                                        r"0.00\d+\) mm: a voxel step of 0.005 mm is no CT's"):
        load_ct(folder)


# --------------------------------------------------------------------------- files that shrink
# Reads crops from a CT whose .raw is cut to one page after the first reads: through crop_irc
# (its size check), or straight from the memmap (the read faults: SIGBUS), in this process or
# in DataLoader workers (one CT per process, as dsets.cached_ct keeps it; the cut waits until
# every worker has opened the CT, so that none opens a cut file, which is another message;
# whichever worker meets the cut file first names it; one worker for the fault, which ends its
# process, so that no other worker sees the cut file meanwhile and names it too).
SHRINKING = textwrap.dedent("""
    import os, sys, time
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Dataset
    from common.ct import load_ct
    from common.errors import run_cli

    CTS = {}

    class Crops(Dataset):
        def __init__(self, path, direct, readers):
            self.path, self.direct, self.readers = path, direct, readers

        def __len__(self):
            return 8

        def __getitem__(self, i):
            if self.path not in CTS:
                CTS[self.path] = load_ct(self.path)
                (self.path.parent / f"loaded-{os.getpid()}").touch()
            ct = CTS[self.path]
            crop = ct.crop_irc((4, 4, 4), (8, 8, 8))
            if i == 3:
                deadline = time.monotonic() + 60     # the cut comes once every reader has
                while len(list(self.path.parent.glob("loaded-*"))) < self.readers and \
                        time.monotonic() < deadline:  # opened the CT: none opens a cut file
                    time.sleep(0.01)
                os.truncate(self.path.with_suffix(".raw"), 4096)
                crop = np.asarray(ct.voxels[-8:], np.float32) if self.direct else \\
                    ct.crop_irc((28, 28, 28), (8, 8, 8))
            return torch.from_numpy(crop)

    def main(argv):
        from pathlib import Path
        path, how, workers = Path(argv[0]), argv[1], int(argv[2])
        for batch in DataLoader(Crops(path, how == "direct", max(workers, 1)), batch_size=1,
                                num_workers=workers):
            pass
        print("read it all")

    run_cli(main, sys.argv[1:])
""")


@pytest.mark.parametrize("how, workers", [("checked", 0), ("direct", 0), ("checked", 2),
                                          ("direct", 1)])
def test_a_raw_cut_under_a_reader_is_one_line_naming_it(tmp_path, how, workers):
    path = write_mhd(tmp_path / "ct.mhd", np.ones((32, 32, 32), np.int16), (0, 0, 0), (1, 1, 1))
    script = tmp_path / "child.py"
    script.write_text(SHRINKING)
    result = subprocess.run([sys.executable, str(script), str(path), how, str(workers)],
                            capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr == (f"error: {path.with_suffix('.raw')}: the file shrank while in use "
                             "(it has 4,096 bytes, the CT needs 65,536); was it truncated or "
                             "rewritten? restore it and run again\n")
    assert result.stdout == ""


def test_a_raw_deleted_or_cut_before_it_is_mapped(tmp_path):
    path = write_mhd(tmp_path / "ct.mhd", np.ones((4, 6, 6), np.int16), (0, 0, 0), (1, 1, 1))
    header = check_mhd(path)
    path.with_suffix(".raw").unlink()                  # after the check, before the mapping
    with pytest.raises(DataError, match=r"ct\.mhd: its voxel file .*ct\.raw is missing "
                                        r"\(deleted while in use\?\)$"):
        _memmap_raw(header, (4, 6, 6))
    path.with_suffix(".raw").write_bytes(b"\0" * 100)
    with pytest.raises(DataError, match=r"ct\.raw: the file shrank while in use \(it has 100 "
                                        r"bytes, the CT needs 288\)"):
        _memmap_raw(header, (4, 6, 6))
    with pytest.raises(DataError, match=r"ct\.raw is missing$"):
        path.with_suffix(".raw").unlink() or load_ct(path)


def test_a_raw_deleted_while_mapped_is_still_read(tmp_path):
    """Linux keeps a deleted file's bytes while a mapping holds it: nothing to report."""
    volume = np.arange(4 * 6 * 6, dtype=np.int16).reshape(4, 6, 6)
    path = write_mhd(tmp_path / "ct.mhd", volume, (0, 0, 0), (1, 1, 1))
    ct = load_ct(path)
    path.with_suffix(".raw").unlink()
    np.testing.assert_array_equal(ct.crop_irc((2, 3, 3), (4, 6, 6)), volume)
