"""Chapter 10's exercises: the timing pass visits exactly N samples, the shuffled dataset is a
permutation of the sorted one, the crop cache gives back the dataset's crops, the uncached
dataset opens a CT per sample, the page-cache probe sees what was read and dropped."""
import os
from pathlib import Path

import torch

from ch10_luna import exercises_ch10 as ex
from ch10_luna.dsets import LunaDataset, find_luna
from ch10_luna.train_cls import make_datasets
from tests.common.cli import assert_one_error_line, run_main


class CountingDataset(LunaDataset):
    """A LunaDataset that records which samples were read."""

    def __init__(self, dataset):
        super().__init__(dataset.candidates, dataset.series_paths)
        self.read = []

    def __getitem__(self, i):
        self.read.append(i)
        return super().__getitem__(i)


def training_set(tiny_luna):
    return make_datasets(find_luna(tiny_luna), val_stride=2)[0]


def test_the_timing_pass_visits_exactly_the_first_and_last_n(tiny_luna):
    ds = CountingDataset(training_set(tiny_luna))
    timing = ex.time_samples(ds, ex.first_n(ds, 7))
    assert timing.n == 7 and ds.read == list(range(7))
    assert timing.series == len({ds.candidates[i].series_uid for i in range(7)})
    ds.read.clear()
    assert ex.time_samples(ds, ex.last_n(ds, 5)).n == 5
    assert ds.read == list(range(len(ds) - 5, len(ds)))
    assert list(ex.first_n(ds, 10**6)) == list(range(len(ds)))       # N past the end: all


def test_the_shuffled_dataset_is_a_permutation_of_the_sorted_one(tiny_luna):
    ds = training_set(tiny_luna)
    shuffled = ex.ShuffledLunaDataset(ds.candidates, ds.series_paths, seed=3)
    assert len(shuffled) == len(ds)
    assert sorted(shuffled.candidates, reverse=True) == ds.candidates   # same samples
    assert shuffled.candidates != ds.candidates
    again = ex.ShuffledLunaDataset(ds.candidates, ds.series_paths, seed=3)
    assert again.candidates == shuffled.candidates                 # the seed fixes the order
    crop, label, uid, _ = shuffled[0]
    assert uid == shuffled.candidates[0].series_uid
    assert bool(label[1]) == shuffled.candidates[0].is_nodule


def test_the_crop_cache_gives_back_the_datasets_samples(tiny_luna, tmp_path):
    ds = training_set(tiny_luna)
    picks = [0, 3, len(ds) - 1]
    _, written = ex.write_crop_cache(ds, picks, tmp_path)
    assert written == sum((tmp_path / f"{i}.npy").stat().st_size for i in picks)
    cached = ex.CachedCropDataset(ds.candidates, tmp_path)
    for i in picks:
        for ours, theirs in zip(cached[i], ds[i], strict=True):
            if isinstance(ours, torch.Tensor):
                assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)
            else:
                assert ours == theirs


def test_without_the_ct_cache_every_sample_opens_its_ct(tiny_luna):
    r = ex.exercise_3(training_set(tiny_luna), limit=6, book_samples=2)
    assert r["opens"] == 12                                  # two runs of 6, one open each
    assert r["runs"]["first"].n == r["runs"]["second"].n == r["runs"]["cached"].n == 6


def test_opens_with_a_one_ct_cache_count_the_changes_of_series():
    assert ex.opens_with_one_ct([]) == 0
    assert ex.opens_with_one_ct(["a", "a", "b", "a", "a"]) == 3


def on_tmpfs(path):
    """True when `path` lives on tmpfs, whose pages cannot be dropped."""
    mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    best = max((m for m in mounts if str(Path(path).resolve()).startswith(m[0])),
               key=lambda m: len(m[0]), default=(None, None))
    return best[1] == "tmpfs"


def test_the_page_cache_probe_sees_a_read_file_and_its_drop(tmp_path):
    path = tmp_path / "block.bin"
    path.write_bytes(os.urandom(256 * 1024))
    path.read_bytes()
    if ex.resident_bytes([path]) is None:
        return                                               # no mincore: nothing to probe
    assert ex.resident_bytes([path]) == 256 * 1024
    assert ex.drop_page_cache([path]) == 256 * 1024
    if not on_tmpfs(tmp_path):
        assert ex.resident_bytes([path]) == 0


def test_main_answers_every_exercise(tiny_luna, tmp_path, capsys):
    results = ex.main(["--data-dir", str(tiny_luna.parent), "--val-stride", "2", "--limit", "4",
                       "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert sorted(results) == [1, 2, 3]
    for label in ("Exercise 10.1", "a. first run", "b. second run", "c. after clearing",
                  "d. the last 4", "crop cache", "Exercise 10.2", "Exercise 10.3", "answer:"):
        assert label in out, label
    assert results[1]["runs"]["d"].n == 4 and results[2]["runs"]["first"].n == 4
    assert list((tmp_path / "out").iterdir()) == []          # the crop cache is cleaned up


def test_bad_flags_are_one_line(capsys):
    assert_one_error_line(*run_main(ex.main, ["--limit", "0"], capsys), "--limit 0")
    assert_one_error_line(*run_main(ex.main, ["--exercise", "4"], capsys), "--exercise")
