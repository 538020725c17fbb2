"""Mobile: the lite-interpreter .ptl round trip, dynamic quantization, ExecuTorch when installed."""
import pytest
import torch

from ch07_cifar.train_fc import make_model
from ch10_luna.model import LunaModel
from ch15_deploy import export_mobile
from ch15_deploy.classifier import hu_like_crop
from ch15_deploy.export_jit import load_generator, load_unet
from ch15_deploy.jit_intro import trace_model

pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit.* is deprecated:DeprecationWarning")


def test_generator_lite_interpreter_round_trip(tmp_path, one_torch_thread):
    generator = load_generator(ngf=8, n_blocks=1)
    traced, _ = trace_model(generator, torch.rand(1, 3, 32, 32))
    path = tmp_path / "g.ptl"
    lite, note = export_mobile.save_lite(traced, path)
    assert type(lite).__name__ == "LiteScriptModule" and path.stat().st_size > 0
    # this CPU wheel has no XNNPACK: optimize_for_mobile is skipped and the reason kept
    assert note is None or "XNNPACK" in note
    from torch.jit.mobile import _get_model_bytecode_version

    assert _get_model_bytecode_version(str(path)) >= 5                  # a lite-interpreter file
    x = torch.rand(2, 3, 40, 48)
    torch.testing.assert_close(lite(x), generator(x), rtol=0, atol=0)


def test_scripted_unet_lite_round_trip(tmp_path, one_torch_thread):
    unet = load_unet()
    scripted = torch.jit.script(unet)
    lite, _ = export_mobile.save_lite(scripted, tmp_path / "unet.ptl", optimize_first=False)
    x = torch.randn(1, 7, 32, 48)
    torch.testing.assert_close(lite(x), unet(x))


def test_dynamic_quantization_shrinks_linear_weights_and_stays_close(one_torch_thread):
    torch.manual_seed(0)
    model, _ = make_model("deep")
    x = torch.randn(16, 3 * 32 * 32)
    result = export_mobile.compare_quantized("fc", model, x)
    assert result["quantized_size"] < 0.3 * result["size"]           # int8 weights: ~4x smaller
    assert result["diff"] < 0.05 * result["scale"]
    quantized = result["quantized"]
    assert isinstance(quantized[0], torch.ao.nn.quantized.dynamic.Linear)
    assert type(model[0]) is torch.nn.Linear                          # the original is untouched


def test_quantization_leaves_convolutions_alone(one_torch_thread):
    torch.manual_seed(0)
    result = export_mobile.compare_quantized("luna", LunaModel(), torch.randn(1, 1, 32, 48, 48))
    assert 0.9 * result["size"] < result["quantized_size"] < result["size"]   # only the head


def test_quantized_model_saves_for_the_lite_interpreter(tmp_path, one_torch_thread):
    torch.manual_seed(0)
    model, _ = make_model("fc")
    quantized = export_mobile.quantize_linear(model)
    x = torch.randn(4, 3 * 32 * 32)
    traced, _ = trace_model(quantized, x)
    lite, _ = export_mobile.save_lite(traced, tmp_path / "q.ptl", optimize_first=False)
    torch.testing.assert_close(lite(x), quantized(x))


def needs_executorch():
    pytest.importorskip("executorch", reason="executorch is not installed (pip install "
                                             "executorch==1.5.1); the .pte path is skipped")


def test_executorch_runs_the_generator_like_eager(tmp_path):
    needs_executorch()
    generator = load_generator(ngf=8, n_blocks=1)
    x = torch.rand(1, 3, 32, 32)
    path, _ = export_mobile.export_executorch(generator, (x,), tmp_path / "g.pte")
    assert path.read_bytes()[4:8] == b"ET12"                  # ExecuTorch's flatbuffer tag
    (out,) = export_mobile.run_executorch(path, (x,))
    torch.testing.assert_close(out, generator(x), rtol=1e-4, atol=1e-4)


def test_the_2d_rewrite_of_lunamodel_equals_it(hu_model):
    rewritten = export_mobile.for_executorch(hu_model)
    kinds = {type(m) for m in rewritten.modules()}
    assert torch.nn.Conv3d not in {type(m) for m in rewritten.children()}
    assert export_mobile.Conv3dAs2d in kinds and export_mobile.MaxPool3dAsAmax in kinds
    assert torch.nn.MaxPool3d not in kinds
    x = torch.stack([hu_like_crop(0), hu_like_crop(1)])
    with torch.inference_mode():
        for a, b in zip(rewritten(x), hu_model(x), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert any(isinstance(m, torch.nn.Conv3d) for m in hu_model.modules())   # the original kept


def test_the_rewrite_refuses_what_it_does_not_cover():
    with pytest.raises(ValueError, match="only 3x3x3"):
        export_mobile.for_executorch(torch.nn.Sequential(torch.nn.Conv3d(1, 2, 5)))
    with pytest.raises(ValueError, match="only MaxPool3d"):
        export_mobile.for_executorch(torch.nn.Sequential(torch.nn.MaxPool3d(3)))


def test_executorch_runs_lunamodel_like_eager(tmp_path, hu_model):
    needs_executorch()
    x = hu_like_crop(2).unsqueeze(0)
    path, _ = export_mobile.export_executorch(export_mobile.for_executorch(hu_model), (x,),
                                              tmp_path / "luna.pte")
    logits, probs = export_mobile.run_executorch(path, (x,))
    with torch.inference_mode():
        expected = hu_model(x)
    torch.testing.assert_close(logits, expected[0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(probs, expected[1], rtol=1e-4, atol=1e-5)


@pytest.mark.slow          # two ExecuTorch exports (LunaModel's takes ~20 s on 2 busy cores)
def test_main_runs(tmp_path, capsys):
    result = export_mobile.main(["--ngf", "8", "--n-blocks", "1", "--out", str(tmp_path),
                                 "--data-dir", str(tmp_path / "no-data"), "--repeats", "1"])
    assert result["path"].exists() and result["lite_diff"] == 0
    assert result["fc"]["quantized_size"] < 0.3 * result["fc"]["size"]
    out = capsys.readouterr().out
    assert "optimize_for_mobile:" in out and "ExecuTorch" in out
    if export_mobile.executorch_installed():
        for key in ("luna_pte", "cyclegan_pte"):
            assert result[key]["path"].exists()
        for key in ("luna_pte", "cyclegan_pte"):         # XNNPACK sums in its own order
            assert max(result[key]["diffs"]) < 1e-3 * max(result[key]["scale"], 1)
        assert {p.name for p in tmp_path.iterdir()} == {"luna.pte", "cyclegan.pte",
                                                         "cyclegan_mobile.ptl"}
