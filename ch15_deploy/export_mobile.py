"""Chapter 15: models for phones: a lite-interpreter .ptl file, dynamic quantization, ExecuTorch.

    python ch15_deploy/export_mobile.py                   # untrained CycleGAN generator
    python ch15_deploy/export_mobile.py --weights data/p1ch2/horse2zebra_0.4.0.pth

The book's Android app (android/ in this folder) loads a traced generator with PyTorch Mobile.
PyTorch Mobile reads TorchScript saved for the "lite interpreter" (`_save_for_lite_interpreter`,
a .ptl file, loaded in Python by torch.jit.mobile._load_for_lite_interpreter and on Android by
org.pytorch.LiteModuleLoader). `torch.utils.mobile_optimizer.optimize_for_mobile` first folds
batch norms, fuses conv + ReLU and prepacks weights for XNNPACK; it needs a torch built with
XNNPACK, which the x86 CPU wheel of torch 2.13 is not ("XNNPACK is not enabled"): the script
tries it, says so when it fails, and saves the unoptimized trace (which runs the same). The lite
interpreter itself is deprecated in 2.13 (loading a .ptl warns "consider switching to
ExecuTorch") but still works.

Size: `torch.ao.quantization.quantize_dynamic` stores nn.Linear weights as 8-bit integers and
quantizes activations on the fly. Only Linear (and LSTM/GRU) layers are covered, so it shrinks
the fully connected CIFAR model of chapter 7 about 4x, while LunaModel, whose weights are almost
all convolutions, hardly changes; torch 2.13 still ships it, with a DeprecationWarning pointing
to torchao, whose quantize_ API replaces it. ExecuTorch, PyTorch Mobile's successor, lowers a
torch.export program to a .pte file (export_executorch); it runs only where the `executorch`
package is installed.
"""
import argparse
import io
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from ch07_cifar.train_fc import make_model
from ch10_luna.model import LunaModel
from ch15_deploy.export_jit import (
    GENERATOR_SIZE,
    add_generator_arguments,
    generator_from_args,
    max_diff,
)
from ch15_deploy.jit_intro import jit_warnings, trace_model
from common.errors import run_cli


def optimize(traced):
    """optimize_for_mobile when this torch has XNNPACK; (module, None) or (traced, the reason)."""
    from torch.utils.mobile_optimizer import optimize_for_mobile

    try:
        with jit_warnings([]):
            return optimize_for_mobile(traced), None
    except RuntimeError as e:
        said = [s.strip() for s in str(e).replace("\n", " ").split(". ") if "XNNPACK" in s]
        return traced, ". ".join(said) if said else str(e).strip().splitlines()[0]


def save_lite(traced, path, optimize_first=True):
    """A TorchScript module saved for the lite interpreter and loaded back; (module, note)."""
    from torch.jit.mobile import _load_for_lite_interpreter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module, note = optimize(traced) if optimize_first else (traced, "not asked for")
    with warnings.catch_warnings():     # "Lite Interpreter is deprecated": see the docstring
        warnings.filterwarnings("ignore", message="Lite Interpreter is deprecated",
                                category=DeprecationWarning)
        with jit_warnings([]):
            module._save_for_lite_interpreter(str(path))
        return _load_for_lite_interpreter(str(path), map_location="cpu"), note


def quantize_linear(model):
    """Dynamic 8-bit quantization of the nn.Linear layers (a new model; the input is kept)."""
    with warnings.catch_warnings():     # torch.ao.quantization's notice about torchao
        warnings.filterwarnings("ignore", message=".*torch.ao.quantization is deprecated",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation",
                                category=UserWarning)
        return torch.ao.quantization.quantize_dynamic(model.eval(), {nn.Linear},
                                                      dtype=torch.qint8)


def saved_size(model):
    """Bytes of torch.save(model.state_dict()): the size on disk of the weights."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell()


def compare_quantized(name, model, x):
    """Quantize a model's Linear layers; sizes and the largest output difference."""
    model.eval()
    quantized = quantize_linear(model)
    with torch.inference_mode():
        outs, q_outs = model(x), quantized(x)
    outs = outs if isinstance(outs, tuple) else (outs,)
    q_outs = q_outs if isinstance(q_outs, tuple) else (q_outs,)
    result = {"quantized": quantized, "size": saved_size(model),
              "quantized_size": saved_size(quantized),
              "diff": max_diff(outs[0], q_outs[0]), "scale": float(outs[0].abs().max())}
    mib = lambda n: f"{n / 2**20:.2f} MiB"
    print(f"{name}: weights {mib(result['size'])} -> {mib(result['quantized_size'])} with "
          f"8-bit Linear layers; max abs output difference {result['diff']:.3g} "
          f"(outputs up to {result['scale']:.3g})")
    return result


def export_executorch(model, example, path):
    """torch.export -> ExecuTorch (XNNPACK delegate) -> a .pte file. Needs `executorch`."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = torch.export.export(model.eval(), tuple(example))
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(lowered.to_executorch().buffer)
    return path


def run_executorch(path, example):
    """Run a .pte file with ExecuTorch's Python runtime; its outputs as a list."""
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(path)).load_method("forward")
    return method.execute(list(example))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_generator_arguments(p)
    p.add_argument("--out", default="runs/ch15", help="folder for the .ptl file "
                                                      "(default: %(default)s)")
    args = p.parse_args(argv)
    out = Path(args.out)
    weights, generator = generator_from_args(args)
    x = torch.rand(1, 3, GENERATOR_SIZE, GENERATOR_SIZE, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    traced, _ = trace_model(generator, x)              # its TracerWarnings: see export_jit.py
    path = out / "cyclegan_mobile.ptl"
    lite, note = save_lite(traced, path)
    seconds = time.perf_counter() - start
    with torch.inference_mode():
        lite_diff = max_diff(lite(x), generator(x))
    print(f"optimize_for_mobile: {'applied' if note is None else 'skipped: ' + note}")
    print(f"CycleGAN generator for the lite interpreter in {seconds:.1f} s: {path} "
          f"({path.stat().st_size / 2**20:.1f} MiB); reloaded as {type(lite).__name__}, max abs "
          f"difference vs eager {lite_diff:.3g}")

    fc_model, _ = make_model("deep")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        fc_x, luna = torch.randn(8, 3 * 32 * 32), LunaModel()
    fc = compare_quantized("chapter 7 fully connected CIFAR model", fc_model, fc_x)
    luna_x = torch.randn(2, 1, 32, 48, 48, generator=torch.Generator().manual_seed(1))
    lu = compare_quantized("LunaModel (one small Linear layer)", luna, luna_x)
    try:
        import executorch  # noqa: F401  (optional)
        pte = export_executorch(generator, (x,), out / "cyclegan.pte")
        et_diff = max_diff(run_executorch(pte, (x,))[0], generator(x))
        print(f"ExecuTorch: {pte}, max abs difference vs eager {et_diff:.3g}")
    except ImportError:
        print("ExecuTorch: not installed (pip install executorch), .pte export skipped")
    return {"path": path, "lite_diff": lite_diff, "optimize_note": note, "fc": fc, "luna": lu}


if __name__ == "__main__":
    run_cli(main)
