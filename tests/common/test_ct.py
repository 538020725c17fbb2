"""common/ct.py: xyz <-> irc for any direction matrix, crops (memmap == full load), bad input."""
import numpy as np
import pytest
import SimpleITK as sitk

from common.ct import (
    HU_MAX,
    HU_MIN,
    IrcTuple,
    crop_bounds,
    irc_to_xyz,
    load_ct,
    write_mhd,
    xyz_to_irc,
)
from common.errors import DataError


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
