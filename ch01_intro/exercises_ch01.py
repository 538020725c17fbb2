"""Chapter 1 exercises (book section 1.6): this installation, from the prompt and from Jupyter.

    python ch01_intro/exercises_ch01.py                  # 1.1 and 1.2
    python ch01_intro/exercises_ch01.py --exercise 1     # 1.1 only

1.1: Python's version, whether torch imports and which version, `torch.cuda.is_available()`,
and whether that matches the hardware (NVIDIA device files in /dev, /proc/driver/nvidia,
nvidia-smi on PATH). 1.2: no Jupyter is needed: the interpreter and the torch this environment
runs, every installed Jupyter kernel (its kernel.json) and whether it starts the same
environment, and how to check a notebook's kernel (run this script from a cell with `%run`).
"""
import argparse
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

from ch01_intro.check_env import versions
from common.errors import run_cli

EXERCISES = (1, 2)
DEV_DIR = "/dev"
PROC_NVIDIA = "/proc/driver/nvidia/gpus"


def nvidia_hardware(dev_dir=DEV_DIR, proc_dir=PROC_NVIDIA, path=None):
    """What says an NVIDIA GPU is here, without torch: /dev/nvidia0.. device files, the driver's
    /proc/driver/nvidia/gpus entries, and nvidia-smi on PATH (None when absent)."""
    def names(folder, keep):
        try:
            return sorted(p.name for p in Path(folder).iterdir() if keep(p.name))
        except OSError:                       # no such folder, or not readable: nothing seen
            return []

    return {"devices": names(dev_dir, lambda n: n.startswith("nvidia") and n[6:].isdigit()),
            "driver_gpus": names(proc_dir, lambda n: True),
            "nvidia_smi": shutil.which("nvidia-smi", path=path)}


def cuda_verdict(cuda_available, cuda_build, hardware, hip_build=None):
    """(matches, why): does `torch.cuda.is_available()` agree with the hardware evidence?"""
    gpu_seen = bool(hardware["devices"] or hardware["driver_gpus"] or hardware["nvidia_smi"])
    if cuda_available and gpu_seen:
        return True, "CUDA is available and an NVIDIA GPU is present"
    if not cuda_available and not gpu_seen:
        return True, "no NVIDIA GPU here and CUDA is not available: everything runs on the CPU"
    if cuda_available:
        if hip_build:
            return True, f"a ROCm build (HIP {hip_build}): an AMD GPU answers torch.cuda"
        return False, ("CUDA is available but no NVIDIA device file or driver entry was found "
                       "(a container that hides /dev?)")
    if cuda_build is None:
        return False, ("an NVIDIA GPU is present but this torch is a CPU-only build "
                       "(torch.version.cuda is None): install a CUDA wheel of torch")
    return False, (f"an NVIDIA GPU is present and torch was built with CUDA {cuda_build}, but "
                   "CUDA is not available: a driver older than that CUDA, or "
                   "CUDA_VISIBLE_DEVICES hides the GPU")


def exercise_1(hardware=None):
    """1.1: Python, torch, torch.cuda.is_available() and the hardware, with the verdict."""
    import torch

    found = versions(("torch",))
    hardware = nvidia_hardware() if hardware is None else hardware
    available = torch.cuda.is_available()
    matches, why = cuda_verdict(available, torch.version.cuda, hardware,
                                getattr(torch.version, "hip", None))
    return {"python": found["python"], "executable": sys.executable,
            "torch_importable": found["torch"] is not None, "torch": found["torch"],
            "cuda_available": available, "cuda_build": torch.version.cuda,
            "cuda_devices": torch.cuda.device_count(), "hardware": hardware,
            "matches": matches, "why": why}


def jupyter_kernel_dirs():
    """Where Jupyter looks for kernels (jupyter_core's order): $JUPYTER_PATH, the user's data
    folder, this environment's, then the system's; each with `kernels/` appended."""
    data = [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep) if p]
    data.append(os.environ.get("JUPYTER_DATA_DIR") or Path.home() / ".local/share/jupyter")
    data += [Path(sys.prefix) / "share/jupyter", "/usr/local/share/jupyter", "/usr/share/jupyter"]
    return [Path(d) / "kernels" for d in data]


def same_environment(interpreter, executable=None):
    """Whether `interpreter` runs the environment of `executable` (this one's by default): the
    same bin folder, symlinks not followed (a venv's python is a symlink to the base one, yet
    has its own site-packages)."""
    executable = executable or sys.executable
    return Path(os.path.abspath(interpreter)).parent == Path(os.path.abspath(executable)).parent


def read_kernels(kernel_dirs):
    """[{name, file, interpreter, same, error}] for every <dir>/<name>/kernel.json; a bare
    command (`python3`) is looked up on PATH, as Jupyter does."""
    kernels = []
    for folder in kernel_dirs:
        for spec in sorted(Path(folder).glob("*/kernel.json")):
            row = {"name": spec.parent.name, "file": str(spec), "interpreter": None,
                   "same": None, "error": None}
            try:
                argv = json.loads(spec.read_text(encoding="utf-8"))["argv"]
                command = argv[0]
            except (OSError, ValueError, KeyError, IndexError, TypeError) as e:
                row["error"] = f"unreadable kernel.json ({type(e).__name__})"
                kernels.append(row)
                continue
            interpreter = shutil.which(command) if os.sep not in command else command
            row["interpreter"] = interpreter or command
            row["same"] = bool(interpreter) and same_environment(interpreter)
            kernels.append(row)
    return kernels


def exercise_2(kernel_dirs=None):
    """1.2: this environment's interpreter and torch, the Jupyter kernels and the PATH python."""
    import torch

    kernel_dirs = jupyter_kernel_dirs() if kernel_dirs is None else kernel_dirs
    on_path = {name: shutil.which(name) for name in ("python", "python3")}
    return {"executable": sys.executable, "prefix": sys.prefix,
            "virtualenv": sys.prefix != sys.base_prefix, "torch_file": torch.__file__,
            "jupyter_command": shutil.which("jupyter"),
            "ipykernel_installed": importlib.util.find_spec("ipykernel") is not None,
            "kernels": read_kernels(kernel_dirs),
            "path_python": {name: (path, bool(path) and same_environment(path))
                            for name, path in on_path.items()}}


def say(question, answer):
    """One sub-question and its measured answer, aligned."""
    print(f"  {question:<30}{answer}")


def print_exercise_1(a):
    print("Exercise 1.1: from a Python prompt")
    say("Python version?", f"{a['python']} ({a['executable']})")
    say("can torch be imported?", f"yes, torch {a['torch']}" if a["torch_importable"] else "no")
    build = (f"built with CUDA {a['cuda_build']}" if a["cuda_build"]
             else "a CPU-only build: torch.version.cuda is None")
    say("torch.cuda.is_available()?", f"{a['cuda_available']} ({build}; "
        f"{a['cuda_devices']} CUDA device(s))")
    hw = a["hardware"]
    say("hardware seen without torch:", f"/dev/nvidia*: {', '.join(hw['devices']) or 'none'}; "
        f"driver GPUs: {len(hw['driver_gpus'])}; nvidia-smi: {hw['nvidia_smi'] or 'not on PATH'}")
    say("does it match the hardware?", f"{'yes' if a['matches'] else 'NO'}: {a['why']}")


def print_exercise_2(a):
    print("Exercise 1.2: which Python does Jupyter use; is its torch this one?")
    venv = f" (a virtual environment: {a['prefix']})" if a["virtualenv"] else ""
    say("this environment's Python:", a["executable"] + venv)
    say("this environment's torch:", a["torch_file"])
    say("Jupyter installed here?", f"jupyter command: {a['jupyter_command'] or 'none'}; "
        f"ipykernel: {'yes' if a['ipykernel_installed'] else 'no'}")
    if not a["kernels"]:
        say("kernels found:", "none (no kernel.json in the Jupyter folders)")
    for k in a["kernels"]:
        verdict = k["error"] or (f"{k['interpreter']}: "
                                 + ("the same environment, so the same torch" if k["same"]
                                    else "ANOTHER environment: its torch may differ"))
        say(f"kernel {k['name']!r}:", f"{verdict} ({k['file']})")
    for name, (path, same) in a["path_python"].items():
        say(f"`{name}` on PATH:", "not on PATH" if not path else
            f"{path} ({'this environment' if same else 'another environment'})")
    print("  how to check a notebook's kernel: in a cell run\n"
          "      %run ch01_intro/exercises_ch01.py --exercise 2\n"
          "  (%run uses the kernel's own interpreter) and compare its lines with these;\n"
          "  `!python ...` in a cell runs the python first on PATH instead, which need not be\n"
          "  the kernel's (the `on PATH` lines above say whether it is this one).")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--exercise", type=int, action="append", choices=EXERCISES,
                   help="exercise number, repeatable (default: all)")
    args = p.parse_args(argv)
    answers = {}
    for number in sorted(set(args.exercise or EXERCISES)):
        if number == 1:
            answers[1] = exercise_1()
            print_exercise_1(answers[1])
        else:
            answers[2] = exercise_2()
            print_exercise_2(answers[2])
    return answers


if __name__ == "__main__":
    run_cli(main)
