"""The synthetic sample round-trips through the real LUNA loaders and is what it claims."""
import csv
import json

import numpy as np

from ch10_luna.dsets import find_luna, read_annotations, read_candidates
from ch10_luna.synthetic import EXCLUDED_CSV, MARKER, SAMPLE_VERSION, generate_sample
from common.ct import load_ct


def test_files_in_lunas_layout_load_through_the_real_loaders(tiny_luna):
    luna = find_luna(tiny_luna)
    info = json.loads((tiny_luna / MARKER).read_text())
    assert len(luna.series) == info["series"] == 4
    assert sorted(p.parent.name for p in luna.series.values()) == ["subset0", "subset0",
                                                                   "subset1", "subset1"]
    candidates = read_candidates(luna)
    assert len(candidates) == info["candidates"]
    assert sum(c.is_nodule for c in candidates) == info["positive_candidates"]
    for mhd in luna.series.values():
        ct = load_ct(mhd)
        assert ct.voxels.dtype == np.int16
        assert isinstance(ct.voxels, np.memmap)
        assert ct.spacing_xyz[0] == ct.spacing_xyz[1] != ct.spacing_xyz[2]   # anisotropic
        assert all(abs(v) > 1 for v in ct.origin_xyz)                         # non-zero origin


def test_lunas_exact_csv_columns(tiny_luna):
    headers = {name: next(csv.reader(open(tiny_luna / name))) for name in
               ("candidates.csv", "annotations.csv", "annotations_with_malignancy.csv")}
    assert headers["candidates.csv"] == ["seriesuid", "coordX", "coordY", "coordZ", "class"]
    assert headers["annotations.csv"] == ["seriesuid", "coordX", "coordY", "coordZ",
                                          "diameter_mm"]
    assert headers["annotations_with_malignancy.csv"][:6] == [
        "seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "mal_bool"]


def test_every_annotated_nodule_is_solid_tissue_at_its_centre(tiny_luna):
    luna = find_luna(tiny_luna)
    for uid, nodules in read_annotations(luna.annotations_csv).items():
        ct = load_ct(luna.series[uid])
        for center_xyz, diameter in nodules:
            assert 3 <= diameter <= 30
            irc = ct.xyz_to_irc(center_xyz)
            assert all(0 <= i < n for i, n in zip(irc, ct.shape))
            near = ct.crop_irc(irc, (3, 3, 3))                   # lung is about -850 HU
            # Even a 3 mm nodule, blurred by partial volume, stands 300+ HU above the lung.
            assert ct.hu[irc] > -600 and near.max() > -500, (uid, center_xyz, near.max())
            if diameter >= 4 * max(ct.spacing_xyz):             # a 3x3x3 box fits well inside
                assert np.median(ct.crop_irc(irc, (3, 3, 3))) > -300


def test_positive_candidates_match_an_annotation(tiny_luna):
    candidates = read_candidates(find_luna(tiny_luna))
    assert all(c.diameter_mm > 0 for c in candidates if c.is_nodule)


def test_malignancy_rises_with_size(tmp_path):
    out = generate_sample(tmp_path / "s", n_series=12, seed=3, negatives=(1, 2), progress=False)
    rows = list(csv.DictReader(open(out / "annotations_with_malignancy.csv")))
    mal = [float(r["diameter_mm"]) for r in rows if r["mal_bool"] == "True"]
    ben = [float(r["diameter_mm"]) for r in rows if r["mal_bool"] == "False"]
    assert mal and ben and np.mean(mal) > np.mean(ben) + 3


def test_deterministic_and_imbalanced_by_default(tmp_path):
    a = generate_sample(tmp_path / "a", n_series=2, seed=5, progress=False)
    b = generate_sample(tmp_path / "b", n_series=2, seed=5, progress=False)
    assert (a / "candidates.csv").read_bytes() == (b / "candidates.csv").read_bytes()
    mhd = sorted((a / "subset0").glob("*.raw"))[0]
    assert mhd.read_bytes() == (b / "subset0" / mhd.name).read_bytes()
    info = json.loads((a / MARKER).read_text())
    negatives = info["candidates"] - info["positive_candidates"]
    assert negatives / info["nodules"] >= 100                 # hundreds of negatives per nodule


def test_an_existing_sample_is_kept_and_no_temporary_folder_is_left(tiny_luna):
    before = (tiny_luna / "candidates.csv").stat().st_mtime_ns
    generate_sample(tiny_luna, n_series=4, seed=7, progress=False)
    assert (tiny_luna / "candidates.csv").stat().st_mtime_ns == before
    assert not [p for p in tiny_luna.parent.iterdir() if ".tmp-" in p.name]


def _rows(path):
    return list(csv.DictReader(open(path)))


def _xyz(row):
    return np.array([float(row[k]) for k in ("coordX", "coordY", "coordZ")])


def test_excluded_findings_are_the_specks_listed_as_lunas_irrelevant_findings(tmp_path):
    out = generate_sample(tmp_path / "s", n_series=3, seed=2, negatives=(20, 30),
                          progress=False)
    header = next(csv.reader(open(out / EXCLUDED_CSV)))
    assert header == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]   # LUNA16's
    excluded = _rows(out / EXCLUDED_CSV)
    info = json.loads((out / MARKER).read_text())
    assert info["excluded_findings"] == len(excluded) >= 9 and info["version"] == SAMPLE_VERSION
    assert {r["seriesuid"] for r in excluded} == set(find_luna(out).series)     # every CT
    diameters = [float(r["diameter_mm"]) for r in excluded]
    assert -1.0 in diameters and any(d > 0 for d in diameters)          # both kinds listed
    assert all(d == -1 or 1.5 < d < 3 for d in diameters)              # under LUNA's 3 mm
    nodules = _rows(out / "annotations.csv")
    negatives = {(r["seriesuid"], r["coordX"], r["coordY"], r["coordZ"])
                 for r in _rows(out / "candidates.csv") if r["class"] == "0"}
    luna = find_luna(out)
    for r in excluded:
        # A non-nodule candidate too, so both of LUNA16's tracks meet it.
        assert (r["seriesuid"], r["coordX"], r["coordY"], r["coordZ"]) in negatives
        for n in nodules:
            if n["seriesuid"] == r["seriesuid"]:
                assert np.linalg.norm(_xyz(n) - _xyz(r)) > float(n["diameter_mm"]) / 2 + 3
        ct = load_ct(luna.series[r["seriesuid"]])
        near = ct.crop_irc(ct.xyz_to_irc(tuple(_xyz(r))), (3, 3, 3))
        assert near.max() > -500                    # denser than the lung (about -850 HU)


def test_listing_the_excluded_findings_draws_nothing_from_the_ct_stream(tmp_path, monkeypatch):
    import ch10_luna.synthetic as synthetic

    a = generate_sample(tmp_path / "a", n_series=2, seed=5, negatives=(20, 30), progress=False)
    monkeypatch.setattr(synthetic, "EXCLUDED_STREAM", 99)        # another listing stream
    b = generate_sample(tmp_path / "b", n_series=2, seed=5, negatives=(20, 30), progress=False)
    for name in ("candidates.csv", "annotations.csv", "annotations_with_malignancy.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    for raw in sorted(a.glob("subset*/*.raw")):
        assert raw.read_bytes() == (b / raw.relative_to(a)).read_bytes()
    assert [r["coordX"] for r in _rows(a / EXCLUDED_CSV)] == \
        [r["coordX"] for r in _rows(b / EXCLUDED_CSV)]          # the same findings
    assert [r["diameter_mm"] for r in _rows(a / EXCLUDED_CSV)] != \
        [r["diameter_mm"] for r in _rows(b / EXCLUDED_CSV)]     # listed otherwise


def test_an_older_sample_is_regenerated(tmp_path):
    out = generate_sample(tmp_path / "s", n_series=1, seed=4, negatives=(30, 40),
                          progress=False)
    info = json.loads((out / MARKER).read_text())
    del info["version"], info["excluded_findings"]            # as version 1 wrote it
    (out / MARKER).write_text(json.dumps(info))
    (out / EXCLUDED_CSV).unlink()
    generate_sample(out, n_series=1, seed=4, negatives=(30, 40), progress=False)
    assert json.loads((out / MARKER).read_text())["version"] == SAMPLE_VERSION
    assert (out / EXCLUDED_CSV).is_file()
