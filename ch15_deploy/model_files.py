"""Chapter 15: model files a user hands the servers and exporters, read without running code.

A state_dict that does not fit its model is one short line naming the first few keys (chapter
2's `load_state` / `load_weights`, imported here for the ch15 scripts). A TorchScript or
torch.export file is loaded with torch's loggers quietened (torch.export.load logs a whole
traceback before raising). Writes through memory keep torch's C++ zip writer off a full disk.
"""
import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch

from ch01_intro.weights import load_state, load_weights
from common.errors import DataError
from common.files import write_bytes

__all__ = ["load_state", "load_weights",           # chapter 2's, for the ch15 scripts
           "save_through_memory", "quiet_torch_loggers", "load_program"]


def save_through_memory(path, save, what):
    """save(buffer) into memory, then the bytes to `path` atomically; the path.

    torch's C++ zip writer (torch.jit.save, AOTInductor packages) aborts the whole process when
    the disk fills mid-file; in memory it cannot, and write_bytes turns a full disk into one line.
    """
    buffer = io.BytesIO()
    save(buffer)
    return write_bytes(path, buffer.getvalue(), what)


@contextlib.contextmanager
def quiet_torch_loggers(*names):
    """Raise torch's named loggers to ERROR for the block: their tracebacks are not ours."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def load_program(path, jit, flag):
    """An eval-mode model from a TorchScript file (jit) or a torch.export .pt2 file."""
    path = Path(path)
    kind = "TorchScript" if jit else "torch.export .pt2"
    if not path.is_file():
        raise DataError(f"{flag} {path}: {'a folder' if path.is_dir() else 'no such file'}, "
                        f"not a {kind} file")
    try:
        with quiet_torch_loggers("torch.export", "torch._export"), warnings.catch_warnings():
            warnings.simplefilter("ignore")          # deprecation notices of torch.jit
            if jit:
                return torch.jit.load(str(path), map_location="cpu").eval()
            return torch.export.load(str(path)).module()
    except Exception as e:                           # zip, flatbuffer, schema errors alike
        raise DataError(f"{flag} {path}: not a {kind} file ({type(e).__name__})") from None

