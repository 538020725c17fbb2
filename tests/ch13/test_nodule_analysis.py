"""Chapter 14's end-to-end analysis: grouping, matching, checkpoints and the whole pipeline."""
import json

import numpy as np
import pytest
import torch
from scipy import ndimage

from ch10_luna.model import LunaModel
from ch13_segment.dsets import context_slices
from ch13_segment.model import BOOK_CLS_MODEL, BOOK_SEG_MODEL, UNetWrapper, load_model
from ch13_segment.nodule_analysis import (
    BENIGN,
    FILTERED,
    MALIGNANT,
    MISS,
    NODULE_THRESHOLD,
    RECHECK_MARGIN,
    Annotation,
    Detection,
    analysis_document,
    classify,
    clean_mask,
    erosion_structure,
    group_candidates,
    main,
    match_and_score,
    match_detections,
    segment_ct,
)
from ch13_segment.precision import Rechecked, prepare
from common.ct import Ct
from common.errors import DataError
from common.files import write_json
from tests.helpers import save_model_state

SPACING_XYZ = (0.7, 0.8, 2.5)
ORIGIN_XYZ = (-100.0, 50.0, -300.0)


def ball(shape, center_irc, radius):
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((g - c) ** 2 for g, c in zip(grids, center_irc)) <= radius ** 2


def test_grouping_finds_planted_balls_at_their_centres_in_mm():
    shape, centers = (20, 30, 40), [(5, 10, 12), (14, 20, 30), (9, 22, 8)]
    mask = np.zeros(shape, dtype=bool)
    for c, r in zip(centers, (3, 4, 3)):
        mask |= ball(shape, c, r)
    hu = np.where(mask, 60.0, -1000.0).astype(np.float32)
    ct = Ct(hu, ORIGIN_XYZ, SPACING_XYZ, np.eye(3))
    found = sorted(group_candidates(clean_mask(mask, SPACING_XYZ[::-1], float("inf")), ct.hu)[0])
    assert len(found) == 3
    for irc, expected in zip(found, sorted(centers)):
        got_xyz, want_xyz = np.array(ct.irc_to_xyz(irc)), np.array(ct.irc_to_xyz(expected))
        assert np.all(np.abs(got_xyz - want_xyz) < np.array(SPACING_XYZ) / 2)


def test_grouping_weights_the_centre_by_hu_plus_1001():
    mask = np.zeros((3, 3, 4), dtype=bool)
    mask[1, 1, :] = True                               # one row of 4 voxels, no erosion
    hu = np.full(mask.shape, -1000.0, dtype=np.float32)
    hu[1, 1, 3] = 999.0                                # weights 1, 1, 1, 2000
    (center,), labels = group_candidates(mask, hu)
    assert center == pytest.approx((1.0, 1.0, (0 + 1 + 2 + 3 * 2000) / 2003))
    np.testing.assert_array_equal(labels, mask.astype(int))          # one candidate, label 1


def test_erosion_removes_single_voxel_specks():
    shape = (16, 24, 24)
    mask = ball(shape, (8, 12, 12), 4)
    specks = [(1, 1, 1), (14, 2, 20), (3, 21, 4)]
    for s in specks:
        mask[s] = True
    hu = np.zeros(shape, dtype=np.float32)
    assert len(group_candidates(mask, hu)[0]) == 1 + len(specks)
    (center,), _ = group_candidates(clean_mask(mask, (0.7, 0.7, 0.7)), hu)
    assert center == pytest.approx((8.0, 12.0, 12.0))


def test_erosion_structure_keeps_the_axes_with_fine_spacing():
    cross = ndimage.generate_binary_structure(3, 1)                 # the book's
    np.testing.assert_array_equal(erosion_structure((0.625, 0.7, 0.7)), cross)  # thin slices
    in_plane = erosion_structure((2.5, 0.7, 0.7))                   # a thick-slice LUNA16 CT
    assert in_plane.sum() == 5 and not in_plane[0].any() and not in_plane[2].any()
    np.testing.assert_array_equal(in_plane[1], ndimage.generate_binary_structure(2, 1))
    np.testing.assert_array_equal(erosion_structure((1.25, 0.7, 0.7)), in_plane)
    np.testing.assert_array_equal(erosion_structure((2.5, 0.7, 0.7), float("inf")), cross)
    assert erosion_structure((2.25, 1.64, 1.64)) is None            # the synthetic sample
    assert erosion_structure((0.5, 0.5, 0.5), 0.0) is None


def test_a_small_nodule_on_thick_slices_survives_the_erosion():
    """A 4 mm nodule over 2 slices of 2.5 mm: the book's 3-D erosion deletes it, ours keeps it."""
    spacing_irc = (2.5, 0.7, 0.7)
    mask = np.zeros((12, 30, 30), dtype=bool)
    mask[5:7] = ball((30, 30), (15, 15), 2.9)[None]             # 5-6 voxels across, 2 slices
    mask[2, 3, 3] = mask[9, 25, 4] = True                       # specks
    hu = np.zeros(mask.shape, dtype=np.float32)
    assert len(group_candidates(mask, hu)[0]) == 3
    assert group_candidates(clean_mask(mask, spacing_irc, float("inf")), hu)[0] == []  # book's
    (center,), _ = group_candidates(clean_mask(mask, spacing_irc), hu)
    assert center == pytest.approx((5.5, 15.0, 15.0))


def test_match_and_score_on_a_hand_made_case():
    a = [Annotation((0, 0, 0), 10.0, False),           # found by d0 (benign) and d1 (filtered)
         Annotation((50, 0, 0), 6.0, True),            # found as malignant (4 / 6 < 0.7)
         Annotation((100, 0, 0), 8.0, False),          # only a filtered-out detection
         Annotation((0, 100, 0), 20.0, True)]          # nothing near: complete miss
    d = [Detection((2, 0, 0), None, 0.9, 0.2), Detection((3, 0, 0), None, 0.3, 0.9),
         Detection((54, 0, 0), None, 0.8, 0.9), Detection((105, 0, 0), None, 0.4, 0.1),
         Detection((200, 200, 200), None, 0.9, 0.1),   # false positives from here on
         Detection((-200, 0, 0), None, 0.1, 0.9),
         Detection((55, 0, 0), None, 0.95, 0.95),      # 5 / 6 > 0.7: no match
         Detection((0, 7, 0), None, 0.6, 0.1)]         # 7 / 10 is not < 0.7: no match
    table = match_and_score(d, a)
    np.testing.assert_array_equal(table, [[0, 1, 2, 1], [0, 1, 1, 0], [1, 0, 0, 1]])
    assert table[1].sum() == 2 and table[2].sum() == 2            # one count per nodule
    assert table[0, 1:].sum() == 4                                 # the unmatched detections


def test_match_and_score_without_malignancy_and_edge_cases():
    a = [Annotation((0, 0, 0), 10.0, True), Annotation((4, 0, 0), 10.0, False)]
    both = [Detection((2, 0, 0), None, 0.9, None)]     # matches both nodules: counts for each
    np.testing.assert_array_equal(match_and_score(both, a), [[0] * 4, [0, 0, 1, 0], [0, 0, 1, 0]])
    none = match_and_score([], a)
    assert none[1, MISS] == 1 and none[2, MISS] == 1 and none.sum() == 2
    no_truth = match_and_score(both + [Detection((9, 9, 9), None, 0.2, 0.9)], [])
    assert no_truth[0, BENIGN] == 1 and no_truth[0, FILTERED] == 1 and no_truth.sum() == 2
    assert match_and_score(both, a, nodule_threshold=0.95)[2, FILTERED] == 1
    graded = [Detection((2, 0, 0), None, 0.9, 0.6)]
    assert match_and_score(graded, a)[2, MALIGNANT] == 1


def test_segment_ct_matches_the_dataset_inputs_and_pads(one_torch_thread):
    torch.manual_seed(0)
    plain = UNetWrapper(in_channels=7, n_classes=1, depth=2, wf=2, padding=True,
                        batch_norm=True).eval()
    model = prepare(plain, "fp32")                              # whole slices, channels-last
    hu = np.random.default_rng(0).normal(-500, 300, (9, 32, 28)).astype(np.float32)
    ct = Ct(hu, ORIGIN_XYZ, SPACING_XYZ, np.eye(3))
    probs = segment_ct(model, ct, batch_size=4)                 # batches of 4, 4 and 1
    assert probs.shape == (9, 32, 28) and probs.dtype == np.float32
    with torch.inference_mode():
        for i in (0, 4, 8):                                     # edge slices repeat
            x = torch.from_numpy(context_slices(ct.voxels, i))[None]
            torch.testing.assert_close(torch.from_numpy(probs[i]), plain(x)[0, 0],
                                       atol=2e-4, rtol=1e-3)  # channels-last sums
    odd = Ct(hu[:, :29, :25], ORIGIN_XYZ, SPACING_XYZ, np.eye(3))   # padded to 30 x 26
    assert segment_ct(model, odd, batch_size=8).shape == (9, 29, 25)
    with pytest.raises(DataError, match="needs at least 7"):
        segment_ct(model, Ct(hu[:5], ORIGIN_XYZ, SPACING_XYZ, np.eye(3)))


def test_classify_gives_one_probability_per_centre(one_torch_thread):
    torch.manual_seed(0)
    model = LunaModel(conv_channels=2).eval()
    hu = np.random.default_rng(1).normal(-500, 300, (12, 40, 40)).astype(np.float32)
    ct = Ct(hu, ORIGIN_XYZ, SPACING_XYZ, np.eye(3))
    centers = [(6, 20, 20), (0.4, 2.0, 38.6), (11, 39, 0)]      # crops shift in and pad
    p = classify(model, ct, centers, batch_size=2)
    assert p.shape == (3,) and np.all((0 <= p) & (p <= 1))
    with torch.inference_mode():
        x = torch.from_numpy(ct.crop_irc(centers[1], (32, 48, 48)))[None, None]
        assert p[1] == pytest.approx(float(model(x)[1][0, 1]), abs=1e-5)
    assert classify(model, ct, []).shape == (0,)


def test_checkpoints_load_with_the_architecture_read_off_the_state(tmp_path, one_torch_thread):
    torch.manual_seed(0)
    seg = UNetWrapper(in_channels=5, n_classes=1, depth=2, wf=3, padding=True,
                      batch_norm=False, up_mode="upsample").eval()
    cls = LunaModel(conv_channels=3).eval()
    seg_loaded = load_model(save_model_state(seg, tmp_path / "s.state"), "UNetWrapper", "--seg")
    cls_loaded = load_model(save_model_state(cls, tmp_path / "c.state"), "LunaModel", "--cls")
    with torch.inference_mode():
        x = torch.randn(2, 5, 16, 16) * 300
        torch.testing.assert_close(seg_loaded(x), seg(x))
        x = torch.randn(2, 1, 32, 48, 48) * 300
        torch.testing.assert_close(cls_loaded(x)[1], cls(x)[1])
    torch.save(cls.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(DataError, match="not a checkpoint dict"):
        load_model(tmp_path / "bare.pt", "LunaModel", "--cls-model")
    with pytest.raises(DataError, match="no such file"):
        load_model(tmp_path / "absent.state", "LunaModel", "--cls-model")


def test_wrong_kind_of_checkpoint_is_a_data_error(tiny_models, seg_luna):
    seg, _, _ = tiny_models
    uid = sorted(seg_luna.series)[0]
    with pytest.raises(DataError, match=r"--cls-model .*'UNetWrapper'.* needs a LunaModel"):
        main(["--no-compile",
              uid, "--data-dir", str(seg_luna.root), "--seg-model", seg, "--cls-model", seg])


def test_unknown_series_says_how_to_list_them(tiny_models, seg_luna, capsys):
    seg, cls, _ = tiny_models
    with pytest.raises(DataError, match="--list-series"):
        main(["--no-compile",
              "1.2.3.4", "--data-dir", str(seg_luna.root), "--seg-model", seg, "--cls-model",
              cls])
    listed = main(["--no-compile", "--list-series", "--data-dir", str(seg_luna.root)])["series"]
    assert listed == sorted(seg_luna.series)
    printed = capsys.readouterr().out
    assert all(uid in printed for uid in listed)


def test_missing_checkpoints_are_reported_before_the_sample_is_generated(tmp_path):
    with pytest.raises(DataError, match="not found; get it with:  python -m common.data "
                                        "download luna-models"):
        main(["--no-compile", "--run-validation", "--data-dir", str(tmp_path)])
    assert not (tmp_path / "synthetic").exists()          # no 95 MB sample for nothing


def test_main_end_to_end_with_small_models(tiny_models, seg_luna, tmp_path, capsys,
                                           one_torch_thread):
    seg, cls, mal = tiny_models
    out = tmp_path / "analysis.json"
    result = main(["--no-compile",
                   "--run-validation", "--include-train", "--data-dir", str(seg_luna.root),
                   "--seg-model", seg, "--cls-model", cls, "--malignancy-model", mal,
                   "--batch-size", "8", "--json", str(out)])
    table = result["table"]
    assert table.shape == (3, 4) and table[0, MISS] == 0
    n_nodules = sum(len(r["annotations"]) for r in result["results"])
    assert table[1:].sum() == n_nodules == 14                      # every nodule counted once
    printed = capsys.readouterr().out
    assert "Pred. malignant" in printed and "segmentation" in printed
    assert [len(r["detections"]) for r in result["results"]] == [1, 1, 1]
    doc = json.loads(out.read_text())
    assert [s["series_uid"] for s in doc["series"]] == sorted(seg_luna.series)
    assert np.array(doc["table"]).shape == (3, 4)
    for s, r in zip(doc["series"], result["results"]):
        assert len(s["candidates"]) == len(r["detections"])
        for c in s["candidates"]:
            assert set(c) == {"center_xyz", "center_irc", "prob_nodule", "prob_malignant",
                              "matched_annotation"}
            assert len(c["center_xyz"]) == len(c["center_irc"]) == 3
            assert 0 <= c["prob_nodule"] <= 1 and 0 <= c["prob_malignant"] <= 1


def test_json_names_the_matched_annotation(tmp_path):
    a = [Annotation((0.0, 0.0, 0.0), 10.0, True)]
    d = [Detection((1.0, 0.0, 0.0), (4.0, 5.0, 6.0), 0.9, None),
         Detection((50.0, 0.0, 0.0), (7.0, 8.0, 9.0), 0.2, None)]
    result = {"series_uid": "1.2.3", "shape": (9, 8, 7), "segmented_voxels": 12,
              "timing": {"load": 0.0}, "annotations": a, "detections": d,
              "matches": match_detections(d, a)}
    models = {"seg_model": "s", "cls_model": "c", "malignancy_model": None}
    path = write_json(tmp_path / "sub" / "a.json",
                      analysis_document([result], match_and_score(d, a), models, 2.0))
    (series,) = json.loads(path.read_text())["series"]
    first, second = series["candidates"]
    assert first["matched_annotation"] == {"center_xyz": [0.0, 0.0, 0.0], "diameter_mm": 10.0,
                                           "is_malignant": True}
    assert first["center_irc"] == [4.0, 5.0, 6.0] and first["prob_malignant"] is None
    assert second["matched_annotation"] is None


@pytest.mark.realdata
def test_book_checkpoints_on_a_synthetic_ct(book_file, seg_luna, capsys):
    seg, cls = book_file(BOOK_SEG_MODEL), book_file(BOOK_CLS_MODEL)
    uid = sorted(seg_luna.series)[0]
    result = main(["--no-compile", uid, "--data-dir", str(seg_luna.root), "--seg-model", str(seg),
                   "--cls-model", str(cls)])
    assert set(result["timing"]) == {"load", "segmentation", "grouping", "classification"}
    assert result["table"][1:].sum() == len(result["results"][0]["annotations"])
    printed = capsys.readouterr().out
    assert "(no --malignancy-model: 'Pred. benign' holds every detected nodule)" in printed
    assert "seconds per CT: load" in printed


# --------------------------------------------------------------------------- --precision
def json_keys(doc):
    """The schema of an analysis file: its keys at every level (values left out)."""
    if isinstance(doc, dict):
        return {k: json_keys(v) for k, v in doc.items()}
    if isinstance(doc, list) and doc and isinstance(doc[0], (dict, list)):
        return [json_keys(doc[0])]
    return type(doc).__name__ if doc is not None else "null"


@pytest.mark.parametrize("precision", ["bf16", pytest.param("int8", marks=pytest.mark.slow)])
def test_every_precision_writes_the_same_schema_and_the_fp32_decisions(
        precision, tiny_models, seg_luna, tmp_path, one_torch_thread):
    if precision == "int8":
        from ch13_segment.precision import int8_unavailable
        if int8_unavailable():
            pytest.skip(int8_unavailable())
    seg, cls, _ = tiny_models
    docs, results = {}, {}
    for p in ("fp32", precision):
        out = tmp_path / f"{p}.json"
        results[p] = main(["--no-compile",
                           sorted(seg_luna.series)[0], "--data-dir", str(seg_luna.root),
                           "--seg-model", seg, "--cls-model", cls, "--batch-size", "4",
                           "--precision", p, "--json", str(out)])
        docs[p] = json.loads(out.read_text())
    assert docs[precision]["precision"] == precision and docs["fp32"]["precision"] == "fp32"
    assert json_keys(docs[precision]) == json_keys(docs["fp32"])
    decisions = {p: [d.prob_nodule > NODULE_THRESHOLD for d in r["results"][0]["detections"]]
                 for p, r in results.items()}
    assert decisions[precision] == decisions["fp32"]


def test_a_rechecked_classifier_rescores_in_fp32_only_near_the_threshold(tiny_models, seg_luna):
    from ch10_luna.model import LunaModel
    from common.ct import load_ct

    ct = load_ct(next(iter(seg_luna.series.values())))
    torch.manual_seed(0)
    model = LunaModel(conv_channels=2).eval()
    centers = [tuple(s / 2 + k for s in ct.shape) for k in range(-8, 8)]
    fp32 = classify(prepare(model, "fp32"), ct, centers, 4)
    # a threshold placed among the probabilities: the ones within the margin are re-scored
    threshold = float(np.median(fp32))
    bf16_model = Rechecked(prepare(model, "bf16"), prepare(model, "fp32"), threshold,
                           RECHECK_MARGIN["bf16"])
    bf16 = classify(bf16_model, ct, centers, 4)
    near = np.abs(bf16 - threshold) < RECHECK_MARGIN["bf16"]
    assert bf16_model.count == near.sum() > 0
    np.testing.assert_array_equal(bf16[near], fp32[near])             # fp32's own values
    assert ((bf16 > threshold) == (fp32 > threshold)).all()


def test_amp_is_bf16_and_does_not_mix_with_another_precision(tiny_models, seg_luna, capsys):
    seg, cls, _ = tiny_models
    with pytest.raises(SystemExit) as caught:
        main(["--no-compile",
              "--run-validation", "--amp", "--precision", "int8", "--seg-model", seg])
    assert caught.value.code == 2
    assert "--amp is --precision bf16" in capsys.readouterr().err


# --------------------------------------------------------------------------- outputs
def test_each_ct_gets_its_picture_volumes_markups_and_the_submission(tiny_models, seg_luna,
                                                                      tmp_path, capsys):
    import SimpleITK as sitk

    from ch13_segment.evaluate_luna import read_submission

    seg, cls, _ = tiny_models
    uid = sorted(seg_luna.series)[0]
    result = main(["--no-compile",
                   uid, "--data-dir", str(seg_luna.root), "--seg-model", seg, "--cls-model",
                   cls, "--outputs", str(tmp_path / "out"), "--submission",
                   str(tmp_path / "sub.csv")])
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted([f"{uid}.png", f"{uid}_candidates.mha", f"{uid}_mask.mha",
                            f"{uid}_detections.mrk.json", f"{uid}_annotations.mrk.json"])
    labels = sitk.ReadImage(str(tmp_path / "out" / f"{uid}_candidates.mha"))
    ct = sitk.ReadImage(str(seg_luna.series[uid]))
    assert labels.GetSize() == ct.GetSize() and labels.GetOrigin() == ct.GetOrigin()
    detections = result["results"][0]["detections"]
    assert sitk.GetArrayFromImage(labels).max() == len(detections)
    marks, probs = read_submission(tmp_path / "sub.csv")[uid]
    np.testing.assert_allclose(marks, [d.center_xyz for d in detections])
    np.testing.assert_allclose(probs, [d.prob_nodule for d in detections])
    assert "5 files in" in capsys.readouterr().out


def test_outputs_can_be_turned_off_and_a_bad_folder_is_refused_first(tiny_models, seg_luna,
                                                                    tmp_path, capsys):
    seg, cls, _ = tiny_models
    uid = sorted(seg_luna.series)[0]
    common = [uid, "--data-dir", str(seg_luna.root), "--seg-model", seg, "--cls-model", cls]
    main(["--no-compile", *common, "--outputs", str(tmp_path / "out"), "--no-png", "--no-volumes"])
    assert sorted(p.suffix for p in (tmp_path / "out").iterdir()) == [".json", ".json"]
    capsys.readouterr()
    (tmp_path / "file").write_text("in the way")
    with pytest.raises(DataError, match=r"--outputs folder .*file"):
        main(["--no-compile", *common, "--outputs", str(tmp_path / "file" / "out")])
    assert capsys.readouterr().out == ""                     # refused before any CT is read


def test_a_ct_of_ones_own_is_analysed_unscored(tiny_models, seg_luna, tmp_path):
    seg, cls, _ = tiny_models
    path = next(iter(seg_luna.series.values()))
    result = main(["--no-compile",
                   "--ct", str(path), "--data-dir", str(tmp_path), "--seg-model", seg,
                   "--cls-model", cls, "--outputs", str(tmp_path / "out")])
    (r,) = result["results"]
    assert r["annotations"] == [] and r["series_uid"] == path.stem
    assert not (tmp_path / "out" / f"{path.stem}_annotations.mrk.json").exists()
    assert (tmp_path / "out" / f"{path.stem}.png").is_file()
    assert not (tmp_path / "synthetic").exists()             # no sample generated for it
    with pytest.raises(DataError, match="--ct /no/such.mhd: no such file or folder"):
        main(["--no-compile", "--ct", "/no/such.mhd", "--seg-model", seg, "--cls-model", cls])


@pytest.mark.slow
def test_int8_on_a_data_root_holding_one_ct(tiny_models, seg_luna, tmp_path, capsys):
    """The bug: int8 calibration divided by the number of training series, 0 here."""
    from ch13_segment.precision import int8_unavailable

    if int8_unavailable():
        pytest.skip(int8_unavailable())
    seg, cls, _ = tiny_models
    uid = sorted(seg_luna.series)[0]
    luna = tmp_path / "luna"
    (luna / "subset0").mkdir(parents=True)
    for f in seg_luna.series[uid].parent.glob(f"{uid}.*"):
        (luna / "subset0" / f.name).symlink_to(f)
    for name in ("candidates.csv", "annotations.csv"):
        (luna / name).write_bytes((seg_luna.root / name).read_bytes())
    result = main(["--no-compile",
                   uid, "--data-dir", str(tmp_path), "--seg-model", seg, "--cls-model", cls,
                   "--precision", "int8", "--no-png", "--no-volumes", "--no-markups"])
    assert len(result["results"]) == 1
    assert "calibrated on the analysed series (no training series under" in \
        capsys.readouterr().out


@pytest.mark.slow          # two AOTInductor compilations with freezing
def test_compiled_networks_give_the_eager_detections_and_are_kept(tiny_models, seg_luna,
                                                                   tmp_path, capsys):
    seg, cls, _ = tiny_models
    data = tmp_path / "data"
    data.mkdir()
    common = [sorted(seg_luna.series)[0], "--data-dir", str(seg_luna.root), "--seg-model", seg,
              "--cls-model", cls, "--no-png", "--no-volumes", "--no-markups"]
    eager = main(["--no-compile", *common])
    compiled = main(["--compile", *common])
    assert "compiled UNetWrapper-fp32" in capsys.readouterr().out
    again = main(["--compile", *common])
    assert "compiled " not in capsys.readouterr().out            # loaded from the cache
    for result in (compiled, again):
        (r,), (e,) = result["results"], eager["results"]
        assert [d.center_irc for d in r["detections"]] == [d.center_irc for d in e["detections"]]
        np.testing.assert_allclose([d.prob_nodule for d in r["detections"]],
                                   [d.prob_nodule for d in e["detections"]], atol=1e-5)
        np.testing.assert_array_equal(result["table"], eager["table"])


def test_by_default_only_the_fp32_unet_is_compiled_on_a_cpu_for_several_cts():
    from ch13_segment.nodule_analysis import COMPILE_FROM_CTS, compile_choice

    cpu, cuda, many = torch.device("cpu"), torch.device("cuda"), COMPILE_FROM_CTS
    assert compile_choice(None, cpu, "fp32", many) == (True, False)  # measured faster, same
    assert compile_choice(None, cpu, "fp32", 1) == (False, False)    # loading it costs more
    assert compile_choice(None, cpu, "bf16", many) == (False, False)  # measured no faster
    assert compile_choice(None, cuda, "fp32", many) == (False, False)  # not measured here
    assert compile_choice(True, cuda, "bf16", 1) == (True, True)
    assert compile_choice(False, cpu, "fp32", many) == (False, False)
