"""Softmax and NLL from scratch against torch (book ch7)."""
import pytest
import torch
from torch import nn

from ch07_cifar import softmax_nll
from ch07_cifar.softmax_nll import log_softmax, loss_curves, nll, softmax, softmax_naive


def test_softmax_sums_to_one_and_matches_torch():
    torch.manual_seed(0)
    x = torch.randn(5, 4) * 3
    probs = softmax(x, dim=1)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(5))
    torch.testing.assert_close(probs, nn.Softmax(dim=1)(x))
    torch.testing.assert_close(softmax(torch.tensor([1.0, 2.0, 3.0])),
                               torch.tensor([0.0900, 0.2447, 0.6652]), rtol=0, atol=1e-4)


def test_softmax_keeps_order_and_ignores_a_shift():
    x = torch.tensor([0.5, -1.0, 2.0])
    assert softmax(x).argsort().tolist() == x.argsort().tolist()
    torch.testing.assert_close(softmax(x + 100), softmax(x))


def test_subtracting_the_max_avoids_overflow():
    big = torch.tensor([1000.0, 1001.0])
    assert torch.isnan(softmax_naive(big)).all()
    torch.testing.assert_close(softmax(big), torch.softmax(big, dim=0))
    torch.testing.assert_close(log_softmax(big), torch.log_softmax(big, dim=0))


def test_cross_entropy_of_logits_is_nll_of_log_softmax():
    torch.manual_seed(1)
    logits, target = torch.randn(16, 3), torch.randint(0, 3, (16,))
    ce = nn.CrossEntropyLoss()(logits, target)
    torch.testing.assert_close(ce, nn.NLLLoss()(nn.LogSoftmax(dim=1)(logits), target))
    torch.testing.assert_close(ce, nll(log_softmax(logits, dim=1), target))


def test_nll_punishes_confident_mistakes_more_than_mse():
    p, nll_loss, mse = loss_curves()
    assert p[0] == 1 and p[-1] == 0 and nll_loss[0] == 0 and mse[0] == 0
    assert (nll_loss.diff() >= 0).all() and (mse.diff() >= 0).all()     # both grow as p falls
    assert mse.max() == pytest.approx(2.0)                                # MSE is bounded
    at_01 = int((p - 0.1).abs().argmin())
    assert nll_loss[at_01] > 1.4 * mse[at_01]                             # 2.30 vs 1.62


def test_script_prints_and_plots(tmp_path, capsys):
    result = softmax_nll.main(["--out", str(tmp_path)])
    assert result["ce"] == pytest.approx(result["nll"]) == pytest.approx(result["ours"])
    assert result["png"].stat().st_size > 10_000
    assert "nn.Softmax(dim=1) agrees: True" in capsys.readouterr().out
