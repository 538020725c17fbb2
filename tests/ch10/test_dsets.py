"""Candidate list, split by series, balanced order, the crop dataset, and each bad input."""
import shutil

import numpy as np
import pytest
import torch

from ch10_luna.dsets import (
    Candidate,
    LunaDataset,
    epoch_order,
    find_luna,
    locate_luna,
    match_diameter,
    read_candidates,
    split_by_series,
    validation_uids,
)
from common.errors import DataError


@pytest.fixture
def luna_copy(tiny_luna, tmp_path):
    """A private copy to damage."""
    return shutil.copytree(tiny_luna, tmp_path / "luna")


def test_candidates_sorted_nodules_first_largest_first(tiny_luna):
    candidates = read_candidates(find_luna(tiny_luna))
    flags = [c.is_nodule for c in candidates]
    assert flags == sorted(flags, reverse=True)
    nodule_diameters = [c.diameter_mm for c in candidates if c.is_nodule]
    assert nodule_diameters == sorted(nodule_diameters, reverse=True)


def test_diameter_match_is_a_quarter_diameter_per_axis():
    annotations = [((10.0, 20.0, 30.0), 8.0)]
    assert match_diameter((11.9, 18.1, 32.0), annotations) == 8.0        # |d| <= 2 each axis
    assert match_diameter((12.1, 20.0, 30.0), annotations) == 0.0        # x off by 2.1 mm
    assert match_diameter((0.0, 0.0, 0.0), []) == 0.0


def test_split_is_disjoint_by_series_and_takes_every_nth():
    candidates = [Candidate(i % 7 == 0, 0.0, f"uid{i % 23:02d}", (i, 0, 0)) for i in range(400)]
    train, val = split_by_series(candidates, val_stride=5)
    train_uids, val_uids = {c.series_uid for c in train}, {c.series_uid for c in val}
    assert not train_uids & val_uids
    assert val_uids == {f"uid{i:02d}" for i in (0, 5, 10, 15, 20)}
    assert len(train) + len(val) == 400


def test_balanced_order_alternates_positive_and_negative():
    labels = [True] * 3 + [False] * 40
    order = epoch_order(labels, epoch_size=30, balanced=True, seed=1, epoch=1)
    assert len(order) == 30
    assert all(labels[i] for i in order[0::2]) and not any(labels[i] for i in order[1::2])
    assert set(order[0::2]) == {0, 1, 2}                      # positives cycle
    default = epoch_order(labels, balanced=True, seed=1, epoch=1)
    assert len(default) == 80                                 # every negative once, paired


def test_epoch_order_is_reproducible_per_epoch_and_reshuffled_between_epochs():
    labels = [i % 5 == 0 for i in range(100)]
    a1 = epoch_order(labels, 50, balanced=True, seed=3, epoch=1)
    assert np.array_equal(a1, epoch_order(labels, 50, balanced=True, seed=3, epoch=1))
    assert not np.array_equal(a1, epoch_order(labels, 50, balanced=True, seed=3, epoch=2))
    unbalanced = epoch_order(labels, None, balanced=False, seed=3, epoch=1)
    assert sorted(unbalanced) == list(range(100))


def test_dataset_items_match_the_books_tuple(tiny_luna):
    luna = find_luna(tiny_luna)
    candidates = read_candidates(luna)
    ds = LunaDataset(candidates, luna.series)
    x, label, uid, center_irc = ds[0]
    assert x.shape == (1, 32, 48, 48) and x.dtype == torch.float32
    assert x.min() >= -1000 and x.max() <= 1000
    assert label.tolist() == [0, 1] and label.dtype == torch.long       # a nodule comes first
    assert uid == candidates[0].series_uid and center_irc.shape == (3,)
    assert float(x[0, 16, 24, 24]) > -400                               # the nodule's centre


def test_dataset_takes_a_fake_loader():
    class FakeCt:
        def raw_candidate(self, center_xyz, width_irc):
            return np.full(width_irc, 7.0, dtype=np.float32), (1, 2, 3)
    ds = LunaDataset([Candidate(False, 0.0, "u", (0, 0, 0))], {"u": "x.mhd"},
                     crop_irc=(4, 6, 6), load_ct=lambda path: FakeCt())
    x, label, _, irc = ds[0]
    assert x.shape == (1, 4, 6, 6) and float(x.mean()) == 7.0
    assert label.tolist() == [1, 0] and irc.tolist() == [1, 2, 3]


# --------------------------------------------------------------------------- bad input
def test_missing_folder():
    with pytest.raises(DataError, match="does not exist"):
        find_luna("/no/such/luna")


def test_malformed_csv_row_is_named_with_its_line(luna_copy):
    path = luna_copy / "candidates.csv"
    lines = path.read_text().splitlines()
    lines[5] = lines[5].replace(lines[5].split(",")[2], "12.x")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"candidates\.csv, line 6: coordY is '12\.x'"):
        read_candidates(find_luna(luna_copy))


def test_short_csv_row(luna_copy):
    path = luna_copy / "annotations.csv"
    path.write_text(path.read_text() + "1.2.3,4.0\n")
    n = len(path.read_text().splitlines())
    with pytest.raises(DataError, match=rf"annotations\.csv, line {n}: 2 fields, expected 5"):
        read_candidates(find_luna(luna_copy))


def test_csv_without_the_columns(luna_copy):
    (luna_copy / "candidates.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match="no column seriesuid, coordX, coordY, coordZ, class"):
        read_candidates(find_luna(luna_copy))


def test_candidates_of_series_not_on_disk_are_skipped_with_one_warning(luna_copy):
    for f in (luna_copy / "subset1").iterdir():
        f.unlink()
    (luna_copy / "subset1").rmdir()
    luna = find_luna(luna_copy)
    with pytest.warns(UserWarning, match="skipped the candidates of 2 series not on disk") as w:
        candidates = read_candidates(luna)
    assert len(w) == 1
    assert {c.series_uid for c in candidates} == set(luna.series)


def test_an_empty_subset_folder_is_skipped_with_a_warning(luna_copy, capsys):
    (luna_copy / "subset7").mkdir()
    luna = locate_luna(str(luna_copy))
    assert "subset7" in luna.skipped and len(luna.series) == 4
    assert capsys.readouterr().err == (f"warning: skipped: {luna_copy / 'subset7'} holds no "
                                       ".mhd files: finish extracting it or remove it\n")


def test_a_truncated_raw_skips_its_series_and_the_run_goes_on(luna_copy, capsys):
    raw = sorted((luna_copy / "subset0").glob("*.raw"))[0]
    raw.write_bytes(raw.read_bytes()[:4096])
    luna = locate_luna(str(luna_copy))
    assert raw.stem not in luna.series and len(luna.series) == 3
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: skipped: {raw}: ")
    assert "truncated (4,096 bytes" in err[0]


def test_no_usable_series_at_all_is_one_error(luna_copy):
    for raw in luna_copy.glob("subset*/*.raw"):
        raw.unlink()
    with pytest.raises(DataError, match=r"no usable series \(4 skipped; .*\.mhd: its voxel "
                                        r"file .*\.raw is missing\)"):
        find_luna(luna_copy)


def test_missing_csv(luna_copy):
    (luna_copy / "annotations.csv").unlink()
    with pytest.raises(DataError, match="missing annotations.csv"):
        find_luna(luna_copy)


# ----------------------------------------------------------------------------- LUNA16's folds
def test_fold_k_validates_on_subset_k_and_trains_on_the_rest(luna_copy):
    luna = find_luna(luna_copy)
    by_subset = {}
    for uid, path in luna.series.items():
        by_subset.setdefault(path.parent.name, set()).add(uid)
    for k in range(len(by_subset)):
        val = validation_uids(luna.series, fold=k)
        assert set(val) == by_subset[f"subset{k}"]
        train, held = split_by_series(read_candidates(luna), val_uids=val)
        assert {c.series_uid for c in held} == set(val)
        assert {c.series_uid for c in train} == set(luna.series) - set(val)
    folds = [set(validation_uids(luna.series, fold=k)) for k in range(len(by_subset))]
    assert set().union(*folds) == set(luna.series) and sum(map(len, folds)) == len(luna.series)


def test_a_fold_with_no_series_on_disk_is_one_error(luna_copy):
    luna = find_luna(luna_copy)
    with pytest.raises(DataError, match="--fold 9: no series of subset9 is on disk"):
        validation_uids(luna.series, fold=9)
