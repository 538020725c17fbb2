"""Chapters 11-12: the classifier's metrics, from the per-sample rows the loops fill.

    metrics = train_one_epoch(...)              # (3, N): label, P(nodule), loss per sample
    s = summarize(metrics)                      # loss, percent correct, precision, recall, F1
    print(format_summary(epoch, "trn", s))

The book's logMetrics, split into the pure computation (`summarize`), the printed line and the
logging (`log_metrics`: metrics.jsonl, TensorBoard scalars, the PR curve and histograms).
train_cls.py, chapter 14's malignancy trainer and the chapters' exercises share them.
"""
import numpy as np

from ch10_luna.checkpoints import log_epoch

LABEL, PRED, LOSS = range(3)            # rows of the per-sample metrics tensor (book ch11)


def summarize(metrics, threshold=0.5):
    """Per-sample (3, N) metrics -> the book's numbers; no NaN when a class is absent."""
    label = metrics[LABEL] > 0.5
    predicted = metrics[PRED] > threshold
    neg, pos = int((~label).sum()), int(label.sum())
    tp = int((label & predicted).sum())
    tn = int((~label & ~predicted).sum())
    fp, fn = neg - tn, pos - tp
    ratio = lambda a, b: a / b if b else 0.0  # noqa: E731
    mean = lambda t: float(t.mean()) if t.numel() else 0.0  # noqa: E731
    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {
        "loss/all": mean(metrics[LOSS]), "loss/neg": mean(metrics[LOSS][~label]),
        "loss/pos": mean(metrics[LOSS][label]),
        "correct/all": 100 * ratio(tp + tn, neg + pos), "correct/neg": 100 * ratio(tn, neg),
        "correct/pos": 100 * ratio(tp, pos),
        "pr/precision": precision, "pr/recall": recall,
        "pr/f1_score": ratio(2 * precision * recall, precision + recall),
        "count/tp": tp, "count/fp": fp, "count/fn": fn, "count/tn": tn,
        "count/neg": neg, "count/pos": pos,
    }


def format_summary(epoch, phase, s):
    return (f"E{epoch} {phase} loss {s['loss/all']:.4f}  correct {s['correct/all']:5.1f}% "
            f"(neg {s['correct/neg']:5.1f}% of {s['count/neg']}, pos {s['correct/pos']:5.1f}% of "
            f"{s['count/pos']})  precision {s['pr/precision']:.3f}  recall {s['pr/recall']:.3f}"
            f"  f1 {s['pr/f1_score']:.3f}")


def log_metrics(run, epoch, phase, metrics, summary, samples_seen):
    """The book's logMetrics: a metrics.jsonl row and TensorBoard scalars, plus the PR curve
    and the histograms of P(nodule) (the confident ones left out, as the book does)."""
    log_epoch(run, epoch, phase, summary, samples_seen)
    writer = run.writers.get(phase)
    if writer is None:
        return
    label, pred = metrics[LABEL] > 0.5, metrics[PRED]
    writer.add_pr_curve("pr", label, pred, samples_seen)
    bins = np.linspace(0, 1, 51)
    for tag, values in (("is_neg", pred[~label & (pred > 0.01)]),
                        ("is_pos", pred[label & (pred < 0.99)])):
        if values.numel():
            writer.add_histogram(tag, values, samples_seen, bins=bins)
    writer.flush()
