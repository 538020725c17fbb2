"""latency.py: every backend in the table, each one's output equal to eager, the flags."""
import json

import pytest
import torch

from ch13_segment.model import BOOK_CLS_MODEL, BOOK_SEG_MODEL
from ch15_deploy import latency

pytestmark = [pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning"),
              pytest.mark.filterwarnings(r"ignore:.*torch\.jit.* is deprecated:DeprecationWarning")]

TOLERANCE = {"eager-cl-bf16": 5e-2, "compiled-bf16": 5e-2}  # of the largest output; fp32: 1e-4


def check_results(result, models, backends):
    lines = result["table"].splitlines()
    assert len(lines) == 2 + len(backends)
    for backend in backends:
        assert any(line.startswith(latency.BACKEND_TITLES[backend]) for line in lines)
    for model in models:
        measured = result["results"][model]
        assert list(measured) == backends
        assert measured["eager"]["diff"] == 0
        for backend, r in measured.items():
            assert r["rel_diff"] < TOLERANCE.get(backend, 1e-4), (model, backend, r)
            assert 0 < r["median_ms"] <= r["p90_ms"]


def test_every_backend_but_aoti_matches_eager_on_both_models(tmp_path, capsys):
    backends = [b for b in latency.BACKENDS
                if b not in ("aoti", "compiled", "compiled-bf16", "int8")]
    threads = torch.get_num_threads()
    result = latency.main(["--repeats", "2", "--warmup", "1", "--unet-size", "32",
                           "--threads", "1", "--backends", ",".join(backends),
                           "--out", str(tmp_path), "--json", str(tmp_path / "lat.json")])
    assert torch.get_num_threads() == threads                    # restored afterwards
    check_results(result, ["cls", "unet"], backends)
    assert {p.name for p in tmp_path.iterdir()} >= {"cls.onnx", "unet.onnx", "cls_traced.pt",
                                                    "unet_traced.pt", "lat.json"}
    saved = json.loads((tmp_path / "lat.json").read_text())
    assert saved["threads"] == 1 and saved["unet_size"] == 32
    assert saved["results"]["unet"]["onnxruntime"]["diff"] == pytest.approx(
        result["results"]["unet"]["onnxruntime"]["diff"])
    out = capsys.readouterr().out
    assert "input [1, 1, 32, 48, 48]" in out and "input [1, 7, 32, 32]" in out
    assert "vs eager" in out and "1.00x" in out


@pytest.mark.slow          # two AOTInductor compilations, 10-30 s each on 2 busy cores
def test_aoti_package_matches_eager_on_both_models(tmp_path):
    result = latency.main(["--repeats", "1", "--warmup", "0", "--unet-size", "32",
                           "--backends", "aoti", "--out", str(tmp_path)])
    check_results(result, ["cls", "unet"], ["eager", "aoti"])
    assert (tmp_path / "cls.pt2").exists() and (tmp_path / "unet.pt2").exists()
    assert result["results"]["cls"]["aoti"]["export_s"] > 0


@pytest.mark.slow          # two AOTInductor compilations with freezing (the U-Net's: ch13)
def test_the_compiled_rows_match_eager_and_keep_their_programs(tmp_path):
    result = latency.main(["--models", "cls", "--repeats", "1", "--warmup", "0",
                           "--backends", "compiled,compiled-bf16", "--out", str(tmp_path)])
    check_results(result, ["cls"], ["eager", "compiled", "compiled-bf16"])
    assert len(list((tmp_path / "programs").glob("LunaModel-*.pt2"))) == 2


def test_one_model_and_the_eager_reference_alone():
    result = latency.main(["--models", "cls", "--backends", "eager", "--repeats", "1",
                           "--warmup", "0"])
    assert list(result["results"]) == ["cls"] and list(result["results"]["cls"]) == ["eager"]
    assert "U-Net" not in result["table"]


@pytest.mark.parametrize("argv", [["--backends", "tensorrt"], ["--models", "resnet"],
                                  ["--repeats", "0"], ["--unet-size", "60"]])
def test_bad_flags_are_usage_errors(argv):
    with pytest.raises(SystemExit) as e:
        latency.main(argv)
    assert e.value.code == 2


@pytest.mark.realdata
def test_the_books_checkpoints_load_through_the_flags(book_file):
    cls, seg = book_file(BOOK_CLS_MODEL), book_file(BOOK_SEG_MODEL)
    result = latency.main(["--cls-model", str(cls), "--seg-model", str(seg), "--repeats", "1",
                           "--warmup", "0", "--unet-size", "64", "--backends", "onnxruntime"])
    check_results(result, ["cls", "unet"], ["eager", "onnxruntime"])


@pytest.mark.slow
def test_the_int8_row_is_calibrated_on_the_training_series_and_close_to_eager(tmp_path):
    from ch10_luna.synthetic import generate_sample
    from ch13_segment.precision import int8_unavailable

    if int8_unavailable():
        pytest.skip(int8_unavailable())
    generate_sample(tmp_path / "synthetic" / "luna", n_series=3, seed=0, negatives=(20, 30),
                    progress=False)
    result = latency.main(["--models", "cls", "--backends", "eager,int8", "--repeats", "2",
                           "--warmup", "1", "--threads", "1", "--data-dir", str(tmp_path)])
    int8 = result["results"]["cls"]["int8"]
    assert 0 < int8["median_ms"] <= int8["p90_ms"]
    assert int8["rel_diff"] < 0.5                # uint8 activations: coarse, never garbage
    assert "int8 static" in result["table"]
