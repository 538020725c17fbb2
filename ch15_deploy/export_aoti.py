"""Chapter 15: torch.export and AOTInductor, the successors of TorchScript for deployment.

    python ch15_deploy/export_aoti.py                    # the book's classifier checkpoint
    python ch15_deploy/export_aoti.py --random-weights   # without it
    bash ch15_deploy/cpp/build.sh && python ch15_deploy/export_aoti.py   # also runs run_aoti

torch.export.export captures the forward as a graph of ATen operators, the batch dimension a
symbol valid for 1..64; torch._inductor.aoti_compile_and_package compiles that graph ahead of
time into C++ and packs the library and the weights into one .pt2 file, which
torch._inductor.aoti_load_package loads back in Python and LibTorch's AOTIModelPackageLoader in
C++ (cpp/run_aoti.cpp). Done for the LUNA classifier of chapter 11 and the chapter 13 U-Net,
each compared with the eager model. More in NOTES.md.
"""
import argparse
import time
import warnings
from pathlib import Path

import torch

from ch15_deploy.classifier import example_crop, hu_like_crop, load_classifier, model_arguments
from ch15_deploy.export_jit import CPP_BUILD, load_unet, max_diff, run_cpp
from ch15_deploy.model_files import save_through_memory
from common.errors import run_cli
from common.files import output_dir, runs_dir


def export_program(model, example, dynamic_batch=True, max_batch=64):
    """torch.export.export of an eval-mode model; (ExportedProgram, whether the batch is dynamic).

    The example batch must hold >= 2 samples: a batch of 1 lets export specialize the size to 1.
    Falls back to a static batch if the model cannot take a symbolic one.
    """
    model.eval().requires_grad_(False)
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=max_batch)
        dims = ({0: batch},) + tuple(None for _ in example[1:])
        try:
            return torch.export.export(model, tuple(example), dynamic_shapes=dims), True
        except Exception as e:                     # a constraint export could not satisfy
            print(f"dynamic batch refused ({type(e).__name__}): exporting a static batch")
    return torch.export.export(model, tuple(example)), False


def compile_package(program, path):
    """AOTInductor: compile an ExportedProgram to a .pt2 package; (path, seconds)."""
    path = Path(path)
    start = time.perf_counter()
    with warnings.catch_warnings():                # torch's own pytree notice, not ours
        warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
        save_through_memory(path, lambda buffer: torch._inductor.aoti_compile_and_package(
            program, package_path=buffer), ".pt2 package")
    return path, time.perf_counter() - start


def load_package(path):
    """The compiled model back in Python: called like the module, returns the same structure."""
    return torch._inductor.aoti_load_package(str(path))


def as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def compare(model, compiled, x):
    """Largest absolute difference between eager and compiled, over all outputs."""
    with torch.inference_mode():
        return max(max_diff(a, b) for a, b in zip(as_tuple(model(x)), as_tuple(compiled(x))))


def export_and_compile(name, model, example, others, out):
    """Export, compile, reload and compare one model; prints and returns what it measured."""
    start = time.perf_counter()
    program, dynamic = export_program(model, example)
    export_s = time.perf_counter() - start
    path, compile_s = compile_package(program, Path(out) / f"{name}.pt2")
    compiled = load_package(path)
    diffs = {tuple(x.shape): compare(model, compiled, x) for x in (example[0], *others)}
    print(f"{name}: torch.export {export_s:.1f} s ({'dynamic' if dynamic else 'static'} batch), "
          f"AOTInductor compile {compile_s:.1f} s -> {path} ({path.stat().st_size / 1024:.0f} KiB)")
    print("  max abs difference vs eager: " +
          ", ".join(f"{list(shape)} {d:.3g}" for shape, d in diffs.items()))
    return {"path": path, "dynamic": dynamic, "export_s": export_s, "compile_s": compile_s,
            "diffs": diffs, "compiled": compiled, "program": program}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                parents=[model_arguments()])
    p.add_argument("--out", default=runs_dir("ch15"),
                   help="folder for the .pt2 packages (default: the repository's runs/ch15)")
    args = p.parse_args(argv)
    model = load_classifier(args.model, args.data_dir, args.random_weights)
    crop, source = example_crop(args.data_dir)
    out = output_dir(args.out, "--out")        # all checked before minutes of compiling
    print(f"LunaModel on {source} and HU-like crops")
    luna = export_and_compile("luna", model, (torch.stack([crop, hu_like_crop(1)]),),
                              [crop.unsqueeze(0), torch.stack([hu_like_crop(i) for i in range(3)])],
                              out)
    print("  the exported graph's inputs:", luna["program"].graph_signature.user_inputs,
          "with range", {str(k): str(v) for k, v in luna["program"].range_constraints.items()})

    unet = load_unet()
    g = torch.Generator().manual_seed(2)
    seg = lambda n: torch.randn(n, 7, 64, 64, generator=g)    # unit scale: untrained batch norm
    print("UNetWrapper, chapter 13 configuration, untrained, on 7 x 64 x 64 inputs")
    unet_result = export_and_compile("unet", unet, (seg(2),), [seg(1), seg(3)], out)

    result = {"luna": luna, "unet": unet_result}
    program = CPP_BUILD / "run_aoti"
    if program.exists():
        x = crop.unsqueeze(0)
        cpp_out, seconds = run_cpp(program, luna["path"], [x], out)
        with torch.inference_mode():
            result["cpp_diff"] = max(max_diff(a, b) for a, b in zip(cpp_out, model(x)))
        print(f"C++ {program} on luna.pt2: max abs difference vs eager {result['cpp_diff']:.3g} "
              f"({seconds:.1f} s including loading)")
    else:
        print(f"(no {program}: build the C++ programs with: bash ch15_deploy/cpp/build.sh)")
    return result


if __name__ == "__main__":
    run_cli(main)
