"""Chapter 11's exercises: the loader passes visit every sample once, the memory arithmetic, the
list orders, the thinned lists, the training helper around chapter 11's loop, the AUC against
scikit-learn, and the TensorBoard event files holding the keys each naming asks for."""
import contextlib
import io

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from ch10_luna import exercises_ch11 as ex
from ch10_luna.dsets import Candidate, LunaDataset, find_luna
from ch10_luna.metrics import summarize
from ch10_luna.model import LunaModel
from ch10_luna.train_cls import make_datasets
from common.device import seed_everything
from tests.common.cli import assert_one_error_line, run_main


def candidates(n_pos, n_neg):
    """Nodules first, then non-nodules, as read_candidates sorts them."""
    return ([Candidate(True, 10.0 - i, "s", (i, 0, 0)) for i in range(n_pos)] +
            [Candidate(False, 0.0, "s", (i, 1, 0)) for i in range(n_neg)])


def test_thin_keeps_the_order_every_nodule_up_to_half_and_spreads_the_rest():
    full = candidates(5, 95)
    kept = ex.thin(full, 20)
    assert len(kept) == 20 and sum(c.is_nodule for c in kept) == 5
    assert kept == [c for c in full if c in kept]                      # list order kept
    negatives = [full.index(c) for c in kept if not c.is_nodule]
    assert negatives[0] == 5 and negatives[-1] == 99                   # spread end to end
    assert sum(c.is_nodule for c in ex.thin(candidates(30, 70), 20)) == 10
    assert ex.thin(full, 0) == full and ex.thin(full, 500) == full


def test_list_orders():
    labels = [True] * 3 + [False] * 5
    assert list(ex.list_order("sorted")(labels, 1)) == list(range(8))
    assert list(ex.list_order("reversed")(labels, 1)) == list(range(7, -1, -1))
    shuffled = ex.list_order("shuffled", seed=1)
    assert sorted(shuffled(labels, 1)) == list(range(8))
    assert list(shuffled(labels, 1)) != list(shuffled(labels, 2))      # reshuffled per epoch


def test_auc_equals_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    label = rng.random(300) < 0.2
    pred = np.round(rng.random(300) * 0.5 + label * 0.3, 1)            # rounded: many ties
    metrics = torch.stack([torch.tensor(label, dtype=torch.float32),
                           torch.tensor(pred, dtype=torch.float32), torch.zeros(300)])
    assert ex.auc(metrics) == pytest.approx(roc_auc_score(label, metrics[1].numpy()), abs=1e-12)
    assert np.isnan(ex.auc(metrics[:, ~torch.tensor(label)]))


def test_largest_batch_is_the_last_that_fits():
    # 2 workers x 2 prefetched + 1 batch in the loop: 5 x 10 + 20 = 70 bytes a sample
    assert ex.largest_batch(1000, 10, 20, 100, 2) == 11                 # 200 + 11 * 70 = 970
    assert ex.largest_batch(1000, 10, 20, 100, 0) == 33                 # 33 * 30 = 990
    assert ex.largest_batch(100, 10, 20, 100, 2) == 0


def tiny_sets(tiny_luna):
    train, val = make_datasets(find_luna(tiny_luna), val_stride=2)
    return train, LunaDataset(ex.thin(val.candidates, 8), val.series_paths)


def test_the_loader_pass_and_the_probe_see_every_sample(tiny_luna):
    train, _ = tiny_sets(tiny_luna)
    for workers in (0, 1):
        assert ex.loader_pass(train, range(10), 4, workers).n == 10
    sample = ex.WithProcessMemory(train)[0]
    assert len(sample) == 5 and torch.equal(sample[0], train[0][0]) and sample[4] > 0


def test_train_short_runs_chapter_11s_loop_on_the_given_order_and_loader(tiny_luna):
    train, val = tiny_sets(tiny_luna)
    asked, collated = [], []

    def order(labels, epoch):
        asked.append(epoch)
        return [0, 1, 2, 3, 4, 5][:3 + epoch]

    def collate(samples):
        collated.append(len(samples))
        return torch.utils.data.default_collate(samples)

    model, history = ex.train_short(train, val, 2, order, collate=collate, batch_size=4)
    assert asked == [1, 2] and [e.epoch for e in history] == [1, 2]
    assert [e.trn.shape[1] for e in history] == [4, 5]                  # the order's samples
    assert collated == [4, 4, 1]
    assert all(e.val.shape == (3, len(val)) for e in history)
    assert torch.equal(history[0].trn[0], torch.tensor([float(c.is_nodule) for c in
                                                        train.candidates[:4]]))
    seed_everything(0)
    start = LunaModel().state_dict()                                    # what it started from
    assert not torch.equal(model.state_dict()["head_linear.weight"], start["head_linear.weight"])


def history_of(values):
    """Epochs whose metrics rows give known summaries: labels 1, 0, 1, 0 and P = `values`."""
    rows = lambda p: torch.tensor([[1.0, 0, 1, 0], p, [0.1, 0.2, 0.3, 0.4]])  # noqa: E731
    return [ex.Epoch(e + 1, rows(p), rows(p[::-1])) for e, p in enumerate(values)]


def test_the_event_files_hold_the_keys_each_naming_asks_for(tmp_path):
    history = history_of([[0.9, 0.2, 0.8, 0.1], [0.6, 0.7, 0.4, 0.3]])
    folders = ex.write_namings(tmp_path, history)
    tags = {naming: ex.read_tags(folder) for naming, folder in folders.items()}
    n = len(summarize(history[0].trn))
    assert set(tags["book"]) == set(tags["a"]) == set(tags["c"]) == {"trn", "val"}
    assert set(tags["b"]) == {"trnval"}
    assert {"loss/all", "correct/neg", "pr/f1_score", "count/tp"} <= set(tags["book"]["val"])
    assert {"all/loss", "neg/correct", "f1_score/pr", "tp/count"} <= set(tags["a"]["val"])
    assert {"trn/loss/all", "val/loss/all", "val/pr/recall"} <= set(tags["b"]["trnval"])
    assert {"1_pr/f1_score", "2_loss/all", "3_correct/neg", "4_count/tp"} <= set(
        tags["c"]["trn"])
    assert all(len(t) == n for naming in ("book", "a", "c") for t in tags[naming].values())
    assert len(tags["b"]["trnval"]) == 2 * n

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folders["a"] / "val"))
    acc.Reload()
    recall = [(s.step, s.value) for s in acc.Scalars("recall/pr")]
    assert recall == [(e.epoch, pytest.approx(summarize(e.val)["pr/recall"])) for e in history]


def test_main_answers_every_exercise(tiny_luna, tmp_path, capsys):
    results = ex.main(["--data-dir", str(tiny_luna.parent), "--val-stride", "2", "--limit", "6",
                       "--batch-size", "4", "--epoch-size", "4", "--val-size", "8",
                       "--device", "cpu", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert sorted(results) == [1, 2, 3]
    for label in ("Exercise 11.1", "a. num_workers 0", "a. num_workers 2", "b. measured",
                  "Exercise 11.2", "reversed (nodules last)", "Exercise 11.3", "c. own",
                  "answer:"):
        assert label in out, label
    assert results[2]["train"] == 4
    assert set(results[3]["tags"]) == {"book", "a", "b", "c"}


def test_bad_flags_are_one_line(capsys):
    assert_one_error_line(*run_main(ex.main, ["--epoch-size", "-1"], capsys), "--epoch-size -1")
    assert_one_error_line(*run_main(ex.main, ["--device", "tpu"], capsys), "--device tpu")


def answer_2(reversed_p, reversed_pos, sorted_p=0.1, sorted_pos=0.0):
    """11.2's printed answer line for hand-made validation scores."""
    row = {"correct/neg": 100.0, "pr/f1_score": 0.0, "pr/precision": 0.0, "pr/recall": 0.0,
           "auc": 0.5, "loss/all": 0.3}
    scores = {"sorted": {**row, "mean_p": sorted_p, "correct/pos": sorted_pos},
              "reversed": {**row, "mean_p": reversed_p, "correct/pos": reversed_pos},
              "shuffled": {**row, "mean_p": 0.2, "correct/pos": 0.0}}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        ex.report_2({"train": 1024, "nodules": 248, "scores": scores})
    (line,) = [x for x in out.getvalue().splitlines() if x.lstrip().startswith("answer:")]
    return line


def test_the_order_verdict_claims_a_win_only_where_nodules_are_found():
    assert "the last class it saw wins: reversed calls 60% of the validation nodules" in \
        answer_2(0.6, 60.0)
    leaning = answer_2(0.348, 0.0)                  # the sample's run: outputs lean, none found
    assert "lean towards the class the epoch ended on" in leaning and "wins" not in leaning
    assert "lean towards" in answer_2(0.348, 0.0, sorted_pos=10.0)
    assert "too few for the last class seen" in answer_2(0.1, 0.0)     # equal: no pull
