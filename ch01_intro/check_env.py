"""Chapter 1: check the installation.  python ch01_intro/check_env.py

Prints the versions of Python and the libraries the book uses, the devices torch can see
(CPU, each CUDA GPU, Apple MPS), runs `ones(3, 3) + ones(3, 3)` on each of them, and, where
CUDA is present, checks that a matrix product on the GPU agrees with the CPU's. Also prints
the free disk space under the data root (part 2 of the book needs about 200 GB for LUNA16).
"""
import argparse
import importlib
import platform
import shutil
import sys

import torch

from common.data import add_data_dir_argument, data_root
from common.errors import run_cli

PACKAGES = ("numpy", "torch", "SimpleITK", "imageio", "PIL", "matplotlib", "h5py", "scipy",
            "tqdm", "tensorboard", "onnx", "onnxruntime")
LUNA_DISK_GB = 200        # the book's estimate for the LUNA16 data and its cache


def versions(packages=PACKAGES):
    """{name: version string, or None when the package is not installed}."""
    found = {"python": platform.python_version()}
    for name in packages:
        try:
            module = importlib.import_module(name)
        except ImportError:
            found[name] = None
            continue
        found[name] = getattr(module, "__version__", None) or getattr(module, "Version", "?")
        if callable(found[name]):                 # SimpleITK.Version is a function in some builds
            found[name] = str(found[name]())
    return found


def devices():
    """Every device torch can use here: cpu, cuda:0..N-1, mps."""
    found = [torch.device("cpu")]
    found += [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        found.append(torch.device("mps"))
    return found


def describe(device):
    """A readable name for a device."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name}, {props.total_memory / 2**30:.1f} GiB, CUDA {torch.version.cuda}"
    if device.type == "cpu":
        return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    return device.type


def smoke_test(device):
    """True when ones(3, 3) + ones(3, 3) gives all twos on `device`."""
    a = torch.ones(3, 3, device=device)
    return bool(((a + a).cpu() == 2).all())


def gpu_parity(device, size=256, seed=0):
    """Largest |GPU - CPU| of a float32 matrix product, computed without TF32."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(size, size, generator=g), torch.randn(size, size, generator=g)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False    # TF32 would differ by ~1e-3
    try:
        on_gpu = (a.to(device) @ b.to(device)).cpu()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return float((on_gpu - a @ b).abs().max())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_data_dir_argument(p)
    args = p.parse_args(argv)

    found = versions()
    print(f"{platform.system()} {platform.release()}, {sys.executable}")
    for name, version in found.items():
        print(f"  {name:12s} {version or 'not installed'}")
    print(f"  torch built with CUDA {torch.version.cuda or 'no'}, cuDNN "
          f"{torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else 'no'}")

    results = {"versions": found, "devices": {}, "parity": {}}
    for device in devices():
        ok = smoke_test(device)
        results["devices"][str(device)] = ok
        print(f"  {str(device):8s} {describe(device)}: ones(3,3)+ones(3,3)==2 "
              f"{'ok' if ok else 'FAILED'}")
        if device.type == "cuda":
            err = gpu_parity(device)
            results["parity"][str(device)] = err
            print(f"  {str(device):8s} matmul 256x256 vs CPU: max |diff| {err:.2e} "
                  f"{'ok' if err < 1e-3 else 'MISMATCH'}")
    if not torch.cuda.is_available():
        print("  no CUDA GPU: everything runs on the CPU (the book recommends a GTX 1070 or "
              "better for part 2)")

    root = data_root(args.data_dir)
    where = next((q for q in [root, *root.parents] if q.exists()), None)
    if where is not None:
        free_gb = shutil.disk_usage(where).free / 1e9
        results["free_gb"] = free_gb
        print(f"  data root {root}: {free_gb:.0f} GB free "
              f"({'enough' if free_gb >= LUNA_DISK_GB else 'less than'} the ~{LUNA_DISK_GB} GB "
              f"LUNA16 needs)")
    return results


if __name__ == "__main__":
    run_cli(main)
