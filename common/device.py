"""Device selection and seeding, shared by every chapter (book ch3 and ch8: moving to the GPU)."""
import random

import numpy as np
import torch

from common.errors import DataError


def pick_device(name="auto"):
    """`auto`: cuda if present, else mps, else cpu. An explicit absent device is an error."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DataError(f"--device {name}: unknown device; use auto, cpu, cuda, cuda:N or mps"
                        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DataError(f"--device {name}: CUDA is not available on this machine")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DataError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DataError(f"--device {name}: MPS is not available on this machine")
    elif device.type != "cpu":
        raise DataError(f"--device {name}: unsupported device; use auto, cpu, cuda, cuda:N or mps")
    return device


def add_device_argument(parser, default="auto"):
    """The `--device` flag every script shares."""
    parser.add_argument("--device", default=default,
                        help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps "
                             "(default: %(default)s)")


def seed_everything(seed):
    """Seed Python, NumPy and torch (all devices) in one call."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def map_location(device):
    """For torch.load: put every stored tensor on `device`, whatever device it was saved from."""
    return torch.device(device)


def device_name(device="cpu"):
    """What a benchmark's heading names: the CPU's model name (Linux), or the GPU's."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor() or "unknown CPU"
