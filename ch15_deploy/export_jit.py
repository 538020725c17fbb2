"""Chapter 15: TorchScript files of the CycleGAN generator and the U-Net, for Python and C++.

    python ch15_deploy/export_jit.py                          # untrained generator
    python ch15_deploy/export_jit.py --weights data/p1ch2/horse2zebra_0.4.0.pth --image horse.jpg
    bash ch15_deploy/cpp/build.sh && python ch15_deploy/export_jit.py   # + run_jit, run_cpp_api

The chapter 2 generator is traced after eval() and requires_grad_(False) on a 1 x 3 x 228 x 228
input, saved, reloaded and compared with eager at that size and another; the chapter 13 U-Net
is traced (no TracerWarning: its crop comes from size() calls) and scripted. The files are what
LibTorch's torch::jit::load reads: cpp/run_jit runs them on a tensor file written here
(write_tensors). For the book's C++-frontend generator (cpp/cyclegan_cpp_api.cpp, built as
run_cpp_api), save_weights_for_cpp writes the weights as a TorchScript file of named tensors.
"""
import argparse
import subprocess
import time
from functools import partial
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from ch01_intro.cyclegan import ResNetGenerator
from ch01_intro.horse2zebra import prepare, to_image
from ch01_intro.preprocess import read_image
from ch01_intro.weights import HORSE2ZEBRA_PTH
from ch13_segment.model import UNetWrapper
from ch15_deploy.flags import at_least
from ch15_deploy.jit_intro import jit_warnings, save_and_reload, trace_model
from ch15_deploy.model_files import load_weights, save_through_memory
from common.data import REPO_ROOT
from common.errors import DataError, one_line, run_cli
from common.files import atomic_open, atomic_path, output_dir, runs_dir

GENERATOR_SIZE = 228            # the book traced at 227; the generator needs a multiple of 4
SEG_KWARGS = dict(in_channels=7, n_classes=1, depth=3, wf=4, padding=True, batch_norm=True,
                  up_mode="upconv")                     # chapter 13's segmentation model
CPP_BUILD = REPO_ROOT / "build" / "cpp"                 # where cpp/build.sh puts the programs


def write_tensors(path, tensors):
    """Float32 tensors to the C++ programs' file: per tensor int64 ndim, int64 sizes, values."""
    path = Path(path)
    with atomic_open(path, "wb", "tensor file") as f:
        for t in tensors:
            a = np.ascontiguousarray(t.detach().cpu().numpy(), dtype="<f4")
            np.array([a.ndim, *a.shape], dtype="<i8").tofile(f)
            a.tofile(f)
    return path


def read_tensors(path):
    """The tensors of a file written by write_tensors or by the C++ programs."""
    data, tensors, pos = Path(path).read_bytes(), [], 0
    while pos < len(data):
        ndim = int(np.frombuffer(data, "<i8", 1, pos)[0])
        shape = tuple(int(s) for s in np.frombuffer(data, "<i8", ndim, pos + 8))
        pos += 8 * (1 + ndim)
        n = int(np.prod(shape))
        tensors.append(torch.from_numpy(np.frombuffer(data, "<f4", n, pos).reshape(shape).copy()))
        pos += 4 * n
    return tensors


def run_cpp(program, model_path, inputs, folder):
    """Run build/cpp/run_jit or run_aoti on `inputs`; (its output tensors, seconds taken)."""
    folder = Path(folder)
    name = Path(model_path).stem
    in_path = write_tensors(folder / f"{name}_input.bin", inputs)
    out_path = folder / f"{name}_cpp_output.bin"
    start = time.perf_counter()
    try:
        done = subprocess.run([str(program), str(model_path), str(in_path), str(out_path)],
                              capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataError(f"{program}: did not run ({one_line(e, 120)})") from None
    if done.returncode != 0:
        said = done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise DataError(f"{Path(program).name} on {model_path}: {one_line(said[0], 200)}")
    return read_tensors(out_path), time.perf_counter() - start


def save_weights_for_cpp(model, path):
    """`model`'s state_dict as a TorchScript file of tensors only, for run_cpp_api; the path.

    Every entry `a.b.c` becomes buffer `c` of an empty submodule `a.b`, so torch::jit::load in
    C++ sees the same dotted names in named_buffers(). The modules have no forward and no code;
    reading the file rebuilds tensors, never Python objects (unlike torch.save's pickle).
    """
    root = torch.nn.Module()
    for name, tensor in model.state_dict().items():
        *parents, leaf = name.split(".")
        module = root
        for part in parents:
            if part not in module._modules:
                module.add_module(part, torch.nn.Module())
            module = module._modules[part]
        module.register_buffer(leaf, tensor.detach().cpu().clone())
    path = Path(path)
    with jit_warnings([]):
        save_through_memory(path, partial(torch.jit.save, torch.jit.script(root)),
                            "weights file")
    return path


def load_generator(weights=None, seed=0, **kwargs):
    """A ResNetGenerator in eval mode with gradients off: the book's weights, or seeded random."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ResNetGenerator(**kwargs)
    if weights is not None:
        load_weights(model, weights, "--weights")
    return model.eval().requires_grad_(False)


def generator_weights(path):
    """The --weights file as a Path (None: untrained); DataError with the download when absent."""
    if path is None:
        return None
    path = Path(path).expanduser()
    if not path.is_file():
        what = "a folder, not a file" if path.is_dir() else "not found"
        raise DataError(f"--weights {path}: {what}; the book's generator weights: python -m "
                        "common.data download horse2zebra (then data/p1ch2/horse2zebra_0.4.0.pth)")
    return path


def load_unet(seed=0, **kwargs):
    """Chapter 13's UNetWrapper (or other UNet keywords), seeded random weights, eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UNetWrapper(**{**SEG_KWARGS, **kwargs})
    return model.eval().requires_grad_(False)


def script_model(model):
    """torch.jit.script of an eval-mode model: Python control flow compiled, not recorded."""
    model.eval().requires_grad_(False)
    with jit_warnings([]):
        return torch.jit.script(model)


def max_diff(a, b):
    """Largest absolute difference between two tensors."""
    return float((a - b).abs().max())


def export_generator(model, example, path):
    """Trace, save and reload the generator; (reloaded module, TracerWarnings, seconds)."""
    start = time.perf_counter()
    traced, caught = trace_model(model, example)
    reloaded = save_and_reload(traced, path)
    return reloaded, caught, time.perf_counter() - start


def generator_arguments():
    """Parent parser: --weights, --ngf and --n-blocks: the CycleGAN generator an export loads."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--weights", default=None,
                        help=f"CycleGAN state_dict (the book's {Path(HORSE2ZEBRA_PTH).name}; get "
                             "it with: python -m common.data download horse2zebra); default: "
                             "untrained")
    parser.add_argument("--ngf", type=at_least(int, 1), default=64,
                        help="generator width (the book's 64)")
    parser.add_argument("--n-blocks", type=at_least(int, 0), default=9,
                        help="residual blocks (the book's 9)")
    return parser


def build_generator(weights=None, ngf=64, n_blocks=9):
    """(weights path or None, generator in eval mode) from generator_arguments' values."""
    weights = generator_weights(weights)
    return weights, load_generator(weights, ngf=ngf, n_blocks=n_blocks)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                parents=[generator_arguments()])
    p.add_argument("--image", default=None, help="an image to turn into a zebra with the traced "
                                                 "generator (written next to the .pt files)")
    p.add_argument("--out", default=runs_dir("ch15"),
                   help="folder for the .pt files (default: the repository's runs/ch15)")
    args = p.parse_args(argv)
    weights, generator = build_generator(args.weights, args.ngf, args.n_blocks)
    picture = read_image(args.image, "--image") if args.image else None
    out = output_dir(args.out, "--out")        # every input and the output checked before work
    print(f"CycleGAN generator: {'weights ' + str(weights) if weights else 'untrained weights'}")
    x = torch.rand(1, 3, GENERATOR_SIZE, GENERATOR_SIZE, generator=torch.Generator().manual_seed(0))
    gen_path = out / "cyclegan_traced.pt"
    gen_jit, gen_warnings, seconds = export_generator(generator, x, gen_path)
    other = torch.rand(1, 3, 160, 200, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = generator(x)
        gen_diff = max_diff(gen_jit(x), expected)
        other_diff = max_diff(gen_jit(other), generator(other))
    print(f"traced on {tuple(x.shape)}, saved and reloaded in {seconds:.1f} s: {gen_path} "
          f"({gen_path.stat().st_size / 2**20:.1f} MiB)")
    # InstanceNorm2d's own checks (channel count; "more than 1 value per channel") compare sizes
    # in Python: the trace keeps them as constants, harmless for a fixed channel count.
    print(f"{len(gen_warnings)} TracerWarnings, from torch's InstanceNorm shape checks: "
          f"{sorted(set(gen_warnings))}")
    print(f"max abs difference reloaded vs eager: {gen_diff:.3g} at 228 x 228, "
          f"{other_diff:.3g} at 160 x 200")
    if picture is not None:
        with torch.inference_mode():
            image_out = gen_jit(prepare(picture, GENERATOR_SIZE))
        with atomic_path(out / "zebra_traced.png", "image") as tmp:
            iio.imwrite(tmp, to_image(image_out))
        print(f"{args.image} -> {out / 'zebra_traced.png'}")

    unet = load_unet()
    seg_x = torch.randn(2, 7, 64, 64, generator=torch.Generator().manual_seed(2)) * 400 - 500
    unet_traced, unet_warnings = trace_model(unet, seg_x)
    unet_path, script_path = out / "unet_traced.pt", out / "unet_scripted.pt"
    unet_jit = save_and_reload(unet_traced, unet_path)
    unet_script = save_and_reload(script_model(unet), script_path)
    seg_other = torch.randn(1, 7, 96, 128, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        unet_diff = max(max_diff(unet_jit(t), unet(t)) for t in (seg_x, seg_other))
        script_diff = max(max_diff(unet_script(t), unet(t)) for t in (seg_x, seg_other))
    print(f"U-Net (chapter 13 configuration) traced with {len(unet_warnings)} TracerWarnings"
          f"{': ' + '; '.join(unet_warnings) if unet_warnings else ''}; scripted too")
    print(f"max abs difference vs eager on 64 x 64 and 96 x 128 inputs: traced {unet_diff:.3g}, "
          f"scripted {script_diff:.3g}")
    result = {"generator_path": gen_path, "generator_warnings": gen_warnings,
              "generator_diff": gen_diff, "generator_other_diff": other_diff,
              "unet_path": unet_path, "unet_script_path": script_path,
              "unet_warnings": unet_warnings, "unet_diff": unet_diff, "script_diff": script_diff}

    program = CPP_BUILD / "run_jit"
    if program.exists():
        (cpp_out,), seconds = run_cpp(program, gen_path, [x], out)
        result["cpp_diff"] = max_diff(cpp_out, expected)
        print(f"C++ {program} on {gen_path.name}: max abs difference vs eager "
              f"{result['cpp_diff']:.3g} ({seconds:.1f} s including loading)")
    else:
        print(f"(no {program}: build the C++ programs with: bash ch15_deploy/cpp/build.sh)")

    weights_path = save_weights_for_cpp(generator, out / "cyclegan_weights.pt")
    result["weights_path"] = weights_path
    print(f"generator weights for the C++ frontend: {weights_path} "
          f"({weights_path.stat().st_size / 2**20:.1f} MiB)")
    program = CPP_BUILD / "run_cpp_api"
    if program.exists():
        (cpp_out,), seconds = run_cpp(program, weights_path, [x], out)
        result["cpp_api_diff"] = max_diff(cpp_out, expected)
        print(f"C++ {program} (the generator in torch::nn) on {weights_path.name}: max abs "
              f"difference vs eager {result['cpp_api_diff']:.3g} ({seconds:.1f} s including "
              "loading)")
    return result


if __name__ == "__main__":
    run_cli(main)
