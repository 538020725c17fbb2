"""Chapter 15: models for phones: ExecuTorch .pte files, the book's lite-interpreter .ptl, 8 bits.

    python ch15_deploy/export_mobile.py                   # untrained CycleGAN generator
    python ch15_deploy/export_mobile.py --weights data/p1ch2/horse2zebra_0.4.0.pth \
        --cls-model data/part2/models/cls_2020-02-06_14.16.55_final-nodule-nonnodule.best.state

ExecuTorch is PyTorch's current on-device runtime: torch.export, then the XNNPACK partitioner
(`to_edge_transform_and_lower`), into a .pte file, run here through its Python runtime and
compared with eager, for the generator and the LUNA classifier (which `for_executorch` rewrites
with the same weights into 2-D convolutions, since ExecuTorch 1.5.1 cannot run its Conv3d and
MaxPool3d). The book's path beside it: a traced generator saved for the lite interpreter
(.ptl), and `quantize_dynamic`'s 8-bit Linear layers with the sizes they save. NOTES.md says why.
"""
import argparse
import copy
import io
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ch07_cifar.train_fc import make_model
from ch10_luna.benchmark import timed
from ch10_luna.model import LunaModel
from ch15_deploy.classifier import example_crop, load_classifier
from ch15_deploy.export_jit import GENERATOR_SIZE, build_generator, generator_arguments, max_diff
from ch15_deploy.flags import at_least
from ch15_deploy.jit_intro import jit_warnings, trace_model
from common.data import add_data_dir_argument
from common.errors import run_cli
from common.files import output_dir, runs_dir, write_bytes

CPU = torch.device("cpu")
REPEATS = 5                     # timed forwards per model, after one untimed


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
    module, note = optimize(traced) if optimize_first else (traced, "not asked for")
    with warnings.catch_warnings():     # "Lite Interpreter is deprecated": see the docstring
        warnings.filterwarnings("ignore", message="Lite Interpreter is deprecated",
                                category=DeprecationWarning)
        with jit_warnings([]):
            write_bytes(path, module._save_to_buffer_for_lite_interpreter(), ".ptl file")
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


class Conv3dAs2d(nn.Module):
    """A 3 x 3 x 3 Conv3d (stride 1, padding 1) as three Conv2d over the depth offsets, summed.

    Output depth slice d is the sum over k of conv2d(input slice d + k - 1, weight[:, :, k]):
    the same arithmetic, in an order ExecuTorch can run. Holds the original module's weights.
    """

    def __init__(self, conv):
        super().__init__()
        if (conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups) != \
                ((3, 3, 3), (1, 1, 1), (1, 1, 1), (1, 1, 1), 1):
            raise ValueError(f"only 3x3x3 convolutions with padding 1 are rewritten, not {conv}")
        self.conv = conv

    def forward(self, x):                                # (N, C, D, H, W)
        n, c, d, h, w = x.shape
        padded = F.pad(x, (0, 0, 0, 0, 1, 1))            # one zero slice before and after
        out = 0
        for k in range(3):
            slices = padded[:, :, k:k + d].transpose(1, 2).reshape(n * d, c, h, w)
            out = out + F.conv2d(slices, self.conv.weight[:, :, k], padding=1)
        out = out.reshape(n, d, -1, h, w).transpose(1, 2)   # (N, C_out, D, H, W)
        return out + self.conv.bias.view(1, -1, 1, 1, 1)


class MaxPool3dAsAmax(nn.Module):
    """MaxPool3d(2, 2) on even sizes as maxima over reshaped pairs, one axis at a time (6-D)."""

    def forward(self, x):                                # (N, C, D, H, W), D, H, W even
        n, c, d, h, w = x.shape
        x = x.reshape(n, c, d, h, w // 2, 2).amax(5)
        x = x.reshape(n, c, d, h // 2, 2, w // 2).amax(4)
        return x.reshape(n, c, d // 2, 2, h // 2, w // 2).amax(3)


def for_executorch(model):
    """A copy of a LunaModel with its Conv3d and MaxPool3d replaced by the equivalents above."""
    model = copy.deepcopy(model).eval()
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv3d):
                setattr(parent, name, Conv3dAs2d(child))
            elif isinstance(child, nn.MaxPool3d):
                if (child.kernel_size, child.stride, child.padding) not in ((2, 2, 0),):
                    raise ValueError(f"only MaxPool3d(2, 2) is rewritten, not {child}")
                setattr(parent, name, MaxPool3dAsAmax())
    return model


def export_executorch(model, example, path):
    """torch.export -> ExecuTorch with the XNNPACK delegate -> a .pte file; (path, seconds)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    start = time.perf_counter()
    with warnings.catch_warnings():                  # torch's own pytree notices, not ours
        warnings.filterwarnings("ignore", category=FutureWarning)
        program = torch.export.export(model.eval(), tuple(example))
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        buffer = lowered.to_executorch().buffer
    return write_bytes(path, buffer, ".pte file"), time.perf_counter() - start


def load_executorch(path):
    """The `forward` method of a .pte file, loaded by ExecuTorch's Python runtime."""
    from executorch.runtime import Runtime

    return Runtime.get().load_program(str(path)).load_method("forward")


def run_executorch(path, example):
    """Run a .pte file with ExecuTorch's Python runtime; its outputs as a list of tensors."""
    return list(load_executorch(path).execute(list(example)))


def median_ms(work, repeats=REPEATS):
    """Median wall time of `repeats` calls of work(), in ms, after one untimed call."""
    work()
    return 1e3 * float(np.median([timed(CPU, work) for _ in range(repeats)]))


def executorch_installed():
    try:
        import executorch  # noqa: F401  (optional: pip install executorch)
        return True
    except ImportError:
        return False


def compare_executorch(name, model, example, path, repeats=REPEATS):
    """Export, run and compare one model; its outputs' largest differences, sizes and speed."""
    path, seconds = export_executorch(model, example, path)
    method = load_executorch(path)
    outs = list(method.execute(list(example)))
    with torch.inference_mode():
        eager = model(*example)
        eager_ms = median_ms(lambda: model(*example), repeats)
    pte_ms = median_ms(lambda: method.execute(list(example)), repeats)
    eager = eager if isinstance(eager, tuple) else (eager,)
    diffs = [max_diff(a, b) for a, b in zip(outs, eager, strict=True)]
    scale = max(float(a.abs().max()) for a in eager)
    print(f"ExecuTorch (XNNPACK) {name}: {path} ({path.stat().st_size / 2**20:.2f} MiB) in "
          f"{seconds:.1f} s; max abs difference vs eager "
          + ", ".join(f"{d:.3g}" for d in diffs) + f" (outputs up to {scale:.3g}); one "
          f"forward {pte_ms:.0f} ms, eager {eager_ms:.0f} ms ({eager_ms / pte_ms:.2f}x)")
    return {"path": path, "diffs": diffs, "scale": scale, "export_s": seconds,
            "pte_ms": pte_ms, "eager_ms": eager_ms}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                parents=[generator_arguments()])
    p.add_argument("--cls-model", default=None,
                   help="classifier checkpoint in the book's format (default: seeded random "
                        "weights)")
    add_data_dir_argument(p)
    p.add_argument("--out", default=runs_dir("ch15"),
                   help="folder for the .pte and .ptl files (default: the repository's runs/ch15)")
    p.add_argument("--repeats", type=at_least(int, 1), default=REPEATS,
                   help="timed forwards per .pte and eager model (default: %(default)s)")
    args = p.parse_args(argv)
    weights, generator = build_generator(args.weights, args.ngf, args.n_blocks)
    classifier = load_classifier(args.cls_model, args.data_dir,
                                 random_weights=args.cls_model is None, flag="--cls-model")
    out = output_dir(args.out, "--out")        # every input and the output checked before work
    x = torch.rand(1, 3, GENERATOR_SIZE, GENERATOR_SIZE, generator=torch.Generator().manual_seed(0))
    result = {}
    if executorch_installed():
        crop, source = example_crop(args.data_dir)
        print(f"LunaModel on {source}")
        result["luna_pte"] = compare_executorch(
            "LunaModel (2-D rewrite)", for_executorch(classifier), (crop.unsqueeze(0),),
            out / "luna.pte", args.repeats)
        result["cyclegan_pte"] = compare_executorch("CycleGAN generator", generator, (x,),
                                                    out / "cyclegan.pte", args.repeats)
    else:
        print("ExecuTorch: not installed (pip install executorch==1.5.1), .pte export skipped")

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

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)                            # the same figures on every run
        fc_model, _ = make_model("deep")
        fc_x, luna = torch.randn(8, 3 * 32 * 32), LunaModel()
    fc = compare_quantized("chapter 7 fully connected CIFAR model", fc_model, fc_x)
    luna_x = torch.randn(2, 1, 32, 48, 48, generator=torch.Generator().manual_seed(1))
    lu = compare_quantized("LunaModel (one small Linear layer)", luna, luna_x)
    return {**result, "path": path, "lite_diff": lite_diff, "optimize_note": note, "fc": fc,
            "luna": lu, "weights": weights}


if __name__ == "__main__":
    run_cli(main)
