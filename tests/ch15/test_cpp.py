"""The LibTorch programs of ch15_deploy/cpp: built with cmake, run on exported files, compared."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ch15_deploy import export_aoti
from ch15_deploy.export_jit import (
    load_generator,
    load_unet,
    max_diff,
    read_tensors,
    run_cpp,
    save_weights_for_cpp,
    write_tensors,
)
from ch15_deploy.jit_intro import save_and_reload, trace_model
from common.data import REPO_ROOT

pytestmark = [pytest.mark.slow,
              pytest.mark.filterwarnings(r"ignore:.*torch\.jit.* is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")]

BUILD_SH = REPO_ROOT / "ch15_deploy" / "cpp" / "build.sh"


@pytest.fixture(scope="module")
def programs():
    """build/cpp/run_jit and run_aoti, (re)built by cpp/build.sh: make only redoes what changed."""
    missing = [tool for tool in ("cmake", "make") if shutil.which(tool) is None]
    if shutil.which("c++") is None and shutil.which("g++") is None:
        missing.append("a C++ compiler (c++ or g++)")
    if missing:
        pytest.skip(f"cannot build the C++ programs: {', '.join(missing)} not found")
    start = time.perf_counter()
    env = {**os.environ, "PYTHON": sys.executable}     # this interpreter's torch, venv or not
    done = subprocess.run(["bash", str(BUILD_SH)], capture_output=True, text=True, timeout=900,
                          env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    print(f"cpp/build.sh: {time.perf_counter() - start:.1f} s")
    build = REPO_ROOT / "build" / "cpp"
    return {"jit": build / "run_jit", "aoti": build / "run_aoti", "cpp_api": build / "run_cpp_api"}


class LogitsAndProbs(torch.nn.Module):
    """A small classifier with LunaModel's (logits, probs) output pair: quick to compile."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(12, 16), torch.nn.ReLU(),
                                       torch.nn.Linear(16, 3))

    def forward(self, x):
        logits = self.net(x)
        return logits, logits.softmax(dim=1)


def test_run_jit_matches_python_for_the_unet_and_the_generator(programs, tmp_path):
    unet, generator = load_unet(), load_generator(ngf=8, n_blocks=1)
    x_seg, x_img = torch.randn(2, 7, 32, 48), torch.rand(1, 3, 40, 40)
    for name, model, x in (("unet", unet, x_seg), ("generator", generator, x_img)):
        traced, _ = trace_model(model, x)
        path = tmp_path / f"{name}.pt"
        save_and_reload(traced, path)
        (out,), _ = run_cpp(programs["jit"], path, [x], tmp_path)
        with torch.inference_mode():
            expected = model(x)
        assert out.shape == expected.shape
        assert max_diff(out, expected) < 1e-5


def test_run_jit_writes_every_tensor_of_a_tuple(programs, tmp_path, hu_model, crop):
    traced, _ = trace_model(hu_model, crop.unsqueeze(0))
    path = tmp_path / "luna.pt"
    save_and_reload(traced, path)
    batch = torch.stack([crop, crop.flip(-1), crop.flip(-2)])        # batch 3, traced on 1
    (logits, probs), _ = run_cpp(programs["jit"], path, [batch], tmp_path)
    with torch.inference_mode():
        expected = hu_model(batch)
    torch.testing.assert_close(logits, expected[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(probs, expected[1], rtol=1e-5, atol=1e-6)


def test_run_aoti_matches_python(programs, tmp_path):
    torch.manual_seed(0)
    model = LogitsAndProbs().eval()
    program, dynamic = export_aoti.export_program(model, (torch.randn(2, 12),))
    assert dynamic
    package, seconds = export_aoti.compile_package(program, tmp_path / "small.pt2")
    print(f"AOTInductor compile of a small model: {seconds:.1f} s")
    x = torch.randn(5, 12)                                           # another batch size
    outputs, _ = run_cpp(programs["aoti"], package, [x], tmp_path)
    with torch.inference_mode():
        expected = model(x)
    assert [o.shape for o in outputs] == [(5, 3), (5, 3)]
    for out, exp in zip(outputs, expected):
        torch.testing.assert_close(out, exp, rtol=1e-5, atol=1e-6)
    python_out = export_aoti.load_package(package)(x)                # and Python agrees with C++
    torch.testing.assert_close(outputs[0], python_out[0], rtol=0, atol=0)


def test_programs_report_errors_with_a_message(programs, tmp_path):
    for program in programs.values():                # run_cpp_api included
        done = subprocess.run([str(program)], capture_output=True, text=True)
        assert done.returncode == 2 and "usage:" in done.stderr
        done = subprocess.run([str(program), str(tmp_path / "none.pt"), "in.bin", "out.bin"],
                              capture_output=True, text=True)
        assert done.returncode == 1 and "error:" in done.stderr
        assert not Path(tmp_path / "out.bin").exists()


def test_tensor_file_from_cpp_reads_back(programs, tmp_path):
    model = torch.nn.Identity()
    traced = torch.jit.trace(model, torch.zeros(1))
    path = tmp_path / "identity.pt"
    torch.jit.save(traced, str(path))
    x = torch.arange(24.0).reshape(2, 3, 4)
    (out,), _ = run_cpp(programs["jit"], path, [x], tmp_path)
    torch.testing.assert_close(out, x, rtol=0, atol=0)
    assert read_tensors(tmp_path / "identity_cpp_output.bin")[0].shape == (2, 3, 4)


def test_cpp_api_generator_matches_python(programs, tmp_path):
    generator = load_generator(seed=3)                   # the book's size: ngf 64, 9 blocks
    weights = save_weights_for_cpp(generator, tmp_path / "weights.pt")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    (out,), seconds = run_cpp(programs["cpp_api"], weights, [x], tmp_path)
    print(f"run_cpp_api on 1 x 3 x 64 x 64: {seconds:.1f} s including loading")
    with torch.inference_mode():
        expected = generator(x)
    assert out.shape == expected.shape == (1, 3, 64, 64)
    assert max_diff(out, expected) < 1e-4
    assert expected.abs().max() > 0.1                    # not a trivially zero output


def test_cpp_api_infers_the_generator_size_from_the_weights(programs, tmp_path):
    generator = load_generator(seed=4, ngf=8, n_blocks=2, output_nc=1)
    weights = save_weights_for_cpp(generator, tmp_path / "small.pt")
    x = torch.rand(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    (out,), _ = run_cpp(programs["cpp_api"], weights, [x], tmp_path)
    with torch.inference_mode():
        expected = generator(x)
    assert out.shape == (2, 1, 32, 48)
    assert max_diff(out, expected) < 1e-4


def run_cpp_api(program, weights, tmp_path, x=None):
    """run_cpp_api's CompletedProcess on `x` (default a 1 x 3 x 32 x 32 image)."""
    x = torch.rand(1, 3, 32, 32) if x is None else x
    inputs = write_tensors(tmp_path / "x.bin", [x])
    return subprocess.run([str(program), str(weights), str(inputs), str(tmp_path / "out.bin")],
                          capture_output=True, text=True, timeout=120)


def test_cpp_api_refuses_weights_that_do_not_fit(programs, tmp_path, hu_model):
    program = programs["cpp_api"]
    luna = save_weights_for_cpp(hu_model, tmp_path / "luna.pt")
    done = run_cpp_api(program, luna, tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1                 # one line, no backtrace
    assert "not the weights of a CycleGAN ResNetGenerator" in done.stderr
    assert "'model.1.weight'" in done.stderr

    wider = load_generator(ngf=8, n_blocks=1)
    wider.model[4] = torch.nn.Conv2d(8, 12, 3, stride=2, padding=1)   # 12 channels, not 16
    done = run_cpp_api(program, save_weights_for_cpp(wider, tmp_path / "wider.pt"), tmp_path)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "'model.4.bias' is [12], the generator's [16]" in done.stderr

    extra = load_generator(ngf=8, n_blocks=1)
    extra.register_buffer("extra", torch.zeros(1))
    done = run_cpp_api(program, save_weights_for_cpp(extra, tmp_path / "extra.pt"), tmp_path)
    assert done.returncode == 1 and "unexpected 'extra'" in done.stderr

    small = save_weights_for_cpp(load_generator(ngf=8, n_blocks=1), tmp_path / "small.pt")
    done = run_cpp_api(program, small, tmp_path, torch.rand(1, 4, 32, 32))   # 4 channels
    assert done.returncode == 1 and "expected one N x 3 x H x W tensor" in done.stderr
    assert not (tmp_path / "out.bin").exists()
