"""Chapter 13 data: annotation masks, their cache, context slices, the 2-D datasets, the split."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ch10_luna.dsets import Candidate, cached_ct, read_annotations, split_by_series
from ch10_luna.synthetic import LUNG_HU, TISSUE_HU
from ch13_segment import dsets
from ch13_segment.dsets import (
    Luna2dSegmentationDataset,
    TrainingLuna2dSegmentationDataset,
    annotation_box,
    annotation_centers,
    build_annotation_mask,
    context_slices,
    dense_mask,
    grow_radius,
    mask_slice,
    series_mask,
    split_series,
)
from common.ct import Ct, to_hu
from common.errors import DataError

SPACING_XYZ = (1.0, 1.0, 2.0)             # 2 mm slices: a 6 mm ball is 3 slices but 6 rows tall
ORIGIN_XYZ = (-30.0, 12.0, -100.0)


def lung_with_balls(shape, centers_irc, radius_mm=6.0, seed=0):
    """HU volume: textured lung (-850 +- 30) with dense (+40 HU) balls; spacing SPACING_XYZ."""
    rng = np.random.default_rng(seed)
    hu = (LUNG_HU + rng.normal(0, 30, shape)).astype(np.float32)
    spacing_irc = np.array(SPACING_XYZ[::-1])
    grid = np.indices(shape)
    balls = np.zeros(shape, dtype=bool)
    for c in centers_irc:
        dist2 = sum(((g - ci) * s) ** 2 for g, ci, s in zip(grid, c, spacing_irc))
        balls |= dist2 <= radius_mm ** 2
    hu[balls] = TISSUE_HU
    return hu, balls


def make_ct(hu, path=None):
    return Ct(hu, ORIGIN_XYZ, SPACING_XYZ, np.eye(3), path)


def centre_xyz(ct, irc):
    return ct.irc_to_xyz(irc)


# ----------------------------------------------------------------------------- the mask builder
def test_mask_is_the_annotated_ball_and_nothing_else():
    hu, balls = lung_with_balls((24, 40, 40), [(12, 20, 20), (6, 8, 30)])
    ct = make_ct(hu)
    annotated = lung_with_balls((24, 40, 40), [(12, 20, 20)])[1]
    mask = build_annotation_mask(ct, [centre_xyz(ct, (12, 20, 20))])
    assert mask.dtype == bool and mask.shape == ct.shape
    np.testing.assert_array_equal(mask, annotated)          # the ball, no lung, not the 2nd ball
    assert balls[6, 8, 30] and not mask[6, 8, 30]


def test_box_grows_one_voxel_past_the_ball_on_each_axis():
    hu, _ = lung_with_balls((24, 40, 40), [(12, 20, 20)])
    # 6 mm radius: 3 slices of 2 mm, 6 rows and columns of 1 mm; the first step outside stops it.
    assert [grow_radius(hu, (12, 20, 20), axis) for axis in range(3)] == [4, 7, 7]
    assert annotation_box(hu, (12, 20, 20)) == (slice(8, 17), slice(13, 28), slice(13, 28))
    small, _ = lung_with_balls((24, 40, 40), [(12, 20, 20)], radius_mm=2.0)
    assert [grow_radius(small, (12, 20, 20), axis) for axis in range(3)] == [2, 3, 3]
    # A lower threshold counts the lung as dense too: the box runs to the volume's edge.
    assert grow_radius(hu, (12, 20, 20), 0, threshold_hu=-950) == 13


def test_mask_at_the_first_slice_stays_inside_and_does_not_wrap():
    hu, balls = lung_with_balls((24, 40, 40), [(1, 20, 20)])
    hu[-2:] = TISSUE_HU                               # dense tissue in the last slices
    ct = make_ct(hu)
    assert grow_radius(hu, (1, 20, 20), 0) == 4       # the far side alone stops the growth
    mask = build_annotation_mask(ct, [centre_xyz(ct, (1, 20, 20))])
    np.testing.assert_array_equal(mask, balls)        # the whole cut ball, nothing at the end


def test_centre_outside_the_volume_is_a_data_error():
    ct = make_ct(lung_with_balls((10, 20, 20), [])[0], path="some/series.mhd")
    with pytest.raises(DataError, match="series.mhd.*outside the volume"):
        build_annotation_mask(ct, [centre_xyz(ct, (10, 5, 5))])


# ----------------------------------------------------------------------------- the mask cache
def test_cache_is_reused_and_a_new_version_rebuilds(tmp_path, monkeypatch):
    hu, balls = lung_with_balls((16, 32, 32), [(8, 16, 16)])
    ct = make_ct(hu)
    centers = [centre_xyz(ct, (8, 16, 16))]
    loads = []
    load_ct = lambda path: loads.append(path) or ct

    first = series_mask("1.2.3", "1.2.3.mhd", centers, tmp_path, load_ct=load_ct)
    np.testing.assert_array_equal(dense_mask(first), balls)
    assert first.positive_indexes == [5, 6, 7, 8, 9, 10, 11] and first.centers_irc == [(8, 16, 16)]
    assert [p.name for p in tmp_path.iterdir()] == ["1.2.3.npz"]          # no temp file left

    def fail(*args, **kwargs):
        raise AssertionError("the mask was rebuilt")

    original = dsets.build_annotation_mask
    monkeypatch.setattr(dsets, "build_annotation_mask", fail)
    again = series_mask("1.2.3", "1.2.3.mhd", centers, tmp_path, load_ct=load_ct)
    assert loads == ["1.2.3.mhd"]                     # the CT was not even opened
    assert again.shape == first.shape and again.positive_indexes == first.positive_indexes
    np.testing.assert_array_equal(again.voxels_irc, first.voxels_irc)

    with pytest.raises(AssertionError, match="rebuilt"):                     # other annotations
        series_mask("1.2.3", "1.2.3.mhd", centers * 2, tmp_path, load_ct=load_ct)
    monkeypatch.setattr(dsets, "MASK_VERSION", dsets.MASK_VERSION + 1)
    with pytest.raises(AssertionError, match="rebuilt"):                     # a new builder
        series_mask("1.2.3", "1.2.3.mhd", centers, tmp_path, load_ct=load_ct)
    monkeypatch.setattr(dsets, "build_annotation_mask", original)
    series_mask("1.2.3", "1.2.3.mhd", centers, tmp_path, load_ct=load_ct)   # writes the new key
    monkeypatch.setattr(dsets, "build_annotation_mask", fail)
    rebuilt = series_mask("1.2.3", "1.2.3.mhd", centers, tmp_path, load_ct=load_ct)  # reused
    np.testing.assert_array_equal(rebuilt.voxels_irc, first.voxels_irc)

    (tmp_path / "1.2.3.npz").write_bytes(b"PK\x03\x04 truncated")              # a broken file
    with pytest.raises(AssertionError, match="rebuilt"):
        series_mask("1.2.3", "1.2.3.mhd", centers, tmp_path, load_ct=load_ct)


# ----------------------------------------------------------------------------- context slices
def test_context_slices_repeat_the_edge_slices():
    voxels = np.arange(10, dtype=np.int16)[:, None, None] * np.ones((1, 4, 5), dtype=np.int16)
    first = context_slices(voxels, 0)
    assert first.shape == (7, 4, 5) and first.dtype == np.float32
    assert first[:, 0, 0].tolist() == [0, 0, 0, 0, 1, 2, 3]
    assert context_slices(voxels, 9)[:, 0, 0].tolist() == [6, 7, 8, 9, 9, 9, 9]
    assert context_slices(voxels, 5)[:, 0, 0].tolist() == [2, 3, 4, 5, 6, 7, 8]
    assert context_slices(voxels * 500, 5).max() == 1000                        # clipped HU
    assert context_slices(voxels, 5, context=1, rows=slice(1, 3)).shape == (3, 2, 5)


def test_a_ct_with_fewer_slices_than_the_context_is_a_data_error(tmp_path):
    hu, _ = lung_with_balls((5, 32, 32), [(2, 16, 16)])
    ct = make_ct(hu)
    masks = {"9.9.9": series_mask("9.9.9", "x.mhd", [centre_xyz(ct, (2, 16, 16))], tmp_path,
                                  load_ct=lambda path: ct)}
    for make in (Luna2dSegmentationDataset, TrainingLuna2dSegmentationDataset):
        with pytest.raises(DataError, match=r"series 9\.9\.9 has 5 slices.*at least 7"):
            make(["9.9.9"], {"9.9.9": "x.mhd"}, masks)
    assert len(Luna2dSegmentationDataset(["9.9.9"], {}, masks, context_slices=2)) == 5


# ----------------------------------------------------------------------------- synthetic sample
def test_masks_cover_every_annotated_nodule_centre(seg_luna, seg_masks):
    centers, diameters = annotation_centers(seg_luna), read_annotations(seg_luna.annotations_csv)
    assert sum(map(len, centers.values())) == 14
    for uid, m in seg_masks.items():
        ct = cached_ct(seg_luna.series[uid])
        mask = dense_mask(m)
        assert mask.shape == ct.shape
        assert m.centers_irc == [tuple(ct.xyz_to_irc(xyz)) for xyz in centers[uid]]
        assert all(mask[c] for c in m.centers_irc)
        assert m.positive_indexes == np.flatnonzero(mask.any(axis=(1, 2))).tolist()
        assert (to_hu(ct.voxels)[mask] > -700).all()
        balls = sum(np.pi / 6 * d ** 3 for _, d in diameters[uid]) / np.prod(ct.spacing_xyz)
        assert 0.8 * balls < mask.sum() < 2 * balls            # the nodules, not the lungs
        i = m.positive_indexes[len(m.positive_indexes) // 2]
        np.testing.assert_array_equal(mask_slice(m, i), mask[i])


def test_validation_slices_shapes_and_content(seg_luna, seg_masks):
    uids = sorted(seg_masks)
    ds = Luna2dSegmentationDataset(uids, seg_luna.series, seg_masks)
    assert len(ds) == sum(len(m.positive_indexes) for m in seg_masks.values())
    image, label, uid, index = ds[len(ds) // 2]
    ct = cached_ct(seg_luna.series[uid])
    assert image.shape == (7,) + ct.shape[1:] and image.dtype == torch.float32
    assert label.shape == (1,) + ct.shape[1:] and label.dtype == torch.bool
    assert label.any() and -1000 <= image.min() and image.max() <= 1000
    torch.testing.assert_close(image[3], torch.from_numpy(to_hu(ct.voxels[index])))
    full = Luna2dSegmentationDataset(uids[:1], seg_luna.series, seg_masks, full_ct=True)
    assert len(full) == seg_masks[uids[0]].shape[0]
    image, label, uid, index = full[0]
    assert index == 0 and (image[:4] == image[0]).all() and not label.any()


def test_training_crops_around_nodules(seg_luna, seg_masks):
    uids = sorted(seg_masks)[1:]
    ds = TrainingLuna2dSegmentationDataset(uids, seg_luna.series, seg_masks, epoch_size=12, seed=3)
    assert len(ds) == 12 and len(ds.nodules) == 10
    for i in range(len(ds)):
        image, label, uid, index = ds[i]
        assert image.shape == (7, 64, 64) and image.dtype == torch.float32
        assert label.shape == (1, 64, 64) and label.dtype == torch.bool
        assert uid in uids and label.any()                     # every crop holds its nodule
        assert (image[3][label[0]] > -700).all()               # label and image line up
    again = TrainingLuna2dSegmentationDataset(uids, seg_luna.series, seg_masks, 12, seed=3)
    for i in (0, 5):
        torch.testing.assert_close(again[i][0], ds[i][0])      # reproducible per (seed, epoch, i)
    first_epoch = [ds[i][0] for i in range(len(ds))]
    ds.set_epoch(2)
    assert any(not torch.equal(a, ds[i][0]) for i, a in enumerate(first_epoch))
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch[0].shape == (4, 7, 64, 64) and batch[1].shape == (4, 1, 64, 64)


def test_split_by_series_matches_chapter_11():
    uids = [f"1.2.{i}" for i in range(25)]
    train, val = split_series(reversed(uids), val_stride=10)
    assert set(train).isdisjoint(val) and sorted(train + val) == sorted(uids)
    assert val == sorted(uids)[::10] and len(val) == 3
    cands = [Candidate(True, 5.0, u, (0.0, 0.0, float(k))) for k in range(2) for u in uids]
    ch11_train, ch11_val = split_by_series(cands, val_stride=10)
    assert sorted({c.series_uid for c in ch11_val}) == val
    assert sorted({c.series_uid for c in ch11_train}) == train
    with pytest.raises(DataError, match="val-stride"):
        split_series(uids, val_stride=1)


def test_main_summarizes_the_sample(seg_luna, tmp_path, capsys):
    train_ds, val_ds, masks = dsets.main(["--data-dir", str(seg_luna.root.parent),
                                          "--val-stride", "2", "--cache-dir", str(tmp_path)])
    assert len(list(tmp_path.glob("*.npz"))) == 3
    assert set(val_ds.series_uids) == set(sorted(masks)[::2])
    assert {uid for uid, _ in train_ds.nodules}.isdisjoint(val_ds.series_uids)
    assert "3 series, 4 training nodules" in capsys.readouterr().out


@pytest.mark.realdata
def test_the_book_chapter_13_nodule_list(book_file):
    malignancy = book_file("part2/luna/annotations_with_malignancy.csv")
    annotations = book_file("part2/luna/annotations.csv")
    centers = annotation_centers(SimpleNamespace(malignancy_csv=malignancy,
                                                 annotations_csv=annotations))
    assert (len(centers), sum(map(len, centers.values()))) == (600, 1182)    # the book's list
    luna16 = annotation_centers(SimpleNamespace(malignancy_csv=None, annotations_csv=annotations))
    assert (len(luna16), sum(map(len, luna16.values()))) == (601, 1186)      # LUNA16's own
