"""TorchScript files of the CycleGAN generator and the U-Net: traced, scripted, saved, reloaded."""
import warnings

import numpy as np
import pytest
import torch

from ch15_deploy import export_jit
from ch15_deploy.export_jit import load_generator, load_unet

# torch.jit.trace/script/save announce their deprecation in torch 2.13: expected here.
pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit.* is deprecated:DeprecationWarning")


def tracer_warnings(fn, *args):
    """fn(*args) with every warning recorded; the TracerWarnings it raised, and its result."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args)
    return [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)], result


def test_unet_traces_without_tracer_warning(one_torch_thread):
    unet = load_unet()                                    # chapter 13's padded configuration
    x = torch.randn(2, 7, 32, 32)
    caught, traced = tracer_warnings(torch.jit.trace, unet, x)
    assert caught == []
    torch.testing.assert_close(traced(x), unet(x), rtol=0, atol=0)


def test_traced_unpadded_unet_crops_right_at_another_size(one_torch_thread):
    # padding=False: center_crop really crops; its sizes come from size(), recorded as shape ops
    unet = load_unet(in_channels=1, n_classes=2, depth=3, wf=2, padding=False, batch_norm=False)
    caught, traced = tracer_warnings(torch.jit.trace, unet, torch.randn(1, 1, 92, 92))
    assert caught == []
    other = torch.randn(2, 1, 108, 108)
    assert traced(other).shape == unet(other).shape == (2, 2, 68, 68)
    torch.testing.assert_close(traced(other), unet(other))


def test_scripted_unet_matches_eager_and_reloads(tmp_path, one_torch_thread):
    unet = load_unet()
    scripted = export_jit.script_model(unet)
    reloaded = export_jit.save_and_reload(scripted, tmp_path / "unet_scripted.pt")
    for shape in ((1, 7, 32, 32), (3, 7, 48, 64)):
        x = torch.randn(shape)
        torch.testing.assert_close(reloaded(x), unet(x))


def test_generator_trace_reloads_equal_to_eager(tmp_path, one_torch_thread):
    generator = load_generator(ngf=8, n_blocks=2)
    assert not any(p.requires_grad for p in generator.parameters()) and not generator.training
    x = torch.rand(1, 3, 64, 64)
    reloaded, caught, _ = export_jit.export_generator(generator, x, tmp_path / "g.pt")
    assert (tmp_path / "g.pt").stat().st_size > 0
    # the only TracerWarnings come from InstanceNorm's own size checks
    assert {c.split(" might")[0] for c in caught} <= {"Converting a tensor to a Python boolean"}
    for shape in ((1, 3, 64, 64), (2, 3, 48, 80)):                # another size and batch too
        y = torch.rand(shape)
        torch.testing.assert_close(reloaded(y), generator(y), rtol=0, atol=0)


def test_tensor_file_layout_and_round_trip(tmp_path):
    a, b = torch.arange(6.0).reshape(2, 3), torch.randn(4, 1, 5, 2)
    path = export_jit.write_tensors(tmp_path / "t.bin", [a, b])
    raw = path.read_bytes()
    assert np.frombuffer(raw, "<i8", 3).tolist() == [2, 2, 3]     # ndim, then the sizes
    assert np.frombuffer(raw, "<f4", 6, 24).tolist() == a.flatten().tolist()
    assert len(raw) == 8 * 3 + 4 * 6 + 8 * 5 + 4 * b.numel()
    back = export_jit.read_tensors(path)
    assert [t.shape for t in back] == [a.shape, b.shape]
    torch.testing.assert_close(back[1], b, rtol=0, atol=0)


def test_main_writes_and_checks_the_files(tmp_path, capsys):
    result = export_jit.main(["--ngf", "8", "--n-blocks", "1", "--out", str(tmp_path)])
    for key in ("generator_path", "unet_path", "unet_script_path"):
        assert result[key].exists()
    assert result["generator_diff"] == result["generator_other_diff"] == 0
    assert result["unet_warnings"] == []
    assert result["unet_diff"] < 1e-5 and result["script_diff"] < 1e-5
    if "cpp_diff" in result:                               # the C++ program was built
        assert result["cpp_diff"] < 1e-5
    if "cpp_api_diff" in result:                           # the C++-frontend generator too
        assert result["cpp_api_diff"] < 1e-5
    assert "0 TracerWarnings" in capsys.readouterr().out
