"""TorchScript: tracing unrolls loops and freezes branches, scripting keeps them."""
import pytest
import torch

from ch15_deploy import jit_intro
from ch15_deploy.classifier import hu_like_crop


@pytest.fixture(scope="module")
def intro():
    return jit_intro.trace_vs_script(announce=lambda *a: None)


def test_trace_unrolls_the_loop_and_script_keeps_it(intro):
    assert "for " not in intro["traced"].code and intro["traced"].code.count("torch.add") == 4
    assert "for " in intro["scripted"].code


def test_scripted_handles_other_sizes_traced_does_not(intro):
    for n in (2, 5, 9):
        x = torch.randn(n, 4)
        torch.testing.assert_close(intro["scripted"](x), x.sum(0))
    x = torch.randn(5, 4)
    torch.testing.assert_close(intro["traced"](x), x.sum(0))     # right on the traced size only
    assert intro["traced_error_7"] > 0.1 and intro["scripted_error_7"] < 1e-5
    assert "out of range" in intro["traced_3"]
    assert intro["check_failed"]                                    # check_inputs catches it


def test_branch_on_a_value_warns_and_is_frozen(intro):
    assert any("Python boolean" in w for w in intro["branch_warnings"])
    minus = -torch.ones(3)
    assert torch.equal(intro["traced_if"](minus), minus)           # the branch taken at trace
    assert torch.equal(intro["scripted_if"](minus), torch.ones(3))


def test_traced_luna_equals_eager_and_survives_save_and_load(hu_model, tmp_path):
    x = torch.stack([hu_like_crop(0), hu_like_crop(1)])
    traced, caught = jit_intro.trace_model(hu_model, x[:1])
    assert caught == []
    assert not hu_model.training
    assert not any(p.requires_grad for p in hu_model.parameters())
    reloaded = jit_intro.save_and_reload(traced, tmp_path / "sub" / "luna.pt")
    with torch.inference_mode():
        eager = hu_model(x)
        for out in (traced(x), reloaded(x)):                       # batch 2, traced on batch 1
            for a, b in zip(out, eager):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_main_writes_a_reloadable_trace(tmp_path, capsys):
    result = jit_intro.main(["--random-weights", "--out", str(tmp_path),
                             "--data-dir", str(tmp_path / "no-data")])   # random HU-like crop
    assert result["path"].is_file()
    assert result["trace_diff"] < 1e-4 and result["file_diff"] < 1e-4
    assert result["batch_diff"] < 1e-3          # logits of an untrained model are in the 100s
    assert "random HU-like crop" in capsys.readouterr().out
