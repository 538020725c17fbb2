"""The analysis benchmark's pieces: LUNA-sized resampling, the fp32/bf16 comparison, a tiny run."""

import numpy as np
import pytest
import torch

from ch13_segment.benchmark import analysis_benchmark, compare_detections, luna_sized_ct
from ch13_segment.nodule_analysis import Detection
from common.ct import Ct


def test_luna_sized_ct_keeps_the_field_of_view():
    hu = np.random.default_rng(0).uniform(-1000, 400, (10, 20, 24)).astype(np.float32)
    ct = Ct(hu, (-50.0, 20.0, -300.0), (1.6, 1.7, 2.5), np.eye(3))
    big = luna_sized_ct(ct, 25, size=64)
    assert big.shape == (25, 64, 64)
    np.testing.assert_allclose(np.multiply(big.spacing_xyz, big.shape[::-1]),
                               np.multiply(ct.spacing_xyz, ct.shape[::-1]))
    assert big.origin_xyz == ct.origin_xyz
    assert big.hu.min() >= hu.min() - 1e-3 and big.hu.max() <= hu.max() + 1e-3   # linear


def analysis(detections, probs):
    return {"detections": [Detection(None, irc, p, None) for irc, p in detections],
            "probs": np.asarray(probs, dtype=np.float32)}


def test_compare_detections_on_hand_cases():
    probs = [0.9, 0.1, 0.505, 0.7]
    ref = analysis([((1, 1, 1), 0.9), ((5, 5, 5), 0.2), ((9, 9, 9), 0.505)], probs)
    same = compare_detections(ref, analysis([((1.5, 1, 1), 0.8), ((5, 5, 5), 0.1),
                                             ((9, 9, 9), 0.495)], [0.9, 0.1, 0.49, 0.7]))
    assert same["same"] and same["paired"] == 3 and same["classifier_flips"] == 1
    assert same["classifier_flips_near"] == 1
    assert same["voxel_flips"] == 1 and same["voxel_flips_near"] == 1
    flipped = compare_detections(ref, analysis([((1, 1, 1), 0.3), ((5, 5, 5), 0.1),
                                                ((9, 9, 9), 0.51)], probs))
    assert not flipped["same"] and flipped["classifier_flips"] == 1
    # a candidate that does not pass the classifier may come and go; a passing one may not
    extra_filtered = compare_detections(ref, analysis([((1, 1, 1), 0.9), ((9, 9, 9), 0.52),
                                                       ((20, 1, 1), 0.1)], [0.9, 0.1, 0.505, 0.2]))
    assert extra_filtered["same"] and extra_filtered["unpaired"] == (1, 1)
    assert extra_filtered["voxel_flips"] == 1 and extra_filtered["voxel_flips_near"] == 0
    # a centre crossing a voxel boundary moves the crop by a voxel: that flip is allowed too
    boundary = compare_detections(analysis([((3, 4.48, 5), 0.3)], probs),
                                  analysis([((3, 4.52, 5), 0.6)], probs))
    assert boundary["same"] and boundary["classifier_flips_near"] == 1
    inside = compare_detections(analysis([((3, 4.1, 5), 0.3)], probs),
                                analysis([((3, 4.14, 5), 0.6)], probs))
    assert not inside["same"]
    extra_passing = compare_detections(ref, analysis([((1, 1, 1), 0.9), ((9, 9, 9), 0.51),
                                                      ((20, 1, 1), 0.8)], probs))
    assert not extra_passing["same"] and extra_passing["unpaired_passing"] == 1


def test_analysis_benchmark_on_a_resampled_tiny_ct(tiny_models, seg_luna, monkeypatch, capsys,
                                                   one_torch_thread):
    monkeypatch.setattr(seg_luna, "synthetic", True, raising=False)
    seg, cls, _mal = tiny_models
    uid = sorted(seg_luna.series)[0]
    result = analysis_benchmark(seg_luna, torch.device("cpu"), seg, cls, [9], uid,
                                batch_size=4, precisions=("fp32", "bf16"),
                                erosions=(float("inf"),), compiled=(False,))
    (ct,) = result["cts"]
    assert ct["shape"] == (9, 512, 512)
    assert list(ct["rows"]) == ["book's way", "fp32, erosion inf", "bf16, erosion inf"]
    for row in ct["rows"].values():
        assert set(row["timing"]) == {"load", "segmentation", "grouping", "classification"}
        assert row["total_s"] == pytest.approx(sum(row["timing"].values()))
    assert ct["rows"]["bf16, erosion inf"]["compare"]["same"]
    # the book's way is the same computation in another layout: the same candidates
    assert ct["book_vs_fp32"]["candidates"][0] == ct["book_vs_fp32"]["candidates"][1]
    out = capsys.readouterr().out
    assert "CT 9x512x512" in out and "the same detections" in out


def test_the_networks_table_counts_flops_and_scores_agreement():
    from ch13_segment.benchmark import agreement, flops_of, run_batches

    layer = torch.nn.Linear(8, 4)
    assert flops_of(lambda: layer(torch.ones(3, 8))) == 2 * 3 * 8 * 4      # a multiply-add: 2
    reference = (torch.zeros(4, 2), torch.tensor([[.9, .1], [.4, .6], [.3, .7], [.8, .2]]))
    other = (torch.zeros(4, 2), torch.tensor([[.9, .1], [.6, .4], [.3, .7], [.8, .2]]))
    a = agreement(reference, other, "cls")
    assert a == {"max_abs_diff": pytest.approx(0.2), "decisions_differ": 0.25, "n": 4}
    doubled = run_batches(lambda x: (x * 2, x.sum(dim=1)), torch.ones(5, 3), 2)
    assert doubled[0].shape == (5, 3) and doubled[1].tolist() == [3.0] * 5
