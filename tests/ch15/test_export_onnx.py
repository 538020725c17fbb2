"""ONNX: the dynamo exporter, onnxruntime against eager, a dynamic batch, and the fallback."""
import warnings

import pytest
import torch

from ch15_deploy import export_onnx
from ch15_deploy.classifier import BOOK_CHECKPOINT, hu_like_crop


@pytest.fixture(scope="module")
def exported(hu_model, tmp_path_factory):
    """The fixture's classifier exported once for the module (the dynamo export takes seconds)."""
    path = tmp_path_factory.mktemp("onnx") / "luna.onnx"
    messages = []
    exporter = export_onnx.export_luna(hu_model, path, announce=messages.append)
    return path, exporter, messages, export_onnx.onnx_session(path)


def test_current_exporter_is_used(exported):
    path, exporter, messages, _ = exported
    assert exporter == "dynamo" and messages == []
    assert path.is_file() and not path.with_name(path.name + ".data").exists()  # one file
    assert "'batch', 1, 32, 48, 48" in export_onnx.describe(path)


@pytest.mark.parametrize("n", [1, 3])
def test_onnxruntime_matches_eager(exported, hu_model, n):
    x = torch.stack([hu_like_crop(10 + i) for i in range(n)])
    with torch.inference_mode():
        eager = hu_model(x)
    ort = export_onnx.run_onnx(exported[3], x)
    assert ort[0].shape == ort[1].shape == (n, 2)
    for a, b in zip(ort, eager):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)
    assert export_onnx.compare(hu_model, exported[3], x)[0] < 1e-4


def test_fallback_to_the_torchscript_exporter(hu_model, tmp_path, monkeypatch):
    real_export = torch.onnx.export

    def dynamo_fails(*args, **kwargs):
        if kwargs.get("dynamo"):
            raise RuntimeError("pretend the dynamo exporter broke")
        return real_export(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", dynamo_fails)
    messages = []
    path = tmp_path / "luna.onnx"
    with warnings.catch_warnings(record=True) as caught:               # torch says "legacy"
        warnings.simplefilter("always")
        exporter = export_onnx.export_luna(hu_model, path, announce=messages.append)
    assert any("legacy TorchScript-based ONNX export" in str(w.message) for w in caught)
    assert exporter == "torchscript"
    assert len(messages) == 1 and "pretend the dynamo exporter broke" in messages[0]
    assert "falling back" in messages[0]
    x = torch.stack([hu_like_crop(i) for i in range(3)])                # dynamic batch too
    assert export_onnx.compare(hu_model, export_onnx.onnx_session(path), x)[0] < 1e-4


@pytest.mark.realdata
def test_main_with_the_book_model_and_crop(book_file, tmp_path, capsys):
    data_dir = book_file(BOOK_CHECKPOINT).parents[2]
    book_file("p3ch15/cls_val_example.pt")
    result = export_onnx.main(["--data-dir", str(data_dir), "--out", str(tmp_path)])
    assert result["exporter"] == "dynamo" and result["path"] == tmp_path / "luna.onnx"
    assert max(result["diff"]) < 1e-4 and max(result["batch_diff"]) < 1e-4
    assert result["prob_nodule"] < 0.5                      # the book's crop is not a nodule
    assert "the book's crop (label [1, 0])" in capsys.readouterr().out
