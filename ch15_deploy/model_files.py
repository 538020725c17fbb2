"""Chapter 15: model files a user hands the servers and exporters, read without running code.

A state_dict that does not fit its model is one short line naming the first few keys (torch's
own message lists every key: about 13,600 characters for a LunaModel checkpoint given to the
CycleGAN generator). A TorchScript or torch.export file is loaded with torch's loggers quietened
(torch.export.load logs a whole traceback before raising), and a model that cannot run the input
it will be served is refused at start-up rather than with a 500 at the first request.
"""
import contextlib
import io
import logging
import warnings
from pathlib import Path

import torch

from common.errors import DataError, one_line
from common.files import read_torch, write_bytes

SHOWN_KEYS = 2                  # keys named in a mismatch message; the rest are counted


def some_keys(keys, shown=SHOWN_KEYS):
    """'a', 'b', 'c' and 12 more: a few names and a count, never the whole list."""
    keys = list(keys)
    text = ", ".join(repr(one_line(k, 40)) for k in keys[:shown])
    return text + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def state_mismatch(model, state):
    """What keeps `state` from loading strictly into `model`, in one line; None when it fits."""
    own = model.state_dict()
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        return "not a state_dict (a dict of named tensors)"
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if own and len(missing) == len(own):             # nothing in common: another model's file
        return (f"none of its {len(own)} tensors is in the file, which holds {len(state)} "
                f"others ({some_keys(state)})")
    wrong = [k for k in own if k in state and (not isinstance(state[k], torch.Tensor)
                                               or state[k].shape != own[k].shape)]
    problems = []
    if missing:
        problems.append(f"{len(missing)} of its {len(own)} tensors missing ({some_keys(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({some_keys(unexpected)})")
    if wrong:
        k = wrong[0]
        got = list(state[k].shape) if isinstance(state[k], torch.Tensor) else type(state[k])
        problems.append(f"{len(wrong)} of another shape ({k!r} is {got}, the model's "
                        f"{list(own[k].shape)})")
    return "; ".join(problems) or None


def load_state(model, state, where):
    """Strict load_state_dict; a mismatch is one DataError naming `where` and a few keys."""
    problem = state_mismatch(model, state)
    if problem:
        raise DataError(f"{where}: does not fit {type(model).__name__}: {problem}")
    try:
        model.load_state_dict(state)
    except (RuntimeError, ValueError) as e:          # e.g. a dtype that cannot be copied
        raise DataError(f"{where}: does not fit {type(model).__name__} "
                        f"({one_line(e, 120)})") from None
    return model


def load_weights(model, path, flag="--weights"):
    """A state_dict file (or the book's checkpoint dict, by its model_state) into `model`."""
    state = read_torch(path, flag)
    if isinstance(state, dict):
        for key in ("model_state", "state_dict"):    # the book's checkpoint; a common wrapper
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    return load_state(model, state, f"{flag} {path}")


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


def probe(model, run, example, flag, path):
    """run(model, example) once; a model that cannot take it is a DataError naming the file."""
    try:
        return run(model, example)
    except Exception as e:                           # whatever the program raises
        raise DataError(f"{flag} {path}: cannot run a {list(example.shape)} input "
                        f"({type(e).__name__}: {one_line(e, 100)})") from None
